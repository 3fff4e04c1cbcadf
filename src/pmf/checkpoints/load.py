"""Reading checkpoints: local files (.pt/.pth/.safetensors), hub folders (``pmf.checkpoints.hub``), Hugging Face hub
names
and URLs; building a model from our own training checkpoints or from release-format state dicts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..ema_choice import RAW, asks_default, asks_named_ema
from ..errors import CheckpointError
from ..folder_layout import RunFolder
from ..model_configs import ModelConfig, model_config, preset_of
from ..nn.model import PMFDiT, is_v_head_key, u_head_only
from ..nn.release import infer_config, load_release_state_dict
from ..sampling_setting import SamplingSetting, default_setting, exported_setting, read_sidecar, sidecar_path
from .download import hub_file, url_file
from .export_record import (
    exported_meta,
    read_safetensors_fields,
    read_sidecar_fields,
    recorded_fields,
    safetensors_metadata,
)
from .files import (
    CKPT_PREFIX,
    CKPT_SUFFIX,
    FORMAT,
    checkpoint_path,
    fsync_dir,
    is_onnx,
    list_checkpoints,
    save_atomic,
)
from .metadata import CarriesMetadata, ModelMetadata
from .schema import TrainingCheckpoint, save_training_checkpoint
from .sharded import is_sharded_checkpoint, read_meta, read_weights

__all__ = ["CKPT_PREFIX", "CKPT_SUFFIX", "FORMAT", "LoadedCheckpoint", "checkpoint_path", "export_ema", "fsync_dir",
           "is_training_checkpoint", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_model",
           "read_file", "resolve", "run_checkpoint", "save_atomic", "save_training_checkpoint"]


def resolve(spec: str | os.PathLike) -> Path:
    """A local path for ``spec``: a file path, ``hf:OWNER/REPO/FILE`` (downloaded once into the standard
    Hugging Face cache, offline afterwards) or an http(s) URL (cached under torch.hub's directory)."""
    spec = str(spec)
    if spec.startswith("hf:"):
        parts = spec[3:].split("/")
        if len(parts) < 3:
            raise CheckpointError(f"hub names look like hf:OWNER/REPO/FILE, got {spec!r}")
        return hub_file(spec, "/".join(parts[:2]), "/".join(parts[2:]))
    if spec.startswith(("http://", "https://")):
        return url_file(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {str(path)!r}")
    return path


def read_file(spec: str | os.PathLike) -> dict:
    """The raw object stored in a checkpoint file, with clear errors for unreadable or truncated files."""
    path = resolve(spec)
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({err})") from None
        if "model_config" in meta:  # our export: one weight set, its config and its model record (export_record)
            fields = read_safetensors_fields(meta)
            extra = {k: fields[k] for k in ("class_names", "sampling_setting") if k in fields}
            return {"format": FORMAT, "export": True, "model_config": json.loads(meta["model_config"]),
                    "model": tensors, **extra, "record": fields}
        return tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files (RuntimeError, KeyError, EOFError, ...)
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(6)
        if size and not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive (old: a pickle)
            raise CheckpointError(f"{str(path)!r} ({size} bytes) is not a readable PyTorch checkpoint: it starts with "
                                  f"{head!r}, not the header of a zip archive or a pickle") from None
        if "weights only load failed" in str(err).lower():  # not torch's advice: weights_only=False runs code
            found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n\n|$)", str(err), re.S)
            why = " ".join(found.group(1).split())[:160] if found else "objects beyond tensors and containers"
            raise CheckpointError(f"{str(path)!r} ({size} bytes) is not a checkpoint this package reads: the safe "
                                  f"loader refuses it ({why}); a file of unknown origin should never be unpickled "
                                  "in full") from None
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise CheckpointError(f"{str(path)!r} ({size} bytes) is not a readable PyTorch checkpoint; the file may be "
                              f"truncated or of another format ({type(err).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or checkpoint")
    return obj


def is_training_checkpoint(obj: dict) -> bool:
    return obj.get("format") == FORMAT


def open_checkpoint(spec: str | os.PathLike):
    """(what the checkpoint holds, a function giving one weight set: ``"raw"`` or an EMA name). Ours read as a
    ``TrainingCheckpoint`` (a sharded folder's from its meta, reading only the weight set asked for); anything
    else as the file's dictionary."""
    if is_sharded_checkpoint(spec):
        ckpt = TrainingCheckpoint.from_meta(read_meta(spec))
        return ckpt, lambda which: read_weights(spec, which)
    obj = read_file(spec)
    if not is_training_checkpoint(obj):
        return obj, None
    ckpt = TrainingCheckpoint.from_payload(obj)
    return ckpt, lambda which: ckpt.model if which == RAW else ckpt.ema[which]


class LoadedCheckpoint(CarriesMetadata):
    """A model read by ``load_checkpoint`` (or an ONNX generator standing in for one) with what its file says
    about it: ``meta`` (``ModelMetadata``: setting, one name per class, preset, weights, data), resolved once
    here. ``arch``, ``setting`` and ``data`` are the record's; ``class_names`` are the names the file records
    (None where it records none; ``meta.class_names`` always has one per class)."""

    def __init__(self, model, arch: str | None = None, ema: str | None = None, setting: SamplingSetting | None = None,
                 data: str | None = None, class_names: list[str] | None = None, *, meta: ModelMetadata | None = None):
        self.model = model
        self.ema = ema  # the EMA whose weights were loaded ('raw': the raw weights; None: a single-weight file)
        self.class_names = list(class_names) if class_names else None
        self.meta = meta or ModelMetadata.resolve(model.config.num_classes, setting=setting or SamplingSetting(),
                                                  preset=arch, data=data, recorded=self.class_names)

    @property
    def arch(self) -> str | None:  # the preset's name where the loader's callers say "arch"
        return self.meta.preset


def load_checkpoint(spec: str | os.PathLike, *, arch: str | None = None, ema: str | None = None,
                    device=None, **overrides) -> LoadedCheckpoint:
    """A model (eval mode) from any checkpoint we can read, with its default sampling setting.

    Our checkpoints record their config; ``ema`` picks one of their EMA weight sets (default: the EMA of the
    default setting, i.e. the released half-life for a released recipe, else the first EMA if any, else the
    raw weights; ``"raw"`` forces the raw weights). Release-format state dicts use ``arch`` (a preset name,
    with ``overrides``) or, without it, an architecture inferred from the shapes. A run folder (or its
    ``checkpoints/``) gives its newest checkpoint, as on the command line. Exports carry the setting of the
    checkpoint they came from (``export_ema``)."""
    from .hub import hub_repo_id, is_hub_folder, read_pretrained

    # save_pretrained's folder, or a hub repo holding one (hf:OWNER/REPO; hf:OWNER/REPO/FILE is a file)
    if is_hub_folder(spec) or str(spec).startswith("hf:") and hub_repo_id(spec):
        if asks_named_ema(ema) or arch is not None or overrides:
            raise CheckpointError("a hub folder holds one weight set and its config: drop --ema and --arch")
        pre = read_pretrained(spec)
        return LoadedCheckpoint(pre.build(PMFDiT, device), ema=pre.meta.setting.ema, class_names=pre.class_names,
                                meta=pre.meta)
    if is_onnx(spec):
        raise CheckpointError(f"{str(spec)!r} is an ONNX generator: pmf sample, pmf serve and pmf eval run it "
                              "(onnxruntime)")
    if not str(spec).startswith(("hf:", "http://", "https://")) and Path(spec).expanduser().is_dir():
        spec = run_checkpoint(spec)
    ckpt, weights_of = open_checkpoint(spec)
    if isinstance(ckpt, TrainingCheckpoint):
        loaded = _ours(ckpt, weights_of, arch, ema, overrides)
    else:
        if asks_named_ema(ema):
            raise CheckpointError(f"--ema {ema} needs a training checkpoint; this file holds one set of weights")
        model, found_arch, setting = _release_format(ckpt, spec, arch, overrides)
        fields = {k: v for k, v in read_sidecar_fields(spec).items() if arch is None or k != "preset"}  # --arch wins
        loaded = LoadedCheckpoint(model, class_names=fields.get("class_names"), meta=exported_meta(
            model.config.num_classes, fields, setting=setting, preset=found_arch, data=None, class_names=None))
    loaded.model = loaded.model.to(device).eval()
    return loaded


def _ours(ckpt: TrainingCheckpoint, weights_of, arch: str | None, ema: str | None,
          overrides: dict) -> LoadedCheckpoint:
    """One weight set of a training checkpoint or of an export of one, with its record."""
    config = ModelConfig.from_dict({**ckpt.model_config, **overrides})
    train_config = ckpt.train_config
    if arch is not None and train_config.get("arch") not in (None, arch):
        raise CheckpointError(f"--arch {arch} contradicts the checkpoint, which records "
                              f"{train_config['arch']}; drop --arch")
    emas = ckpt.ema_names
    setting = default_setting(config, train_config, emas)
    if ckpt.export:  # one weight set: the EMA was chosen when exporting
        if asks_named_ema(ema):
            raise CheckpointError(f"--ema {ema} needs a training checkpoint; this export holds one weight set")
        setting = exported_setting(ckpt.sampling_setting, setting)
    if asks_default(ema):
        ema = setting.ema or RAW
    if ema != RAW and ema not in emas:
        raise CheckpointError(f"--ema {ema!r} is not in the checkpoint; give one of: {', '.join([RAW, *emas])}")
    weights = weights_of(ema)
    if not any(is_v_head_key(k) for k in weights):
        config.v_head = False  # inference weights (u-head only)
    model = PMFDiT(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its recorded config: {str(err)[:500]}") from None
    names = ckpt.class_names or train_config.get("class_names")
    meta = exported_meta(config.num_classes, ckpt.record or {}, setting=setting, class_names=names,
                         preset=train_config.get("arch") or preset_of(config), data=train_config.get("data"))
    return LoadedCheckpoint(model, ema=None if ckpt.export else ema, class_names=names, meta=meta)


def _release_format(obj: dict, spec, arch: str | None, overrides: dict) -> tuple[PMFDiT, str | None,
                                                                                SamplingSetting]:
    """(model, preset, setting) of a release-format state dict (under ``state_dict`` / ``model`` or bare)."""
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj.get("model", None), dict) \
        or "state_dict" in obj else obj
    if arch is not None:
        config = model_config(arch, **overrides)
        if not any(is_v_head_key(k) for k in state):
            config.v_head = False
    else:
        config = infer_config(state, **overrides)
    model = load_release_state_dict(PMFDiT(config), state)
    found_arch = arch or preset_of(config)
    setting = default_setting(config, {"arch": found_arch} if found_arch else None)
    return model, found_arch, exported_setting(read_sidecar(spec), setting)


def load_model(spec: str | os.PathLike, *, arch: str | None = None, ema: str | None = None,
               device=None, **overrides) -> PMFDiT:
    """The model (eval mode) of ``load_checkpoint``: ours, release-format, safetensors, hub or URL."""
    return load_checkpoint(spec, arch=arch, ema=ema, device=device, **overrides).model


# ---------------------------------------------------------------------------------------------------------
# Run folders and exports (the files themselves: pmf.checkpoints.files).

def run_checkpoint(folder: str | os.PathLike) -> Path:
    """The newest training checkpoint of a run folder (in its ``checkpoints/``) or of a checkpoints folder;
    a sharded checkpoint folder itself is returned as it is."""
    path = Path(folder).expanduser()
    if is_sharded_checkpoint(path):
        return path
    found = latest_checkpoint(RunFolder(path).checkpoints) or latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no training checkpoint found in the folder {str(path)!r} (nor in its checkpoints/)")
    return found


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest readable training checkpoint in ``directory`` (older ones are tried if the newest cannot
    be read), or None when there is none."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            if path.is_dir():
                read_meta(path)
                return path
            obj = read_file(path)
        except CheckpointError:
            continue
        if is_training_checkpoint(obj):
            return path
    return None


def export_ema(spec: str | os.PathLike, out: str | os.PathLike, *, ema: str | None = None,
               fmt: str | None = None) -> Path:
    """Write one weight set of a training checkpoint (an EMA by name, ``"raw"``, or by default the EMA of its
    sampling setting: the released half-life for a released recipe, else the first EMA) for inference, u-head
    only, with the model record (``pmf.checkpoints.export_record``): ``fmt="release"`` (``.pt``, the release's key
    names under ``net.``, loadable by the released PyTorch port and by ``pmf sample --arch``; the record beside it)
    or ``fmt="safetensors"`` (our key names; the model config and the record in the metadata; ``pmf sample``
    reads it). ``fmt`` defaults from the suffix of ``out``."""
    out = Path(out)
    fmt = fmt or ("safetensors" if out.suffix == ".safetensors" else "release")
    if fmt not in ("release", "safetensors"):
        raise CheckpointError(f"export format must be 'release' or 'safetensors', got {fmt!r}")
    loaded = load_checkpoint(spec, ema=ema)
    inference = u_head_only(loaded.model)
    meta = loaded.meta.replace(setting=loaded.setting.replace(ema=loaded.ema))  # the EMA these weights are
    fields = recorded_fields(meta, loaded.class_names)
    if fmt == "safetensors":
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous() for k, v in inference.state_dict().items()}
        save_atomic(save(tensors, metadata=safetensors_metadata(inference.config.to_dict(), fields)), out)
    else:
        from ..nn.release import release_state_dict

        save_atomic(release_state_dict(inference, prefix="net."), out)
        save_atomic(json.dumps({"format": FORMAT, **fields}, indent=2), sidecar_path(out))
    return out
