"""`pmf sample` writes the images it wrote before (the command line's reorganisation, the sampling setting's
move to one type): compared with reference images made from the vendored fixtures' weights
(tests/fixtures/sample_references.npz, PROVENANCE.md there says how), within one uint8 level, so that a
torch or BLAS upgrade that moves a rounding does not fail the test while a changed computation does."""

import numpy as np
import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "default": (),
    "omega2.5_interval0.1-0.7": ("--omega", "2.5", "--interval", "0.1:0.7"),
    "steps2": ("--steps", "2"),
}


@pytest.fixture(scope="module")
def references(fixtures_dir):
    with np.load(fixtures_dir.parent / "sample_references.npz") as refs:
        return {k: refs[k] for k in refs.files}


def assert_close_to(images: np.ndarray, ref: np.ndarray) -> None:
    assert images.shape == ref.shape and images.dtype == ref.dtype == np.uint8
    diff = np.abs(images.astype(int) - ref.astype(int))
    assert diff.max() <= 1, f"{int((diff > 1).sum())} values differ by more than one level (max {diff.max()})"
    assert (diff > 0).mean() < 0.01  # a rounding moves rare values, not the image


@pytest.mark.parametrize("case", list(CASES))
def test_sample_images_match_the_references(tmp_path, fixtures_dir, references, case):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(fixtures_dir / "net_tiny.pt"), "--arch", "pMF-Tiny/4",
                 "--classes", "3,1,4", "--per-class", "1", "--seed", "5", "--out", str(out), "--device", "cpu",
                 "--no-progress", *CASES[case]]) == 0
    saved = np.load(out / "samples.npz")
    assert saved["labels"].tolist() == [3, 1, 4]
    assert_close_to(saved["images"], references[case])


def test_sample_random_model_matches_the_reference(tmp_path, references):
    out = tmp_path / "r"
    assert main(["sample", "--checkpoint", "random", "--arch", "pMF-Tiny/4", "--classes", "3,1,4", "--per-class",
                 "2", "--seed", "5", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert_close_to(np.load(out / "samples.npz")["images"], references["random"])


def test_the_comparison_catches_a_changed_setting(references):
    """Guidance on the fixture's model (omega 2.5 against none) moves values by up to 3 levels, a second step by
    far more: the one-level tolerance hides neither."""
    for other in ("omega2.5_interval0.1-0.7", "steps2"):
        with pytest.raises(AssertionError):
            assert_close_to(references["default"], references[other])
