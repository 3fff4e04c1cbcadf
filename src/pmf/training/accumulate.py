"""Gradient accumulation: one optimiser step over a process's batch in ``n`` equal micro-batches, so that one GPU
can train at a recipe's batch. The step draws everything for the whole batch first (t, r, noise, omega, the
interval, the label dropout of ``pmf.objective.sample_draws``, the perceptual crop boxes) and hands each
micro-batch its rows, so every sample sees what one pass over the batch would give it; the release's label
dropout stays on the first k rows of the batch (which fall in the first micro-batches). Each micro-batch's loss
is its mean times its share of the batch, so the summed gradients are the batch mean's. Gradients are reduced
across processes once, in the backward pass of the last micro-batch (DDP's ``no_sync``, FSDP2's
``set_requires_gradient_sync``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from ..errors import PMFError
from ..objective import Draws


def micro_slices(batch: int, n: int) -> list[slice]:
    """The rows of each of ``n`` equal micro-batches of a ``batch``-row batch, in order."""
    if n < 1 or batch % n:
        raise PMFError(f"grad_accum {n} does not divide the batch of {batch} images per process; pick a divisor "
                       f"of {batch}")
    size = batch // n
    return [slice(i * size, (i + 1) * size) for i in range(n)]


def check_accumulation(batch_size: int, world: int, n: int) -> None:
    """A one-line error when ``n`` micro-batches do not split the per-process batch (before anything is written)."""
    local = batch_size // world
    if n > 1 and local % n:
        where = f"the per-process batch of {local} ({batch_size} over {world} processes)" if world > 1 else \
            f"the batch of {batch_size}"
        raise PMFError(f"--grad-accum {n} does not divide {where}; pick a divisor of {local}")


def slice_draws(draws: Draws, rows: slice) -> Draws:
    """The draws of ``rows`` of the batch."""
    return Draws(**{name: value[rows] for name, value in vars(draws).items()})


class CropRows:
    """The perceptual term for one micro-batch: the crop boxes drawn once for the whole batch
    (``PerceptualLoss.draw_boxes``), cut to the micro-batch's rows."""

    def __init__(self, perceptual, boxes: torch.Tensor, rows: slice):
        self.perceptual, self.boxes, self.rows = perceptual, boxes, rows

    def __call__(self, x_pred, x, t):
        return self.perceptual(x_pred, x, t, boxes=self.boxes[self.rows])


def perceptual_parts(perceptual, x: torch.Tensor, slices: list[slice]) -> list:
    """The perceptual callable for each micro-batch: itself for one pass; with several, its crops of the whole
    batch cut per micro-batch (a callable without ``draw_boxes`` is called as it is)."""
    if perceptual is None or len(slices) == 1 or not hasattr(perceptual, "draw_boxes"):
        return [perceptual] * len(slices)
    boxes = perceptual.draw_boxes(x.shape[0], x.shape[2], x.shape[3])  # (B, 4)
    return [CropRows(perceptual, boxes, rows) for rows in slices]


@contextlib.contextmanager
def gradient_sync(net: torch.nn.Module, model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Hold back the gradient reduction across processes unless ``sync`` (the last micro-batch): DDP's
    ``no_sync`` around ``net``, or FSDP2's ``set_requires_gradient_sync`` on ``model``. Nothing in one process."""
    if sync:
        yield
        return
    if isinstance(net, DistributedDataParallel):
        with net.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 / HSDP: unsharded gradients accumulate locally
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def merge_metrics(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The batch's metrics from equal micro-batches' ones: means of means (``loss`` is given as each part's
    share of the batch loss, so it is summed)."""
    out = {}
    for key in parts[0]:
        total = sum(p[key] for p in parts)
        out[key] = total if key == "loss" else total / len(parts)
    return out
