"""``pmf train``'s flags are generated from ``TrainConfig``: every field has one, its choices come from the
field's ``Literal`` type, a new field gets a flag with nothing else written, and ``--config`` lays its fields over
the recipe's (no training here)."""

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import pytest

from pmf.cli import build_parser, main
from pmf.commands._args import PMFArgumentParser
from pmf.commands._config_flags import add_config_flags, apply_config_flags, leaves
from pmf.commands.train import config_from_args
from pmf.model_configs import doc
from pmf.training.config import TrainConfig
from pmf.training.recipes import recipe


def parse(*argv):
    return build_parser().parse_args(["train", *argv])


def train_parser():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_field_of_the_training_config_has_one_flag():
    by_dest = {a.dest: a for a in train_parser()._actions if a.help != argparse.SUPPRESS}
    paths = [".".join(leaf.path) for leaf in leaves(TrainConfig)]
    assert len(paths) > 50 and "optim.lr" in paths and "perceptual.max_t" in paths
    replaced = {"sample.t_min", "sample.t_max"}  # both set by --interval, the shared flag
    for path in paths:
        assert f"config:{path}" in by_dest or path in replaced, path
    assert "--interval" in {s for a in by_dest.values() for s in a.option_strings}
    flags = [s for a in by_dest.values() for s in a.option_strings]
    assert len(flags) == len(set(flags))


def test_choices_come_from_the_one_definition():
    import pmf.objective
    import pmf.parallel
    import pmf.sampling
    import pmf.vocabulary as C

    assert pmf.parallel.PARALLEL_MODES is C.PARALLEL_MODES and pmf.parallel.REDUCE_MODES is C.REDUCE_MODES
    assert pmf.objective.JVP_MODES is C.JVP_MODES and pmf.sampling.PRECISIONS is C.PRECISIONS
    help = train_parser().format_help()
    for flag, values in (("--parallel", C.PARALLEL_MODES), ("--reduce", C.REDUCE_MODES), ("--jvp", C.JVP_MODES),
                         ("--precision", C.PRECISIONS), ("--schedule", C.SCHEDULES)):
        assert f"{flag} {{{','.join(values)}}}" in help
    with pytest.raises(SystemExit):
        parse("--precision", "fp16")
    with pytest.raises(pmf.PMFError, match="parallel must be 'ddp', 'fsdp' or 'hsdp', got 'zero'"):
        TrainConfig(parallel="zero")


def test_generated_flags_reach_every_kind_of_field():
    cfg = config_from_args(parse("--recipe", "tiny", "--loss-p-mean", "-0.4", "--optim-betas", "0.8,0.9",
                                 "--ema-decays", "", "--loss-tr-uniform", "--no-optim-foreach", "--grad-clip", "2",
                                 "--jvp", "split", "--model-overrides", '{"depth": 3}', "--sample-omega", "2"))
    assert (cfg.loss.P_mean, cfg.optim.betas, cfg.ema.decays) == (-0.4, (0.8, 0.9), [])
    assert (cfg.loss.tr_uniform, cfg.optim.foreach, cfg.optim.grad_clip, cfg.loss.jvp) == (True, False, 2, "split")
    assert cfg.model_overrides == {"depth": 3} and cfg.sample.omega == 2
    # "none" sets a field that may be None back to None
    cfg = config_from_args(parse("--recipe", "tiny", "--grad-clip", "none", "--jvp", "none", "--device", "none"))
    assert (cfg.optim.grad_clip, cfg.loss.jvp, cfg.device) == (None, None, None)
    with pytest.raises(SystemExit):
        parse("--optim-betas", "0.9")  # two numbers
    with pytest.raises(SystemExit):
        parse("--steps", "none")  # steps may not be None


def test_the_old_spelling_still_works_with_a_note(capsys):
    cfg = config_from_args(parse("--recipe", "tiny", "--num-workers", "3"))
    assert cfg.num_workers == 3 and "--num-workers is deprecated; use --workers" in capsys.readouterr().err


def test_a_new_field_gets_a_flag_with_nothing_else_written():
    @dataclass
    class Section:
        size: int = doc(2, "a size")
        mode: Literal["a", "b"] = "a"  # no help written: the field's path stands in

    @dataclass
    class Config:
        name: str = "x"
        section: Section = dataclasses.field(default_factory=Section)
        extra: Section | None = None
        tags: list[str] = dataclasses.field(default_factory=list)
        table: dict[str, int] | None = None
        anything: object = None  # no flag form of its own: JSON

    p = PMFArgumentParser(prog="t")
    add_config_flags(p, Config, Config(), lambda text: f"here {text}")
    help = p.format_help()
    assert "a size (default: here 2)" in help and "--section-mode {a,b}" in help and "--no-extra" in help
    args = p.parse_args(["--section-mode", "b", "--extra-size", "5", "--name", "y", "--tags", "a,b",
                         "--table", '{"cat": 3}', "--anything", "[1, 2]"])
    data = apply_config_flags(dataclasses.asdict(Config()), Config, args)
    assert data == {"name": "y", "section": {"size": 2, "mode": "b"}, "extra": {"size": 5, "mode": "a"},
                    "tags": ["a", "b"], "table": {"cat": 3}, "anything": [1, 2]}
    with pytest.raises(SystemExit):
        p.parse_args(["--table", "[1]"])
    with pytest.raises(SystemExit):
        p.parse_args(["--section-mode", "c"])


def test_a_config_file_overrides_the_recipes_fields(tmp_path):
    path = tmp_path / "few.json"
    path.write_text(json.dumps({"steps": 7, "optim": {"lr": 0.5}, "sample": {"every": 0}}))
    cfg = config_from_args(parse("--recipe", "mnist", "--config", str(path)))
    want = recipe("mnist")
    want.steps, want.optim.lr, want.sample.every = 7, 0.5, 0
    assert cfg == want  # the recipe stays: pMF-MNIST/7, its EMAs and sampling setting
    assert config_from_args(parse("--config", str(path))) == want  # the default recipe is mnist
    cfg = config_from_args(parse("--recipe", "tiny", "--config", str(path), "--steps", "9"))
    assert (cfg.arch, cfg.steps, cfg.optim.lr) == ("pMF-Tiny/4", 9, 0.5)  # flags come last
    # a run's full config.json gives back that run's config whatever the recipe
    full = tmp_path / "config.json"
    full.write_text(json.dumps(recipe("tiny").to_dict()))
    assert config_from_args(parse("--recipe", "pMF-B/16", "--config", str(full))) == recipe("tiny")


def test_train_help_names_no_field_twice(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "steps between sample grids, 0: none (default: the recipe's; mnist: 200)" in text
    assert "--jvp {split,fused,inline}" in text and "clip the gradient norm to this (default: the recipe's; " \
        "mnist: off)" in text
