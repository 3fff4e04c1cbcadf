"""Reading checkpoints: local files (.pt/.pth/.safetensors), Hugging Face hub names and URLs; building a
model from our own training checkpoints or from release-format state dicts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig, model_config, preset_of
from .errors import CheckpointError
from .nn.model import PMFDiT, is_v_head_key, u_head_only
from .nn.release import infer_config, load_release_state_dict
from .sampling import SamplingSetting, default_setting

FORMAT = "pixel-meanflow"


def resolve(spec: str | os.PathLike) -> Path:
    """A local path for ``spec``: a file path, ``hf:OWNER/REPO/FILE`` (downloaded once into the standard
    Hugging Face cache, offline afterwards) or an http(s) URL (cached under torch.hub's directory)."""
    spec = str(spec)
    if spec.startswith("hf:"):
        parts = spec[3:].split("/")
        if len(parts) < 3:
            raise CheckpointError(f"hub names look like hf:OWNER/REPO/FILE, got {spec!r}")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise CheckpointError("hub names need `pip install pixel-meanflow[hub]`") from None
        try:
            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
        except Exception as err:  # network errors, missing files, offline mode without a cached copy
            raise CheckpointError(f"could not fetch {spec!r} from the hub: {err}") from None
    if spec.startswith(("http://", "https://")):
        cache = Path(torch.hub.get_dir()) / "checkpoints" / spec.rsplit("/", 1)[-1]
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(spec, str(cache))
            except Exception as err:
                raise CheckpointError(f"could not download {spec!r}: {err}") from None
        return cache
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
        if "model_config" in meta:
            extra = {k: json.loads(meta[k]) for k in ("class_names",) if k in meta}
            return {"format": FORMAT, "model_config": json.loads(meta["model_config"]), "model": tensors, **extra}
        return tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files (RuntimeError, KeyError, EOFError, ...)
        size = path.stat().st_size
        raise CheckpointError(f"{str(path)!r} ({size} bytes) is not a readable PyTorch checkpoint; the file may be "
                              f"truncated or of another format ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or checkpoint")
    return obj


def is_training_checkpoint(obj: dict) -> bool:
    return obj.get("format") == FORMAT


@dataclass
class LoadedCheckpoint:
    """A model read by ``load_checkpoint`` with what the file says about how to sample it."""

    model: PMFDiT
    arch: str | None  # the preset (recorded in our checkpoints, recognised from the shapes otherwise)
    ema: str | None  # the EMA whose weights were loaded ('raw' for the raw weights; None: a single-weight file)
    setting: SamplingSetting  # the default sampling setting (released, or the recipe's)
    data: str | None = None  # the training data recorded in our training checkpoints (a built-in name or a path)
    class_names: list[str] | None = None  # one name per class row where the file records them, else None


def load_checkpoint(spec: str | os.PathLike, *, arch: str | None = None, ema: str | None = None,
                    device=None, **overrides) -> LoadedCheckpoint:
    """A model (eval mode) from any checkpoint we can read, with its default sampling setting.

    Our checkpoints record their config; ``ema`` picks one of their EMA weight sets (default: the EMA of the
    default setting, i.e. the released half-life for a released recipe, else the first EMA if any, else the
    raw weights; ``"raw"`` forces the raw weights). Release-format state dicts use ``arch`` (a preset name,
    with ``overrides``) or, without it, an architecture inferred from the shapes."""
    from .sharded_checkpoint import is_sharded_checkpoint, lazy_checkpoint

    obj = lazy_checkpoint(spec) if is_sharded_checkpoint(spec) else read_file(spec)
    if is_training_checkpoint(obj):
        config = ModelConfig.from_dict({**obj["model_config"], **overrides})
        train_config = obj.get("train_config") or {}
        if arch is not None and train_config.get("arch") not in (None, arch):
            raise CheckpointError(f"--arch {arch} contradicts the checkpoint, which records "
                                  f"{train_config['arch']}; drop --arch")
        emas = obj.get("ema") or {}
        setting = default_setting(config, train_config, list(emas))
        if ema in (None, "auto"):
            ema = setting.ema or "raw"
        if ema == "raw":
            weights = obj["model"]
        elif ema in emas:
            weights = emas[ema]
        else:
            raise CheckpointError(f"EMA {ema!r} is not in the checkpoint; it has: {['raw', *emas]}")
        if not any(is_v_head_key(k) for k in weights):
            config.v_head = False  # inference weights (u-head only)
        model = PMFDiT(config)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint weights do not fit its recorded config: {str(err)[:500]}") from None
        found_arch = train_config.get("arch") or preset_of(config)
        data = train_config.get("data")
        class_names = obj.get("class_names") or train_config.get("class_names")
    else:
        if ema not in (None, "auto", "raw"):
            raise CheckpointError(f"--ema {ema} needs a training checkpoint; this file holds one set of weights")
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj.get("model", None), dict) \
            or "state_dict" in obj else obj
        if arch is not None:
            config = model_config(arch, **overrides)
            if not any(is_v_head_key(k) for k in state):
                config.v_head = False
        else:
            config = infer_config(state, **overrides)
        model = load_release_state_dict(PMFDiT(config), state)
        found_arch, ema, data, class_names = arch or preset_of(config), None, None, None
        setting = default_setting(config, {"arch": found_arch} if found_arch else None)
    return LoadedCheckpoint(model.to(device).eval(), found_arch, ema, setting, data,
                            list(class_names) if class_names else None)


def load_model(spec: str | os.PathLike, *, arch: str | None = None, ema: str | None = None,
               device=None, **overrides) -> PMFDiT:
    """The model (eval mode) of ``load_checkpoint``: ours, release-format, safetensors, hub or URL."""
    return load_checkpoint(spec, arch=arch, ema=ema, device=device, **overrides).model


# ---------------------------------------------------------------------------------------------------------
# Writing: atomic saves, keep-last-K, resume look-up, export of an EMA for inference.

CKPT_PREFIX, CKPT_SUFFIX = "step_", ".pt"


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a crash at any
    moment leaves either the previous file or the complete new one, never a partial file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, (bytes, str)):
                f.write(obj.encode() if isinstance(obj, str) else obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)  # make the rename durable
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the file system allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete training checkpoints in ``directory``, oldest first: single files
    ``step_XXXXXXXX.pt`` and sharded (DCP) folders ``step_XXXXXXXX`` (``pmf.sharded_checkpoint``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for p in directory.glob(f"{CKPT_PREFIX}*"):
        is_file = p.name.endswith(CKPT_SUFFIX)
        digits = p.name[len(CKPT_PREFIX):len(p.name) - (len(CKPT_SUFFIX) if is_file else 0)]
        if not digits.isdigit() or p.is_dir() == is_file:
            continue
        if p.is_dir() and not ((p / ".metadata").is_file() and (p / "meta.json").is_file()):
            continue
        out.append((int(digits), p))
    return sorted(out)


def save_training_checkpoint(directory: str | os.PathLike, step: int, payload: dict, config: dict,
                             keep_last: int = 3) -> Path:
    """Save ``payload`` (with ``format``, ``model_config``, ``model``, ``ema``, ...) as step_XXXXXXXX.pt and
    the resolved training ``config`` beside it as step_XXXXXXXX.json, both atomically; then delete all but
    the newest ``keep_last`` checkpoints (only after the new one is complete)."""
    path = checkpoint_path(directory, step)
    save_atomic({"format": FORMAT, "step": step, **payload}, path)
    save_atomic(json.dumps(config, indent=2), path.with_suffix(".json"))
    from .sharded_checkpoint import remove_checkpoint

    for _, old in list_checkpoints(directory)[:-keep_last]:
        remove_checkpoint(old)
    return path


def run_checkpoint(folder: str | os.PathLike) -> Path:
    """The newest training checkpoint of a run folder (in its ``checkpoints/``) or of a checkpoints folder;
    a sharded checkpoint folder itself is returned as it is."""
    from .sharded_checkpoint import is_sharded_checkpoint

    path = Path(folder).expanduser()
    if is_sharded_checkpoint(path):
        return path
    found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no training checkpoint found in the folder {str(path)!r} (nor in its checkpoints/)")
    return found


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest readable training checkpoint in ``directory`` (older ones are tried if the newest cannot
    be read), or None when there is none."""
    from .sharded_checkpoint import read_meta

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
    only: ``fmt="release"`` (``.pt``, the release's key names under ``net.``, loadable
    by the released PyTorch port and by ``pmf sample --arch``) or ``fmt="safetensors"`` (our key names, the
    model config and any recorded class names in the metadata; ``pmf sample`` reads them). ``fmt`` defaults
    from the suffix of ``out``."""
    out = Path(out)
    fmt = fmt or ("safetensors" if out.suffix == ".safetensors" else "release")
    if fmt not in ("release", "safetensors"):
        raise CheckpointError(f"export format must be 'release' or 'safetensors', got {fmt!r}")
    loaded = load_checkpoint(spec, ema=ema)
    inference = u_head_only(loaded.model)
    config = inference.config
    if fmt == "safetensors":
        from safetensors.torch import save_file

        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in inference.state_dict().items()}
        meta = {"model_config": json.dumps(config.to_dict()), "format": FORMAT}
        if loaded.class_names:  # the training folder's class names travel with the weights
            meta["class_names"] = json.dumps(loaded.class_names)
        save_file(tensors, str(out), metadata=meta)
    else:
        from .nn.release import release_state_dict

        save_atomic(release_state_dict(inference, prefix="net."), out)
    return out
