"""A ``datasets`` split read as a stream (``hf:OWNER/NAME:streaming``), for sets that do not fit on disk. The
stream is read in its own order, epoch after epoch, each epoch shuffled in a buffer seeded by (seed, epoch);
global batch ``step`` holds stream positions [step * B, (step + 1) * B) and rank r keeps its slice of them, so a
resumed run reads the same batches (it skips the positions before its step without decoding them). The split's
size comes from the dataset's info, else from the first pass over it; labels need a ``ClassLabel`` column (or
``label=none``: one class)."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import PMFError
from ..seeds import DATA_ORDER, derive_seed
from .folder import prepare_image
from .hf import HFImages, HFSpec, load_split, parse_spec, pick_columns
from .labelled import NamedClasses

SHUFFLE_BUFFER = 1000  # images held to shuffle a stream


class HFStream(NamedClasses):
    """``class_names`` known up front; ``size`` the images per epoch (None until a first pass when the info
    lacks it); ``batches`` yields (uint8 images [b, H, W, C], int64 labels [b]) per step."""

    streaming = True

    def __init__(self, spec: str | HFSpec, size: int, channels: int = 3):
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.image_size, self.channels = size, channels
        self.ds = load_split(self.spec)
        if self.ds.features is None:  # some streamed sets state their features only once read
            self.ds = self.ds._resolve_features()
        self.image, self.label, names = pick_columns(self.ds.features, self.spec)
        if self.label is not None and names is None:
            raise PMFError(f"streaming {self.spec.source!r} needs a ClassLabel label column (its classes must be "
                           f"known before reading); {self.label!r} is not one: use label=none for one class, or "
                           "read it without streaming")
        self.class_names = names or [self.spec.name]
        info = getattr(self.ds, "info", None)
        split = (info.splits or {}).get(self.spec.split) if info is not None and info.splits else None
        self.size = split.num_examples if split is not None and split.num_examples else None

    def rows(self, epoch: int, seed: int, skip: int = 0, decode: bool = True):
        """The (image, label) rows of one epoch in its shuffled order from position ``skip`` (the rows before it
        are passed over by the library); images undecoded unless ``decode``."""
        import datasets

        ds = self.ds if decode else self.ds.cast_column(self.image, datasets.Image(decode=False))
        ds = ds.shuffle(seed=derive_seed(seed, epoch, stream=DATA_ORDER) % 2**32, buffer_size=SHUFFLE_BUFFER)
        for row in ds.skip(skip) if skip else ds:
            yield row[self.image], 0 if self.label is None else int(row[self.label])

    def count(self, limit: int | None = None) -> int:
        """Images in the stream (up to ``limit``), read without decoding."""
        return sum(1 for _ in itertools.islice(self.rows(0, 0, decode=False), limit))

    def check_first_batch(self, batch: int) -> None:
        """A one-line error when the stream ends before one batch of ``batch`` images."""
        n = self.count(batch)
        if n < batch:
            raise PMFError(f"the stream {self.spec.source!r} ends after {n} images, before the first batch of "
                           f"{batch}; give a smaller --batch-size or a larger split")

    def positions(self, seed: int, start: int):
        """Rows from stream position ``start`` on, epoch after epoch."""
        if self.size is None and start:
            self.size = self.count()
        epoch, start = divmod(start, self.size) if self.size else (0, start)
        while True:
            got = 0
            for row in self.rows(epoch, seed, skip=start):
                got += 1
                yield row
            if start + got == 0:
                raise PMFError(f"the stream {self.spec.source!r} holds no images")
            self.size = self.size or start + got
            epoch, start = epoch + 1, 0

    def batches(self, order, start: int, stop: int):
        """Per step from ``start`` to ``stop``: this rank's slice of the global batch, as uint8 tensors."""
        b = order.B // order.world
        rows = self.positions(order.seed, start * order.B)
        for _ in range(start, stop):
            batch = list(itertools.islice(rows, order.B))[order.rank * b:(order.rank + 1) * b]
            images = np.stack([prepare_image(im, self.image_size, self.channels) for im, _ in batch])
            yield torch.from_numpy(images), torch.tensor([label for _, label in batch], dtype=torch.int64)


def probe_hf(spec: str, sample: int = 16) -> dict:
    """What ``pmf train`` fits the model to: image count, classes, channels (1 when the first images are all
    gray) and the size (when the first images share one square size; None otherwise)."""
    from .transforms import GRAY_MODES

    hs = parse_spec(spec)
    if hs.streaming:
        data = HFStream(hs, 1)
        first, count = [im for im, _ in itertools.islice(data.rows(0, 0), sample)], data.size
    else:
        data = HFImages(hs, 1)
        first, count = [data.ds[i][data.image] for i in range(min(sample, len(data)))], len(data)
    sizes, modes = {im.size for im in first}, {im.mode for im in first}
    fixed = next(iter(sizes)) if len(sizes) == 1 else None
    return {"images": count, "classes": data.num_classes, "channels": 1 if modes and modes <= GRAY_MODES else 3,
            "size": fixed[0] if fixed and fixed[0] == fixed[1] else None}
