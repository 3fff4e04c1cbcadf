"""Activation checkpointing of the transformer blocks: exact losses and gradients on the du/dt paths, the
inline tangent left out of the backward recomputation, fewer saved activations, and the trainer."""

import pytest
import torch

import pmf
from helpers import losses, rel_err, tiny_config
from pmf import objective as O
from pmf.errors import PMFError
from pmf.nn.layers import Block
from pmf.nn.model import with_options
from pmf.training.config import LossConfig, SampleConfig
from pmf.training.loop import train


def _model():
    """pMF-Tiny/4 in float64 with non-zero gates and output layers, so that every block carries signal."""
    torch.manual_seed(0)
    m = pmf.build_model("pMF-Tiny/4").double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("attn_scale", "mlp_scale")) or "final_layer.linear.weight" in name:
                p.normal_(0, 0.1)
    return m


def _batch(m, B=4):
    c = m.config
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, c.in_channels, c.input_size, c.input_size, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.arange(B) % c.num_classes
    d = O.sample_draws(x, P_mean=0.0, P_std=1.0, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0,
                       class_dropout_prob=0.3, noise_scale=1.0, generator=g)
    d.t, d.r, d.omega, d.t_min, d.t_max = (v.double() for v in (d.t, d.r, d.omega, d.t_min, d.t_max))
    return x, y, d


def _step(m, x, y, d, jvp):
    m.zero_grad(set_to_none=True)
    out = O.pmf_loss(m, x, y, d, num_classes=m.config.num_classes, jvp=jvp)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in m.named_parameters()}


def _num_blocks(m):
    return sum(isinstance(b, Block) for b in m.modules())


@pytest.mark.parametrize("jvp", ["inline", "split"])
def test_checkpointing_gives_the_same_loss_du_dt_and_gradients_float64(jvp):
    m = _model()
    x, y, d = _batch(m)
    ref, ref_grads = _step(m, x, y, d, jvp)
    keys = set(m.state_dict())
    m = with_options(m, activation_checkpointing=True)
    assert set(m.state_dict()) == keys and all(b.checkpointing for b in m.modules() if isinstance(b, Block))
    out, grads = _step(m, x, y, d, jvp)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-12 * abs(ref.loss.item())
    for key in ("du_dt", "V", "v"):
        assert rel_err(getattr(out, key), getattr(ref, key)) <= 1e-12, key
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert rel_err(g, ref_grads[name]) <= 1e-12, name
    assert all(g.abs().max() > 0 for name, g in ref_grads.items() if "_scale" in name)  # every block mattered


@pytest.mark.parametrize("tail", [None, 64])
def test_block_jvp_primal_saves_what_forward_saves(tail):
    # the checkpointed jvp rebuilds its saved tensors with forward: same tensors, same order
    block = _model().shared_blocks[1]
    x = torch.randn(2, 84, 64, dtype=torch.float64)
    dx = torch.randn_like(x)

    def saved(fn, *args):
        packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.detach().clone()) or t, lambda t: t):
            fn(*args)
        return packed

    fwd, jvp = saved(block._forward, x, tail), saved(block._jvp, x, dx, tail)
    assert len(fwd) == len(jvp) > 10
    for i, (a, b) in enumerate(zip(fwd, jvp)):
        assert a.shape == b.shape and torch.equal(a, b), i


def test_inline_checkpointing_recomputes_the_primal_only_and_saves_less(monkeypatch):
    m = _model()
    x, y, d = _batch(m)
    calls = []

    def counting(name):
        real = getattr(Block, name)

        def counted(self, *args, **kwargs):
            calls.append(name)
            return real(self, *args, **kwargs)
        return counted

    for name in ("_forward", "_jvp"):
        monkeypatch.setattr(Block, name, counting(name))

    def run():
        """(bytes saved for backward in the pMF step, block calls during its backward)."""
        nbytes = [0]

        def pack(t):
            nbytes[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = O.pmf_loss(m, x, y, d, num_classes=m.config.num_classes, jvp="inline")
        calls.clear()
        out.loss.backward()
        return nbytes[0], list(calls)

    plain_bytes, plain_calls = run()
    m = with_options(m, activation_checkpointing=True)
    ckpt_bytes, ckpt_calls = run()
    assert plain_calls == []
    # every block (trunk and u-head: jvp; v-head: forward) is recomputed once, as its primal alone
    assert ckpt_calls == ["_forward"] * _num_blocks(m)
    assert ckpt_bytes < 0.25 * plain_bytes


def test_trainer_runs_inline_with_checkpointing_and_matches_the_plain_run(tmp_path):
    kw = dict(steps=2, ckpt_every=2, sample=SampleConfig(every=100, count=10),
              loss=LossConfig(jvp="inline"))
    train(tiny_config(tmp_path / "plain", **kw), progress=False)
    train(tiny_config(tmp_path / "ckpt", grad_checkpointing=True, **kw), progress=False)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert [r[0] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert ra == pytest.approx(rb, rel=1e-6, abs=0)  # step 2 also checks the first update's gradients


def test_config_accepts_checkpointing_with_inline_and_refuses_fused(tmp_path):
    assert tiny_config(tmp_path, grad_checkpointing=True, loss=LossConfig(jvp="inline")).grad_checkpointing
    with pytest.raises(PMFError, match="loss.jvp"):
        tiny_config(tmp_path, grad_checkpointing=True, loss=LossConfig(jvp="fused"))
