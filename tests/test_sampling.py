"""Sampling: fixture 2 parity, per-image seeding, the CLI."""

import numpy as np
import pytest
import torch

import pmf
from helpers import load_npz
from pmf.cli import main
from pmf.errors import PMFError
from pmf.sampling import generate, image_labels, image_noise, image_seed, prepare_sampler, sample


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("omega", [3, 1])
def test_fixture2_samples(tiny_model, fixtures_dir, steps, omega):
    d = load_npz(fixtures_dir / "generate_tiny.npz")
    noise = d["noise_scale"].item() * d["eps"]
    out = sample(tiny_model.eval(), noise, d["labels"], steps=steps, omega=float(omega), t_min=d["t_min"].item(),
                 t_max=d["t_max"].item())
    assert (out - d[f"steps{steps}_omega{omega}"]).abs().max() <= 1e-5


def test_one_step_sample_is_u_head_prediction(tiny_model):
    noise = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x_u = tiny_model(noise, 1.0, 2.0, 0.1, 0.7, torch.tensor([1, 2])).x_u
    out = sample(tiny_model, noise, torch.tensor([1, 2]), omega=2.0, t_min=0.1, t_max=0.7)
    assert (out - x_u).abs().max() <= 1e-6


def test_samples_do_not_depend_on_batch_size(tiny_model):
    labels = torch.arange(13) % 10
    runs = []
    for bs in (1, 7, 64):
        runs.append(np.concatenate([b.numpy() for _, b in generate(tiny_model, range(13), labels, seed=4,
                                                                     batch_size=bs, progress=False)]).astype(int))
    # identical noise per image; CPU kernels may round differently per batch size, which can flip a pixel
    # that sits on a quantisation boundary by one level
    for other in runs[1:]:
        assert np.abs(runs[0] - other).max() <= 1 and (runs[0] != other).mean() < 1e-3
    a = image_noise([5, 6], (3, 4, 4), seed=1)
    assert torch.equal(a[1], image_noise([6], (3, 4, 4), seed=1)[0])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, image_noise([5, 6], (3, 4, 4), seed=2))


def test_sample_rejects_bad_guidance(tiny_model):
    noise = torch.randn(1, 3, 32, 32)
    with pytest.raises(pmf.PMFError, match="omega must be > 0"):
        sample(tiny_model, noise, torch.tensor([1]), omega=-1.0)
    with pytest.raises(pmf.PMFError, match="needs t_min <= t_max"):
        sample(tiny_model, noise, torch.tensor([1]), t_min=0.9, t_max=0.1)
    with pytest.raises(pmf.PMFError, match="steps must be a positive integer"):
        sample(tiny_model, noise, torch.tensor([1]), steps=0)


def test_cli_sample_writes_pngs_grid_and_npz(tiny_release_sd, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_release_sd, ckpt)
    out = tmp_path / "out"
    rc = main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--classes", "1,3", "--per-class", "3",
               "--omega", "3", "--t-min", "0.1", "--t-max", "0.7", "--seed", "2", "--device", "cpu"])
    assert rc == 0
    data = np.load(out / "samples.npz")
    assert data["images"].dtype == np.uint8 and data["images"].shape == (6, 32, 32, 3)
    assert data["labels"].dtype == np.int64 and data["labels"].tolist() == [1, 1, 1, 3, 3, 3]
    assert (out / "grid.png").exists() and len(list(out.glob("*_class*.png"))) == 6
    rc = main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--classes", "12", "--device", "cpu"])
    assert rc == 2 and "class 12 out of range [0, 9]" in capsys.readouterr().err
    rc = main(["sample", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "checkpoint file not found" in capsys.readouterr().err


def _images(model, **kw):
    labels = torch.arange(6) % 10
    return torch.cat([im for _, im in generate(model, range(6), labels, seed=5, batch_size=4, omega=3.0, t_min=0.1,
                                              t_max=0.7, progress=False, **kw)]).int()


def test_compiled_sampler_gives_the_eager_images(tiny_model):
    # batches of 4 then 2: two static graphs, frozen weights; uint8 images equal up to one rounding level
    torch.manual_seed(0)
    eager = _images(tiny_model.eval())
    fast = prepare_sampler(tiny_model.eval(), compile=True)
    assert fast.config is tiny_model.config
    diff = (_images(fast) - eager).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    with pytest.raises(PMFError, match="compile"):
        prepare_sampler(tiny_model, cuda_graphs=True)


def test_bf16_sampling_is_close_and_precision_is_checked(tiny_model, tiny_release_sd, tmp_path):
    eager, bf16 = _images(tiny_model.eval()), _images(tiny_model.eval(), precision="bf16")
    diff = (bf16 - eager).abs().float()
    assert 0 < diff.mean() < 1 and diff.max() <= 4  # bf16 matmuls: measured 0.24 levels on average, 2 at most
    with pytest.raises(PMFError, match="precision"):
        _images(tiny_model.eval(), precision="fp16")
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_release_sd, ckpt)
    rc = main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--classes", "0-5", "--per-class",
               "1", "--omega", "3", "--t-min", "0.1", "--t-max", "0.7", "--seed", "5", "--batch-size", "4",
               "--precision", "bf16", "--device", "cpu", "--no-png"])
    assert rc == 0
    # the CLI draws its noise per image index like generate: the same six bf16 images
    assert np.array_equal(np.load(tmp_path / "o" / "samples.npz")["images"], bf16.numpy())


def test_image_seeds_and_first_noise_values_are_pinned():
    """Published samples depend on the per-image seeds: these values are today's and must never change."""
    pinned = {(0, 0): 1, (0, 1): 4564476756301768123, (1, 0): 2177342782468422679, (3, 12345): 194439710052553355,
              (2**40, 7): 425038451427359513}
    assert {key: image_seed(*key) for key in pinned} == pinned
    noise = image_noise([0, 1, 5], (1, 4, 4), seed=0)
    expected = torch.tensor([[-1.5255959033966064, -0.7502318024635315], [-0.37621787190437317, -0.9262668490409851],
                             [-0.14029118418693542, -0.8651410937309265]])
    assert torch.equal(noise[:, 0, 0, :2], expected)
    assert image_labels(range(5), 1000, seed=0).tolist() == [505, 181, 711, 263, 755]


def test_random_checkpoint_is_seeded_and_needs_an_arch():
    from argparse import Namespace

    from pmf.commands._args import load_for_sampling

    def model_from_arg(arch, seed=None):
        args = Namespace(checkpoint="random", arch=arch, ema=None, **({} if seed is None else {"seed": seed}))
        return load_for_sampling(args, "cpu").model

    a = model_from_arg("pMF-Tiny/4", seed=3)
    torch.manual_seed(123)
    b = model_from_arg("pMF-Tiny/4", seed=3)
    c = model_from_arg("pMF-Tiny/4", seed=4)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    torch.manual_seed(123)
    d = model_from_arg("pMF-Tiny/4")  # a command without --seed (export-generator) seeds with 0
    e = model_from_arg("pMF-Tiny/4", seed=0)
    assert all(torch.equal(v, e.state_dict()[k]) for k, v in d.state_dict().items())
    with pytest.raises(PMFError, match="needs --arch"):
        model_from_arg(None)


def test_noise_scale_given_or_the_models():
    """One rule for the noise scale (generate, the sampler, the evaluation): the given one, else the model's."""
    from types import SimpleNamespace

    from pmf.sampling import noise_scale_of

    cfg = SimpleNamespace(noise_scale=2.0)
    assert noise_scale_of(cfg, None) == 2.0
    assert noise_scale_of(cfg, 1.0) == 1.0
    assert noise_scale_of(cfg, 0.0) == 0.0  # zero is a value, not "unset"
