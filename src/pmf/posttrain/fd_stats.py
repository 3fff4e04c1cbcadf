"""The statistics state of FD-loss for one representation: the generated features' moving moments (EMA) or a
queue of the last N features, filled from generated images before the first step, blended with each batch
(``pmf.posttrain.fd_loss``), updated after it, and saved in the training checkpoint so that a resumed run continues to
the bit. Per-class statistics (an option of this package, not of the paper) keep one EMA per class.

All buffers are float64 except the queue's rows (float32, as the features come); the queue's float64 sums are
recomputed from its rows each time the pointer wraps, so that their round-off cannot accumulate."""

from __future__ import annotations

import torch

from ..errors import PMFError
from .fd_loss import ema_moments, ema_update, queue_moments


class GeneratedStats:
    """Moments of generated features [B, D] for one representation: ``beta`` (EMA) or ``queue`` rows, and
    ``classes`` > 0 for one EMA per class (labels [B] then select the class of each row)."""

    def __init__(self, dim: int, *, beta: float = 0.999, queue: int = 0, classes: int = 0, device=None):
        if queue and classes:
            raise PMFError("per-class FD statistics use the EMA; give fd.queue 0 with fd.per_class")
        if queue == 1:
            raise PMFError("fd.queue must be 0 (EMA statistics) or at least 2 rows")
        self.dim, self.beta, self.queue, self.classes = dim, beta, queue, classes
        k = max(classes, 1)
        dev = torch.device(device or "cpu")
        if queue:
            self.rows = torch.zeros(queue, dim, device=dev)
            self.total = torch.zeros(dim, dtype=torch.float64, device=dev)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=dev)
        else:
            self.mu = torch.zeros(k, dim, dtype=torch.float64, device=dev)
            self.m2 = torch.zeros(k, dim, dim, dtype=torch.float64, device=dev)
        self.count = torch.zeros(k, dtype=torch.long, device=dev)  # rows seen while filling
        self.ptr = 0
        self.filled = False

    # ---- the fill before the first step --------------------------------------------------------------------------
    @torch.no_grad()
    def fill(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Accumulate generated features [n, D] (labels [n] with per-class statistics) before the first step."""
        f = features.detach().double()
        if self.queue:
            n = min(len(f), self.queue - self.ptr)
            self.rows[self.ptr:self.ptr + n] = f[:n].to(self.rows.dtype)
            self.ptr, self.count[0] = self.ptr + n, self.count[0] + n
            return
        for c, rows in self._groups(f, labels):
            self.mu[c] += rows.sum(0)
            self.m2[c] += rows.T @ rows
            self.count[c] += len(rows)

    def fill_wanted(self, fill: int) -> int:
        """How many rows the fill still needs: the queue's size, else ``fill``."""
        return (self.queue if self.queue else fill) - int(self.count.sum())

    @torch.no_grad()
    def finish_fill(self) -> None:
        if self.queue:
            if self.ptr < self.queue:
                raise PMFError(f"the FD queue holds {self.ptr} of {self.queue} rows after the fill")
            self.ptr = 0
            self._resum()
        else:
            empty = (self.count == 0).nonzero().flatten().tolist()
            if empty:
                raise PMFError(f"the FD fill drew no image of class(es) {empty[:10]}; give a larger fd.fill")
            self.mu /= self.count[:, None]
            self.m2 /= self.count[:, None, None]
        self.filled = True

    # ---- each step --------------------------------------------------------------------------------------------------
    def moments(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> list[tuple[int, torch.Tensor,
                                                                                               torch.Tensor]]:
        """[(class, mu [D], Sigma [D, D])] with gradients through ``features`` [B, D]: one entry (class 0) for
        class-agnostic statistics, one per class present in the batch otherwise."""
        if self.queue:
            if len(features) > self.queue:
                raise PMFError(f"the global batch ({len(features)}) exceeds fd.queue ({self.queue})")
            return [(0, *queue_moments(self.total, self.outer, self._evicted(len(features)), features, self.queue))]
        return [(c, *ema_moments(self.mu[c], self.m2[c], rows, self.beta)) for c, rows in self._groups(features,
                                                                                                        labels)]

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Take the batch's detached features into the statistics (after the step's backward)."""
        f = features.detach()
        if not self.queue:
            for c, rows in self._groups(f, labels):
                ema_update(self.mu[c], self.m2[c], rows, self.beta)
            return
        old, new = self._evicted(len(f)).double(), f.double()
        self.total += new.sum(0) - old.sum(0)
        self.outer += new.T @ new - old.T @ old
        idx = (self.ptr + torch.arange(len(f), device=f.device)) % self.queue
        self.rows[idx] = f.to(self.rows.dtype)
        wrapped = self.ptr + len(f) >= self.queue
        self.ptr = (self.ptr + len(f)) % self.queue
        if wrapped:
            self._resum()

    # ---- checkpoint state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        keys = ("rows", "total", "outer") if self.queue else ("mu", "m2")
        return {**{k: getattr(self, k).cpu() for k in keys}, "count": self.count.cpu(), "ptr": self.ptr,
                "filled": self.filled, "beta": self.beta, "queue": self.queue, "classes": self.classes}

    def load_state_dict(self, state: dict) -> None:
        kind = (state.get("queue"), state.get("classes"))
        if kind != (self.queue, self.classes) or state["count"].shape != self.count.shape:
            raise PMFError(f"the checkpoint's FD statistics (queue {kind[0]}, classes {kind[1]}) differ from this "
                           f"run's (queue {self.queue}, classes {self.classes})")
        for k in ("rows", "total", "outer") if self.queue else ("mu", "m2"):
            getattr(self, k).copy_(state[k])
        self.count.copy_(state["count"])
        self.ptr, self.filled = int(state["ptr"]), bool(state["filled"])

    # ---- helpers ----------------------------------------------------------------------------------------------------
    def _groups(self, f: torch.Tensor, labels: torch.Tensor | None):
        if not self.classes:
            yield 0, f
            return
        for c in torch.unique(labels).tolist():
            yield c, f[labels == c]

    def _evicted(self, n: int) -> torch.Tensor:
        idx = (self.ptr + torch.arange(n, device=self.rows.device)) % self.queue
        return self.rows[idx]

    def _resum(self) -> None:
        r = self.rows.double()
        self.total.copy_(r.sum(0))
        self.outer.copy_(r.T @ r)
