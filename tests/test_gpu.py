"""GPU checks (CUDA only; marked ``gpu``, excluded from the default run): parity on the device, the three
du/dt forms, bf16 autocast, the trainer in bf16, the compiled sampler with CUDA graphs and checkpointing with
the inline tangent. Run with ``python -m pytest -m gpu``."""

import pytest
import torch

from helpers import load_npz, rel_err
from pmf.checkpoints.load import load_model
from pmf.objective import Draws, pmf_loss
from pmf.sampling import sample

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def exact_matmuls():
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def test_fixture1_and_fixture2_on_cuda(tiny_model, fixtures_dir):
    m = tiny_model.cuda().eval()
    io = {k: v.cuda() for k, v in load_npz(fixtures_dir / "net_tiny_io.npz").items()}
    with torch.no_grad():
        x_u = m(io["x"], io["h"], io["omega"], io["t_min"], io["t_max"], io["y"]).x_u
    clip = io["t"].clamp(0.05, 1).view(-1, 1, 1, 1)
    assert (x_u - (io["x"] - io["u"] * clip)).abs().max() <= 1e-5
    g = {k: v.cuda() for k, v in load_npz(fixtures_dir / "generate_tiny.npz").items()}
    out = sample(m, g["noise_scale"] * g["eps"], g["labels"], steps=2, omega=3.0, t_min=0.1, t_max=0.7)
    assert (out - g["steps2_omega3"]).abs().max() <= 1e-5


@pytest.mark.parametrize("jvp", ["split", "fused", "inline"])
def test_fixture3_setting_c_on_cuda(tiny_model, fixtures_dir, jvp):
    d = {k: v.cuda() for k, v in load_npz(fixtures_dir / "loss_C.npz").items()}
    m = tiny_model.cuda()
    draws = Draws(t=d["t"], r=d["r"], noise=d["noise_scale"] * d["e_unit"], omega=d["omega"], t_min=d["t_min"],
                  t_max=d["t_max"], drop=torch.arange(8, device="cuda") < d["num_drop"])
    out = pmf_loss(m, d["x"], d["labels"], draws, num_classes=10, jvp=jvp)
    out.loss.backward()
    assert rel_err(out.du_dt, d["du_dt"]) <= 1e-4 and rel_err(out.v_g, d["v_g"]) <= 1e-4
    assert rel_err(out.u, d["u"]) <= 1e-4 and all(p.grad is not None for p in m.parameters())


def test_bf16_sampling_close_to_fp32(tiny_model):
    m = tiny_model.cuda().eval()
    noise = torch.randn(16, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    labels = torch.arange(16, device="cuda") % 10
    ref = sample(m, noise, labels, omega=3.0, t_min=0.1, t_max=0.7)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = sample(m, noise, labels, omega=3.0, t_min=0.1, t_max=0.7)
    assert low.float().isfinite().all()
    assert (low.float() - ref).abs().max() <= 5e-2


def test_trainer_bf16_on_cuda(tmp_path):
    from helpers import tiny_config
    from pmf.training.loop import train

    cfg = tiny_config(tmp_path / "run", steps=4, device="cuda", precision="bf16")
    summary = train(cfg, progress=False)
    assert summary["steps"] == 4 and torch.isfinite(torch.tensor(summary["loss"]))
    model = load_model(summary["last_checkpoint"], device="cuda")
    assert next(model.parameters()).is_cuda


def test_compiled_sampler_with_cuda_graphs_gives_the_eager_images(tiny_model):
    from pmf.sampling import generate, prepare_sampler

    m = tiny_model.cuda().eval()
    labels = torch.arange(12) % 10

    def images(model):
        return torch.cat([im for _, im in generate(model, range(12), labels, seed=1, batch_size=8, omega=3.0,
                                                  t_min=0.1, t_max=0.7, progress=False)]).int()

    eager = images(m)
    fast = images(prepare_sampler(m, compile=True, cuda_graphs=True))
    diff = (fast - eager).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_inline_checkpointing_gradients_on_cuda(tiny_model, fixtures_dir):
    from pmf.nn.model import with_options

    d = {k: v.cuda() for k, v in load_npz(fixtures_dir / "loss_C.npz").items()}
    draws = Draws(t=d["t"], r=d["r"], noise=d["noise_scale"] * d["e_unit"], omega=d["omega"], t_min=d["t_min"],
                  t_max=d["t_max"], drop=torch.arange(8, device="cuda") < d["num_drop"])

    def grads(checkpointing):
        m = with_options(tiny_model.cuda(), activation_checkpointing=checkpointing)
        m.zero_grad()
        pmf_loss(m, d["x"], d["labels"], draws, num_classes=10, jvp="inline").loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert rel_err(ckpt[name], plain[name]) <= 1e-5, name


def test_trainer_with_the_triton_tangent_matches_the_math_tangent(tmp_path):
    pytest.importorskip("triton")
    from helpers import losses, tiny_config
    from pmf.training.config import LossConfig
    from pmf.training.loop import train

    for name in ("math", "triton"):
        train(tiny_config(tmp_path / name, steps=3, device="cuda", loss=LossConfig(tangent_attention=name)),
              progress=False)
    for a, b in zip(losses(tmp_path / "math"), losses(tmp_path / "triton")):
        assert a[0] == b[0] and abs(a[1] - b[1]) <= 1e-4 * abs(a[1]) and abs(a[2] - b[2]) <= 1e-4 * abs(a[2])
