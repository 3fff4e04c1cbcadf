"""FD-loss post-training on the trainer (``pmf train --objective fd``; Yang et al., arXiv 2604.28190).

The generator is the model's one-step sampler (u-head) at a guided setting, differentiable end to end. Each
step draws B noises and uniform labels from per-image seeds (so a step's global batch does not depend on the
number of processes), makes images, takes their features in each representation (all-gathered, the local
rows keeping their gradient), blends them with the statistics state (``pmf.posttrain.fd_stats``) and minimises
sum_k w_k fd_k / (sg(fd_k) + eps) (``pmf.posttrain.fd_loss``). A step whose gradient norm is not finite is skipped.
``prepare_fd`` does every check before any work; ``FDObjective`` holds the representations, the reference and
generated statistics and the step."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from .. import parallel as P
from ..checkpoints.schema import TrainingCheckpoint
from ..errors import PMFError
from ..parallel import process as D
from ..sampling import image_labels, image_noise, sample_with_grad
from ..seeds import FD, derive_seed
from ..training.optim import lr_factor, set_lr
from .fd_loss import frechet_distance, normalised, ref_factor
from .fd_reference import Reference, cache_key, read_reference, reference_sums, write_reference
from .fd_stats import GeneratedStats

FILL, STEP = 0, 1  # the seeds' parts of the fill and of the training draws


def get_representation(name: str, device=None):
    """A frozen representation of the shared registry (``pmf.evaluation.representations``)."""
    from ..evaluation.representations import get_representation as get

    return get(name, device=device)


def freeze_v_head(model: torch.nn.Module) -> None:
    """The sampler uses the u-head only: the v-head's parameters take no gradient (and DDP expects none)."""
    for name, p in model.named_parameters():
        if name.startswith(("v_heads.", "v_final_layer.")):
            p.requires_grad_(False)


def resolve_setting(cfg) -> str:
    """Fill ``cfg.fd``'s guidance from the ``--init`` checkpoint's recorded setting where not given, and make it
    the run's recorded setting (``cfg.sample``); returns one line saying which setting is post-trained."""
    fd = cfg.fd
    source = "given"
    if cfg.init is None:
        raise PMFError("--objective fd post-trains a trained model: give --init CHECKPOINT")
    if fd.omega is None:
        from ..training.finetune import init_source

        setting = init_source(cfg.init, cfg.init_ema).setting
        fd.omega, fd.t_min, fd.t_max = setting.omega, setting.t_min, setting.t_max
        source = f"recorded in --init: {setting.source}"
    cfg.sample.omega, cfg.sample.t_min, cfg.sample.t_max = fd.omega, fd.t_min, fd.t_max
    line = f"fd: post-training the one-step sampler at omega {fd.omega:g} on [{fd.t_min:g}, {fd.t_max:g}] ({source})"
    if fd.omega == 1:
        line += "; the setting has no guidance, so the sampler is post-trained at omega 1"
    return line


def prepare_fd(cfg, mcfg) -> tuple[list, list[Reference | None]]:
    """The guidance to post-train at (``resolve_setting``) and the checks of an FD run before any work, each one
    line: the parallel mode, the representations (names, weights) and the given reference files. Returns
    (representations on the CPU, references or None)."""
    line = resolve_setting(cfg)
    if D.is_main_process():
        print(line, file=sys.stderr, flush=True)
    if cfg.perceptual is not None and cfg.perceptual.enabled:
        raise PMFError("--objective fd has no perceptual terms: give --no-perceptual")
    if cfg.parallel != "ddp":
        raise PMFError(f"--objective fd runs as one process or under DDP; --parallel {cfg.parallel} is not "
                       "supported yet")
    if cfg.grad_accum != 1:
        raise PMFError(f"--objective fd takes each step's batch in one pass; --grad-accum {cfg.grad_accum} is not "
                       "supported yet")
    reps = [get_representation(name) for name in cfg.fd.repr]
    classes = mcfg.num_classes if cfg.fd.per_class else 0
    refs = [read_reference(path, rep, mcfg.input_size, classes) for path, rep in zip(cfg.fd.ref, reps)] \
        if cfg.fd.ref else [None] * len(reps)
    return reps, refs


class FDObjective:
    """The representations with their reference and generated statistics, and the FD-loss step."""

    def __init__(self, cfg, mcfg, info: D.DistInfo, reps: list, refs: list):
        self.cfg, self.mcfg, self.info = cfg, mcfg, info
        self.reps = [r.to(info.device).eval().requires_grad_(False) for r in reps]
        self.refs = refs
        self.weights = cfg.fd.weight_of()
        self.classes = mcfg.num_classes if cfg.fd.per_class else 0
        self.stats = [GeneratedStats(r.feature_dim, beta=cfg.fd.ema_beta, queue=cfg.fd.queue, classes=self.classes,
                                     device=info.device) for r in self.reps]

    # ---- before the first step --------------------------------------------------------------------------------------
    def compute_references(self, data, cache: Path | None = None) -> None:
        """The missing reference statistics from the run's data (cached under ``cache``), written into the run
        folder's ``fd_ref/`` and recorded in ``cfg.fd.ref``."""
        from ..evaluation.offline_score import cache_dir

        cfg, out = self.cfg, Path(self.cfg.out) / "fd_ref"
        cache = Path(cache or cache_dir()) / "fd_ref"
        paths = []
        for i, rep in enumerate(self.reps):
            if self.refs[i] is not None:
                paths.append(self.refs[i].source)
                continue
            key = cache_key(cfg.data, rep, self.mcfg.input_size, cfg.fd.ref_images, self.classes)
            target = out / key
            if not (cache / key).is_file():
                D.print0(f"fd: reference statistics of {cfg.data} in {rep.name!r} (once; cached at {cache / key})",
                         info=self.info, file=sys.stderr)
                sums = reference_sums([rep], data, self.mcfg, self.info.device, limit=cfg.fd.ref_images,
                                      classes=max(self.classes, 1))[0]
                if self.info.is_main:
                    write_reference(cache / key, sums, rep, self.mcfg.input_size, cfg.data)
                D.barrier()
            if self.info.is_main:
                out.mkdir(parents=True, exist_ok=True)
                target.write_bytes((cache / key).read_bytes())
            D.barrier()
            paths.append(str(target))
            self.refs[i] = read_reference(target, rep, self.mcfg.input_size, self.classes)
        cfg.fd.ref = paths

    def ready(self, model: torch.nn.Module, state: TrainingCheckpoint | None) -> None:
        """Factors Q Q^T = Sigma_ref of the references; the generated statistics from the checkpoint ``state`` of a
        resumed run, else filled from generated images."""
        self.mu_ref = [r.mu.to(self.info.device) for r in self.refs]
        self.sigma_ref = [r.sigma.to(self.info.device) for r in self.refs]
        self.roots = [[ref_factor(s) for s in r] for r in self.sigma_ref]  # Q [D, r] per class row
        saved = state.fd_stats if state is not None else None
        if saved is not None:
            for name, stats in zip(self.cfg.fd.repr, self.stats):
                stats.load_state_dict(saved[name])
        elif state is None:
            self.fill(model)
        else:
            raise PMFError("the checkpoint to resume holds no FD statistics: it was not written by an FD run")

    @torch.no_grad()
    def fill(self, model: torch.nn.Module) -> None:
        """Fill the statistics with ``cfg.fd.fill`` generated images (a queue: its N rows), B per pass."""
        B, world, rank = self.cfg.batch_size, self.info.world_size, self.info.rank
        want = max(s.fill_wanted(self.cfg.fd.fill) for s in self.stats)
        for start in range(0, want, B):
            x, labels = self.generate(model, derive_seed(self.cfg.seed, FILL, stream=FD), start, B, rank, world)
            for rep, stats in zip(self.reps, self.stats):
                stats.fill(D.all_gather_with_grad(rep(x).float()), labels)
        for stats in self.stats:
            stats.finish_fill()

    # ---- the step ---------------------------------------------------------------------------------------------------
    def generate(self, net, seed: int, first: int, B: int, rank: int, world: int):
        """(this rank's images [b, C, H, W] clipped to [-1, 1], with gradients where recorded, the global batch's
        labels [B]) of global rows first .. first + B - 1: per-row noises and uniform labels from ``seed``."""
        b, m = B // world, self.mcfg
        rows = range(first + rank * b, first + (rank + 1) * b)
        labels = image_labels(range(first, first + B), m.num_classes, seed=seed).to(self.info.device)
        noise = image_noise(rows, (m.in_channels, m.input_size, m.input_size), seed=seed, noise_scale=m.noise_scale,
                            device=self.info.device)
        fd = self.cfg.fd
        x = sample_with_grad(net, noise, labels[rank * b:(rank + 1) * b], steps=1, omega=fd.omega, t_min=fd.t_min,
                             t_max=fd.t_max, prediction=self.cfg.loss.prediction)
        # the images as they are saved (clipped to [-1, 1]): unclipped, the loss can match the data's statistics
        # with values outside the range (a background below -1 read as "darker than black"), which clipping
        # turns into visible speckle
        return x.clamp(-1, 1), labels

    def losses(self, feats: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(sum_k w_k mean_c fd_kc / (sg(fd_kc) + eps), {fd_<repr>: mean_c fd_kc}) of the global features."""
        loss, logs = 0.0, {}
        for k, (name, f, stats) in enumerate(zip(self.cfg.fd.repr, feats, self.stats)):
            fds = [frechet_distance(mu, sigma, self.mu_ref[k][c], self.sigma_ref[k][c], self.roots[k][c])
                   for c, mu, sigma in stats.moments(f, labels)]
            loss = loss + self.weights[name] * sum(normalised(d, self.cfg.fd.eps) for d in fds) / len(fds)
            logs[f"fd_{name}"] = (sum(fds) / len(fds)).detach()
        return loss, logs

    def step(self, parts, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        """One FD-loss optimiser step of global batch ``cfg.batch_size``. Returns (loss, metrics, lr)."""
        cfg, info = self.cfg, self.info
        lr = set_lr(parts.optimizer, lr_factor(step, cfg.optim, cfg.steps))
        seed = derive_seed(cfg.seed, STEP, stream=FD)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if parts.bf16 else torch.autocast("cpu", enabled=False)
        with amp:
            x, labels = self.generate(parts.net, seed, step * cfg.batch_size, cfg.batch_size, info.rank,
                                      info.world_size)
            feats = [D.all_gather_with_grad(rep(x).float()) for rep in self.reps]  # (B, D) each
        loss, metrics = self.losses(feats, labels)
        parts.optimizer.zero_grad(set_to_none=True)
        # every rank holds the same loss of the global batch; DDP averages the ranks' gradients, so each rank's
        # share is scaled by the world size to give the one-process gradient
        (loss * info.world_size).backward()
        params = [p for p in parts.model.parameters() if p.requires_grad]
        norm = P.full(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or math.inf))
        finite = bool(torch.isfinite(norm))
        if finite:
            parts.optimizer.step()
            parts.emas.update(parts.model, step + 1)
        for f, stats in zip(feats, self.stats):
            stats.update(f, labels)
        metrics.update(loss=loss.detach().float(), grad_norm=norm.detach().float(),
                       skipped=torch.tensor(0.0 if finite else 1.0))
        return loss, metrics, lr

    def state_dict(self) -> dict:
        return {"fd_stats": {name: s.state_dict() for name, s in zip(self.cfg.fd.repr, self.stats)}}
