"""The paper's toy (spec section 8): a 2-D Swiss roll embedded in D dimensions, x- vs u-prediction.

A fixed A [D, 2] with orthonormal columns embeds the roll, x = A s; a small ReLU MLP is trained with
``pmf_loss`` once as x- and once as u-prediction, and its one-step samples are scored against fresh roll
samples. The MLP reads t from the guidance-scale input (omega = 1 + t with every label dropped, so
v_g = v_t, spec 3.5); sampling passes h = 1, omega = 2. docs/toy.md gives the reasons and the results.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import PMFError
from .nn.model import Predictions
from .objective import JVP_MODES, Draws, pmf_loss
from .sampling import sample
from .seeds import TOY, derive_seed
from .vocabulary import PREDICTIONS


@dataclass
class ToyConfig:
    """Settings of one toy experiment; every run of a (dim, prediction) pair gets the same budget."""

    dims: Sequence[int] = (2, 8, 16, 512)
    predictions: Sequence[str] = PREDICTIONS
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    width: int = 256
    depth: int = 5  # linear layers
    fm_fraction: float = 0.25  # share of each batch with r = t (flow matching samples)
    noise_scale: float = 1.0
    eval_samples: int = 4096
    projections: int = 256  # directions of the sliced Wasserstein distance
    loss_window: float = 0.1  # the final loss averages this trailing share of the steps
    jvp: str = "split"  # pmf_loss's du/dt form; all are exact, the published numbers used "split"
    seed: int = 0
    dims_list: list[int] = field(init=False, repr=False)

    def __post_init__(self):
        self.dims_list = [int(d) for d in self.dims]
        if not self.dims_list or any(d < 2 for d in self.dims_list):
            raise PMFError(f"dims must be a non-empty list of integers >= 2, got {list(self.dims)}")
        bad = [p for p in self.predictions if p not in PREDICTIONS]
        if bad or not self.predictions:
            raise PMFError(f"predictions must be a non-empty subset of {PREDICTIONS}, got {list(self.predictions)}")
        for name in ("steps", "batch_size", "width", "eval_samples", "projections"):
            if getattr(self, name) < 1:
                raise PMFError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 2:
            raise PMFError(f"depth must be >= 2 linear layers, got {self.depth}")
        if not 0.0 <= self.fm_fraction < 1.0:
            raise PMFError(f"fm_fraction must be in [0, 1), got {self.fm_fraction}")
        if not 0.0 < self.loss_window <= 1.0:
            raise PMFError(f"loss_window must be in (0, 1], got {self.loss_window}")
        if self.jvp not in JVP_MODES:
            raise PMFError(f"jvp must be one of {JVP_MODES}, got {self.jvp!r}")
        if self.lr <= 0 or self.noise_scale <= 0:
            raise PMFError(f"lr and noise_scale must be positive, got {self.lr} and {self.noise_scale}")

    def settings(self) -> dict:
        out = asdict(self)
        out.pop("dims_list")
        out.update(dims=self.dims_list, predictions=list(self.predictions))
        return out


def quick_config(**overrides) -> ToyConfig:
    """A run of a few seconds that still separates x from u at D = 64 (used by the tests)."""
    kw = dict(dims=(2, 64), steps=200, batch_size=128, width=128, depth=4, eval_samples=1024, projections=64)
    kw.update(overrides)
    return ToyConfig(**kw)


def swiss_roll(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 2] points on the roll (angle a in [1.5 pi, 4.5 pi], point a (cos a, sin a)) divided by 4.5 pi:
    x in [-0.67, 0.89], y in [-0.78, 1].
    Not standardised: a unit-variance roll matches N(0, I) in mean and covariance."""
    a = math.pi * (1.5 + 3.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    return (torch.stack([a * torch.cos(a), a * torch.sin(a)], 1) / (4.5 * math.pi)).float()


def embedding(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A [dim, 2] matrix with orthonormal columns (QR of a Gaussian matrix, signs fixed by R's diagonal)."""
    q, r = torch.linalg.qr(torch.randn(dim, 2, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class ToyMLP(nn.Module):
    """ReLU MLP with the network interface of ``pmf_loss``: (z [B, D, 1, 1], h [B], omega [B], ...) ->
    ``Predictions(out, None)``, conditioned on (t, h) with t read from omega = 1 + t (see the module docstring).

    The first layer adds a projection of z and one of low-frequency features of (t, h), each initialised
    for its own fan-in, so the times are not drowned by 512 coordinates of z. (High frequencies would
    make du/dt, which differentiates through the times, needlessly large.) Labels are ignored."""

    has_v_head = False

    def __init__(self, dim: int, width: int = 256, depth: int = 5, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("freqs", torch.tensor([0.5, 1.0, 2.0]) * math.pi, persistent=False)
        self.z_in = nn.Linear(dim, width, bias=False)
        self.time_in = nn.Linear(2 * (1 + 2 * len(self.freqs)), width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 2))
        self.out = nn.Linear(width, dim)
        with torch.no_grad():
            for layer in (self.z_in, self.time_in, *self.layers, self.out):  # He init for each input's fan-in
                layer.weight.normal_(0.0, math.sqrt(2.0 / layer.in_features), generator=generator)
                if layer.bias is not None:
                    layer.bias.zero_()
            self.out.weight.zero_()  # x- and u-prediction both start from 0

    def _features(self, s: torch.Tensor, ds: torch.Tensor | None = None) -> torch.Tensor:
        """[s, sin(f s), cos(f s)] (B, 1 + 2F), or its tangent along ds [B]."""
        ang = s[:, None] * self.freqs  # (B, F)
        if ds is None:
            return torch.cat([s[:, None], torch.sin(ang), torch.cos(ang)], 1)
        return torch.cat([torch.ones_like(s[:, None]), self.freqs * torch.cos(ang), -self.freqs * torch.sin(ang)],
                         1) * ds[:, None]

    def forward(self, z, h, omega, t_min=None, t_max=None, y=None, heads: str = "u", tangents=None):
        """``Predictions(x_u, None)``; with ``tangents=(dz, dh)`` also the tangent of x_u (no graph) as dx_u,
        the form ``pmf_loss(jvp="inline")`` asks for. t moves with h (r is fixed)."""
        B = z.shape[0]
        h = torch.as_tensor(h, dtype=z.dtype, device=z.device).expand(B)  # (B,)
        omega = torch.as_tensor(omega, dtype=z.dtype, device=z.device).expand(B)  # (B,)
        t = h + (omega - 1 - h.detach())  # (B,) value t, tangent of h (r has none)
        times = torch.cat([self._features(t), self._features(h)], 1)  # (B, 2 + 4F)
        pre = [self.z_in(z.reshape(B, -1)) + self.time_in(times)]  # (B, width)
        for layer in self.layers:
            pre.append(layer(torch.relu(pre[-1])))  # (B, width)
        out = self.out(torch.relu(pre[-1])).reshape(z.shape)  # (B, D, 1, 1)
        if tangents is None:
            return Predictions(out, None)
        with torch.no_grad():
            dz, dh = tangents
            dh = torch.as_tensor(dh, dtype=z.dtype, device=z.device).expand(B)
            dtimes = torch.cat([self._features(t, dh), self._features(h, dh)], 1)  # (B, 2 + 4F)
            da = dz.reshape(B, -1) @ self.z_in.weight.T + dtimes @ self.time_in.weight.T  # (B, width)
            for layer, p in zip([*self.layers, self.out], pre):
                da = (da * (p > 0)) @ layer.weight.T  # ReLU mask, then the next linear map
        return Predictions(out, None, da.reshape(z.shape))


def toy_draws(batch: int, dim: int, *, fm_fraction: float, noise_scale: float,
              generator: torch.Generator) -> Draws:
    """Unguided draws: t = max(a, b), r = min(a, b) with a, b ~ U(0, 1), and r = t for the first
    floor(B * fm_fraction) samples. Uniform times train the one-step endpoint (t near 1) far more often
    than the images' logit-normal ones. omega = 1 + t is the network's time input; every label is
    dropped, which makes the target v_g = v_t whatever omega is."""
    a, b = torch.rand(batch, generator=generator), torch.rand(batch, generator=generator)
    n_fm = int(batch * fm_fraction)
    b = torch.cat([a[:n_fm], b[n_fm:]])
    noise = noise_scale * torch.randn(batch, dim, 1, 1, generator=generator)
    t, ones = torch.maximum(a, b), torch.ones(batch)
    return Draws(t=t, r=torch.minimum(a, b), noise=noise, omega=1 + t, t_min=0 * ones, t_max=ones,
                 drop=torch.ones(batch, dtype=torch.bool))


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int, generator: torch.Generator) -> float:
    """Sliced 2-Wasserstein distance between point sets a, b [n, D] (equal n): the root mean over random
    unit directions of the squared W2 distance between the sorted 1-D projections."""
    if a.shape != b.shape:
        raise PMFError(f"sliced_wasserstein needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    dirs = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (D, P)
    pa, pb = (torch.sort(v.double() @ dirs, dim=0).values for v in (a, b))  # (n, P)
    return (pa - pb).pow(2).mean().sqrt().item()


def _gen(seed: int, *parts: int) -> torch.Generator:
    """A generator for one named stream of a run (seed, dim, purpose): the same for x and u."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts, stream=TOY))


def train(cfg: ToyConfig, dim: int, prediction: str, A: torch.Tensor,
          tick: Callable[[float], None] | None = None) -> tuple[ToyMLP, list[float], list[float]]:
    """Train one MLP with ``pmf_loss``; returns it and the per-step mean raw loss sum ||V - v_g||^2 and
    mean adaptively weighted loss (what the optimiser sees)."""
    model = ToyMLP(dim, cfg.width, cfg.depth, generator=_gen(cfg.seed, dim, 1))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    data_gen = _gen(cfg.seed, dim, 2)
    y = torch.zeros(cfg.batch_size, dtype=torch.long)
    raw, weighted = [], []
    for _ in range(cfg.steps):
        x = (swiss_roll(cfg.batch_size, data_gen) @ A.T).reshape(cfg.batch_size, dim, 1, 1)  # (B, D, 1, 1)
        draws = toy_draws(cfg.batch_size, dim, fm_fraction=cfg.fm_fraction, noise_scale=cfg.noise_scale,
                          generator=data_gen)
        out = pmf_loss(model, x, y, draws, num_classes=1, prediction=prediction, jvp=cfg.jvp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        raw.append(out.per_sample_u_raw.mean().item())
        weighted.append(out.loss.item())
        if tick is not None:
            tick(raw[-1])
    return model, raw, weighted


@torch.no_grad()
def evaluate(cfg: ToyConfig, model: ToyMLP, dim: int, prediction: str, A: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Metrics of one-step samples (one forward pass at h = 1) against fresh roll samples, and the
    samples projected to 2-D [n, 2]."""
    n = cfg.eval_samples
    noise = cfg.noise_scale * torch.randn(n, dim, 1, 1, generator=_gen(cfg.seed, dim, 3))
    x = sample(model.eval(), noise, torch.zeros(n, dtype=torch.long), steps=1, omega=2.0, prediction=prediction)
    x = x.reshape(n, dim).double()  # (n, D)
    ref = swiss_roll(n, _gen(cfg.seed, dim, 4)).double()  # (n, 2)
    A = A.double()
    flat = x @ A  # (n, 2)
    off = x - flat @ A.T  # (n, D)
    metrics = {
        "distance": sliced_wasserstein(flat, ref, cfg.projections, _gen(cfg.seed, dim, 5)),
        "distance_full": sliced_wasserstein(x, ref @ A.T, cfg.projections, _gen(cfg.seed, dim, 6)),
        "off_manifold": off.pow(2).sum(1).mean().item(),
    }
    return metrics, flat.float()


def reference_floor(cfg: ToyConfig) -> float:
    """The 2-D sliced Wasserstein distance between two independent roll sets of the evaluation size:
    what a perfect sampler scores."""
    g = _gen(cfg.seed, 0, 7)
    a, b = swiss_roll(cfg.eval_samples, g), swiss_roll(cfg.eval_samples, g)
    return sliced_wasserstein(a, b, cfg.projections, g)


def run_job(cfg: ToyConfig, dim: int, prediction: str, tick: Callable[[float], None] | None = None
            ) -> tuple[dict, torch.Tensor]:
    """Train and evaluate one (dim, prediction) pair: its result row and its 2-D samples [n, 2]."""
    A = embedding(dim, _gen(cfg.seed, dim, 0))
    model, raw, weighted = train(cfg, dim, prediction, A, tick)
    k = max(1, int(round(cfg.steps * cfg.loss_window)))
    metrics, flat = evaluate(cfg, model, dim, prediction, A)
    row = {"dim": dim, "prediction": prediction, **metrics, "final_loss": sum(raw[-k:]) / k,
           "final_loss_weighted": sum(weighted[-k:]) / k}
    return row, flat


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_job(cfg: ToyConfig, dim: int, prediction: str, queue) -> tuple[dict, torch.Tensor]:
    label, every, count = f"D={dim} {prediction}-pred", 25, [0]

    def tick(loss: float) -> None:
        count[0] += 1
        if count[0] % every == 0 or count[0] == cfg.steps:
            queue.put((label, every if count[0] % every == 0 else count[0] % every, loss))

    return run_job(cfg, dim, prediction, tick)


def run_toy(cfg: ToyConfig, progress: Callable[[str, int, float], None] | None = None, workers: int = 1,
            threads: int = 1) -> tuple[list[dict], dict]:
    """Train and evaluate every (dim, prediction) pair. Returns the result rows (dim, prediction, distance,
    distance_full, off_manifold, final_loss, final_loss_weighted) in (dim, prediction) order and the 2-D
    samples keyed by (dim, prediction). ``progress(label, steps_done, loss)`` reports training. With
    workers > 1 the pairs run in that many processes of ``threads`` threads each; every pair draws from
    its own generators, so the numbers do not depend on the number of workers."""
    jobs = [(dim, pred) for dim in cfg.dims_list for pred in cfg.predictions]
    done: dict = {}
    if workers <= 1:
        for dim, pred in jobs:
            tick = None if progress is None else (lambda loss, lbl=f"D={dim} {pred}-pred": progress(lbl, 1, loss))
            done[(dim, pred)] = run_job(cfg, dim, pred, tick)
    else:
        ctx = mp.get_context("spawn")  # forking a process that already ran torch ops can deadlock OpenMP
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                                           initargs=(threads,)) as pool:
            queue = manager.Queue()
            # the largest dimensions first, so the slow jobs do not start last
            futures = {pool.submit(_worker_job, cfg, dim, pred, queue): (dim, pred)
                       for dim, pred in sorted(jobs, key=lambda j: -j[0])}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    msg = queue.get()
                    if progress is not None:
                        progress(*msg)
                for f in finished:
                    done[futures[f]] = f.result()
            while not queue.empty():
                msg = queue.get()
                if progress is not None:
                    progress(*msg)
    results = [done[j][0] for j in jobs]
    return results, {j: done[j][1] for j in jobs}
