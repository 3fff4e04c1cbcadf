"""The exported one-step generator gives the images of the eager sampler (and of the release fixture)."""

import json

import pytest
import torch

import pmf
from helpers import load_npz
from pmf.cli import main
from pmf.export.generator import OneStepGenerator
from pmf.sampling import sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tiny_release_sd, tmp_path_factory):
    threads = torch.get_num_threads()  # set here: the module's one_thread fixture starts after this one
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("export")
        ckpt = folder / "tiny.pt"
        torch.save(tiny_release_sd, ckpt)
        rc = main(["export-generator", "--checkpoint", str(ckpt), "--arch", "pMF-Tiny/4", "--noise-scale", "2.0",
                   "--out", str(folder / "gen.pt2"), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return folder


def test_exported_program_reproduces_eager_and_fixture2(exported, tiny_model, fixtures_dir):
    d = load_npz(fixtures_dir / "generate_tiny.npz")
    gen = torch.export.load(str(exported / "gen.pt2")).module()
    info = json.loads((exported / "gen.json").read_text())
    assert info["noise_scale"] == 2.0 and info["inputs"]["eps"] == ["B", 3, 32, 32]
    for B in (4, 1):  # traced at batch 2; the batch size is dynamic
        eps, labels = d["eps"][:B], d["labels"][:B]
        omega, t_min, t_max = torch.full((B,), 3.0), torch.full((B,), 0.1), torch.full((B,), 0.7)
        images = gen(eps, labels, omega, t_min, t_max)
        eager = sample(tiny_model.eval(), 2.0 * eps, labels, omega=3.0, t_min=0.1, t_max=0.7)
        assert images.shape == eager.shape
        assert (images - eager).abs().max() <= 1e-6
        assert (images - d["steps1_omega3"][:B]).abs().max() <= 1e-5
    # per-sample guidance inputs are real inputs of the program, not constants baked in at trace time
    mixed = gen(d["eps"][:2], d["labels"][:2], torch.tensor([3.0, 1.0]), torch.full((2,), 0.1), torch.full((2,), 0.7))
    assert (mixed[1] - d["steps1_omega1"][1]).abs().max() <= 1e-5


def test_generator_drops_the_v_head_and_rejects_bad_shapes(tiny_model):
    gen = OneStepGenerator(tiny_model)
    assert not gen.net.has_v_head and not any(k.startswith("v_") for k in gen.net.state_dict())
    with pytest.raises(pmf.PMFError, match=r"\[B, 3, 32, 32\]"):
        gen(torch.randn(1, 3, 16, 16), torch.zeros(1, dtype=torch.long), torch.ones(1), torch.zeros(1), torch.ones(1))


def test_cli_export_rejects_bad_arguments(tmp_path, capsys):
    rc = main(["export-generator", "--checkpoint", "random", "--arch", "pMF-Tiny/4", "--out", str(tmp_path / "g.onnx")])
    assert rc == 2 and "--out must end in .pt2" in capsys.readouterr().err
    rc = main(["export-generator", "--checkpoint", "random", "--out", str(tmp_path / "g.pt2")])
    assert rc == 2 and "needs --arch" in capsys.readouterr().err
