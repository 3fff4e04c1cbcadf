"""The released PyTorch state-dict format: key mapping, strict loading, export, and config inference."""

from __future__ import annotations

import re

import torch

from ..errors import CheckpointError
from ..model_configs import PRESETS, ModelConfig
from .attention import rope_angles
from .model import PMFDiT

# Release keys put every linear layer under `._flax_linear` and the label table under `._flax_embedding`.
_LINEAR = re.compile(r"\.(mlp\.[02]|[qkv]_proj|out_proj|w[123]|linear)\.(weight|bias)$")
_EMBED = "y_embedder.embedding_table.weight"
ROPE_KEY = "rope_freqs"


def to_release_key(key: str) -> str:
    if key == _EMBED:
        return "y_embedder.embedding_table._flax_embedding.weight"
    m = _LINEAR.search(key)
    if m:
        return key[: m.start()] + f".{m.group(1)}._flax_linear.{m.group(2)}"
    return key


def from_release_key(key: str) -> str:
    return key.replace("._flax_linear.", ".").replace("._flax_embedding.", ".")


def release_rope_freqs(config: ModelConfig) -> torch.Tensor:
    """The release's complex64 ``rope_freqs`` buffer [num_patches, head_dim/2] = exp(i * angle)."""
    angles = rope_angles(config.grid_size, config.head_dim)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def release_state_dict(model: PMFDiT, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our model's weights in the release format (official key names, complex ``rope_freqs`` buffer).
    ``prefix="net."`` gives the layout of the official ``pixelMeanFlow`` wrapper checkpoints."""
    out = {prefix + to_release_key(k): v.detach().clone() for k, v in model.state_dict().items()}
    out[prefix + ROPE_KEY] = release_rope_freqs(model.config)
    return out


def strip_prefix(state_dict: dict) -> dict:
    """Drop a common ``net.``/``module.``/``_orig_mod.`` prefix (wrapper, DDP and compile checkpoints)."""
    out = dict(state_dict)
    for prefix in ("module.", "_orig_mod.", "net."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def infer_config(state_dict: dict, **fixed) -> ModelConfig:
    """Guess the ModelConfig of a release-format (or our-format) state dict from its shapes."""
    sd = {from_release_key(k): v for k, v in strip_prefix(state_dict).items()}
    try:
        conv = sd["x_embedder.proj1.weight"]
        bottleneck, in_ch, patch = conv.shape[0], conv.shape[1], conv.shape[2]
        D = sd["pos_embed"].shape[-1]
        counts = {g: sd[f"{g}_tokens"].shape[1] for g in ("class", "omega", "t_min", "time")}
        seq = sd["pos_embed"].shape[1]
        prefix_len = counts["class"] + counts["omega"] + 2 * counts["t_min"] + counts["time"]
        grid = round((seq - prefix_len) ** 0.5)

        def depth_of(group: str) -> int:
            idx = {int(k.split(".")[1]) for k in sd if k.startswith(group + ".")}
            return max(idx) + 1 if idx else 0

        shared, aux = depth_of("shared_blocks"), depth_of("u_heads")
        head_dim = sd["shared_blocks.0.attn.q_norm.weight"].shape[0] if shared else \
            sd["u_heads.0.attn.q_norm.weight"].shape[0]
        mlp_hidden = sd["u_heads.0.mlp.w1.weight"].shape[0]
        fields = dict(
            input_size=grid * patch, patch_size=patch, in_channels=in_ch, hidden_size=D, depth=shared + aux,
            num_heads=D // head_dim, aux_head_depth=aux,
            num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
            bottleneck_dim=bottleneck, v_head=depth_of("v_heads") > 0, class_tokens=counts["class"],
            omega_tokens=counts["omega"], interval_tokens=counts["t_min"], time_tokens=counts["time"],
            mlp_ratio=mlp_hidden / D,
        )
    except (KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(f"cannot infer the architecture: the state dict lacks {err}; "
                              "name the architecture explicitly") from None
    for name, preset in PRESETS.items():  # prefer a preset's exact ratio and noise scale where it fits
        keys = ("input_size", "patch_size", "hidden_size", "depth", "num_heads", "aux_head_depth")
        if all(preset[k] == fields[k] for k in keys):
            fields["mlp_ratio"] = ModelConfig().mlp_ratio
            fields["noise_scale"] = preset["noise_scale"]
            fields.setdefault("arch", name)
    fields.pop("arch", None)
    if ModelConfig(**{**fields, "mlp_ratio": ModelConfig().mlp_ratio}).mlp_hidden == mlp_hidden:
        fields["mlp_ratio"] = ModelConfig().mlp_ratio
    if bottleneck == ModelConfig(hidden_size=D, num_heads=1).bottleneck:
        fields["bottleneck_dim"] = None  # the default rule gives the same width
    fields.update(fixed)
    return ModelConfig(**fields)


def suggest_preset(state_dict: dict) -> str:
    """A human hint naming the preset (or the overrides) that fit a state dict."""
    try:
        cfg = infer_config(state_dict)
    except CheckpointError:
        return "the file does not look like a pmfDiT state dict"
    for name, preset in PRESETS.items():
        if all(getattr(cfg, k) == v for k, v in preset.items() if k != "noise_scale"):
            return f"it fits preset {name!r}" + ("" if cfg.v_head else " with v_head=False")
    return (f"it fits build_model(<preset>, input_size={cfg.input_size}, patch_size={cfg.patch_size}, "
            f"in_channels={cfg.in_channels}, hidden_size={cfg.hidden_size}, depth={cfg.depth}, "
            f"num_heads={cfg.num_heads}, "
            f"aux_head_depth={cfg.aux_head_depth}, num_classes={cfg.num_classes}, v_head={cfg.v_head})")


def _fmt(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")


def load_release_state_dict(model: PMFDiT, state_dict: dict) -> PMFDiT:
    """Strictly load a release-format state dict (optional ``net.`` prefix, with or without v-head, with or
    without ``rope_freqs``) into ``model``. Raises CheckpointError listing any key or shape that does not fit."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError("expected a state dict mapping parameter names to tensors")
    sd = {from_release_key(k): v for k, v in strip_prefix(state_dict).items()}
    rope = sd.pop(ROPE_KEY, None)
    own = model.state_dict()
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    bad_shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in set(own) & set(sd) if sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(unexpected)}")
    if bad_shapes:
        problems.append("shape mismatches: " + "; ".join(sorted(bad_shapes)[:8]))
    if rope is not None and not problems:
        expected = release_rope_freqs(model.config)
        if rope.shape != expected.shape or not torch.allclose(rope.to(expected.dtype), expected, atol=1e-4):
            problems.append(f"rope_freqs {tuple(rope.shape)} does not match a {model.config.grid_size}x"
                            f"{model.config.grid_size} grid with head_dim {model.config.head_dim}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + " | ".join(problems)
                              + f". Hint: {suggest_preset(state_dict)}.")
    model.load_state_dict(sd, strict=True)
    return model


def model_from_release(state_dict: dict, **fixed) -> PMFDiT:
    """Build a model whose architecture is inferred from the state dict, and load it."""
    return load_release_state_dict(PMFDiT(infer_config(state_dict, **fixed)), state_dict)
