"""Seeds of the explicit random generators (house rule 5): every stream of a run derives its generator seed
from the run's seed and a few integers (image index; step and rank; epoch; ...) by one mixing rule with one
cut to 63 bits, and a stream number keeps streams of different purposes apart."""

from __future__ import annotations

MODULUS = 2**63 - 1  # seeds stay in [0, 2^63 - 1)
SEED_MAX = 2**63 - 1  # the largest seed a user gives (pmf sample --seed, the seed of pmf serve's /generate)


def seed_problem(seed: int) -> str | None:
    """Why ``seed`` is not a seed a user may give (one rule for the command line and the server), or None."""
    return None if 0 <= seed <= SEED_MAX else f"must be in [0, 2**63 - 1], got {seed}"

# Streams. IMAGE is the per-image sampling stream: its seeds (stream number 0) are pinned by the tests,
# since published samples depend on them.
IMAGE, LOSS, DATA_ORDER, TOY, FD = 0, 1, 2, 3, 4  # FD: the noises and labels of FD-loss post-training

_WEIGHTS = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # seed, first part, second part
_STREAM_WEIGHT = 0xD6E8FEB86659FD93


def derive_seed(seed: int, *parts: int, stream: int = IMAGE) -> int:
    """(1 + seed * K0 + parts[0] * K1 + parts[1] * K2 + stream * Ks) mod (2^63 - 1), with odd 64-bit
    constants K: a seed for ``torch.Generator.manual_seed``. At most two parts."""
    if len(parts) > len(_WEIGHTS) - 1:
        raise ValueError(f"derive_seed takes at most {len(_WEIGHTS) - 1} parts, got {len(parts)}")
    total = 1 + seed * _WEIGHTS[0] + sum(p * w for p, w in zip(parts, _WEIGHTS[1:])) + stream * _STREAM_WEIGHT
    return total % MODULUS
