"""Where the frozen feature networks' weights come from, without surprises offline.

Order for each file: the config field, then the environment variable, then the standard cache (torch hub
for VGG16, the Hugging Face cache for ConvNeXt-V2), then a download into that cache when allowed and the
host answers. When a file is still missing the caller gets ``MissingWeights`` entries that say which file
is needed, where it comes from and where to put it, so a run can refuse to start with one message.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
LPIPS_ENV = "PMF_LPIPS_VGG_WEIGHTS"
CONVNEXT_ENV = "PMF_CONVNEXT_WEIGHTS"
CONVNEXT_FILE = "model.safetensors"


@dataclass
class MissingWeights:
    """One weight file that could not be found: what it is and how to provide it."""

    what: str
    file: str
    how: str


def hf_repo(timm_name: str) -> str:
    """Hugging Face repository of a timm model name with a pretrained tag ("arch.tag")."""
    return f"timm/{timm_name}"


def hf_url(timm_name: str) -> str:
    return f"https://huggingface.co/{hf_repo(timm_name)}/resolve/main/{CONVNEXT_FILE}"


def _explicit(path: str | None, env: str) -> tuple[Path | None, str | None]:
    """(path, its origin) from the config field, else the environment variable."""
    if path:
        return Path(path).expanduser(), "config"
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser(), env
    return None, None


def _online(url: str, timeout: float = 3.0) -> bool:
    """Whether the download host accepts a TCP connection (fails fast instead of retrying for a minute)."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def vgg16_checkpoint() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def resolve_vgg16(path: str | None, download: bool) -> tuple[Path | None, MissingWeights | None]:
    """The VGG16 trunk for LPIPS (torchvision's ImageNet weights; an lpips.LPIPS state dict also works)."""
    explicit, origin = _explicit(path, LPIPS_ENV)
    how = (f"download {VGG16_URL} and either put it at {vgg16_checkpoint()} or point lpips_weights "
           f"(--lpips-weights) or ${LPIPS_ENV} at it")
    if explicit is not None:
        if explicit.is_file():
            return explicit, None
        return None, MissingWeights("LPIPS VGG16 trunk", str(explicit), f"the file named by {origin} does not "
                                    f"exist; {how}")
    cached = vgg16_checkpoint()
    if cached.is_file():
        return cached, None
    if download and _online(VGG16_URL):
        try:
            torch.hub.download_url_to_file(VGG16_URL, str(cached), progress=True)
            return cached, None
        except Exception as err:  # any download failure ends in the same clear message
            how = f"{how} (download failed: {err})"
    return None, MissingWeights("LPIPS VGG16 trunk", VGG16_FILE, how)


def lpips_lin_file() -> Path | None:
    """The calibrated LPIPS linear layers (weights/v0.1/vgg.pth) shipped inside the ``lpips`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
    return path if path.is_file() else None


def resolve_convnext(path: str | None, timm_name: str, download: bool) -> tuple[Path | None, MissingWeights | None]:
    """ConvNeXt-V2 weights in timm's format (safetensors or a torch file; the original FCMAE-release
    checkpoint also loads, converted by timm)."""
    explicit, origin = _explicit(path, CONVNEXT_ENV)
    how = (f"download {hf_url(timm_name)} and point convnext_weights (--convnext-weights) or ${CONVNEXT_ENV} "
           f"at it, or fill the Hugging Face cache on a connected machine with "
           f"`hf download {hf_repo(timm_name)} {CONVNEXT_FILE}` and copy ~/.cache/huggingface")
    if explicit is not None:
        if explicit.is_file():
            return explicit, None
        return None, MissingWeights(f"ConvNeXt-V2 ({timm_name})", str(explicit),
                                    f"the file named by {origin} does not exist; {how}")
    try:
        import huggingface_hub
    except ImportError:
        huggingface_hub = None
    if huggingface_hub is not None:
        cached = huggingface_hub.try_to_load_from_cache(hf_repo(timm_name), CONVNEXT_FILE)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached), None
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if download and not offline and _online(hf_url(timm_name)):
            try:
                return Path(huggingface_hub.hf_hub_download(hf_repo(timm_name), CONVNEXT_FILE)), None
            except Exception as err:
                how = f"{how} (download failed: {err})"
    return None, MissingWeights(f"ConvNeXt-V2 ({timm_name})", f"{CONVNEXT_FILE} of {hf_repo(timm_name)}", how)


def load_file(path: Path) -> dict:
    """A state dict from a .safetensors file or a torch file (a nested "state_dict"/"model" entry is unwrapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        return load_safetensors(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def missing_message(missing: list[MissingWeights]) -> str:
    lines = ["perceptual loss: pretrained weights not found, refusing to train with random features."]
    for m in missing:
        lines.append(f"  - {m.what}: need {m.file}; {m.how}.")
    off = [flag for term, flag in (("LPIPS", "--no-lpips"), ("ConvNeXt", "--no-convnext"))
           if any(m.what.startswith(term) for m in missing)]
    lines.append(f"  (or train without the term: {' and '.join(off)}, or --no-perceptual for both; in Python "
                 "PerceptualConfig(lpips=False) / (convnext=False))")
    return "\n".join(lines)
