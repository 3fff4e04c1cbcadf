"""Reference files per representation: round trip, the recorded preprocessing, plain FID files and ADM's
reference batches read as Inception statistics, and an ADM batch as --ref for fid, sfid, precision, recall."""

import json

import numpy as np
import pytest

from helpers import random_inception_file
from pmf.errors import PMFError
from pmf.evaluation.inception import WEIGHTS_FILE
from pmf.evaluation.reference import Reference, is_statistics_file, load_reference, save_references
from pmf.evaluation.representations import get_representation

pytestmark = pytest.mark.usefixtures("one_thread")


def _ref(rep, rng, n=8):
    f = rng.normal(size=(n, rep.feature_dim))
    return Reference(rep.name, f.mean(0), np.cov(f, rowvar=False), "src", n, f, np.arange(n),
                     preprocessing=rep.preprocessing())


def test_round_trip_and_recorded_preprocessing(tmp_path):
    rep = get_representation("pixels", size=4)
    ref = _ref(rep, np.random.default_rng(0))
    path = save_references(tmp_path / "r", [ref], {"size": 8})
    assert path.name == "r.npz" and is_statistics_file(path) and not list(tmp_path.glob(".*tmp*"))
    back = load_reference(path, rep, size=8)
    assert np.array_equal(back.mu, ref.mu) and np.allclose(back.features, ref.features, atol=1e-6)
    assert back.preprocessing == rep.preprocessing() and back.size == 8
    with pytest.raises(PMFError, match="8px images, the images evaluated are 16px"):
        load_reference(path, rep, size=16)
    other = get_representation("pixels", size=4)
    other.preprocessing = lambda: {**rep.preprocessing(), "resize": "nearest"}
    with pytest.raises(PMFError, match="made with pixels preprocessed as .* uses pixels preprocessed as") as err:
        load_reference(path, other)
    assert "\n" not in str(err.value)
    with pytest.raises(PMFError, match="holds statistics of pixels, not of offline"):
        load_reference(path, get_representation("offline", classifier=_classifier()))


def _classifier():
    from pmf.evaluation.offline_score import Classifier

    return Classifier(8).eval()


@pytest.fixture
def inception(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PMF_INCEPTION_WEIGHTS", raising=False)
    random_inception_file(tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE)
    return get_representation("inception")


def test_plain_fid_files_and_adm_batches_are_inception_statistics(tmp_path, inception):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=2048), np.eye(2048)
    np.savez(tmp_path / "fid.npz", mu=mu, sigma=sigma)
    ref = load_reference(tmp_path / "fid.npz", inception)
    assert np.array_equal(ref.mu, mu) and ref.features is None and ref.spatial is None
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    adm = load_reference(tmp_path / "adm.npz", inception)
    assert np.array_equal(adm.images, images) and adm.spatial[0].shape == (2023,)
    with pytest.raises(PMFError, match="not of pixels"):
        load_reference(tmp_path / "fid.npz", get_representation("pixels"))


@pytest.mark.slow
def test_adm_batch_as_ref_for_fid_sfid_precision_recall(tmp_path, inception):
    """ADM's evaluator reads FID and sFID statistics from the batch and precision/recall from its images."""
    from pmf.cli import main
    from pmf.evaluation.frechet import feature_stats, frechet_distance
    from pmf.evaluation.representations import extract

    rng = np.random.default_rng(1)
    ref_images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    feats = extract(inception, ref_images)
    mu, sigma = feature_stats(feats["features"])
    mu_s, sigma_s = feature_stats(feats["spatial"])
    np.savez(tmp_path / "VIRTUAL_batch.npz", arr_0=ref_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    gen = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "gen.npz", arr_0=gen)
    out = tmp_path / "eval"
    assert main(["eval", "--images", str(tmp_path / "gen.npz"), "--ref", str(tmp_path / "VIRTUAL_batch.npz"),
                 "--metrics", "fid,is,sfid,precision,recall", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    g = extract(inception, gen)
    assert m["fid"] == pytest.approx(frechet_distance(*feature_stats(g["features"]), mu, sigma), abs=1e-6)
    assert m["sfid"] == pytest.approx(frechet_distance(*feature_stats(g["spatial"]), mu_s, sigma_s), abs=1e-6)
    assert m["metrics"]["precision"]["reference_sample"] == 12 and m["inception_score"] >= 1
    assert all(m["metrics"][k]["representation"] == "inception" for k in ("fid", "sfid", "precision", "recall"))
