"""Every data source counts its classes by its names, and map-style sets are as long as their labels."""

import numpy as np

from pmf.data.builtin import ArrayData
from pmf.data.labelled import LabelledImages, NamedClasses


class Three(LabelledImages):
    def __init__(self):
        self.labels = np.array([0, 2, 2], dtype=np.int64)
        self.class_names = ["a", "b", "c", "d"]


def test_the_class_count_is_the_number_of_names_not_the_largest_label():
    data = Three()
    assert (len(data), data.num_classes) == (3, 4)


def test_array_data_and_streams_share_the_rule():
    data = ArrayData(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 0]), ["only", "unused"])
    assert isinstance(data, NamedClasses) and data.num_classes == 2
