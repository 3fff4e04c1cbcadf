"""Unconditional data: a folder of loose MNIST digits (no class sub-folders) trains a one-class model, said in
one line; ``pmf sample`` and ``pmf serve`` need no classes for it, and it samples without guidance by default."""

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from pmf.checkpoints.load import latest_checkpoint, read_file
from pmf.cli import main
from pmf.data import load_builtin

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_class_run(tmp_path_factory):
    """2 steps of the tiny recipe on 48 loose MNIST digits; (run folder, the train command's stderr)."""
    root = tmp_path_factory.mktemp("uncond")
    folder = root / "digits"
    folder.mkdir()
    data = load_builtin("mnist-5k", split="train")
    for i in range(48):
        Image.fromarray(data.images[i][..., 0], mode="L").save(folder / f"{i:03d}.png")
    run = root / "run"
    err = io.StringIO()

    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--recipe", "tiny", "--data", str(folder), "--steps", "2", "--ckpt-every", "2",
                     "--sample-every", "2", "--out", str(run), "--no-progress", "--workers", "0"]) == 0
    return run, err.getvalue()


def test_a_folder_of_loose_digits_trains_a_one_class_model(one_class_run, tmp_path, capsys):
    run, err = one_class_run
    line = next(ln for ln in err.splitlines() if ln.startswith("data "))
    assert "48 images, one class (an unconditional model), 28x28, gray" in line and "num_classes=1" in line
    ckpt = read_file(latest_checkpoint(run / "checkpoints"))
    assert ckpt["model_config"]["num_classes"] == 1 and ckpt["class_names"] == ["digits"]
    assert ckpt["train_config"]["sample"]["omega"] == 1.0  # no guidance by default for one class
    assert (run / "samples" / "step_00000002.png").is_file()
    assert main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s"), "--num-images", "3",
                 "--no-progress"]) == 0
    s = np.load(tmp_path / "s" / "samples.npz")
    assert s["images"].shape == (3, 28, 28, 1) and s["labels"].tolist() == [0, 0, 0]
    assert "sampling: omega 1," in capsys.readouterr().out


def test_serve_takes_a_request_without_classes_for_a_one_class_model(one_class_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pmf.cli import build_parser
    from pmf.commands.serve import build

    app, info, _ = build(build_parser().parse_args(["serve", "--checkpoint", str(one_class_run[0])]))
    with TestClient(app) as client:
        r = client.post("/generate", json={"format": "npz"})
        assert r.status_code == 200, r.text
        assert np.load(io.BytesIO(r.content))["labels"].tolist() == [0]
        assert client.post("/generate", json={"classes": [1]}).status_code == 422  # out of range still refused
