"""Evaluation: per-image seeding across batch sizes and processes, the Inception path end to end with random
weights in torch-fidelity's file format, the Inception Score, sweeps and the CLI."""

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import pmf
from helpers import random_inception_file, random_model
from pmf.checkpoints.load import load_model
from pmf.cli import main
from pmf.evaluation.evaluate import EvalSettings, grid, plot, run_samples, table
from pmf.evaluation.inception import WEIGHTS_FILE, find_weights, inception_score
from pmf.parallel.process import free_port, shard
from pmf.sampling_setting import SamplingSetting

ARCH = "pMF-Tiny/4"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = random_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict()},
               path)
    return path


def _images(model, n, batch_size, seed=0, **guidance):
    data = run_samples(model, EvalSettings(num_images=n, batch_size=batch_size, seed=seed,
                                           setting=SamplingSetting(**guidance)), keep_images=True, progress=False)
    return data


def test_images_do_not_depend_on_batch_size():
    model = random_model()
    runs = [_images(model, 16, bs, omega=2.0, t_min=0.1, t_max=0.8) for bs in (1, 7, 64)]
    first = runs[0]["images"].astype(int)
    assert first.std() > 5  # the images vary: the check below is not vacuous
    for other in runs[1:]:
        assert np.array_equal(other["index"], np.arange(16)) and np.array_equal(other["label"], np.arange(16) % 10)
        # CPU kernels may round differently per batch size: at most one level on a quantisation boundary
        diff = np.abs(first - other["images"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not np.array_equal(first, _images(model, 16, 64, seed=1)["images"])


def test_shard_covers_every_index_once():
    for n, world in ((10, 3), (7, 2), (2, 4)):
        got = sorted(i for r in range(world) for i in shard(n, r, world))
        assert got == list(range(n))


def _worker(rank, world, port, ckpt, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pmf.checkpoints.load import load_model
    from pmf.parallel.process import setup

    setup("cpu")
    model = load_model(ckpt)
    data = run_samples(model, EvalSettings(num_images=11, batch_size=1, setting=SamplingSetting(omega=2.0)),
                       keep_images=True,
                       featurize=lambda im: {"mean": im.reshape(len(im), -1).mean(1)}, progress=False)
    if rank == 0:
        np.savez(out, **data)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_give_the_images_of_one(model_file, tmp_path):
    out = tmp_path / "sharded.npz"
    mp.start_processes(_worker, args=(2, free_port(), str(model_file), str(out)), nprocs=2, start_method="spawn")
    sharded = dict(np.load(out))
    one = _images(load_model(model_file), 11, 1, omega=2.0)  # one thread: the module's one_thread fixture
    assert np.array_equal(sharded["index"], np.arange(11)) and np.array_equal(sharded["label"], one["label"])
    assert np.array_equal(sharded["images"], one["images"])
    assert np.allclose(sharded["mean"], one["images"].reshape(11, -1).mean(1))


def test_inception_path_end_to_end_with_random_weights(tmp_path, monkeypatch, model_file):
    pytest.importorskip("torch_fidelity")
    from PIL import Image

    # torch-fidelity's own download location inside the torch hub cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PMF_INCEPTION_WEIGHTS", raising=False)
    weights = random_inception_file(tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE)
    assert find_weights() == weights
    folder = tmp_path / "real" / "class0"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):  # non-square images of mixed modes: exercised through the ADM crop and RGB conversion
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).convert("L" if i % 2 else "RGB") \
            .save(folder / f"{i}.png")
    ref = tmp_path / "ref.npz"
    assert main(["refstats", str(tmp_path / "real"), "--size", "32", "--out", str(ref), "--workers", "0",
                 "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    with np.load(ref) as d:
        assert d["mu"].shape == (2048,) and d["sigma"].shape == (2048, 2048) and np.isfinite(d["sigma"]).all()
        assert json.loads(str(d["meta"]))["num_images"] == 4
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(model_file), "--ref", str(ref), "--num-images", "10",
                 "--batch-size", "5", "--omega", "2", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["score"] == "inception" and np.isfinite(m["fid"]) and m["fid"] > 0
    assert m["inception_score"] >= 1.0 and m["settings"]["omega"] == 2.0 and m["settings"]["num_images"] == 10
    assert m["inception_weights"] == str(weights)


def test_missing_inception_weights_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PMF_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(pmf.PMFError, match=WEIGHTS_FILE) as err:
        find_weights()
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE) in str(err.value)
    assert "PMF_INCEPTION_WEIGHTS" in str(err.value)
    rc = main(["refstats", "digits", "--size", "8", "--out", str(tmp_path / "r.npz"), "--device", "cpu"])
    assert rc == 2 and WEIGHTS_FILE in capsys.readouterr().err


def test_inception_score_matches_torch_fidelity():
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = np.random.default_rng(0).normal(size=(95, 30)) * 3
    ref = metric_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8)
    # one confident prediction for every image: p(y|x) = p(y), no information, score 1
    assert inception_score(np.tile(np.eye(10)[3] * 50, (40, 1))) == pytest.approx((1.0, 0.0), abs=1e-9)


def test_sweep_table_and_plot(tmp_path):
    combos = grid([1.0, 2.0], [(0.0, 1.0), (0.1, 0.8)], ["a"])
    assert len(combos) == 4 and combos[1] == {"ema": "a", "omega": 1.0, "t_min": 0.1, "t_max": 0.8}
    rows = [{**c, "frechet": 10.0 - i, "accuracy": 0.5} for i, c in enumerate(combos)]
    text = table(rows, "frechet")
    assert text.splitlines()[-1].endswith("best") and text.count("best") == 1
    assert plot(rows, "frechet", tmp_path / "s.png").stat().st_size > 1000


def test_settings_are_validated():
    with pytest.raises(pmf.PMFError, match="t_min <= t_max"):
        EvalSettings(setting=SamplingSetting(t_min=0.9, t_max=0.1))
    with pytest.raises(pmf.PMFError, match="num_images"):
        EvalSettings(num_images=1)


def test_the_demos_score_is_pmf_eval_offline_with_the_demos_seed(tmp_path, monkeypatch):
    """Why ``pmf demo`` and ``pmf eval --offline`` report different figures for one checkpoint: the demo scores
    the images of seed training-seed + 1, eval those of --seed (default 0). With the demo's seed and batch size
    eval scores exactly the demo's images; with its defaults, other images."""
    import pmf.evaluation.offline_score
    from pmf.commands.demo import SCORE_BATCH, score
    from pmf.evaluation.evaluate import evaluate

    seen = []
    monkeypatch.setattr(pmf.evaluation.offline_score, "offline_scores",
                        lambda images, labels, **kw: seen.append(images) or {})
    model = random_model()
    guidance = dict(omega=3.0, t_min=0.1, t_max=0.8)
    score(model, tmp_path, n=20, seed=1, settings=[tuple(guidance.values())], verbose=False)
    for seed in (1, 0):
        evaluate(model, EvalSettings(num_images=20, seed=seed, batch_size=SCORE_BATCH,
                                     setting=SamplingSetting(**guidance)), mode="offline",
                 progress=False)
    demo, same_seed, eval_default = seen
    assert np.array_equal(demo, same_seed) and not np.array_equal(demo, eval_default)
