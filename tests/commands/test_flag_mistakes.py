"""A newcomer's mistakes with the sampling and training flags: each ends in one line that names the flag and says
what it takes, before anything is written (and before an earlier run's samples are removed)."""

import pytest

from helpers import training_checkpoint
from pmf.cli import main
from pmf.commands._options import ServeOptions
from pmf.errors import PMFError

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pmf {command}: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == "", captured.out
    return lines[0]


def sample(out, *flags):
    return ["sample", "--checkpoint", "random", "--arch", "pMF-Tiny/4", "--out", str(out), "--device", "cpu",
            "--no-progress", *flags]


@pytest.mark.parametrize("flags, said", [
    (("--classes", "cat"), "--classes: unknown class 'cat'"),
    (("--classes", "12"), "--classes: class 12 out of range [0, 9]"),
])
def test_a_bad_class_keeps_the_earlier_samples_and_names_the_flag(tmp_path, capsys, flags, said):
    """The old code removed the folder's earlier samples and printed the setting before refusing the class."""
    out = tmp_path / "s"
    assert main(sample(out, "--classes", "1", "--per-class", "1")) == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(sample(out, *flags)) == 2
    assert said in one_line_error(capsys, "sample")
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_bad_class_writes_no_folder(tmp_path, capsys):
    assert main(sample(tmp_path / "new", "--classes", "cat")) == 2
    one_line_error(capsys, "sample")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["sample", "eval", "demo"])
def test_a_reversed_interval_names_the_flag_and_its_range(tmp_path, capsys, command):
    args = {"sample": sample(tmp_path / "o", "--interval", "0.9:0.1"),
            "eval": ["eval", "--checkpoint", "random", "--arch", "pMF-Tiny/4", "--offline", "--out",
                     str(tmp_path / "o"), "--interval", "0.9:0.1"],
            "demo": ["demo", "--out", str(tmp_path / "o"), "--interval", "0.9:0.1"]}[command]
    assert main(args) == 2
    assert "--interval T_MIN:T_MAX needs 0 <= T_MIN <= T_MAX <= 1 (e.g. 0.1:0.8), got 0.9:0.1" in \
        one_line_error(capsys, command)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, said", [
    (("--omega", "abc"), "--omega takes one number, e.g. 3, got 'abc'"),  # not "numbers separated by commas"
    (("--interval", "0.1"), "--interval takes one T_MIN:T_MAX pair, e.g. '0.1:0.8', got '0.1'"),
])
def test_a_single_setting_flag_says_it_takes_one_value(tmp_path, capsys, flags, said):
    assert main(sample(tmp_path / "o", *flags)) == 2
    assert said in one_line_error(capsys, "sample")


def test_an_unknown_ema_names_the_flag_and_the_choices(tmp_path, capsys):
    ckpt = training_checkpoint(tmp_path / "run")
    assert main(["sample", "--checkpoint", str(ckpt), "--ema", "nope", "--out", str(tmp_path / "o"), "--device",
                 "cpu"]) == 2
    assert "--ema 'nope' is not in the checkpoint; give one of: raw, hl0.05" in one_line_error(capsys, "sample")


@pytest.mark.parametrize("flags, said", [
    (("--steps", "0"), "--steps: steps must be a positive integer, got 0"),
    (("--keep-last", "0"), "--keep-last: keep_last must be >= 1, got 0"),
    (("--interval", "0.9:0.1"), "--interval T_MIN:T_MAX needs 0 <= T_MIN <= T_MAX <= 1"),
])
def test_train_names_the_flag_of_a_bad_config_value(tmp_path, capsys, flags, said):
    assert main(["train", "--recipe", "tiny", "--out", str(tmp_path / "r"), *flags]) == 2
    assert said in one_line_error(capsys, "train")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("out, flags, said", [
    ("new/deeper/x.bin", (), "cannot tell the format of"),
    ("new/deeper/x.safetensors", ("--checkpoint", "nope.pt"), "checkpoint file not found: 'nope.pt'"),
    ("new/hub", ("--checkpoint", "nope.pt", "--format", "hub"), "checkpoint file not found: 'nope.pt'"),
])
def test_a_failed_export_leaves_no_folder_behind(tmp_path, capsys, out, flags, said):
    """The old code made the folders of --out before it found the suffix unknown or the checkpoint missing."""
    ckpt = training_checkpoint(tmp_path / "run")
    given = dict(zip(flags[::2], flags[1::2]))
    argv = ["export", "--out", str(tmp_path / out), *flags]
    if "--checkpoint" not in given:
        argv += ["--checkpoint", str(ckpt)]
    assert main(argv) == 2
    assert said in one_line_error(capsys, "export")
    assert not (tmp_path / "new").exists()


def test_a_port_beyond_65535_is_refused_and_the_help_shows_the_range(capsys):
    """The old code let uvicorn bind 70000 (the kernel wraps it to 4464) while printing :70000."""
    with pytest.raises(PMFError, match="^--port must be <= 65535, got 70000$"):
        ServeOptions(port=70000)
    assert ServeOptions(port=65535).port == 65535
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "at least 0; at most 65535" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_the_guidance_flags_help_shows_their_ranges(capsys, command):
    """The old help named neither omega's nor the interval's valid range."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "guidance scale" in text and "> 0 (1: no guidance" in text
    assert "with 0 <= T_MIN <= T_MAX <= 1" in text


def test_every_arch_flag_takes_the_presets_only():
    """--arch is one flag: every command that has it lists the presets in --help and refuses another name (serve
    took any text and named the presets only after loading)."""
    import argparse

    from pmf.cli import build_parser
    from pmf.model_configs import PRESETS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    having = {name: a for name, p in sub.choices.items() for a in p._actions if "--arch" in a.option_strings}
    assert {"sample", "eval", "serve", "export-generator", "train"} <= set(having)
    train = having.pop("train")  # TrainConfig's field: checked by the config, which names the presets
    assert all(p in train.help for p in PRESETS)
    assert {name: list(a.choices or []) for name, a in having.items()} == {name: list(PRESETS) for name in having}
