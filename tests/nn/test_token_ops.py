"""The token layout of attention (pmf.nn.token_ops, used by the ONNX export): the same numbers as the network's
[B, H, T, hd] path, whole and for a tail of query rows, and the two ops against their definitions."""

import pytest
import torch

from helpers import network_args, random_model
from pmf.errors import PMFError
from pmf.nn.attention import rope_angles
from pmf.nn.common import apply_rope
from pmf.nn.model import PMFDiT
from pmf.nn.token_ops import attention, rotary


def on_tokens(model: PMFDiT) -> PMFDiT:
    """``model``'s weights in a network built with the token layout."""
    net = PMFDiT(model.config, attention_layout="tokens")
    net.load_state_dict(model.state_dict(), strict=True)
    return net.eval()


def test_rotary_is_apply_rope_per_head_on_the_token_layout():
    B, L, H, hd = 2, 6, 3, 8
    x = torch.randn(B, L, H * hd)
    angles = rope_angles(4, hd)[:L].float()  # (L, hd/2)
    cos, sin = angles.cos(), angles.sin()
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    got = rotary(x, cos, sin, positions, H)
    for b in range(B):
        heads = x[b].view(L, H, hd).transpose(0, 1)[None]  # (1, H, L, hd)
        want = apply_rope(heads, cos[positions[b]], sin[positions[b]])[0].transpose(0, 1).reshape(L, H * hd)
        torch.testing.assert_close(got[b], want, rtol=0, atol=0)


def test_attention_is_per_head_softmax_attention():
    B, Lq, L, H, hd = 2, 3, 5, 2, 4
    q, k, v = torch.randn(B, Lq, H * hd), torch.randn(B, L, H * hd), torch.randn(B, L, H * hd)
    got = attention(q, k, v, H)
    for h in range(H):
        part = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / hd**0.5, dim=-1)
        torch.testing.assert_close(got[..., part], weights @ v[..., part], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", [None, 64, 10])
def test_token_layout_gives_the_network_outputs(tail):
    """Every block's attention in both layouts, whole and with the last ``tail`` query rows (64: every
    rotated row; 10: some)."""
    model = random_model(seed=4)
    tokens = on_tokens(model)
    assert model.shared_blocks[0].attn.layout == "heads" and tokens.shared_blocks[0].attn.layout == "tokens"
    x = torch.randn(2, model.config.num_prefix_tokens + model.config.num_patches, model.config.hidden_size)
    with torch.no_grad():
        want = model.shared_blocks[0].attn(x, tail)
        got = tokens.shared_blocks[0].attn(x, tail)
    assert got.shape == want.shape and want.abs().max() > 0.01
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    args = network_args(torch.randn(2, 3, 32, 32), [1, 7])
    with torch.no_grad():
        want = model(*args, heads="u").x_u
        got = tokens(*args, heads="u").x_u
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_bad_tail_is_refused_in_the_token_layout():
    model = on_tokens(random_model(seed=4))
    x = torch.randn(1, model.config.num_prefix_tokens + model.config.num_patches, model.config.hidden_size)
    with pytest.raises(ValueError, match="tail must be"):
        model.shared_blocks[0].attn(x, 0)


def test_the_layout_is_a_construction_option_of_the_network():
    with pytest.raises(PMFError, match="attention layout must be 'heads' or 'tokens', got 'rows'"):
        PMFDiT(random_model().config, attention_layout="rows")
