"""``pmf eval --metrics`` / ``--images`` and ``pmf refstats --repr`` end to end: metrics.json records, one
reference per representation, refusals of mismatched files and bad input with nothing written, and a timm
DINOv2 from a local file through ``--metrics fd:dinov2``. The offline classifier is a seeded random one here
(its training is tested in test_quality.py); docs/evaluation.md has the figures with the trained one."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pmf.cli import main
from pmf.data import load_builtin
from pmf.evaluation import offline_score as quality
from pmf.evaluation.feature_metrics import precision_recall
from pmf.evaluation.frechet import frechet_distance_features
from pmf.evaluation.representations import extract, get_representation
from pmf.evaluation.representations import timm_models as tm

pytestmark = pytest.mark.usefixtures("one_thread")

# precision and recall come from torch-fidelity (the [eval] extra, which needs torchvision)
needs_fidelity = pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None,
                                    reason="precision and recall need pip install 'pixel-meanflow[eval]'")



@pytest.fixture
def random_offline(monkeypatch):
    """The offline representation with a seeded random classifier instead of the trained, cached one."""

    def load_classifier(dataset="mnist-5k", **kw):
        size = load_builtin(dataset, split="test").images.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return quality.Classifier(size).eval(), {"test_accuracy": 0.0}

    monkeypatch.setattr(quality, "load_classifier", load_classifier)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    train = load_builtin("digits", split="train")  # 8 px: small features keep the tests fast
    path = tmp_path_factory.mktemp("images") / "digits.npz"
    np.savez(path, images=train.images[:60], labels=train.labels[:60])
    return path


def _eval(*args):
    return main(["eval", *map(str, args), "--no-progress", "--device", "cpu", "--batch-size", "25"])


def _digits(*args):
    return _eval(*args, "--dataset", "digits")


@needs_fidelity
def test_images_npz_and_folder_score_offline_fd_precision_recall(random_offline, digits_npz, tmp_path):
    out = tmp_path / "npz"
    assert _digits("--images", digits_npz, "--repr", "offline", "--metrics", "fd,precision,recall", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("fd", "precision", "recall"):
        rec = m["metrics"][key]
        assert rec["representation"] == "offline" and rec["num_images"] == 60 and m[key] == rec["value"]
        assert rec["reference"] == "digits (test split)" and rec["reference_images"] == 179
    assert m["representations"]["offline"]["preprocessing"]["dataset"] == "digits"
    rep = get_representation("offline", dataset="digits")
    gen = extract(rep, np.load(digits_npz)["images"])["features"]
    real = extract(rep, load_builtin("digits", split="test").images)["features"]
    assert m["fd"] == pytest.approx(frechet_distance_features(gen, real), abs=1e-6)  # streamed sums vs np.cov
    assert (m["precision"], m["recall"]) == pytest.approx(precision_recall(gen, real), abs=1e-9)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(np.load(digits_npz)["images"]):
        Image.fromarray(im[..., 0]).save(folder / f"{i:03d}.png")
    out2 = tmp_path / "folder"
    assert _digits("--images", folder, "--repr", "offline", "--metrics", "fd,precision,recall", "--out", out2) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert [m2[k] for k in ("fd", "precision", "recall")] == pytest.approx([m[k] for k in ("fd", "precision",
                                                                                          "recall")], abs=1e-6)


@needs_fidelity
def test_refstats_per_representation_and_refusals(random_offline, digits_npz, tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref.npz"
    assert main(["refstats", "digits", "--split", "test", "--size", "8", "--repr", "offline",
                 "--out", str(ref), "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    with np.load(ref) as d:
        meta = json.loads(str(d["meta"]))
        assert {"offline/mu", "offline/sigma", "offline/features"} <= set(d.keys())
        assert d["offline/features"].shape == (179, 128) and "mu" not in d  # plain mu/sigma only with Inception
    assert meta["representations"]["offline"]["preprocessing"]["classifier_version"] == quality.VERSION
    base, with_ref = tmp_path / "base", tmp_path / "withref"
    metrics = "fd,precision,recall"
    assert _digits("--images", digits_npz, "--repr", "offline", "--metrics", metrics, "--out", base) == 0
    assert _digits("--images", digits_npz, "--repr", "offline", "--metrics", metrics, "--ref", ref,
                 "--out", with_ref) == 0
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (base, with_ref))
    assert [b[k] for k in metrics.split(",")] == pytest.approx([a[k] for k in metrics.split(",")], rel=1e-6)
    assert b["metrics"]["fd"]["reference"] == str(ref)

    def refused(match, *args):
        assert _digits("--images", digits_npz, "--out", tmp_path / "x", *args) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
        assert not (tmp_path / "x").exists()  # nothing half-written

    monkeypatch.setattr(quality, "VERSION", quality.VERSION + 1)
    refused("this evaluation uses offline preprocessed as", "--repr", "offline", "--metrics", "fd", "--ref", ref)
    monkeypatch.undo()
    refused("holds statistics of offline, not of pixels", "--metrics", "fd:pixels", "--ref", ref)
    padded = _padded(digits_npz, tmp_path)
    assert _digits("--images", padded, "--repr", "offline", "--metrics", "fd", "--ref", ref,
                   "--out", tmp_path / "x") == 2
    assert "8px images, the images evaluated are 12px" in capsys.readouterr().err


def _padded(npz, tmp_path):
    path = tmp_path / "padded.npz"
    np.savez(path, images=np.pad(np.load(npz)["images"], ((0, 0), (2, 2), (2, 2), (0, 0))))
    return path


def _run_raw(*args):
    """The command's function itself, so the PMFError reaches the test instead of the CLI's one-line report."""
    from pmf.cli import build_parser

    ns = build_parser().parse_args(["eval", *map(str, args), "--no-progress", "--device", "cpu"])
    return ns.func(ns)


@pytest.mark.parametrize("args, match", [
    (["--metrics", "fd,prec"], "unknown metric 'prec'"),
    (["--metrics", "fd", "--repr", "incepton"], "unknown representation 'incepton'"),
    (["--metrics", "fd:offline,fd:offline"], "asked for twice"),
    (["--metrics", "fdr", "--fdr-repr", "offline"], "no published normalising distance for offline"),
    (["--metrics", "fd:pixels"], "need a reference: --ref"),  # no built-in set named: no silent default
])
def test_bad_metric_lists_are_one_line(random_offline, digits_npz, tmp_path, args, match):
    from pmf.errors import PMFError

    with pytest.raises(PMFError, match=match) as err:
        _run_raw("--images", digits_npz, "--out", tmp_path / "out", *args)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_images_without_images_are_refused(tmp_path):
    from pmf.errors import PMFError

    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "none.npz", images=np.zeros((0, 8, 8, 1), np.uint8))
    for images, match in ((tmp_path / "empty", "no image files below"), (tmp_path / "none.npz", "need N > 0"),
                          (tmp_path / "missing.npz", "neither an .npz file nor a folder")):
        with pytest.raises(PMFError, match=match):
            _run_raw("--images", images, "--metrics", "fd", "--repr", "offline", "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_fidelity
def test_checkpoint_metrics_and_the_memorisation_picture(random_offline, tmp_path):
    from helpers import random_model

    model = random_model()  # 32 px RGB: the offline representation of digits resizes it to 8 px
    ckpt = tmp_path / "tiny.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict()},
               ckpt)
    out = tmp_path / "eval"
    assert _digits("--checkpoint", ckpt, "--repr", "offline", "--metrics", "fd,precision,recall,nearest",
                   "--num-images", 20, "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["score"] == "metrics" and m["settings"]["num_images"] == 20
    near = m["metrics"]["nearest"]
    assert near["representation"] == "offline" and near["training_images"] == 1618 and 0 <= m["nearest"] <= 1
    picture = np.asarray(Image.open(out / "nearest.png"))
    assert picture.shape[0] > 2 * 32 and picture.shape[2] == 3  # generated row above the training row
    assert m["metrics"]["fd"]["reference"] == "digits (test split)"


SMALL = dict(img_size=224, depth=2, embed_dim=48, num_heads=2)


def _dinov2_file(path, **kw):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_large_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, **kw)
    save_file({k: torch.ones_like(v) if k.endswith(".gamma") else v for k, v in net.state_dict().items()}, str(path))
    return path


def _fd_dinov2_end_to_end(tmp_path, digits_npz, monkeypatch):
    monkeypatch.setenv("PMF_DINOV2_WEIGHTS", str(tmp_path / "dinov2.safetensors"))
    out, ref = tmp_path / "eval", tmp_path / "ref.npz"
    np.savez(ref, images=load_builtin("digits", split="test").images[:12])  # a ViT-L pass per image: keep few
    assert _eval("--images", digits_npz, "--num-images", 12, "--metrics", "fd:dinov2", "--ref", ref,
                 "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    rec = m["metrics"]["fd:dinov2"]
    assert rec["representation"] == "dinov2" and rec["reference"] == str(ref) and rec["num_images"] == 12
    assert np.isfinite(m["fd:dinov2"]) and m["fd:dinov2"] > 0
    return m


def test_timm_dinov2_layout_from_a_local_file_through_fd_dinov2(tmp_path, digits_npz, monkeypatch):
    """A DINOv2 in timm's layout, shrunk to 2 blocks of width 48, random weights in a local file."""
    pytest.importorskip("timm")
    monkeypatch.setitem(tm.ALIASES, "dinov2", tm.TimmSpec("vit_large_patch14_dinov2.lvd142m", 224, SMALL))
    _dinov2_file(tmp_path / "dinov2.safetensors", **SMALL)
    m = _fd_dinov2_end_to_end(tmp_path, digits_npz, monkeypatch)
    assert m["representations"]["dinov2"]["feature_dim"] == 48


@pytest.mark.slow
def test_full_size_dinov2_l14_from_a_local_file_through_fd_dinov2(tmp_path, digits_npz, monkeypatch):
    """The real DINOv2-L/14 network (304M parameters) with random weights saved in timm's layout."""
    pytest.importorskip("timm")
    _dinov2_file(tmp_path / "dinov2.safetensors", img_size=224)
    m = _fd_dinov2_end_to_end(tmp_path, digits_npz, monkeypatch)
    assert m["representations"]["dinov2"]["feature_dim"] == 1024


def test_fdr_is_the_mean_of_the_normalised_distances_of_the_run(random_offline, digits_npz, tmp_path):
    out = tmp_path / "eval"
    assert _digits("--images", digits_npz, "--metrics", "fdr,fd:offline,fd:pixels", "--fdr-repr", "offline,pixels",
                   "--fdr-norms", "2,3", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["fdr"] == pytest.approx((m["fd:offline"] / 2 + m["fd:pixels"] / 3) / 2, rel=1e-12)
    assert m["metrics"]["fdr"]["representation"] == ["offline", "pixels"]


def _images_worker(rank, world, port, argv):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from helpers import end_process_group
    from pmf.parallel.process import setup

    setup("cpu")
    try:
        assert main(argv) == 0
    finally:
        end_process_group()


@pytest.mark.slow
def test_two_gloo_processes_score_images_as_one(digits_npz, tmp_path):
    """Each rank reads its slice of the images and of the reference; sums are all-reduced, features gathered."""
    import torch.multiprocessing as mp

    from pmf.parallel.process import free_port

    def argv(out):
        return ["eval", "--images", str(digits_npz), "--repr", "pixels", "--nearest-repr", "pixels", "--metrics",
                "fd,precision,recall,nearest", "--ref", "digits", "--train", "digits", "--out", str(out),
                "--no-progress", "--device", "cpu", "--batch-size", "16"]

    mp.start_processes(_images_worker, args=(2, free_port(), argv(tmp_path / "two")), nprocs=2, start_method="spawn")
    assert main(argv(tmp_path / "one")) == 0
    two, one = (json.loads((tmp_path / p / "metrics.json").read_text()) for p in ("two", "one"))
    assert two["world_size"] == 2 and two["num_images"] == one["num_images"] == 60
    for key in ("fd", "precision", "recall", "nearest"):
        assert two[key] == pytest.approx(one[key], abs=1e-6)
    assert two["metrics"]["recall"]["reference_sample"] == 179


@pytest.mark.slow
def test_trained_offline_representation_separates_real_digits_from_class_means(tmp_path, monkeypatch):
    """The acceptance figures with the trained classifier: real training digits get precision and recall of at
    least 0.8, per-class mean images a recall of at most 0.1 (docs/evaluation.md has the table)."""
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    train = load_builtin("mnist-5k", split="train")
    labels = np.arange(1000) % 10
    scores = {}
    for name, images in (("real", quality.matched_real(train.images, train.labels, labels)),
                         ("means", quality.class_means(train.images, train.labels, labels))):
        np.savez(tmp_path / f"{name}.npz", images=images, labels=labels)
        out = tmp_path / name
        assert _eval("--images", tmp_path / f"{name}.npz", "--repr", "offline", "--metrics", "fd,precision,recall",
                     "--out", out) == 0
        scores[name] = json.loads((out / "metrics.json").read_text())
    assert scores["real"]["precision"] >= 0.8 and scores["real"]["recall"] >= 0.8
    assert scores["means"]["recall"] <= 0.1 and scores["means"]["fd"] > 5 * scores["real"]["fd"]
