"""The typed options of pmf demo / toy / train (its model fit) / pack / refstats (pmf.commands._run_options): a value
out of range is one line that names the flag, refused before anything is written; every field is a flag with the
field's default, and the flags keep their names."""

import argparse

import pytest

import pmf
from pmf.cli import build_parser, main
from pmf.commands._config_flags import leaves, shown
from pmf.commands._run_options import DemoOptions, ModelFitOptions, PackOptions, RefstatsOptions, ToyOptions

OPTIONS = {"demo": DemoOptions, "toy": ToyOptions, "train": ModelFitOptions, "pack": PackOptions,
           "refstats": RefstatsOptions}


def parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command, args, message", [
    ("demo", ["--num-images", "5"], "--num-images must be >= 10, got 5"),
    ("demo", ["--threads", "0"], "--threads must be >= 1, got 0"),
    ("demo", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("toy", ["--threads", "0"], "--threads must be >= 1, got 0"),
    ("toy", ["--workers", "0"], "--workers must be >= 1, got 0"),
    ("toy", ["--steps", "0"], "--steps must be >= 1, got 0"),  # ToyConfig's rule, in the flag's name
    ("toy", ["--fm-fraction", "1"], "--fm-fraction must be in [0, 1), got 1.0"),
    ("train", ["--num-classes", "0"], "--num-classes must be >= 1, got 0"),
    ("train", ["--channels", "0"], "--channels must be >= 1, got 0"),
    ("train", ["--image-size", "-4"], "--image-size must be >= 1, got -4"),
    ("pack", ["--size", "0"], "--size must be >= 1, got 0"),
    ("refstats", ["--size", "0"], "--size must be >= 1, got 0"),
    ("refstats", ["--size", "8", "--sample", "3"], "--sample must be >= 4, got 3"),
])
def test_a_bad_value_is_one_line_naming_the_flag_and_nothing_is_written(tmp_path, capsys, command, args, message):
    out = tmp_path / ("ref.npz" if command == "refstats" else "out")
    source = {"pack": [str(tmp_path / "images")], "refstats": ["digits"]}.get(command, [])
    assert main([command, *source, "--out", str(out), *args]) == 2
    assert capsys.readouterr().err == f"pmf {command}: error: {message}\n"
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_the_range_rules_live_in_the_dataclasses():
    with pytest.raises(pmf.PMFError, match="^--num-images must be >= 10, got 9$"):
        DemoOptions(num_images=9)
    with pytest.raises(pmf.PMFError, match="^--workers must be >= 1, got 0$"):
        ToyOptions(workers=0)
    with pytest.raises(pmf.PMFError, match="^--depth must be >= 2 linear layers, got 1$"):
        ToyOptions(depth=1).to_config(0, None)
    assert ToyOptions(quick=True, steps=7).to_config(3, [2, 4]).settings()["steps"] == 7
    assert PackOptions(size=8).size == 8 and ModelFitOptions().num_classes is None


@pytest.mark.parametrize("command", OPTIONS)
def test_every_field_has_its_flag_and_default(command):
    actions = {a.dest: a for a in parsers()[command]._actions if a.help != argparse.SUPPRESS}
    for leaf in leaves(OPTIONS[command]):
        f, action = leaf.field, actions[leaf.field.name]
        assert leaf.flag in action.option_strings, (command, f.name)
        if action.required:
            assert "(required" in action.help and action.default is None
        else:
            assert action.default == f.default and f"(default: {shown(f.default, leaf)}" in action.help


def test_the_flags_keep_their_names_and_defaults():
    flags = {c: {s for a in parsers()[c]._actions for s in a.option_strings} for c in OPTIONS}
    assert {"--steps", "--omega", "--num-images", "--num-samples", "--threads", "--no-score", "--overwrite",
            "--interval", "--resume", "--seed", "--out", "--device"} <= flags["demo"]
    assert {"--dims", "--quick", "--steps", "--batch-size", "--lr", "--width", "--depth", "--fm-fraction",
            "--eval-samples", "--workers", "--threads", "--figure", "--no-plot", "--seed", "--out"} <= flags["toy"]
    assert {"--num-classes", "--channels", "--image-size"} <= flags["train"]
    assert {"--size", "--sample", "--limit"} <= flags["refstats"] and "--size" in flags["pack"]
    demo = parsers()["demo"].parse_args([])
    assert (demo.steps, demo.omega, demo.num_images, demo.threads) == (800, 3.0, 1000, None)
    assert parsers()["toy"].parse_args([]).threads == 1
    assert parsers()["refstats"].parse_args(["digits", "--size", "8", "--out", "r.npz"]).sample == 10_000
