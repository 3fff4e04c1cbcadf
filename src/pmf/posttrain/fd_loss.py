"""FD-loss (Yang, Geng, Ju, Tian and Wang, "Representation Frechet Loss for Visual Generation", arXiv 2604.28190)
as pure float64 tensor functions: the differentiable Frechet distance, the moment estimates of the generated
features (an exponential moving average blended with the batch, or a queue of the last N features), the
normalisation fd / (sg(fd) + eps) and the weighted sum over representations.

Shapes: features [B, D]; mu [D]; sigma, m2 [D, D]. The stateful side (the EMA / queue buffers, their fill and
checkpoint state) is ``pmf.posttrain.fd_stats``; the trainer's use of them is ``pmf.posttrain.fd_objective``."""

from __future__ import annotations

import torch

NORM_EPS = 0.01  # the paper's eps of fd / (sg(fd) + eps)


def sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root [D, D] of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0).
    Computed once per reference: the loss needs Sigma_ref^1/2 only."""
    sym = (sigma + sigma.T) / 2
    w, v = torch.linalg.eigh(sym)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def ref_factor(sigma: torch.Tensor) -> torch.Tensor:
    """Q [D, r] with Q Q^T = Sigma for a symmetric PSD matrix: U diag(sqrt(w)) over its r eigenvalues above the
    numerical-rank tolerance. For a reference of rank r < D (fewer images than features, dead ReLU features) the
    cross term's eigen-solve shrinks from D x D to r x r (``frechet_distance``)."""
    sym = (sigma + sigma.T) / 2
    w, v = torch.linalg.eigh(sym)
    keep = w > w.abs().max() * w.numel() * torch.finfo(w.dtype).eps
    return v[:, keep] * w[keep].sqrt()


def _sqrt_eigenvalues(ev: torch.Tensor) -> torch.Tensor:
    """sqrt of eigenvalues [D], 0 (with zero gradient) below the numerical-rank tolerance |ev|_max * D * eps:
    the reference statistics of ReLU features have exact null directions, where d sqrt(x) / dx is unbounded."""
    tol = ev.abs().max().detach() * ev.numel() * torch.finfo(ev.dtype).eps
    keep = ev > tol
    return torch.where(keep, torch.where(keep, ev, torch.ones_like(ev)).sqrt(), torch.zeros_like(ev))


def frechet_distance(mu: torch.Tensor, sigma: torch.Tensor, mu_ref: torch.Tensor, sigma_ref: torch.Tensor,
                     ref_root: torch.Tensor | None = None) -> torch.Tensor:
    """d^2 = |mu - mu_ref|^2 + tr(Sigma) + tr(Sigma_ref) - 2 tr((Sigma_ref^1/2 Sigma Sigma_ref^1/2)^1/2), a float64
    scalar differentiable in (mu, sigma) (the FD of FD-loss, with its cross term
    through the eigenvalues of the symmetric PSD matrix Sigma_ref^1/2 Sigma Sigma_ref^1/2, similar to
    Sigma Sigma_ref). ``ref_root``: Sigma_ref^1/2
    (``sqrt_psd``, computed here when not given) or any factor Q [D, r] with Q Q^T = Sigma_ref (``ref_factor``):
    Q^T Sigma Q [r, r] has the same non-zero eigenvalues, since Sigma_ref^1/2 = U S U^T and Q = U S give
    Sigma_ref^1/2 Sigma Sigma_ref^1/2 = U (Q^T Sigma Q) U^T."""
    mu, sigma = mu.double(), sigma.double()
    mu_ref, sigma_ref = mu_ref.to(mu), sigma_ref.to(mu)
    root = sqrt_psd(sigma_ref) if ref_root is None else ref_root.to(mu)
    inner = root.T @ sigma @ root  # (r, r)
    ev = torch.linalg.eigvalsh((inner + inner.T) / 2)  # (D,)
    diff = mu - mu_ref
    return diff @ diff + sigma.diagonal().sum() + sigma_ref.diagonal().sum() - 2 * _sqrt_eigenvalues(ev).sum()


def batch_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], second moment E[f f^T] [D, D]) of features [B, D], in float64."""
    f = features.double()
    return f.mean(0), f.T @ f / f.shape[0]


def ema_moments(mu_ema: torch.Tensor, m2_ema: torch.Tensor, features: torch.Tensor,
                beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, Sigma) of the generated distribution from the moving first and second moments blended with the
    batch (FD-loss's EMA statistics): mu = beta mu_ema + (1 - beta) mean(f), m2 = beta m2_ema +
    (1 - beta) f^T f / B, Sigma = m2 - mu mu^T. Gradients flow through the batch's share only."""
    mean, second = batch_moments(features)
    mu = beta * mu_ema.detach() + (1 - beta) * mean
    m2 = beta * m2_ema.detach() + (1 - beta) * second
    return mu, m2 - torch.outer(mu, mu)


def ema_update(mu_ema: torch.Tensor, m2_ema: torch.Tensor, features: torch.Tensor, beta: float) -> None:
    """The moving moments after a step, in place: x <- beta x + (1 - beta) x_batch (no gradients)."""
    with torch.no_grad():
        mean, second = batch_moments(features.detach())
        mu_ema.mul_(beta).add_(mean, alpha=1 - beta)
        m2_ema.mul_(beta).add_(second, alpha=1 - beta)


def queue_moments(total: torch.Tensor, outer: torch.Tensor, evicted: torch.Tensor, features: torch.Tensor,
                  size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, Sigma) of a queue of the last ``size`` features once ``features`` [B, D] replace its ``evicted``
    [B, D] oldest rows (FD-loss's queue): the queue's float64 sums ``total`` [D] and ``outer`` [D, D]
    (held without gradients) corrected by the rows that leave and enter; Sigma is the unbiased covariance over
    the ``size`` rows. Gradients flow through ``features`` only."""
    f, old = features.double(), evicted.double()
    s = total.detach() - old.sum(0) + f.sum(0)
    o = outer.detach() - old.T @ old + f.T @ f
    mu = s / size
    return mu, (o - size * torch.outer(mu, mu)) / (size - 1)


def normalised(fd: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """fd / (sg(fd) + eps) (FD-loss's normalisation): value near 1, gradient that of fd scaled by
    1 / (fd + eps), so that representations of very different distance scales contribute alike."""
    return fd / (fd.detach() + eps)


def weighted_loss(distances: dict[str, torch.Tensor], weights: dict[str, float],
                  eps: float = NORM_EPS) -> torch.Tensor:
    """sum_k w_k fd_k / (sg(fd_k) + eps) over the representations k of ``distances``."""
    return sum(weights[k] * normalised(fd, eps) for k, fd in distances.items())
