"""Which weight set of a checkpoint a caller asks for (``--ema``, ``load_checkpoint(ema=...)``): None or "auto"
for the EMA of the checkpoint's sampling setting, "raw" for the trained weights themselves, anything else an EMA
by its name (``pmf.sampling_setting.ema_name``: ``hl1000``, ``d0.99``)."""

from __future__ import annotations

RAW = "raw"  # the trained weights, no EMA


def asks_default(ema: str | None) -> bool:
    """Whether ``ema`` leaves the choice to the checkpoint (None or "auto")."""
    return ema in (None, "auto")


def asks_named_ema(ema: str | None) -> bool:
    """Whether ``ema`` names one EMA, which only a training checkpoint with that EMA holds."""
    return not asks_default(ema) and ema != RAW
