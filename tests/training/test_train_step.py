"""Each step of ``pmf.training.loop.train`` is exactly ``pmf_loss``'s gradients followed by the optimiser step and the
EMA update, on the batch and draws the loop's data order and seeds define."""

import pytest
import torch

from pmf.checkpoints.load import read_file
from pmf.data import open_training_data
from pmf.data.order import DataOrder, to_model_input
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT
from pmf.objective import pmf_loss, sample_draws
from pmf.training.config import EMAConfig, OptimConfig, SampleConfig, TrainConfig
from pmf.training.ema import edm_beta
from pmf.training.loop import step_seed, train
from pmf.training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("jvp", ["inline", "split"])
def test_train_steps_are_pmf_loss_then_the_optimiser_step_then_the_emas(tmp_path, jvp):
    cfg = TrainConfig(arch="pMF-Tiny/4", model_overrides=dict(input_size=8, in_channels=1, hidden_size=32, depth=2,
                                                             aux_head_depth=1, num_heads=2),
                      data="digits", batch_size=8, steps=3, seed=5, optim=OptimConfig(lr=1e-2),
                      ema=EMAConfig(halflives_kimg=[0.05], decays=[0.9]), sample=SampleConfig(every=0),
                      out=str(tmp_path), log_every=1, ckpt_every=3, device="cpu", num_workers=0)
    cfg.loss.jvp = jvp
    train(cfg, progress=False)
    saved = read_file(tmp_path / "checkpoints" / "step_00000003.pt")

    # The same steps written out by hand from the library's pieces.
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    torch.manual_seed(cfg.seed)
    model = PMFDiT(mcfg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    emas = {"d0.9": dict(start), "hl0.05": dict(start)}
    data = open_training_data(cfg.data, mcfg.input_size)
    order = DataOrder(len(data.labels), cfg.batch_size, 0, 1, cfg.seed)
    opt = build_optimizer(model, cfg.optim)
    L = cfg.loss
    for step in range(cfg.steps):
        idx = order.indices(step)
        x = to_model_input(torch.from_numpy(data.images[idx]), mcfg, "cpu")
        y = torch.from_numpy(data.labels[idx])
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 0))
        draws = sample_draws(x, P_mean=L.P_mean, P_std=L.P_std, data_proportion=L.data_proportion,
                             cfg_max=L.cfg_max, cfg_beta=L.cfg_beta, class_dropout_prob=L.class_dropout_prob,
                             noise_scale=mcfg.noise_scale, tr_uniform=L.tr_uniform, generator=gen)
        res = pmf_loss(model, x, y, draws, num_classes=mcfg.num_classes, norm_p=L.norm_p, norm_eps=L.norm_eps,
                       jvp=jvp)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        betas = {"d0.9": 0.9, "hl0.05": edm_beta(step + 1, cfg.batch_size, 0.05, cfg.ema.rampup)}
        for name, ema in emas.items():
            emas[name] = {k: e.lerp(model.state_dict()[k], 1 - betas[name]) for k, e in ema.items()}

    moved = 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(saved["model"][k], v, rtol=0, atol=1e-6, msg=k)
        moved += int(not torch.equal(v, start[k]))
    assert moved > 0.8 * len(start)  # the steps changed most tensors, so the equality above is not trivial
    for name, ema in emas.items():
        for k, v in ema.items():
            torch.testing.assert_close(saved["ema"][name][k], v, rtol=0, atol=1e-6, msg=(name, k))
    assert all(float(s["step"]) == cfg.steps for s in saved["optimizer"]["state"].values())
