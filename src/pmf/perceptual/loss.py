"""The perceptual terms of the pMF loss (spec 3.8) and ``build_perceptual``, which the trainer calls.

``PerceptualLoss(x_pred, x, t) -> (term [B], logs)``: one shared random resized crop per sample, LPIPS-VGG
and/or squared L2 between pooled ConvNeXt-V2 features, each zeroed where t >= its threshold, adaptively
weighted and scaled. The feature networks are frozen, in eval mode, and held outside any nn.Module, so they
never reach the generator's parameters, optimiser, EMA or checkpoints. Samples at or above a term's
threshold are not passed through that term's network at all (their term is exactly 0 either way).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import PMFError
from ..extras import needs
from ..objective import adaptive_weight
from . import weights as W
from .config import PerceptualConfig
from .crop import crop_resize, sample_crop_boxes
from .lpips_vgg import LPIPSVGG, lpips_state_dict

TERMS = ("lpips", "convnext")


class ConvNeXtFeatures(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> [B, D]: the timm ConvNeXt trunk, global average pool and the head's
    LayerNorm (the classifier's pre-logits; the final linear layer is unused).

    Like the release, the crops go in as they are: raw [-1, 1] values, no ImageNet mean/std, no resize
    (the release feeds its 224 px crops straight to ConvNeXt-V2-Base)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _freeze(net: nn.Module | None, device) -> nn.Module | None:
    return None if net is None else net.to(device).eval().requires_grad_(False)


class PerceptualLoss:
    """Callable for ``pmf_loss(..., perceptual=...)``. Crop boxes come from ``self.generator`` (a CPU
    generator, so crops do not depend on the device); reseed it per (step, rank) with ``manual_seed``."""

    def __init__(self, config: PerceptualConfig, lpips: LPIPSVGG | None, convnext: ConvNeXtFeatures | None,
                 sources: dict[str, str] | None = None, seed: int = 0) -> None:
        self.config = config
        self.lpips, self.convnext = lpips, convnext
        self.sources = sources or {}
        self.generator = torch.Generator().manual_seed(seed)

    def manual_seed(self, seed: int) -> PerceptualLoss:
        self.generator.manual_seed(seed)
        return self

    def describe(self) -> str:
        """One line for the run log: which terms are on and where their weights came from."""
        lambdas = {"lpips": self.config.lpips_lambda, "convnext": self.config.convnext_lambda}
        parts = [f"{name} (lambda {lambdas[name]}, zeroed for t >= {self.config.threshold(name)}) "
                 f"from {self.sources.get(name, '?')}" for name in self._terms()]
        return f"perceptual: {'; '.join(parts)}"

    def _terms(self) -> list[str]:
        return [name for name in TERMS if getattr(self, name) is not None]

    def _match(self, x: torch.Tensor) -> None:
        """Keep the frozen networks on the images' device and dtype (a bf16 model gets bf16 features)."""
        for net in (self.lpips, self.convnext):
            if net is not None:
                p = next(net.parameters())
                if p.device != x.device or p.dtype != x.dtype:
                    net.to(device=x.device, dtype=x.dtype)

    def distance(self, term: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Raw distance [n] of one term between cropped images a (with grad) and b (target), [n, 3, S, S]."""
        if term == "lpips":
            with torch.no_grad():
                fb = self.lpips.taps(b)
            return self.lpips.distance(self.lpips.taps(a), fb).float()
        with torch.no_grad():
            gb = self.convnext(b)
        return (self.convnext(a) - gb).float().pow(2).sum(dim=1)

    def distances(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample raw distances [n] of every enabled term (no thresholds applied)."""
        return {name: self.distance(name, a, b) for name in self._terms()}

    def draw_boxes(self, batch: int, height: int, width: int, generator: torch.Generator | None = None):
        """The crop boxes (top, left, h, w) [batch, 4] of the next call, from ``generator`` or ``self.generator``."""
        return sample_crop_boxes(batch, height, width, scale=self.config.crop_scale,
                                 generator=generator if generator is not None else self.generator)

    def __call__(self, x_pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, *,
                 generator: torch.Generator | None = None,
                 boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """x_pred, x [B, C, H, W] in [-1, 1] (C = 1 or 3), t [B] -> (weighted term [B], logs of raw means).
        ``boxes`` [B, 4]: crop boxes drawn beforehand (``draw_boxes``: a batch cut into micro-batches)."""
        cfg = self.config
        B, C = x_pred.shape[:2]
        if C not in (1, 3):
            raise PMFError(f"perceptual losses need 1 or 3 image channels, got {C}")
        if boxes is None:
            boxes = self.draw_boxes(B, x_pred.shape[2], x_pred.shape[3], generator)  # (B, 4)
        terms = self._terms()
        t = t.reshape(B)
        raw = {name: x_pred.new_zeros(B, dtype=torch.float32) for name in terms}
        below = {name: t < cfg.threshold(name) for name in terms}  # (B,) each
        keep = torch.stack(list(below.values())).any(dim=0).nonzero()[:, 0] if terms else t.new_zeros(0).long()
        if keep.numel() > 0:
            self._match(x_pred)
            kb = boxes[keep.cpu()]
            a = crop_resize(x_pred[keep], kb, cfg.crop_size)  # (n, C, S, S)
            b = crop_resize(x[keep].detach().to(x_pred.dtype), kb, cfg.crop_size)  # (n, C, S, S)
            if C == 1:
                a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
            for name in terms:
                sub = below[name][keep].nonzero()[:, 0]  # rows of the crops whose t is below this term's threshold
                if sub.numel() == 0:
                    continue
                d = self.distance(name, a, b) if sub.numel() == keep.numel() else self.distance(name, a[sub], b[sub])
                raw[name] = raw[name].index_copy(0, keep[sub], d)  # (B,), zero where t >= threshold
        term = x_pred.new_zeros(B, dtype=torch.float32)
        lambdas = {"lpips": cfg.lpips_lambda, "convnext": cfg.convnext_lambda}
        for name, value in raw.items():
            term = term + lambdas[name] * adaptive_weight(value, cfg.norm_p, cfg.norm_eps)
        logs = {f"loss_{name}": value.mean().detach() for name, value in raw.items()}
        return term, logs


def _random_lpips() -> LPIPSVGG:
    net = LPIPSVGG()
    with torch.no_grad():
        for lin in net.lins:
            lin.uniform_(0.0, 1.0)  # calibrated lins are non-negative; zeros would hide every difference
    return net


def _timm_convnext(name: str) -> nn.Module:
    with needs("perceptual", "the ConvNeXt perceptual loss needs timm"):
        import timm
    return timm.create_model(name, pretrained=False)


def _load(net: nn.Module, sd: dict, path, what: str) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise PMFError(f"{path} does not hold {what} weights: {str(err).splitlines()[0]}") from err


def build_perceptual(config: PerceptualConfig | dict | None, device=None, *, random_init: bool = False,
                     seed: int = 0) -> PerceptualLoss | None:
    """The perceptual callable for ``pmf_loss``, or None when both terms are off.

    Loads the pretrained weights (see ``pmf.perceptual.weights`` for the search order) and raises ONE
    ``PMFError`` naming every missing file. ``random_init=True`` skips loading and warns: for tests and
    timing only, never for training."""
    if config is None:
        return None
    if isinstance(config, dict):
        config = PerceptualConfig.from_dict(config)
    if not config.enabled:
        return None
    device = torch.device(device) if device is not None else torch.device("cpu")
    if random_init:
        warnings.warn("perceptual networks use RANDOM weights (random_init=True): fine for tests and timing, "
                      "meaningless for training", stacklevel=2)
        lpips_net = _random_lpips() if config.lpips else None
        convnext_net = ConvNeXtFeatures(_timm_convnext(config.convnext_model)) if config.convnext else None
        return PerceptualLoss(config, _freeze(lpips_net, device), _freeze(convnext_net, device),
                              {"lpips": "random init", "convnext": "random init"}, seed)

    # Find every file before building anything, so a missing one fails fast and all are named at once.
    missing, files = [], {}
    if config.lpips:
        files["lpips"], miss = W.resolve_vgg16(config.lpips_weights, config.download)
        missing += [miss] if miss else []
    if config.convnext:
        files["convnext"], miss = W.resolve_convnext(config.convnext_weights, config.convnext_model, config.download)
        missing += [miss] if miss else []
    lpips_sd = None
    if files.get("lpips") is not None:
        lpips_sd, has_lins = lpips_state_dict(W.load_file(files["lpips"]))
        if not has_lins:
            lin_file = W.lpips_lin_file()
            if lin_file is None:
                missing.append(W.MissingWeights(
                    "LPIPS linear layers", "weights/v0.1/vgg.pth of the lpips package",
                    "pip install 'pixel-meanflow[perceptual]' (the lpips wheel ships it), or give a full "
                    "lpips.LPIPS(net='vgg') state dict as lpips_weights"))
            else:
                lpips_sd.update(lpips_state_dict(W.load_file(lin_file))[0])
    if missing:
        raise PMFError(W.missing_message(missing))

    lpips_net = convnext_net = None
    if config.lpips:
        lpips_net = LPIPSVGG()
        _load(lpips_net, lpips_sd, files["lpips"], "VGG16 / LPIPS")
    if config.convnext:
        convnext_net = ConvNeXtFeatures(_timm_convnext(config.convnext_model))
        from timm.models.convnext import checkpoint_filter_fn

        sd = checkpoint_filter_fn(W.load_file(files["convnext"]), convnext_net.net)
        _load(convnext_net.net, sd, files["convnext"], config.convnext_model)
    sources = {name: str(path) for name, path in files.items()}
    return PerceptualLoss(config, _freeze(lpips_net, device), _freeze(convnext_net, device), sources, seed)
