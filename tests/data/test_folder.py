"""Image folders (ImageNet layout), packing into memory-mapped arrays with corrupt files skipped, array files."""

import json

import numpy as np
import pytest
from PIL import Image

from pmf.data import FolderDataset, load_packed, open_training_data, pack_folder, scan_folder
from pmf.errors import PMFError


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "b_dog").mkdir(parents=True)
    (root / "a_cat" / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "a_cat" / "1.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(root / "a_cat" / "nested" / "2.png")  # L
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").save(root / "b_dog" / "3.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(root / "b_dog" / "4.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("P").save(root / "b_dog" / "5.gif")
    (root / "b_dog" / "6.jpg").write_bytes(b"not an image")
    data = (root / "a_cat" / "1.jpg").read_bytes()
    (root / "a_cat" / "7.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "b_dog" / "notes.txt").write_text("ignored")
    return root


def test_scan_sorted_classes_and_errors(folder, tmp_path):
    paths, labels, classes = scan_folder(folder)
    assert classes == ["a_cat", "b_dog"] and len(paths) == 7
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(PMFError, match="not found"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(PMFError, match="no images"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "loose" / "empty").mkdir(parents=True)
    for name in ("b.png", "a.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "loose" / name)
    paths, labels, classes = scan_folder(tmp_path / "loose")  # loose images: one class named after the folder
    assert [p.name for p in paths] == ["a.png", "b.png"] and labels.tolist() == [0, 0] and classes == ["loose"]


@pytest.mark.parametrize("workers", [1, 2])
def test_pack_skips_corrupt_files_with_a_count_and_memory_maps(folder, tmp_path, workers):
    stats = pack_folder(folder, tmp_path / "packed", 16, workers=workers, progress=False)
    assert stats["packed"] == 5 and stats["skipped"] == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in stats["skipped_files"]) == ["6.jpg", "7.jpg"]
    data = load_packed(stats["out"])
    assert isinstance(data.images, np.memmap) and data.images.shape == (5, 16, 16, 3)
    assert data.labels.tolist() == [0, 0, 1, 1, 1] and data.class_names == ["a_cat", "b_dog"]
    gray = data.images[1]
    assert np.array_equal(gray[..., 0], gray[..., 2])  # grayscale became RGB
    assert json.loads((tmp_path / "packed.pmfpack" / "meta.json").read_text())["skipped"] == 2
    assert open_training_data(stats["out"], 16).images.shape == (5, 16, 16, 3)


def test_folder_dataset_decodes_and_replaces_unreadable(folder):
    ds = FolderDataset(folder, 16)
    img, label = ds[1]  # a_cat/7.jpg (truncated) is replaced by the next readable image, a_cat/nested/2.png
    assert img.shape == (16, 16, 3) and ds.skipped == 1 and label == 0
    assert open_training_data(str(folder), 16).num_classes == 2


def test_array_files(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 2, 1]))
    d = open_training_data(str(tmp_path / "a.npz"), 8)
    assert d.images.shape == (3, 8, 8, 1) and d.num_classes == 3
    np.save(tmp_path / "b.npy", np.zeros((2, 8, 8, 3), np.uint8))
    assert open_training_data(str(tmp_path / "b.npy"), 8).labels.tolist() == [0, 0]
    np.savez(tmp_path / "c.npz", images=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(PMFError, match="uint8"):
        open_training_data(str(tmp_path / "c.npz"), 8)
    with pytest.raises(PMFError, match="not found"):
        open_training_data("no-such-dataset", 8)
