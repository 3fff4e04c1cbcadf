"""One command-line vocabulary: each concept has one spelling in every command, every flag has help, old
spellings still work with a note, and a mistyped flag gets a suggestion."""

import argparse

import numpy as np
import pytest

from pmf.cli import build_parser, main
from pmf.commands._args import CONCEPTS, DEPRECATED

pytestmark = pytest.mark.usefixtures("one_thread")

# every spelling any command has used for a concept; only CONCEPTS[concept] may be visible
VARIANTS = {
    "checkpoint": {"--checkpoint", "--ckpt", "--ckpt-path"},
    "output": {"--out", "--output", "--workdir", "--out-dir"},
    "workers": {"--workers", "--num-workers"},
    "progress": {"--no-progress", "--progress", "--quiet"},
    "device": {"--device"},
    "image count": {"--num-images", "--num-samples", "--n-images"},
    "guidance": {"--omega", "--cfg-omega", "--cfg"},
    "interval": {"--interval", "--t-min", "--t-max", "--interval-min", "--interval-max"},
    "ema": {"--ema", "--emas"},
    "seed": {"--seed"},
    "batch": {"--batch-size", "--batch"},
    "gradient accumulation": {"--grad-accum", "--gradient-accumulation-steps", "--accum-steps", "--micro-batch",
                              "--micro-batch-size"},
}


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def visible(parser):
    return [a for a in parser._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def test_each_concept_has_one_spelling_in_every_command():
    for name, parser in commands().items():
        flags = {s for a in visible(parser) for s in a.option_strings}
        positionals = {a.dest for a in visible(parser) if not a.option_strings}
        assert not positionals & {"checkpoint", "out"}, (name, positionals)  # flags, not positionals
        for concept, spellings in VARIANTS.items():
            used = flags & spellings
            assert used <= {CONCEPTS[concept]}, f"pmf {name} spells {concept} as {sorted(used)}"
        assert not flags & set(DEPRECATED), (name, flags & set(DEPRECATED))


def test_every_flag_has_help_text():
    for name, parser in commands().items():
        for action in visible(parser):
            assert action.help and action.help.strip(), f"pmf {name} {action.option_strings or action.dest}"


def test_the_shared_flags_have_one_default_rule():
    for name, parser in commands().items():
        for action in visible(parser):
            if "--device" in action.option_strings:
                assert action.default is None and "cuda when a GPU is visible" in action.help, name
            if "--no-progress" in action.option_strings:
                assert action.default is False, name


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "training steps (default: the recipe's; mnist: 1200)" in text
    assert "learning rate (default: the recipe's; mnist: 0.01)" in text


def test_a_mistyped_flag_gets_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["sample", "--checkpoint", "random", "--omgea", "3"])
    assert exit.value.code == 2
    assert "did you mean --omega?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--num-worker", "2"])  # a prefix is not taken as the flag
    assert "did you mean --workers?" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["train", "--steps", "abc"], "pmf train: error: argument --steps: invalid int value: 'abc'"),
    (["sample", "--chekpoint", "x"], "pmf sample: error: the following arguments are required: --checkpoint "
                                     "(--chekpoint: did you mean --checkpoint?)"),
    (["bogus"], "pmf: error: argument COMMAND: invalid choice: 'bogus'"),
])
def test_a_parse_error_is_one_line_that_points_to_help(capsys, argv, said):
    """argparse's errors come as the commands' own do, one line (pmf train's usage block is 80 flags long); a
    mistyped required flag is named even though the missing one is reported first."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and err.startswith(said), err
    assert err.rstrip().endswith("--help` lists the commands)" if argv == ["bogus"] else "--help` lists the flags)")


def test_old_spellings_still_work_with_a_note(tmp_path, capsys, fixtures_dir):
    ck = ["sample", "--checkpoint", str(fixtures_dir / "net_tiny.pt"), "--classes", "1,2", "--per-class", "1",
          "--no-png", "--no-progress"]
    assert main([*ck, "--out", str(tmp_path / "a"), "--interval", "0.2:0.7", "--omega", "2"]) == 0
    capsys.readouterr()
    assert main([*ck, "--out", str(tmp_path / "b"), "--t-min", "0.2", "--t-max", "0.7", "--omega", "2"]) == 0
    captured = capsys.readouterr()
    assert "--t-min is deprecated; use --interval" in captured.err
    assert "interval [0.2, 0.7]" in captured.out
    a, b = (np.load(tmp_path / d / "samples.npz")["images"] for d in "ab")
    assert np.array_equal(a, b)


def test_export_takes_flags_and_the_old_positionals(tmp_path, capsys):
    import torch

    import pmf

    model = pmf.build_model("pMF-Tiny/4")
    ckpt = tmp_path / "c.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict()},
               ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main(["export", str(ckpt), str(tmp_path / "b.safetensors")]) == 0
    assert "positional CHECKPOINT OUT is deprecated; use --checkpoint --out" in capsys.readouterr().err
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / f"{n}.safetensors")) for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", "--checkpoint", str(ckpt)]) == 2
    assert "missing --out" in capsys.readouterr().err


def test_train_speaks_the_shared_vocabulary(tmp_path, capsys):
    from pmf.commands.train import config_from_args

    parser = commands()["train"]
    flags = {s for a in visible(parser) for s in a.option_strings}
    assert {"--interval", "--ema"} <= flags and not flags & {"--sample-t-min", "--sample-t-max", "--init-ema"}
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["train", "--recipe", "tiny", "--interval", "0.2:0.7"]))
    assert (cfg.sample.t_min, cfg.sample.t_max) == (0.2, 0.7)
    old = config_from_args(parse(["train", "--recipe", "tiny", "--sample-t-min", "0.3", "--init", "x.pt",
                                  "--init-ema", "raw"]))
    assert (old.sample.t_min, old.sample.t_max, old.init_ema) == (0.3, 1.0, "raw")
    err = capsys.readouterr().err
    assert "--sample-t-min is deprecated; use --interval" in err and "--init-ema is deprecated; use --ema" in err
    assert config_from_args(parse(["train", "--init", "x.pt", "--ema", "d0.9"])).init_ema == "d0.9"
