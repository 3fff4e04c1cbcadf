"""What every training data source shares: named classes (the class count is the number of names) and, for
map-style sets whose labels are known up front, a length that is the number of labels."""

from __future__ import annotations

import numpy as np
import torch


class NamedClasses:
    """Data whose classes are named; ``num_classes`` counts the names (one rule for every source)."""

    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class LabelledImages(NamedClasses, torch.utils.data.Dataset):
    """A map-style image set with one label per image known up front (``labels`` int64 [N])."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)
