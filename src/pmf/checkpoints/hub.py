"""The Hugging Face Hub format of a model, after ``huggingface_hub``'s ``PyTorchModelHubMixin``: a folder with
``config.json`` (the model config under ``config``, and the fields of ``pmf.checkpoints.metadata.ModelMetadata``:
the sampling setting, the class names, the preset, the weights' precision, the data),
``model.safetensors`` (u-head weights, our key names) and a ``README.md`` model card (``pmf.checkpoints.hub_card``).
``huggingface_hub`` is needed only for hub repos (``pip install 'pixel-meanflow[hub]'``), imported lazily."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

from ..errors import CheckpointError, PMFError
from ..extras import needs
from ..model_configs import ModelConfig
from ..sampling_setting import SamplingSetting
from .metadata import CarriesMetadata, ModelMetadata

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
LIBRARY = "pixel-meanflow"
HUB_FORMAT = "pixel-meanflow-hub"
INSTALL = "pip install 'pixel-meanflow[hub]'"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``save_pretrained``."""
    path = Path(str(path)).expanduser()
    if not ((path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()):
        return False
    try:
        return json.loads((path / CONFIG_NAME).read_text()).get("format") == HUB_FORMAT
    except (OSError, ValueError):
        return False


def hub_repo_id(spec: str | os.PathLike) -> str | None:
    """The repo id of ``hf:OWNER/REPO``, or of ``OWNER/REPO`` when no such local path exists; else None."""
    spec = str(spec)
    name = spec[3:] if spec.startswith("hf:") else spec
    if _REPO_ID.match(name) and (spec.startswith("hf:") or not Path(spec).expanduser().exists()):
        return name
    return None


def save_pretrained(model, save_directory: str | os.PathLike, *, setting: SamplingSetting | None = None,
                    class_names: list[str] | None = None, preset: str | None = None, fid: float | None = None,
                    license: str = "mit", meta: ModelMetadata | None = None) -> Path:
    """Write ``model``'s weights (a u-head-only network: ``pmf.nn.model.u_head_only``, as
    ``PMFDiT.save_pretrained`` passes it), config.json (the model config and the fields of its ``ModelMetadata``)
    and a model card into ``save_directory``. The record is ``meta`` with ``setting``, ``class_names`` and
    ``preset`` where given, else the one ``from_pretrained`` attached to the model (``model.metadata``); ``fid``
    is a measured FID-50K of these weights for the card."""
    from safetensors.torch import save

    from .hub_card import model_card

    if model.config.v_head:
        raise PMFError("a hub folder holds the u-head only: save pmf.nn.model.u_head_only(model) (as "
                       "PMFDiT.save_pretrained does)")
    net = model
    if meta is None:  # what from_pretrained attached (its attributes, which a caller may have changed, win)
        meta = getattr(model, "metadata", None)
        setting = setting or getattr(model, "sampling_setting", None)
        class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    meta = _record(net, meta, setting, class_names, preset)
    out = Path(save_directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": HUB_FORMAT, "library_name": LIBRARY, "config": net.config.to_dict(), **meta.to_dict(),
              "fid": fid}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    # written as the other files are (their mode follows the umask; safetensors' save_file makes its file 0600)
    (out / WEIGHTS_NAME).write_bytes(save(tensors, metadata={"format": "pt"}))
    (out / CARD_NAME).write_text(model_card(config, license=license))
    return out


def _record(net, meta: ModelMetadata | None, setting, class_names, preset) -> ModelMetadata:
    """The record a folder of ``net`` holds: ``meta`` (if any) with the fields given."""
    from ..class_choice import check_class_names
    from ..model_configs import preset_of

    num_classes = net.config.num_classes
    check_class_names(class_names, num_classes)
    if meta is None:
        return ModelMetadata.resolve(num_classes, setting=setting or SamplingSetting(),
                                     preset=preset or preset_of(net.config), recorded=class_names)
    changes = {k: v for k, v in (("setting", setting), ("preset", preset)) if v is not None}
    return meta.replace(**changes, **({"class_names": list(class_names)} if class_names is not None else {}))


@dataclasses.dataclass
class Pretrained(CarriesMetadata):
    """What a ``save_pretrained`` folder holds, before a network is built from it."""

    config: ModelConfig
    weights: dict
    meta: ModelMetadata
    class_names: list[str] | None  # as config.json records them
    source: Path

    def build(self, model_cls, device=None):
        """A ``model_cls`` network (eval mode) with the weights, carrying ``metadata`` (what ``save_pretrained``
        writes back by default) and, from it, ``sampling_setting`` and ``class_names``."""
        model = model_cls(self.config)
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{self.source / WEIGHTS_NAME} does not fit its config.json: {str(err)[:300]}") \
                from None
        model.metadata, model.sampling_setting, model.class_names = self.meta, self.setting, self.class_names
        return model.to(device).eval()


def read_pretrained(spec: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None,
                    cache_dir: str | None = None, local_files_only: bool = False) -> Pretrained:
    """The contents of a ``save_pretrained`` folder, or of a hub repo holding one (``OWNER/REPO`` or
    ``hf:OWNER/REPO``, downloaded once into the Hugging Face cache)."""
    from safetensors.torch import load_file

    folder = Path(str(spec)).expanduser()
    if not is_hub_folder(folder):
        repo = hub_repo_id(spec)
        if repo is None:
            raise CheckpointError(f"{str(spec)!r} is neither a folder of save_pretrained (config.json with format "
                                  f"{HUB_FORMAT!r} and {WEIGHTS_NAME}) nor a hub repo id OWNER/REPO")
        folder = _download(repo, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
    config = json.loads((folder / CONFIG_NAME).read_text())
    names = config.get("class_names")
    model_config = ModelConfig.from_dict(config["config"])
    return Pretrained(model_config, load_file(str(folder / WEIGHTS_NAME)),
                      ModelMetadata.from_dict(config, model_config.num_classes), list(names) if names else None,
                      folder)


def _download(repo_id: str, **kw) -> Path:
    with needs("hub", "hub repo ids need huggingface_hub"):
        from huggingface_hub import snapshot_download
    try:
        path = snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME], **kw)
    except Exception as err:  # network errors, missing repos, offline mode without a cached copy
        raise CheckpointError(f"could not fetch the hub repo {repo_id!r} (nor is it a local folder): "
                              f"{str(err)[:300]}") from None
    if not is_hub_folder(path):
        raise CheckpointError(f"the hub repo {repo_id!r} holds no {CONFIG_NAME} of format {HUB_FORMAT!r}")
    return Path(path)


def push_to_hub(model, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload pixel-meanflow model", **save_kwargs) -> str:
    """``save_pretrained`` into a temporary folder, then upload it to the hub repo ``repo_id`` (created if
    missing); returns the commit URL. Needs a network and a write token (``huggingface-cli login``)."""
    with needs("hub", "push_to_hub needs huggingface_hub"):
        from huggingface_hub import HfApi
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
