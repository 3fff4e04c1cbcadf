"""The pMF training objective (spec section 3) as pure tensor functions, plus ``pmf_loss``.

Shapes: images are [B, C, H, W]; per-sample scalars are [B]. Time runs from data (t = 0) to noise (t = 1).
Only one forward pass carries gradients, so DDP sees an ordinary model (docs/training.md, "The loss under
data-parallel training"); docs/speed.md compares the exact du/dt forms (``JVP_MODES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.autograd.forward_ad as fwAD

from .errors import PMFError
from .nn.attention import attention_backend
from .vocabulary import JVP_MODES

T_CLIP = 0.05


@dataclass
class Draws:
    """Every random quantity of one pMF loss evaluation (inject these to replay a step exactly).

    t, r: [B] with r <= t; noise: [B, C, H, W], already multiplied by the noise scale; omega: [B] guidance
    scale >= 1; t_min, t_max: [B] guidance interval; drop: [B] bool, labels replaced by the null label."""

    t: torch.Tensor
    r: torch.Tensor
    noise: torch.Tensor
    omega: torch.Tensor
    t_min: torch.Tensor
    t_max: torch.Tensor
    drop: torch.Tensor

    def to(self, device) -> Draws:
        return Draws(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _bc(s: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] for broadcasting against images."""
    return s.reshape(-1, 1, 1, 1)


def sample_times(batch: int, *, P_mean: float, P_std: float, data_proportion: float, tr_uniform: bool = False,
                 generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) [B] (spec 3.1): logit-normal a, b; optionally U(0,1) for 10% of samples; the first
    floor(B * data_proportion) samples get r = t; then t = max, r = min."""
    a = torch.sigmoid(P_std * torch.randn(batch, generator=generator, device=device) + P_mean)
    b = torch.sigmoid(P_std * torch.randn(batch, generator=generator, device=device) + P_mean)
    if tr_uniform:
        uni = torch.rand(batch, generator=generator, device=device) < 0.1
        a = torch.where(uni, torch.rand(batch, generator=generator, device=device), a)
        b = torch.where(uni, torch.rand(batch, generator=generator, device=device), b)
    n_fm = int(math.floor(batch * data_proportion))
    b = torch.cat([a[:n_fm], b[n_fm:]])
    return torch.maximum(a, b), torch.minimum(a, b)


def omega_from_uniform(u: torch.Tensor, cfg_max: float, cfg_beta: float) -> torch.Tensor:
    """Inverse CDF of p(omega) ~ omega^-beta on [1, 1 + cfg_max] (spec 3.3)."""
    if abs(cfg_beta - 1.0) < 1e-12:
        return torch.exp(u * math.log1p(cfg_max))
    k = 1.0 - cfg_beta
    return (1.0 + u * ((1.0 + cfg_max) ** k - 1.0)) ** (1.0 / k)


def sample_guidance(fm_mask: torch.Tensor, *, cfg_max: float, cfg_beta: float,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(omega, t_min, t_max) [B] (spec 3.3); samples with r = t (``fm_mask``) get the interval [0, 1]."""
    B, dev = fm_mask.shape[0], fm_mask.device
    t_min = 0.5 * torch.rand(B, generator=generator, device=dev)
    t_max = 0.5 + 0.5 * torch.rand(B, generator=generator, device=dev)
    t_min = torch.where(fm_mask, torch.zeros_like(t_min), t_min)
    t_max = torch.where(fm_mask, torch.ones_like(t_max), t_max)
    omega = omega_from_uniform(torch.rand(B, generator=generator, device=dev), cfg_max, cfg_beta)
    return omega, t_min, t_max


def first_k_dropped(uniform: torch.Tensor, p: float) -> torch.Tensor:
    """Release label dropout (spec 3.5): k = #{U_i < p}; the FIRST k samples are dropped. Bool [B]."""
    k = (uniform < p).sum()
    return torch.arange(uniform.shape[0], device=uniform.device) < k




def sample_draws(x: torch.Tensor, *, P_mean: float, P_std: float, data_proportion: float, cfg_max: float,
                 cfg_beta: float, class_dropout_prob: float, noise_scale: float, tr_uniform: bool = False,
                 generator: torch.Generator | None = None, class_dropout: str = "first-rows") -> Draws:
    """All random draws of one step for images x [B, C, H, W] from one explicit generator. ``class_dropout``:
    "first-rows" (the release, spec 3.5: the first k rows, which are the r = t rows, so the null label is
    learned on flow-matching rows only) or "per-sample" (each row dropped with probability p, any (t, r))."""
    B, dev = x.shape[0], x.device
    t, r = sample_times(B, P_mean=P_mean, P_std=P_std, data_proportion=data_proportion, tr_uniform=tr_uniform,
                        generator=generator, device=dev)
    noise = noise_scale * torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    omega, t_min, t_max = sample_guidance(t == r, cfg_max=cfg_max, cfg_beta=cfg_beta, generator=generator)
    uniform = torch.rand(B, generator=generator, device=dev)  # the same draw in both modes
    drop = first_k_dropped(uniform, class_dropout_prob) if class_dropout == "first-rows" else \
        uniform < class_dropout_prob
    return Draws(t=t, r=r, noise=noise, omega=omega, t_min=t_min, t_max=t_max, drop=drop)


def noisy(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t) x + t e (spec 1)."""
    return (1 - _bc(t)) * x + _bc(t) * noise


def to_velocity(z: torch.Tensor, out: torch.Tensor, t: torch.Tensor, prediction: str = "x") -> torch.Tensor:
    """Network output -> velocity (spec 2): (z - x_hat) / clip(t, 0.05, 1) for x-prediction; the output
    itself for the u-prediction ablation."""
    if prediction == "u":
        return out
    return (z - out) / _bc(t.clamp(T_CLIP, 1.0))


def guidance_scale_in_interval(omega, t, t_min, t_max) -> torch.Tensor:
    """omega where t_min <= t <= t_max (inclusive), else 1 (spec 3.4)."""
    return torch.where((t_min <= t) & (t <= t_max), omega, torch.ones_like(omega))


def guided_target(v_t, v_c, v_u, w, drop) -> torch.Tensor:
    """v_g = v_t + (1 - 1/w)(v_c - v_u), and v_g = v_t for label-dropped samples (spec 3.4-3.5)."""
    v_g = v_t + _bc(1 - 1 / w) * (v_c - v_u)
    return torch.where(_bc(drop), v_t, v_g)


def adaptive_weight(loss: torch.Tensor, norm_p: float = 1.0, norm_eps: float = 0.01) -> torch.Tensor:
    """w(L) = L / sg((L + eps)^p) (spec 3.8), per sample."""
    return loss / (loss.detach() + norm_eps).pow(norm_p)


def velocity_tangent(z, out, t, dz, dout, prediction: str = "x") -> torch.Tensor:
    """Tangent of ``to_velocity(z, out, t)`` along (dz, dout, dt = 1): (dz - dout) / c - (z - out) c' / c^2,
    c = clip(t, 0.05, 1), c' = 1 strictly inside the clip range, else 0 (torch's clamp rule, bounds excluded)."""
    if prediction == "u":
        return dout
    c = _bc(t.clamp(T_CLIP, 1.0))
    dc = _bc(((t > T_CLIP) & (t < 1.0)).to(c.dtype))
    return (dz - dout) / c - (z - out) * dc / (c * c)


def compound_velocity(u, du_dt, t, r) -> torch.Tensor:
    """V = u + (t - r) sg(du/dt) (spec 3.7)."""
    return u + _bc(t - r) * du_dt.detach()


def _v_prediction(net, z, t, omega, y, prediction):
    """v-head velocity at (z, h = 0, omega, interval [0, 1], y); the u-head at h = 0 without a v-head."""
    B = z.shape[0]
    zeros, ones = z.new_zeros(B), z.new_ones(B)
    out = net(z, zeros, omega, zeros, ones, y, heads="v" if net.has_v_head else "u")
    return to_velocity(z, out.x_v if out.x_v is not None else out.x_u, t, prediction)


@torch.no_grad()
def guidance_velocities(net, z, t, y, w, *, num_classes: int, prediction: str = "x", drop=None):
    """(v_c, v_u): conditional v at scale w and unconditional v (null label, omega = 1), in one batched
    pass. The unconditional rows are computed only where they change v_g, i.e. where w != 1 and the sample
    is not label-dropped (``drop`` [B] bool, optional); elsewhere v_u is returned as v_c."""
    need = w != 1
    if drop is not None:
        need = need & ~drop
    idx = need.nonzero().squeeze(1)  # (k,) one host sync; the pass has a data-dependent batch of B + k
    if idx.numel() == 0:
        v_c = _v_prediction(net, z, t, w, y, prediction)
        return v_c, v_c
    null = torch.full_like(y[idx], num_classes)
    v = _v_prediction(net, torch.cat([z, z[idx]]), torch.cat([t, t[idx]]), torch.cat([w, torch.ones_like(w[idx])]),
                      torch.cat([y, null]), prediction)
    B = z.shape[0]
    v_c = v[:B]
    return v_c, v_c.index_copy(0, idx, v[B:])


def u_total_derivative(net, z, t, r, omega, t_min, t_max, y, tangent_z, *, prediction: str = "x"):
    """(u, du/dt) by forward-mode AD of u(z, t, r) with tangents (tangent_z, 1, 0), no gradients (spec 3.6).
    t enters through h = t - r and through the clip(t) division."""

    def u_fn(z_, t_):
        return to_velocity(z_, net(z_, t_ - r, omega, t_min, t_max, y, heads="u").x_u, t_, prediction)

    with torch.no_grad(), attention_backend("math"):
        return torch.func.jvp(u_fn, (z, t), (tangent_z, torch.ones_like(t)))


@dataclass(frozen=True, eq=False)
class LossTerms:
    """What ``pmf_loss`` returns: the loss, its logged parts and the intermediates of spec section 3.
    Image-shaped fields are [B, C, H, W], per-sample fields [B]; the v-head terms are None without a v-head."""

    loss: torch.Tensor  # scalar with gradients: per_sample.mean()
    loss_u: torch.Tensor  # detached mean of (V - v_g)^2 over all elements (logged)
    per_sample: torch.Tensor  # [B] adaptively weighted u term + v term + perceptual term
    per_sample_u_raw: torch.Tensor  # [B] detached ||V - v_g||^2 per sample
    z: torch.Tensor  # z_t = (1 - t) x + t e
    v_t: torch.Tensor  # (z - x) / clip(t): the velocity of the clean image
    v_c: torch.Tensor  # conditional v at the in-interval scale w (also the tangent of du/dt)
    v_u: torch.Tensor  # unconditional v (equal to v_c where it does not change v_g)
    v_g: torch.Tensor  # the guided target
    u: torch.Tensor  # the u-head's average velocity
    du_dt: torch.Tensor  # detached total derivative of u along (v_c, dt = 1)
    V: torch.Tensor  # compound velocity u + (t - r) sg(du/dt)
    v: torch.Tensor | None  # the v-head's velocity; None without a v-head
    x_pred: torch.Tensor  # z - t u, the denoised image the perceptual term sees
    loss_v: torch.Tensor | None = None  # detached mean of (v - v_g)^2; None without a v-head
    per_sample_v_raw: torch.Tensor | None = None  # [B] detached ||v - v_g||^2; None without a v-head
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # the perceptual term's logs (loss_lpips, ...)


def _u_with_tangent(model, net, z, t, r, cond, v_c, prediction: str, jvp: str):
    """(u, du/dt along (v_c, 1), the v-head's x-output or None) by the ``jvp`` form (spec 3); only ``model``'s
    forward carries gradients."""
    if jvp == "split":
        _, du_dt = u_total_derivative(net, z, t, r, *cond, v_c, prediction=prediction)
        out = model(z, t - r, *cond)
        return to_velocity(z, out.x_u, t, prediction), du_dt, out.x_v
    if jvp == "inline":
        out = model(z, t - r, *cond, tangents=(v_c, torch.ones_like(t)))
        with torch.no_grad():
            du_dt = velocity_tangent(z, out.x_u.detach(), t, v_c, out.dx_u, prediction)
        return to_velocity(z, out.x_u, t, prediction), du_dt, out.x_v
    with fwAD.dual_level(), attention_backend("math"):
        z_d, t_d = fwAD.make_dual(z, v_c), fwAD.make_dual(t, torch.ones_like(t))
        out = model(z_d, t_d - r, *cond)
        u, du_dt = fwAD.unpack_dual(to_velocity(z_d, out.x_u, t_d, prediction))
        x_v = None if out.x_v is None else fwAD.unpack_dual(out.x_v).primal
    return u, du_dt.detach(), x_v


def pmf_loss(model, x: torch.Tensor, y: torch.Tensor, draws: Draws, *, num_classes: int, norm_p: float = 1.0,
             norm_eps: float = 0.01, prediction: str = "x", jvp: str = "inline", perceptual=None,
             no_grad_net=None) -> LossTerms:
    """The pMF loss of one batch with given draws (spec 3). x [B, C, H, W] in [-1, 1], y [B] labels.

    ``jvp``: how du/dt is computed, all exact (``JVP_MODES``): "inline" (default, the fastest measured, see
    docs/speed.md), "split" (torch.func.jvp under no_grad, then a forward with grad) or "fused" (one
    forward-mode AD pass with grad).
    ``perceptual``: optional callable (x_pred, x, t) -> (per-sample term [B], dict of logs), already
    masked, weighted and scaled; its logs join the result.
    ``no_grad_net``: the same network for the passes without gradients (guidance velocities, the split JVP),
    default ``model``; a DDP-wrapped ``model`` passes the module inside, since exactly one pass with gradients
    may go through the wrapper. Returns the ``LossTerms`` (``loss`` = the mean of ``per_sample``)."""
    if prediction not in ("x", "u"):
        raise PMFError(f"prediction must be 'x' or 'u', got {prediction!r}")
    if jvp not in JVP_MODES:
        raise PMFError(f"jvp must be one of {', '.join(map(repr, JVP_MODES))}, got {jvp!r}")
    if x.shape[0] != y.shape[0] or draws.t.shape[0] != x.shape[0]:
        raise PMFError(f"batch sizes differ: images {x.shape[0]}, labels {y.shape[0]}, draws {draws.t.shape[0]}")
    net = model if no_grad_net is None else no_grad_net
    t, r = draws.t.to(x.dtype), draws.r.to(x.dtype)
    z = noisy(x, draws.noise, t)  # (B, C, H, W)
    v_t = to_velocity(z, x, t)  # (B, C, H, W) the clean image's velocity, in x-form for either prediction

    w = guidance_scale_in_interval(draws.omega, t, draws.t_min, draws.t_max)  # (B,)
    v_c, v_u = guidance_velocities(net, z, t, y, w, num_classes=num_classes, prediction=prediction, drop=draws.drop)
    v_g = guided_target(v_t, v_c, v_u, w, draws.drop)
    y_in = torch.where(draws.drop, torch.full_like(y, num_classes), y)
    cond = (draws.omega, draws.t_min, draws.t_max, y_in)

    u, du_dt, x_v = _u_with_tangent(model, net, z, t, r, cond, v_c, prediction, jvp)
    V = compound_velocity(u, du_dt, t, r)

    dims = tuple(range(1, x.dim()))
    per_u_raw = (V - v_g).pow(2).sum(dims)  # (B,)
    per_sample = adaptive_weight(per_u_raw, norm_p, norm_eps)
    v_terms = {}
    v = None
    if x_v is not None:
        v = to_velocity(z, x_v, t, prediction)
        per_v_raw = (v - v_g).pow(2).sum(dims)
        per_sample = per_sample + adaptive_weight(per_v_raw, norm_p, norm_eps)
        v_terms = dict(loss_v=(v - v_g).pow(2).mean().detach(), per_sample_v_raw=per_v_raw.detach())
    x_pred = z - _bc(t) * u
    logs = {}
    if perceptual is not None:
        term, logs = perceptual(x_pred, x, t)
        per_sample = per_sample + term
    return LossTerms(loss=per_sample.mean(), loss_u=(V - v_g).pow(2).mean().detach(), per_sample=per_sample,
                     per_sample_u_raw=per_u_raw.detach(), z=z, v_t=v_t, v_c=v_c, v_u=v_u, v_g=v_g, u=u, du_dt=du_dt,
                     V=V, v=v, x_pred=x_pred, logs=dict(logs), **v_terms)
