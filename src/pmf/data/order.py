"""The training data order (spec section 6: one permutation per epoch, the global batch split over ranks)
and the step from stored images to the model's input: a resumed run reads exactly the same batches."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import PMFError
from ..model_configs import ModelConfig
from ..seeds import DATA_ORDER, derive_seed
from .builtin import ArrayData


class DataOrder:
    """Global batch ``step`` holds positions [step * B, (step + 1) * B) of an endless stream that visits the
    dataset in a fresh permutation per epoch (generator seeded by (seed, epoch)); rank r reads the r-th
    slice of B / world positions."""

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int):
        self.size, self.B, self.rank, self.world, self.seed = size, global_batch, rank, world, seed
        self._perms: dict[int, np.ndarray] = {}

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, stream=DATA_ORDER))
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.size, generator=gen).numpy()
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        b = self.B // self.world
        pos = step * self.B + self.rank * b + np.arange(b)
        epochs, within = pos // self.size, pos % self.size
        return np.array([self.perm(int(e))[w] for e, w in zip(epochs, within)], dtype=np.int64)


class _StepBatches(torch.utils.data.Sampler):
    def __init__(self, order: DataOrder, start: int, stop: int):
        self.order, self.start, self.stop = order, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.order.indices(step).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def batches(data, order: DataOrder, start: int, stop: int, num_workers: int, pin: bool):
    """Yield (uint8 images [b, H, W, C], int64 labels [b]) for steps start..stop-1."""
    if getattr(data, "streaming", False):  # pmf.data.hf_stream: the stream's own order
        yield from data.batches(order, start, stop)
        return
    num_workers = min(num_workers, os.cpu_count() or 1)  # more decoding processes than cores only slow down
    if isinstance(data, torch.utils.data.Dataset):  # decoded on the fly: image folders, ``datasets`` splits
        loader = torch.utils.data.DataLoader(data, batch_sampler=_StepBatches(order, start, stop),
                                             num_workers=num_workers, pin_memory=pin,
                                             prefetch_factor=4 if num_workers else None)
        yield from loader
        return
    for step in range(start, stop):
        idx = order.indices(step)
        yield torch.from_numpy(np.asarray(data.images[idx])), torch.from_numpy(data.labels[idx])


def to_model_input(images: torch.Tensor, config: ModelConfig, device) -> torch.Tensor:
    """uint8 [b, H, W, C] -> float [b, C, H, W] in [-1, 1] on ``device``; grayscale is repeated to RGB."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[1] == 1 and config.in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def data_size(data) -> int:
    """Images per epoch of training data (0 for a stream whose size is not known yet)."""
    return (data.size or 0) if getattr(data, "streaming", False) else len(data.labels)


def check_data(data, config: ModelConfig, name: str) -> None:
    """Errors before any step: empty data, labels outside the model's classes, wrong image shapes."""
    if getattr(data, "streaming", False):  # labels are read with the images: the classes are the ClassLabel's
        if data.num_classes > config.num_classes:
            raise PMFError(f"dataset {name!r} has {data.num_classes} classes but the model has {config.num_classes}")
        return
    labels = np.asarray(data.labels)
    if len(labels) == 0:
        raise PMFError(f"dataset {name!r} holds no images")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise PMFError(f"dataset {name!r} has labels in [{labels.min()}, {labels.max()}] but the model has "
                       f"{config.num_classes} classes; pass --num-classes {int(labels.max()) + 1} "
                       "(model_overrides num_classes)")
    if isinstance(data, ArrayData):
        _, h, w, c = data.images.shape
        if (h, w) != (config.input_size, config.input_size):
            raise PMFError(f"dataset {name!r} has {h}x{w} images but the model takes {config.input_size}x"
                           f"{config.input_size}; pack the data at that size")
        if c != config.in_channels and not (c == 1 and config.in_channels == 3):
            raise PMFError(f"dataset {name!r} has {c} channels but the model takes {config.in_channels}")
    elif config.in_channels not in (1, 3):
        raise PMFError(f"image folders are read as RGB or gray but the model takes {config.in_channels} channels")
