"""One rule for picking classes by index or name (pmf.class_choice): pmf sample --classes, pmf serve's
/generate and the diffusers pipeline read a class the same way, also when class names are numbers; training
refuses a class folder whose name has a comma; a gray folder packs to one channel; images at the top of a
class-layout folder are said to be left out."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pmf.class_choice import parse_classes
from pmf.cli import main
from pmf.errors import PMFError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--recipe", "tiny", "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--no-progress",
        "--workers", "0"]


def folder(root, names, mode="RGB", size=16, per_class=2):
    gen = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(gen.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / name / f"{i}.png")
    return root


def test_numbers_that_are_class_names_are_names_everywhere_in_the_text():
    names = ["1", "2", "3"]
    assert parse_classes("1", 3, names) == [0]
    assert parse_classes("1-2", 3, names) == [0, 1]
    assert parse_classes("1-3", 3, names) == [0, 1, 2]
    assert parse_classes("3,1", 3, names) == [2, 0]
    with pytest.raises(PMFError, match="its names are numbers"):
        parse_classes("0", 3, names)  # not a name: never an index of such a model
    digits = [str(i) for i in range(10)]  # names equal to their indices: no ambiguity
    assert parse_classes("3-5,9", 10, digits) == [3, 4, 5, 9]
    pets = ["cat", "dog", "x-ray", "owl"]
    assert parse_classes("1,cat-x-ray,owl", 4, pets) == [1, 0, 1, 2, 3]
    assert parse_classes("x-ray", 4, pets) == [2]
    with pytest.raises(PMFError, match="unknown class 'seven'"):
        parse_classes("seven", 4, pets)
    with pytest.raises(PMFError, match="out of range"):
        parse_classes("0-4", 4, pets)


def test_a_model_of_number_named_folders_samples_them_by_name(tmp_path, capsys):
    data = folder(tmp_path / "data", ["1", "2", "3"])
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *FAST]) == 0
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run), "--classes", "1-3", "--per-class", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert np.load(out / "samples.npz")["labels"].tolist() == [0, 1, 2]
    assert main(["sample", "--checkpoint", str(run), "--classes", "0", "--out", str(out), "--no-progress"]) == 2
    assert "its names are numbers" in capsys.readouterr().err


def test_generate_takes_names_as_pmf_sample_does(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from helpers import random_model
    from pmf.cli import build_parser
    from pmf.commands.serve import build

    model = random_model(seed=2)
    names = ["seven", "x y"] + [str(i) for i in range(2, 10)]
    ckpt = tmp_path / "named.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "train_config": {"arch": "pMF-Tiny/4"}, "class_names": names}, ckpt)
    app, _, _ = build(build_parser().parse_args(["serve", "--checkpoint", str(ckpt), "--max-wait-ms", "1"]))
    with TestClient(app) as client:
        resp = client.post("/generate", json={"classes": ["seven", 3, "x y", "4"], "format": "npz"})
        assert resp.status_code == 200, resp.text
        assert np.load(io.BytesIO(resp.content))["labels"].tolist() == [0, 3, 1, 4]
        bad = client.post("/generate", json={"classes": [1, "eight"]})
        assert bad.status_code == 422 and bad.json()["field"] == "classes[1]" and "'eight'" in bad.json()["detail"]
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(ckpt), "--classes", "seven,3,x y,4", "--per-class", "1", "--out",
                 str(out), "--no-progress", "--no-png"]) == 0
    assert np.load(out / "samples.npz")["labels"].tolist() == [0, 3, 1, 4]


def test_a_class_folder_with_a_comma_is_refused_at_training_time(tmp_path, capsys):
    data = folder(tmp_path / "data", ["x,y", "z"])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class folder 'x,y'" in err[0] and "rename it" in err[0]


def test_a_gray_folder_packs_to_one_channel_and_trains_a_gray_model(tmp_path, capsys):
    data = folder(tmp_path / "gray", ["a", "b"], mode="L")
    pack = tmp_path / "gray.pmfpack"
    assert main(["pack", str(data), "--out", str(pack), "--size", "16", "--no-progress", "--workers", "1"]) == 0
    assert "(gray: one channel" in capsys.readouterr().out
    assert np.load(pack / "images.npy", mmap_mode="r").shape == (4, 16, 16, 1)
    assert main(["train", "--data", str(pack), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert "model pMF-Tiny/4 with num_classes=2, in_channels=1, input_size=16" in capsys.readouterr().err


def test_images_at_the_top_of_a_class_folder_are_said_to_be_left_out(tmp_path, capsys):
    data = folder(tmp_path / "data", ["a", "b"])
    for i in range(3):
        Image.new("RGB", (16, 16)).save(data / f"loose{i}.png")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert "4 images, 2 classes" in (err := capsys.readouterr().err) and "left out 3 images at the top" in err
    assert main(["pack", str(data), "--out", str(tmp_path / "p"), "--size", "16", "--no-progress"]) == 0
    assert "left out 3 images at the top" in capsys.readouterr().out


def test_class_names_fit_a_model_only_with_one_name_per_class():
    from helpers import written_again
    from pmf.class_choice import check_class_names, fitting_names

    assert fitting_names(("a", "b"), 2) == ["a", "b"]
    assert fitting_names(["a", "b"], 3) is None and fitting_names(None, 2) is None and fitting_names([], 2) is None
    check_class_names(None, 3)
    check_class_names(["a", "b", "c"], 3)
    with pytest.raises(PMFError, match="2 class names for a model of 3 classes"):
        check_class_names(["a", "b"], 3)
    assert not written_again(r"len\([\w.]+\) *[!=]= *[\w.]*num_classes\b", home="class_choice.py")
