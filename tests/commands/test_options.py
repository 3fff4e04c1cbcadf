"""The typed options of pmf sample / eval / serve / export / export-generator (pmf.commands._options): one flag per
field with the field's default, the range rule in the dataclass (one line that names the flag, before any
work), and --help that states both."""

import argparse
import dataclasses

import pytest

import pmf
from pmf.cli import build_parser, main
from pmf.commands._config_flags import leaves, shown
from pmf.commands._options import (
    EvalOptions,
    ExportOptions,
    GeneratorExportOptions,
    SampleOptions,
    ServeOptions,
)

OPTIONS = {"sample": SampleOptions, "eval": EvalOptions, "serve": ServeOptions, "export": ExportOptions,
           "export-generator": GeneratorExportOptions}
MISSING = "/nonexistent/ck.pt"  # a check after loading would report this file instead of the flag


def parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command, flag, value, low", [
    ("sample", "--batch-size", "0", "1"), ("sample", "--per-class", "0", "1"), ("sample", "--num-images", "0", "1"),
    ("sample", "--steps", "0", "1"), ("eval", "--num-images", "1", "2"), ("eval", "--fast", "1", "2"),
    ("eval", "--batch-size", "0", "1"), ("eval", "--steps", "0", "1"), ("serve", "--max-batch", "0", "1"),
    ("serve", "--max-images", "0", "1"), ("serve", "--max-steps", "0", "1"), ("serve", "--max-queue", "0", "1"),
    ("serve", "--port", "-1", "0"), ("serve", "--max-wait-ms", "-0.5", "0"), ("serve", "--threads", "0", "1"),
    ("export", "--steps", "0", "1"), ("export-generator", "--static-batch", "0", "1"),
])
def test_a_value_below_the_range_is_one_line_naming_the_flag(tmp_path, capsys, command, flag, value, low):
    out = tmp_path / ("g.pt2" if command == "export-generator" else "o.onnx" if command == "export" else "o")
    where = [] if command == "serve" else ["--out", str(out)]
    assert main([command, "--checkpoint", MISSING, *where, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err == f"pmf {command}: error: {flag} must be >= {low}, got {value}\n"
    assert not out.exists()  # refused before anything was written


def test_the_range_rule_lives_in_the_dataclass():
    with pytest.raises(pmf.PMFError, match="^--batch-size must be >= 1, got 0$"):
        SampleOptions(batch_size=0)
    with pytest.raises(pmf.PMFError, match="^--max-wait-ms must be >= 0, got -1$"):
        ServeOptions(max_wait_ms=-1.0)
    assert EvalOptions(num_images=2, fast=2).fast == 2 and SampleOptions(per_class=None).per_class is None


@pytest.mark.parametrize("command", OPTIONS)
def test_every_field_has_its_flag_default_and_help(command):
    actions = {a.dest: a for a in parsers()[command]._actions if a.help != argparse.SUPPRESS}
    for leaf in leaves(OPTIONS[command]):
        f = leaf.field
        action = actions[f.name]
        assert leaf.flag in action.option_strings and action.default == f.default, (command, f.name)
        assert f"(default: {shown(f.default, leaf)}" in action.help, (command, action.help)
        low = f.metadata.get("min")
        assert ("; at least" in action.help) == (low is not None), (command, action.help)
        assert low is None or f"at least {low:g}" in action.help
        high = f.metadata.get("max")
        assert ("; at most" in action.help) == (high is not None), (command, action.help)
        assert high is None or f"at most {high:g})" in action.help
    parsed = parsers()[command].parse_args(["--checkpoint", "x", "--out", "y"] if command != "serve" else
                                           ["--checkpoint", "x"])
    assert OPTIONS[command].from_args(parsed) == OPTIONS[command]()  # the flags' defaults are the dataclass's


def test_help_lists_the_generated_flags_with_their_defaults(capsys):
    for command, expected in (
        ("serve", ["--max-batch MAX_BATCH most images in one forward pass (1: no batching) (default: 64; at least 1)",
                   "--max-wait-ms MAX_WAIT_MS", "(default: 5; at least 0)", "--threads THREADS",
                   "(default: torch's; at least 1)", "--host HOST address to bind"]),
        ("sample", ["--per-class PER_CLASS images per class (default: 8; at least 1)",
                    "--batch-size BATCH_SIZE images per forward pass (results do not depend on it) (default: 64; at "
                    "least 1)", "--precision {fp32,bf16}", "--no-png write only grid.png and samples.npz (default: "
                    "off)"]),
        ("eval", ["--fast FAST", "(default: off: each setting with --num-images; at least 2)"]),
        ("export", ["--quantize {int8}", "(default: fp32)"]),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for piece in expected:
            assert piece in text, (command, piece)


def test_old_spellings_and_given_values_reach_the_options(capsys):
    parser = parsers()["sample"]
    args = parser.parse_args(["--checkpoint", "x", "--num-samples", "12", "--batch-size", "3", "--no-png"])
    assert "--num-samples is deprecated; use --num-images" in capsys.readouterr().err
    opts = SampleOptions.from_args(args)
    assert (opts.num_images, opts.batch_size, opts.no_png, opts.seed) == (12, 3, True, 0)
    assert dataclasses.replace(opts, num_images=None).per_class is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--checkpoint", "x", "--precision", "fp16"])  # a Literal's choices
    assert "invalid choice" in capsys.readouterr().err
