"""FD-loss math (pmf.posttrain.fd_loss) against independent float64 computations written here from the definitions."""

import numpy as np
import pytest
import scipy.linalg
import torch

from pmf.posttrain.fd_loss import (
    ema_moments,
    ema_update,
    frechet_distance,
    queue_moments,
    ref_factor,
    sqrt_psd,
    weighted_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(n, d, seed, shift=0.0):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, d)) @ g.normal(size=(d, d)) / np.sqrt(d) + shift


def _scipy_fd(a, b):
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), the textbook FID formula."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))


@pytest.mark.parametrize("d", [3, 24])
def test_loss_equals_scipy_sqrtm_formula(d):
    a, b = _features(300, d, 0), _features(400, d, 1, shift=0.3)
    ref = _scipy_fd(a, b)
    mu_b, s_b = torch.from_numpy(b.mean(0)), torch.from_numpy(np.cov(b, rowvar=False))
    got = frechet_distance(torch.from_numpy(a.mean(0)), torch.from_numpy(np.cov(a, rowvar=False)), mu_b, s_b,
                           sqrt_psd(s_b))
    assert got.dtype == torch.float64
    assert abs(got.item() - ref) <= 1e-6 * abs(ref)
    assert ref > 0.1  # not a comparison of near-zero numbers


def test_sqrt_psd_squares_back():
    s = torch.from_numpy(np.cov(_features(50, 8, 2), rowvar=False))
    r = sqrt_psd(s)
    torch.testing.assert_close(r @ r, s, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r, r.T)


def _ref(d, seed=3):
    b = torch.from_numpy(_features(200, d, seed, shift=0.5))
    mu, sigma = b.mean(0), torch.cov(b.T)
    return mu, sigma, sqrt_psd(sigma)


def test_gradient_matches_finite_differences_ema():
    d, beta = 5, 0.9
    mu_ref, s_ref, root = _ref(d)
    old = torch.from_numpy(_features(100, d, 4))
    mu_ema, m2_ema = old.mean(0), old.T @ old / len(old)
    feats = torch.from_numpy(_features(12, d, 5)).requires_grad_()

    def loss(f):
        return frechet_distance(*ema_moments(mu_ema, m2_ema, f, beta), mu_ref, s_ref, root)

    assert torch.autograd.gradcheck(loss, (feats,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_matches_finite_differences_queue():
    d, n = 4, 30
    mu_ref, s_ref, root = _ref(d)
    rows = torch.from_numpy(_features(n, d, 6))
    feats = torch.from_numpy(_features(5, d, 7)).requires_grad_()

    def loss(f):
        return frechet_distance(*queue_moments(rows.sum(0), rows.T @ rows, rows[:5], f, n), mu_ref, s_ref, root)

    assert torch.autograd.gradcheck(loss, (feats,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_is_finite_against_a_rank_deficient_reference():
    # ReLU features: a dimension that is always zero in the reference makes Sigma_ref singular
    d = 6
    b = torch.from_numpy(_features(300, d, 8)).clamp_min(0)
    b[:, 2] = 0
    mu_ref, s_ref = b.mean(0), torch.cov(b.T)
    f = torch.from_numpy(_features(40, d, 9)).requires_grad_()
    fd = frechet_distance(f.mean(0), torch.cov(f.T), mu_ref, s_ref, sqrt_psd(s_ref))
    fd.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    ref = _scipy_fd(f.detach().numpy(), b.numpy())
    assert abs(fd.item() - ref) <= 1e-6 * abs(ref)


def test_ema_moments_follow_their_definition():
    d, beta = 4, 0.99
    g = torch.Generator().manual_seed(0)
    mu_ema, m2_ema = torch.randn(d, dtype=torch.float64, generator=g), torch.eye(d, dtype=torch.float64) * 2
    f = torch.randn(7, d, dtype=torch.float64, generator=g, requires_grad=True)
    mu, sigma = ema_moments(mu_ema, m2_ema, f, beta)
    want_mu = beta * mu_ema + (1 - beta) * f.detach().mean(0)
    want_m2 = beta * m2_ema + (1 - beta) * sum(torch.outer(r, r) for r in f.detach()) / 7
    torch.testing.assert_close(mu.detach(), want_mu)
    torch.testing.assert_close(sigma.detach(), want_m2 - torch.outer(want_mu, want_mu))
    # the gradient reaches the batch only, scaled by (1 - beta)
    mu.sum().backward()
    torch.testing.assert_close(f.grad, torch.full_like(f, (1 - beta) / 7))
    # and the update after the step is the same blend, in place
    before = mu_ema.clone()
    ema_update(mu_ema, m2_ema, f, beta)
    torch.testing.assert_close(mu_ema, beta * before + (1 - beta) * f.detach().mean(0))
    torch.testing.assert_close(m2_ema, want_m2)


def test_queue_moments_are_the_mean_and_covariance_of_the_newest_rows():
    n, d, b = 20, 3, 6
    rows = torch.from_numpy(_features(n, d, 10))
    new = torch.from_numpy(_features(b, d, 11))
    mu, sigma = queue_moments(rows.sum(0), rows.T @ rows, rows[:b], new, n)
    snapshot = torch.cat([new, rows[b:]]).numpy()
    np.testing.assert_allclose(mu.numpy(), snapshot.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(snapshot, rowvar=False), rtol=1e-10, atol=1e-12)


def test_normalised_loss_value_and_gradient():
    x = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    fd = x ** 2
    loss = weighted_loss({"a": fd, "b": 2 * fd}, {"a": 1.0, "b": 0.5})
    assert loss.item() == pytest.approx(9 / 9.01 + 0.5 * 18 / 18.01, rel=1e-12)
    loss.backward()
    assert x.grad.item() == pytest.approx(6 / 9.01 + 0.5 * 12 / 18.01, rel=1e-12)


def test_a_low_rank_factor_of_the_reference_gives_the_same_distance_and_gradient():
    d = 12
    b = torch.from_numpy(_features(7, d, 12))  # 7 images: Sigma_ref of rank 6
    mu_ref, s_ref = b.mean(0), torch.cov(b.T)
    q = ref_factor(s_ref)
    assert q.shape == (d, 6)
    torch.testing.assert_close(q @ q.T, s_ref)
    grads = []
    for root in (sqrt_psd(s_ref), q):
        f = torch.from_numpy(_features(30, d, 13)).requires_grad_()
        fd = frechet_distance(f.mean(0), torch.cov(f.T), mu_ref, s_ref, root)
        fd.backward()
        grads.append((fd.detach(), f.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-7, atol=1e-9)
    assert abs(grads[1][0].item() - _scipy_fd(f.detach().numpy(), b.numpy())) <= 1e-6 * grads[1][0].item()
