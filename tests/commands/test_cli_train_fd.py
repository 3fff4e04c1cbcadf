"""pmf train --objective fd: the flags of the FD section and the recipe they start from."""

import pytest

from pmf.errors import PMFError


def _cfg(*argv):
    from pmf.cli import build_parser
    from pmf.commands.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_objective_fd_starts_from_the_fd_recipe_and_takes_the_fd_flags():
    cfg = _cfg("--init", "runs/demo", "--objective", "fd", "--fd-repr", "offline,pixels", "--fd-weights", "1,0.5",
               "--fd-ema-beta", "0.999", "--fd-queue", "0", "--steps", "300", "--out", "x")
    assert cfg.objective == "fd" and cfg.steps == 300
    assert (cfg.batch_size, cfg.optim.name, cfg.optim.lr) == (128, "adamw", 1e-5)  # the calibrated CPU recipe
    assert cfg.fd.repr == ["offline", "pixels"] and cfg.fd.weight_of() == {"offline": 1.0, "pixels": 0.5}
    assert cfg.fd.ema_beta == 0.999
    plain = _cfg("--steps", "3")
    assert plain.objective == "pmf" and plain.optim.name == "muon"  # without --objective fd: pMF training


def test_imagenet_fd_recipes_carry_the_papers_guidance():
    cfg = _cfg("--recipe", "fd-pMF-B/16")
    assert (cfg.fd.omega, cfg.fd.t_min, cfg.fd.t_max) == (8.5, 0.1, 0.7)
    assert (cfg.sample.omega, cfg.optim.lr, cfg.optim.schedule, cfg.fd.ema_beta) == (8.5, 1e-6, "cosine", 0.999)
    assert _cfg("--recipe", "fd-pMF-H/32").fd.omega == 5.5


@pytest.mark.parametrize("argv, match", [
    (["--fd-weights", "1,2"], "one weight per representation"),
    (["--fd-ema-beta", "1"], "in \\[0, 1\\)"),
    (["--fd-queue", "1"], "0 \\(moving moments\\) or >= 2"),
    (["--fd-queue", "100", "--fd-per-class"], "per_class"),
])
def test_bad_fd_flags_are_one_line(argv, match):
    with pytest.raises(PMFError, match=match):
        _cfg("--objective", "fd", *argv)
