"""`pmf sample` writes the same images as before the command line was reorganised: hashes of samples.npz
pinned from the earlier code (a fixed-weight model from the vendored fixtures and an untrained one),
computed on one CPU thread (the two-step images differ in the last bit with more threads)."""

import hashlib

import numpy as np
import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PINS = {
    (): "9b9481ad6f23caf44a47101e7dae6e53c71cc47e3ab3f70e5fd9d1b6e73a5952",
    ("--omega", "2.5", "--t-min", "0.1", "--t-max", "0.7"):
        "fdcdb42a7fd8034834c218016327947adc760bdf24daf7a19e5906f196a79201",
    ("--steps", "2"): "ad8b693978d3f598f16cd5bd2bcaa33bf7815b753e17c9b1ca2ad2ea04441a75",
}


def _hash(folder) -> str:
    return hashlib.sha256(np.load(folder / "samples.npz")["images"].tobytes()).hexdigest()


@pytest.mark.parametrize("extra", list(PINS))
def test_sample_images_pinned(tmp_path, fixtures_dir, extra):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(fixtures_dir / "net_tiny.pt"), "--arch", "pMF-Tiny/4",
                 "--classes", "3,1,4", "--per-class", "1", "--seed", "5", "--out", str(out), "--device", "cpu",
                 *extra]) == 0
    assert _hash(out) == PINS[extra]
    labels = np.load(out / "samples.npz")["labels"]
    assert labels.tolist() == [3, 1, 4]


def test_sample_random_model_pinned(tmp_path):
    out = tmp_path / "r"
    assert main(["sample", "--checkpoint", "random", "--arch", "pMF-Tiny/4", "--classes", "3,1,4", "--per-class",
                 "2", "--seed", "5", "--out", str(out), "--device", "cpu"]) == 0
    assert _hash(out) == "2766eb2118971158db4a8789dee8802e31a85c9d5169907b187404a804c42a37"
