"""pmfDiT: the pMF transformer (spec section 5). It maps (z, h, omega, t_min, t_max, y) to image-space
``Predictions`` (x_u, x_v and, with tangents, dx_u); it knows nothing of time sampling, guidance targets or
losses."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from ..errors import PMFError
from ..model_configs import ModelConfig, model_config
from ..sampling_setting import check_guidance
from .attention import check_layout
from .layers import Block, FinalLayer, LabelEmbedder, PatchEmbed, ScalarEmbedder


def as_batch(value, batch: int, device: torch.device, name: str, dtype=torch.float32) -> torch.Tensor:
    """A python number, a 0-d tensor or a [B] tensor as a [B] tensor; names ``name`` on a bad shape."""
    t = torch.as_tensor(value, device=device)
    t = t.to(dtype) if not t.is_floating_point() and dtype.is_floating_point else t
    t = t.expand(batch) if t.dim() == 0 else t
    if t.shape != (batch,):
        raise PMFError(f"{name} must be a scalar or have shape [{batch}], got shape {list(t.shape)}")
    return t


def tracing() -> bool:
    """Whether the running call is being compiled, traced or exported (``torch.compile``, ``torch.export``,
    ``torch.jit.trace``, ``torch.onnx.export``): a graph, where data-dependent checks have no place."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


class Predictions(NamedTuple):
    """What ``PMFDiT.forward`` returns, whatever it was asked: image-space predictions (B, C, H, W). ``x_u`` is
    None when ``heads == "v"``; ``x_v`` None without a v-head or when ``heads == "u"``; ``dx_u``, the tangent of
    x_u (no graph), None unless ``tangents`` were given."""

    x_u: torch.Tensor | None
    x_v: torch.Tensor | None
    dx_u: torch.Tensor | None = None


class PMFDiT(nn.Module):
    """The released pmfDiT architecture with a u-head and an optional auxiliary v-head.

    ``attention_layout``: "heads" (default) or "tokens", the ONNX export's (``pmf.nn.attention``); the same
    numbers. ``check_values``: check the labels and the guidance values of every call, one PMFError line for a
    bad one (default). They cost a host sync per call, so training on a GPU builds its network without them;
    they are skipped anyway while compiling, tracing or exporting. Shapes are always checked. With
    ``activation_checkpointing`` each transformer block recomputes itself in the backward pass (``Block``). All
    are fixed at construction (``options``; ``with_options`` builds a copy with others)."""

    def __init__(self, config: ModelConfig, *, attention_layout: str = "heads", check_values: bool = True,
                 activation_checkpointing: bool = False):
        super().__init__()
        self.config = c = config
        self._options = dict(attention_layout=check_layout(attention_layout), check_values=bool(check_values),
                             activation_checkpointing=bool(activation_checkpointing))
        D, T = c.hidden_size, c.num_patches
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.bottleneck, D)
        self.h_embedder = ScalarEmbedder(D)
        self.omega_embedder = ScalarEmbedder(D)
        self.cfg_t_start_embedder = ScalarEmbedder(D)
        self.cfg_t_end_embedder = ScalarEmbedder(D)
        self.y_embedder = LabelEmbedder(c.num_classes, D)
        self.class_tokens = nn.Parameter(torch.zeros(1, c.class_tokens, D))
        self.omega_tokens = nn.Parameter(torch.zeros(1, c.omega_tokens, D))
        self.t_min_tokens = nn.Parameter(torch.zeros(1, c.interval_tokens, D))
        self.t_max_tokens = nn.Parameter(torch.zeros(1, c.interval_tokens, D))
        self.time_tokens = nn.Parameter(torch.zeros(1, c.time_tokens, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_prefix_tokens + T, D))

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(Block(D, c.num_heads, c.mlp_hidden, T, c.grid_size, attention_layout,
                                       checkpointing=activation_checkpointing) for _ in range(n))

        out_dim = c.patch_size**2 * c.in_channels
        self.shared_blocks = blocks(c.shared_depth)
        self.u_heads = blocks(c.aux_head_depth)
        self.u_final_layer = FinalLayer(D, out_dim)
        if c.v_head:
            self.v_heads = blocks(c.aux_head_depth)
            self.v_final_layer = FinalLayer(D, out_dim)
        self.reset_parameters()

    # The Hugging Face Hub format (pmf.checkpoints.hub), with PyTorchModelHubMixin's method names; huggingface_hub is
    # needed only for hub repos.
    def save_pretrained(self, save_directory, **kwargs):
        """config.json, model.safetensors (u-head weights) and a README.md model card in ``save_directory``
        (``pmf.checkpoints.hub.save_pretrained``'s keywords: setting, class_names, preset, fid, license)."""
        from ..checkpoints.hub import save_pretrained

        return save_pretrained(u_head_only(self) if self.config.v_head else self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, device=None, **kwargs) -> PMFDiT:
        """The network (eval mode) of a ``save_pretrained`` folder or hub repo ``OWNER/REPO``; it carries the
        folder's ``sampling_setting`` and ``class_names``."""
        from ..checkpoints.hub import read_pretrained

        return read_pretrained(pretrained_model_name_or_path, **kwargs).build(cls, device)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """``save_pretrained`` to the hub repo ``repo_id`` (network and write token needed)."""
        from ..checkpoints.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The release's initialisation (spec section 5): linear weights N(0, 0.32^2 / fan_in), except the
        four scalar embedders' MLPs, N(0, 1 / fan_in); the two patch convolutions Xavier-uniform over the
        kernel flattened to [out, in * kh * kw]; class table and prefix tokens N(0, 1/D); ``pos_embed``
        N(0, 0.02^2); biases, gates and the final layers 0; norm scales 1 (their constructor's)."""
        D = self.config.hidden_size
        embedder_linears = {id(m) for e in (self.h_embedder, self.omega_embedder, self.cfg_t_start_embedder,
                                            self.cfg_t_end_embedder) for m in e.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_in = m.weight.shape[1]
                gain = 1.0 if id(m) in embedder_linears else 0.32
                nn.init.normal_(m.weight, std=gain / fan_in**0.5)
            elif isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=D**-0.5)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for p in (self.class_tokens, self.omega_tokens, self.t_min_tokens, self.t_max_tokens, self.time_tokens):
            nn.init.normal_(p, std=D**-0.5)
        nn.init.normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, Block):
                nn.init.zeros_(m.attn_scale)
                nn.init.zeros_(m.mlp_scale)
            elif isinstance(m, FinalLayer):
                nn.init.zeros_(m.linear.weight)

    @property
    def has_v_head(self) -> bool:
        return self.config.v_head

    @property
    def options(self) -> dict:
        """The construction options (the keyword arguments of ``__init__``), read-only."""
        return dict(self._options)

    @property
    def check_values(self) -> bool:
        return self._options["check_values"]

    def check_inputs(self, z, h, omega, t_min, t_max, y) -> None:
        """Raise a PMFError naming the first bad input: shapes always; values when built with ``check_values``
        and not compiling, tracing or exporting."""
        c = self.config
        if z.dim() != 4 or z.shape[1:] != (c.in_channels, c.input_size, c.input_size):
            raise PMFError(f"expected images of shape [B, {c.in_channels}, {c.input_size}, {c.input_size}], "
                           f"got {list(z.shape)}")
        if not self.check_values or tracing():
            return
        if y.dtype.is_floating_point:
            raise PMFError(f"labels must be integers, got dtype {y.dtype}")
        if bool(((y < 0) | (y > c.num_classes)).any()):
            bad = y[(y < 0) | (y > c.num_classes)][0].item()
            raise PMFError(f"label {bad} out of range [0, {c.num_classes}] ({c.num_classes} is the null label)")
        check_guidance(omega, t_min, t_max)

    def embed(self, z, h, omega, t_min, t_max, y) -> torch.Tensor:
        """Token sequence [class, omega, t_min, t_max, time, patches] + pos_embed: (B, 20 + T, D)."""
        B = z.shape[0]
        tokens = [
            self.class_tokens + self.y_embedder(y)[:, None],  # (B, 8, D)
            self.omega_tokens + self.omega_embedder(1.0 - 1.0 / omega)[:, None],  # (B, 4, D)
            self.t_min_tokens + self.cfg_t_start_embedder(t_min)[:, None],  # (B, 2, D)
            self.t_max_tokens + self.cfg_t_end_embedder(t_max)[:, None],  # (B, 2, D)
            self.time_tokens + self.h_embedder(h)[:, None],  # (B, 4, D)
            self.x_embedder(z),  # (B, T, D)
        ]
        tokens = [t.expand(B, -1, -1) for t in tokens]
        return torch.cat(tokens, dim=1) + self.pos_embed  # (B, 20 + T, D)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) with (p_row, p_col, C) per token, channel fastest -> (B, C, H, W)."""
        c = self.config
        B, g, p = tokens.shape[0], c.grid_size, c.patch_size
        x = tokens.reshape(B, g, g, p, p, c.in_channels)  # (B, gh, gw, p, p, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(B, c.in_channels, g * p, g * p)

    def run_head(self, x: torch.Tensor, head: str) -> torch.Tensor:
        """Run the ``"u"`` or ``"v"`` head on the shared-trunk output x (B, S, D); returns (B, C, H, W)."""
        blocks, final = (self.u_heads, self.u_final_layer) if head == "u" else (self.v_heads, self.v_final_layer)
        n = self.config.num_patches
        for block, tail in self._with_tails(blocks):
            x = block(x, tail=tail)
        return self.unpatchify(final(x[:, -n:]))

    def _with_tails(self, blocks: nn.ModuleList):
        """(block, tail) of a head's blocks: the last computes the patch rows only (the final layer reads
        nothing else), the others every row."""
        last = len(blocks) - 1
        return ((block, self.config.num_patches if i == last else None) for i, block in enumerate(blocks))

    def _batched_inputs(self, z, h, omega, t_min, t_max, y) -> tuple:
        B = z.shape[0]
        h, omega, t_min, t_max = (as_batch(v, B, z.device, n) for v, n in
                                  ((h, "h"), (omega, "omega"), (t_min, "t_min"), (t_max, "t_max")))
        y = as_batch(y, B, z.device, "y", dtype=torch.long)
        self.check_inputs(z, h, omega, t_min, t_max, y)
        return z, h, omega, t_min, t_max, y

    def trunk(self, z, h, omega, t_min, t_max, y) -> torch.Tensor:
        """Validated embedding and the shared blocks: (B, 20 + T, D)."""
        x = self.embed(*self._batched_inputs(z, h, omega, t_min, t_max, y))
        for block in self.shared_blocks:
            x = block(x)
        return x

    def forward_with_tangent(self, z, h, omega, t_min, t_max, y, dz, dh, heads: str = "uv") -> Predictions:
        """``Predictions`` (x_u, x_v, dx_u): those of ``forward`` (with autograd as enabled) and the tangent of
        x_u along (dz [B, C, H, W], dh [B]) (no graph), propagated block by block next to the primal, so
        that one pass yields both; only the u-head carries a tangent."""
        if "u" not in heads:
            raise PMFError("the tangent is that of the u-head: heads must include 'u'")
        z, h, omega, t_min, t_max, y = self._batched_inputs(z, h, omega, t_min, t_max, y)
        x = self.embed(z, h, omega, t_min, t_max, y)  # (B, S, D)
        c, B = self.config, z.shape[0]
        with torch.no_grad():
            d_time = self.h_embedder.tangent(h, as_batch(dh, B, z.device, "dh"))  # (B, D)
            d_patch = self.x_embedder.tangent(dz)  # (B, T, D)
            d_prefix = d_patch.new_zeros(B, c.num_prefix_tokens - c.time_tokens, d_patch.shape[-1])
            dx = torch.cat([d_prefix, d_time[:, None].to(d_patch.dtype).expand(-1, c.time_tokens, -1), d_patch], 1)
        for block in self.shared_blocks:
            x, dx = block.jvp(x, dx)
        trunk = x
        n = c.num_patches
        x = head_input(trunk)
        for block, tail in self._with_tails(self.u_heads):
            x, dx = block.jvp(x, dx, tail=tail)
        x_u, dx_u = self.u_final_layer.jvp(x[:, -n:], dx[:, -n:])
        x_v = self.run_head(head_input(trunk), "v") if "v" in heads and self.has_v_head else None
        return Predictions(self.unpatchify(x_u), x_v, self.unpatchify(dx_u))

    def forward(self, z, h, omega, t_min, t_max, y, heads: str = "uv", tangents=None) -> Predictions:
        """Image-space ``Predictions`` (x_u, x_v, dx_u), each (B, C, H, W) or None (see ``Predictions``). With
        ``tangents=(dz, dh)`` they are ``forward_with_tangent``'s, dx_u included (routed through ``forward``
        so that wrappers such as DDP see one ordinary call); without, dx_u is None."""
        if tangents is not None:
            return self.forward_with_tangent(z, h, omega, t_min, t_max, y, *tangents, heads=heads)
        x = self.trunk(z, h, omega, t_min, t_max, y)
        x_u = self.run_head(head_input(x), "u") if "u" in heads else None
        x_v = self.run_head(head_input(x), "v") if "v" in heads and self.has_v_head else None
        if heads == "v" and not self.has_v_head:
            raise PMFError("this model has no v-head (built with v_head=False)")
        return Predictions(x_u, x_v)


def head_input(trunk: torch.Tensor) -> torch.Tensor:
    """The trunk output as one head's input: an alias with its own backward node when it records gradients.
    The gradient of the trunk is then the u-head's total plus the v-head's total, a sum of two terms whose
    order cannot matter, rather than four terms (each head's residual and attention paths) summed in the order
    the autograd engine reaches them. FSDP2 inserts such a node before every wrapped block, so this keeps
    single-process / DDP gradients and FSDP2 gradients equal to the bit (tests/parallel/test_fsdp.py)."""
    return trunk.view_as(trunk) if trunk.requires_grad else trunk


V_HEAD_MODULES = ("v_heads", "v_final_layer")


def is_v_head_key(key: str) -> bool:
    """Whether a state-dict key (ours, or the release's under a prefix such as ``net.``) is a v-head weight."""
    return any(part in V_HEAD_MODULES for part in key.split("."))


def u_head_only(model: PMFDiT, **options) -> PMFDiT:
    """A new model (``v_head=False``, on ``model``'s device, with its construction options but those given) with
    ``model``'s weights but the auxiliary v-head: the inference network (sampling uses only u, spec section 4)."""
    options = {**model.options, **options}
    net = PMFDiT(dataclasses.replace(model.config, v_head=False), **options).to(next(model.parameters()).device)
    net.load_state_dict({k: v for k, v in model.state_dict().items() if not is_v_head_key(k)}, strict=True)
    return net


def with_options(model: PMFDiT, **options) -> PMFDiT:
    """``model`` (config, weights, dtype, device) built again with the construction options given changed."""
    net = PMFDiT(model.config, **{**model.options, **options}).to(next(model.parameters()))
    net.load_state_dict(model.state_dict(), strict=True)
    return net


def build_model(arch: str, **overrides) -> PMFDiT:
    """A pmfDiT from a preset name (``"pMF-B/16"``, ...) with any ModelConfig field overridden."""
    return PMFDiT(model_config(arch, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
