"""Starting a new run from trained weights (``pmf train --init``): pure functions that adapt one state dict
(our key names) to another model config, and ``init_weights``, the one call the trainer makes.

What can change between the source and the new model: the class table (count and names), the image size
(same patch size: the learned position embedding is resampled, RoPE is rebuilt for the grid by the model),
the channels (1 <-> 3) and a missing v-head. Everything else (patch size, width, depth, heads, tokens) must
match; ``check_architecture`` names what differs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ema_choice import RAW
from ..errors import PMFError
from ..model_configs import PRESETS, ModelConfig
from ..vocabulary import V_HEAD_INITS

# fields that fix the shape of every weight except the class table, the patch kernels and pos_embed
ARCH_FIELDS = ("patch_size", "hidden_size", "depth", "num_heads", "aux_head_depth", "mlp_hidden", "bottleneck",
               "class_tokens", "omega_tokens", "interval_tokens", "time_tokens")
TABLE = "y_embedder.embedding_table.weight"


def check_architecture(source: ModelConfig, target: ModelConfig, what: str = "--init") -> None:
    """Refuse in one line naming every field that differs where weights cannot be carried over."""
    diff = [f"{k} {getattr(source, k)} vs {getattr(target, k)}" for k in ARCH_FIELDS
            if getattr(source, k) != getattr(target, k)]
    if diff:
        raise PMFError(f"{what} checkpoint has another architecture than the run ({'; '.join(diff)}; checkpoint "
                       "vs run): only classes, image size (same patch size) and channels may differ")


def resample_pos_embed(pos: torch.Tensor, num_prefix: int, new_grid: int) -> torch.Tensor:
    """pos [1, P + g*g, D] -> [1, P + G*G, D]: the P prefix rows kept, the patch rows resampled as a g x g image
    with antialiased bicubic interpolation (the convention of timm's ``resample_abs_pos_embed``)."""
    prefix, grid_rows = pos[:, :num_prefix], pos[:, num_prefix:]
    old = math.isqrt(grid_rows.shape[1])
    if old * old != grid_rows.shape[1]:
        raise PMFError(f"position embedding has {grid_rows.shape[1]} patch rows, not a square grid")
    if old == new_grid:
        return pos.clone()
    D = pos.shape[-1]
    img = grid_rows.reshape(1, old, old, D).permute(0, 3, 1, 2).float()  # (1, D, g, g)
    img = F.interpolate(img, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
    rows = img.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D).to(pos.dtype)  # (1, G*G, D)
    return torch.cat([prefix, rows], dim=1)


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A patch kernel [O, C, k, k] for ``channels`` inputs (timm's ``adapt_input_conv`` convention): to one
    channel, the sum over the input channels (a gray image gives what its RGB copy gave); from one channel to C,
    C copies scaled by 1/C (an RGB copy of a gray image gives what the gray image gave)."""
    c = weight.shape[1]
    if c == channels:
        return weight.clone()
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if c == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    raise PMFError(f"cannot adapt a {c}-channel patch embedding to {channels} channels (only to or from 1)")


def adapt_output_rows(t: torch.Tensor, old_c: int, new_c: int) -> torch.Tensor:
    """A final layer's weight [p*p*C, D] or bias [p*p*C] (rows (p_row, p_col, C), channel fastest) for
    ``new_c`` channels: to one channel the mean over channels, from one channel a copy per channel."""
    if old_c == new_c:
        return t.clone()
    rows = t.reshape(-1, old_c, *t.shape[1:])  # (p*p, C, ...)
    if new_c == 1:
        rows = rows.mean(dim=1, keepdim=True)
    elif old_c == 1:
        rows = rows.expand(-1, new_c, *t.shape[1:])
    else:
        raise PMFError(f"cannot adapt a {old_c}-channel output layer to {new_c} channels (only to or from 1)")
    return rows.reshape(-1, *t.shape[1:]).clone()


def _index(key: str, names: list[str] | None, count: int, side: str) -> int:
    if names and key in names:
        return names.index(key)
    if key.isdigit() and int(key) < count:
        return int(key)
    known = f"; its classes: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}" if names else ""
    raise PMFError(f"--class-map: {key!r} is not a class of the {side} (a name or a number below {count}){known}")


def class_rows(src_names: list[str] | None, dst_names: list[str] | None, src_count: int, dst_count: int,
               class_map: dict[str, str] | None = None) -> tuple[dict[int, int], str]:
    """Which source row each new class row starts from ({new: source}; the rest start fresh), and one line
    saying so: an explicit map, else the names both sides share, else the table kept when the counts agree."""
    if class_map:
        pairs = {_index(new, dst_names, dst_count, "run's data"): _index(old, src_names, src_count, "checkpoint")
                 for new, old in class_map.items()}
        how = "--class-map"
    else:
        shared = set(src_names or ()) & set(dst_names or ())
        if shared and not (src_names == dst_names):
            pairs = {dst_names.index(n): src_names.index(n) for n in shared}
            how = "matching names"
        elif src_count == dst_count:
            return {i: i for i in range(dst_count)}, f"class table kept ({dst_count} classes)"
        else:
            pairs, how = {}, ""
    fresh = dst_count - len(pairs)
    kept = f"{len(pairs)} rows kept by {how}, " if pairs else ""
    return pairs, (f"class table {src_count} -> {dst_count} classes: {kept}{fresh} rows fresh, null row kept")


def adapt_class_table(src: torch.Tensor, fresh: torch.Tensor, pairs: dict[int, int]) -> torch.Tensor:
    """The new table [K + 1, D]: the fresh model's rows, source rows where ``pairs`` maps them, and the
    source's null (unconditional) row last."""
    out = fresh.clone()
    for new, old in pairs.items():
        out[new] = src[old]
    out[-1] = src[-1]
    return out


def add_v_head(state: dict, fresh: dict, how: str) -> tuple[dict, str]:
    """Fill a missing v-head: ``copy`` the u-head's blocks and final layer, or keep the ``fresh`` model's."""
    if how not in V_HEAD_INITS:
        raise PMFError(f"init_v_head must be one of {V_HEAD_INITS}, got {how!r}")
    out = dict(state)
    for key in fresh:
        if key.startswith(("v_heads.", "v_final_layer.")) and key not in state:
            source = "u" + key[1:]
            out[key] = state[source].clone() if how == "copy" else fresh[key]
    return out, f"v-head missing: {'copied from the u-head' if how == 'copy' else 'fresh'}"


def adapt_state_dict(state: dict, source: ModelConfig, fresh: dict, target: ModelConfig, *,
                     src_names=None, dst_names=None, class_map=None, v_head: str = "copy") -> tuple[dict, list[str]]:
    """``state`` (weights of a ``source`` model) made to fit ``target``, whose freshly initialised weights are
    ``fresh``; returns the new state dict and one note per change."""
    check_architecture(source, target)
    out, notes = dict(state), []
    if source.in_channels != target.in_channels:
        c0, c1 = source.in_channels, target.in_channels
        out["x_embedder.proj1.weight"] = adapt_input_conv(out["x_embedder.proj1.weight"], c1)
        for key in [k for k in out if k.startswith(("u_final_layer.linear.", "v_final_layer.linear."))]:
            out[key] = adapt_output_rows(out[key], c0, c1)
        notes.append(f"channels {c0} -> {c1}: patch kernel {'summed' if c1 == 1 else 'repeated'}")
    if source.grid_size != target.grid_size:
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], target.num_prefix_tokens, target.grid_size)
        notes.append(f"image size {source.input_size} -> {target.input_size}: position embedding resampled "
                     f"({source.grid_size}x{source.grid_size} -> {target.grid_size}x{target.grid_size} patches)")
    pairs, note = class_rows(src_names, dst_names, source.num_classes, target.num_classes, class_map)
    out[TABLE] = adapt_class_table(out[TABLE], fresh[TABLE], pairs)
    notes.append(note)
    if target.v_head and not source.v_head:
        out, note = add_v_head(out, fresh, v_head)
        notes.append(note)
    if not target.v_head:
        out = {k: v for k, v in out.items() if not k.startswith(("v_heads.", "v_final_layer."))}
    return out, notes


def init_source(spec: str, ema: str | None):
    """``pmf.load_checkpoint`` of ``spec``, where a run folder (or its checkpoints/) means its newest checkpoint."""
    from pathlib import Path

    from ..checkpoints.load import load_checkpoint, run_checkpoint
    from ..checkpoints.sharded import is_sharded_checkpoint

    path = Path(str(spec)).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):
        spec = str(run_checkpoint(path))
    return load_checkpoint(spec, ema=ema)


def init_architecture(config: ModelConfig, arch: str | None) -> tuple[str, dict]:
    """(preset, overrides) that rebuild ``config`` with a v-head: ``arch`` when given (checked against the
    checkpoint), else the preset closest in architecture."""
    from ..model_configs import model_config

    if arch is not None:
        check_architecture(config, model_config(arch), "the --init")
    else:
        arch = max(PRESETS, key=lambda n: sum(PRESETS[n].get(k) == getattr(config, k) for k in PRESETS[n]))
    base = model_config(arch).to_dict()
    want = {**config.to_dict(), "v_head": True}
    return arch, {k: v for k, v in want.items() if base[k] != v}


def init_weights(model: torch.nn.Module, cfg, class_names: list[str] | None) -> str:
    """Load ``cfg.init`` (anything ``pmf.load_checkpoint`` reads; EMA ``cfg.init_ema``) into the freshly built
    ``model``, adapted to its config; sets ``cfg.init_ema`` to the weights used; returns one line."""
    loaded = init_source(cfg.init, cfg.init_ema)
    source = loaded.model.config
    src_names = loaded.class_names
    if src_names is None and source.num_classes == 1000:
        src_names = loaded.meta.class_names  # ImageNet models: their 1,000 names, as resolved on loading
    state, notes = adapt_state_dict(loaded.model.state_dict(), source, model.state_dict(), model.config,
                                    src_names=src_names, dst_names=class_names, class_map=cfg.class_map,
                                    v_head=cfg.init_v_head)
    model.load_state_dict(state, strict=True)
    cfg.init_ema = loaded.ema
    weights = f"EMA {loaded.ema}" if loaded.ema not in (None, RAW) else \
        ("raw weights" if loaded.ema == RAW else "its weights")
    return f"init: {cfg.init} ({weights}); " + "; ".join(notes)
