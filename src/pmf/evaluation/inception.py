"""The standard FID / IS feature network: the 2015 TensorFlow Inception-v3 as ported by torch-fidelity
(``FeatureExtractorInceptionV3``, the network the paper's PyTorch port uses), loaded from a local file only.

Where the weights are looked for, in order: an explicit path (``--inception-weights``), ``$PMF_INCEPTION_WEIGHTS``,
torch-fidelity's own download location in the torch hub cache (``$TORCH_HOME/hub/checkpoints/``), and
``$PMF_CACHE`` (default ``~/.cache/pixel-meanflow``). Nothing is downloaded implicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import PMFError
from ..extras import needs

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
ENV = "PMF_INCEPTION_WEIGHTS"
POOL, LOGITS = "2048", "logits_unbiased"  # FID features / IS logits, torch-fidelity's defaults


def candidate_paths(path: str | os.PathLike | None = None) -> list[Path]:
    """Where the weights may be, in the order they are tried."""
    from .offline_score import cache_dir

    out = [Path(path).expanduser()] if path else []
    if os.environ.get(ENV):
        out.append(Path(os.environ[ENV]).expanduser())
    out += [Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE, cache_dir() / WEIGHTS_FILE]
    return out


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file, or a PMFError naming the file, where to get it and where to put it."""
    tried = candidate_paths(path)
    if path:  # an explicit path must exist: falling back silently would hide a typo
        if tried[0].is_file():
            return tried[0]
        raise PMFError(f"Inception weights not found at {str(tried[0])!r}")
    for p in tried:
        if p.is_file():
            return p
    raise PMFError(
        f"the Inception-v3 weights for FID/IS are not on this machine. Download {WEIGHTS_FILE} from\n  {WEIGHTS_URL}\n"
        f"and put it at {str(tried[-2])!r} (torch-fidelity's cache), or anywhere with ${ENV}=/path/to/{WEIGHTS_FILE}"
        " or --inception-weights. Looked in: " + ", ".join(str(p) for p in tried)
        + ". Without them, `pmf eval --offline` gives the classifier-based score on built-in datasets.")


def weights_available(path: str | os.PathLike | None = None) -> bool:
    try:
        find_weights(path)
        return True
    except PMFError:
        return False


def load_inception(path: str | os.PathLike | None = None, device=None) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 with the local weights (eval mode, no gradients), giving the 2048-d pool
    features and the 1008 unbiased logits."""
    weights = find_weights(path)
    with needs("eval", "FID/IS need torch-fidelity"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", [POOL, LOGITS],
                                          feature_extractor_weights_path=str(weights))
    except Exception as err:  # truncated download, HTML error page, wrong network
        raise PMFError(f"{str(weights)!r} is not a usable Inception weights file ({type(err).__name__}: "
                       f"{str(err)[:300]}); download {WEIGHTS_URL} again") from None
    return net.to(device or "cpu")


@torch.no_grad()
def inception_features(net: torch.nn.Module, images) -> tuple[np.ndarray, np.ndarray]:
    """(pool features [N, 2048] float64, logits [N, 1008] float64) of uint8 images [N, H, W, C], C = 1 or 3.
    The network resizes to 299 px itself (TF1-compatible bilinear), exactly as torch-fidelity does."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise PMFError(f"Inception takes uint8 images [N, H, W, C] with C = 1 or 3, got {x.dtype} {list(x.shape)}")
    x = x.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)  # (N, 3, H, W): grayscale repeated to RGB
    device = next(net.parameters()).device
    pool, logits = net(x.contiguous().to(device))
    return pool.double().cpu().numpy(), logits.double().cpu().numpy()


def inception_score(logits: np.ndarray, splits: int = 10, shuffle_seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over ``splits`` chunks of shuffled logits [N, 1008], with
    torch-fidelity's defaults (10 splits, shuffle with seed 2020)."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise PMFError(f"the Inception Score needs at least {splits} images, got {len(logits)}")
    logits = logits[np.random.RandomState(shuffle_seed).permutation(len(logits))]
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    p = np.exp(log_p)
    n, scores = len(p), []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(0, keepdims=True)
        scores.append(float(np.exp((p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores))
