"""The FD statistics state (pmf.posttrain.fd_stats): fill, blend, update and checkpoint state against their
definitions."""

import numpy as np
import pytest
import torch

from pmf.errors import PMFError
from pmf.posttrain.fd_stats import GeneratedStats

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ema_fill_then_updates_follow_the_definition():
    d, beta = 3, 0.9
    stats = GeneratedStats(d, beta=beta)
    fill = _rows(50, d, 0)
    stats.fill(fill[:20])
    stats.fill(fill[20:])
    stats.finish_fill()
    mu, m2 = fill.mean(0), fill.T @ fill / 50  # the fill's moments
    for seed in range(1, 4):
        batch = _rows(8, d, seed)
        [(c, mu_b, sigma_b)] = stats.moments(batch)
        want_mu = beta * mu + (1 - beta) * batch.mean(0)
        want_m2 = beta * m2 + (1 - beta) * batch.T @ batch / 8
        torch.testing.assert_close(mu_b, want_mu)
        torch.testing.assert_close(sigma_b, want_m2 - torch.outer(want_mu, want_mu))
        stats.update(batch)
        mu, m2 = want_mu, want_m2
    torch.testing.assert_close(stats.mu[0], mu)
    torch.testing.assert_close(stats.m2[0], m2)


def test_queue_holds_the_last_rows_across_wraps():
    n, d, b = 10, 2, 4
    stats = GeneratedStats(d, queue=n)
    assert stats.fill_wanted(0) == n
    history = [_rows(n, d, 0).float().double()]
    stats.fill(history[0])
    stats.finish_fill()
    for seed in range(1, 7):  # 24 rows through a 10-row queue: several wraps
        batch = _rows(b, d, seed).float().double()
        [(_, mu, sigma)] = stats.moments(batch)
        last = torch.cat(history + [batch])[-n:].numpy()
        np.testing.assert_allclose(mu.numpy(), last.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(sigma.numpy(), np.cov(last, rowvar=False), rtol=1e-6, atol=1e-7)
        stats.update(batch)
        history.append(batch)


def test_state_round_trip_continues_identically():
    for kw in (dict(beta=0.5), dict(queue=6), dict(beta=0.7, classes=3)):
        a = GeneratedStats(2, **kw)
        labels = torch.arange(12) % 3
        a.fill(_rows(12, 2, 0), labels)
        a.finish_fill()
        a.update(_rows(3, 2, 1), labels[:3])
        b = GeneratedStats(2, **kw)
        b.load_state_dict(a.state_dict())
        batch = _rows(3, 2, 2)
        for (ca, ma, sa), (cb, mb, sb) in zip(a.moments(batch, labels[:3]), b.moments(batch, labels[:3])):
            assert ca == cb
            assert torch.equal(ma, mb) and torch.equal(sa, sb)
    with pytest.raises(PMFError, match="differ"):
        GeneratedStats(2, queue=6).load_state_dict(GeneratedStats(2, beta=0.5).state_dict())


def test_per_class_statistics_keep_one_ema_per_class():
    d, beta = 2, 0.8
    stats = GeneratedStats(d, beta=beta, classes=2)
    fill, labels = _rows(20, d, 0), torch.arange(20) % 2
    stats.fill(fill, labels)
    stats.finish_fill()
    torch.testing.assert_close(stats.mu[1], fill[1::2].mean(0))
    batch, y = _rows(4, d, 1), torch.tensor([1, 1, 1, 1])
    [(c, mu, _)] = stats.moments(batch, y)  # class 0 is absent from the batch: no entry
    assert c == 1
    torch.testing.assert_close(mu, beta * fill[1::2].mean(0) + (1 - beta) * batch.mean(0))
    with pytest.raises(PMFError, match="no image of class"):
        empty = GeneratedStats(d, classes=3)
        empty.fill(fill, labels)
        empty.finish_fill()
