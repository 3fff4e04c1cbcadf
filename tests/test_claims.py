"""benchmarks/claims.py: every cell's command line is the run it names (parsed by ``pmf train``'s own parser
and config rule), an ablation changes only its own field against the recipe's cell, and the tables' arithmetic
(mean, half the seed-to-seed range, u over x, difference over spread) and the resumed clock are right."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import claims  # noqa: E402
from pmf.cli import build_parser  # noqa: E402
from pmf.commands.train import config_from_args  # noqa: E402


def _config(cell: claims.Cell):
    args = build_parser().parse_args(cell.train_args(2000, Path("/tmp/claims-cell")))
    return args, config_from_args(args).to_dict()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "model_overrides" else {prefix + k: v})
    return out


@pytest.mark.parametrize("cell", [c for c in claims.cells(2, sorted(claims.PATCH)) if c.study == "main"],
                         ids=lambda c: c.id)
def test_a_main_cell_trains_the_recipe_with_16_tokens(cell):
    args, cfg = _config(cell)
    assert (cfg["data"], args.image_size) == ("mnist-5k", cell.size)
    assert cfg["model_overrides"] == {"patch_size": cell.size // 4}  # (size / patch)^2 = 16 tokens
    assert (cfg["loss"]["prediction"], cfg["seed"], cfg["steps"]) == (cell.pred, cell.seed, 2000)
    assert cfg["optim"]["name"] == "muon" and args.resume == "auto"


@pytest.mark.parametrize("size", sorted(claims.PATCH))
def test_a_main_cell_builds_its_model_at_its_size(size):
    """``pmf train`` fits the recipe's model to --image-size with the cell's patch: 16 tokens at every size, 224 px
    with 56 px patches included (a patch that does not divide the recipe's own 28 px)."""
    from pmf.commands.train import fit_model_to_data
    from pmf.model_configs import model_config

    args, _ = _config(claims.Cell("main", size, "x", 0))
    cfg = config_from_args(args)
    fit_model_to_data(cfg, args)
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    assert (mcfg.input_size, mcfg.patch_size) == (size, size // 4)
    assert (mcfg.input_size // mcfg.patch_size) ** 2 == 16


EXPECTED_CHANGE = {  # an ablation's only difference from the recipe's x cell at its size and seed
    "adamw": {"optim.name": "adamw", "optim.lr": 1e-3},
    "bottleneck16": {"model_overrides": {"patch_size": 28, "bottleneck_dim": 16}},
    "bottleneck512": {"model_overrides": {"patch_size": 28, "bottleneck_dim": 512}},
    "no-adaptive": {"loss.norm_p": 0.0},
    "dp0.25": {"loss.data_proportion": 0.25},
    "dp0.75": {"loss.data_proportion": 0.75},
}


def test_each_ablation_changes_its_own_field_and_nothing_else():
    cells = claims.cells(2, [28, 112])
    ablations = [c for c in cells if c.study != "main"]
    assert {c.study for c in ablations} == set(EXPECTED_CHANGE) == set(claims.PAPER)
    assert sorted((c.size, c.seed) for c in ablations if c.study == "adamw") == [(28, 0), (28, 1), (112, 0), (112, 1)]
    for cell in ablations:
        if cell.size != 112:
            continue
        base = _flat(_config(claims.Cell("main", cell.size, "x", cell.seed))[1])
        ours = _flat(_config(cell)[1])
        changed = {k: v for k, v in ours.items() if base[k] != v}
        assert changed == EXPECTED_CHANGE[cell.study], cell.id


def _result(study, size, pred, seed, fr, acc=0.9):
    scores = {s: {"accuracy": acc, "frechet": 10 * fr, "frechet_ratio": fr} for s in claims.SETTINGS}
    return {"cell": f"{study}-{size}-{pred}-{seed}", "study": study, "size": size, "prediction": pred,
            "seed": seed, "scores": scores, "train_minutes": 20.0 + seed}


def test_the_tables_give_mean_spread_ratio_and_difference_over_spread(tmp_path, monkeypatch, capsys):
    rows = [_result("main", 112, "x", 0, 0.10), _result("main", 112, "x", 1, 0.14),
            _result("main", 112, "u", 0, 0.80), _result("main", 112, "u", 1, 0.90),
            _result("adamw", 112, "x", 0, 0.20), _result("adamw", 112, "x", 1, 0.30),
            _result("dp0.25", 112, "x", 0, 0.13)]
    for r in rows:
        (tmp_path / f"{r['cell']}.json").write_text(json.dumps(r))
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    claims.table(None)
    out = capsys.readouterr().out
    # x: 0.12 ± 0.02, u: 0.85 ± 0.05, u over x: 0.85 / 0.12 = 7.1
    assert "| 112 / 28 | 784 | 2, 2 | 0.900 ± 0.000 / 0.120 ± 0.020 | 0.900 ± 0.000 / 0.850 ± 0.050 | 7.1 |" in out
    # adamw 0.25 ± 0.05 against 0.12 ± 0.02: (0.25 - 0.12) / 0.05 = +2.6; one seed is
    # measured against the recipe's spread
    # seed by seed: 0.20 - 0.10, 0.30 - 0.14
    assert "| adamw | 112 / 28 | 2 | 0.900 ± 0.000 | 0.250 ± 0.050 | 0.120 ± 0.020 | +2.6 | +0.100, +0.160 |" in out
    assert "| dp0.25 | 112 / 28 | 1 | 0.900 (1 seed) | 0.130 (1 seed) | 0.120 ± 0.020 | +0.5 | +0.030 |" in out
    assert "| main | 112 / 28 | 784 | x | 2 | guided_1step | 0.900 ± 0.000 | 0.120 ± 0.020 | 20.5 |" in out


def test_a_resumed_run_adds_the_time_before_each_restart(tmp_path):
    times = [(20, 10.0), (40, 20.0), (60, 5.0), (80, 15.0)]  # restarted after step 40: 20 s, then 15 s
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "time": t}) + "\n"
                                                    for s, t in times))
    curve = claims.loss_curve(tmp_path)
    assert curve["train_seconds"] == 35.0 and curve["step"] == [20, 40, 60, 80]


def test_write_puts_each_table_between_its_markers_and_keeps_the_rest(tmp_path, monkeypatch):
    rows = [_result("main", 28, "x", 0, 0.05), _result("main", 28, "u", 0, 0.06), _result("adamw", 28, "x", 0, 0.08)]
    for r in rows:
        (tmp_path / f"{r['cell']}.json").write_text(json.dumps(r))
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    doc = tmp_path / "claims.md"
    text = "".join(f"text before {name}\n<!-- claims.py table: {name} -->\n| stale |\n<!-- /claims.py table -->\n"
                   f"text after {name}\n" for name in claims.TABLES)
    doc.write_text(text)
    claims.table(argparse.Namespace(write=doc))
    out = doc.read_text()
    assert "| stale |" not in out
    for name in claims.TABLES:
        assert f"text before {name}\n<!-- claims.py table: {name} -->\n| " in out and f"text after {name}\n" in out
    assert "| 28 / 7 | 49 | 1, 1 | 0.900 (1 seed) / 0.050 (1 seed) |" in out
    assert "| adamw | 28 / 7 | 1 | 0.900 (1 seed) | 0.080 (1 seed) | 0.050 (1 seed) |" in out
    claims.table(argparse.Namespace(write=doc))
    assert doc.read_text() == out  # a second write changes nothing


def test_write_refuses_a_document_without_the_markers(tmp_path):
    with pytest.raises(SystemExit, match="--write .*missing.md: no such file"):
        claims.table(argparse.Namespace(write=tmp_path / "missing.md"))
    assert not (tmp_path / "missing.md").exists()
    with pytest.raises(SystemExit, match="claims.py table: headline"):
        claims.fill_tables("no markers here\n", {"headline": ["| a |"]})
    with pytest.raises(SystemExit, match="no '<!-- /claims.py table -->'"):
        claims.fill_tables("<!-- claims.py table: headline -->\n| a |\n", {"headline": ["| b |"]})


def test_an_unknown_cell_or_prefix_is_refused_by_name(tmp_path):
    args = argparse.Namespace(cell="adam-112-x-0", work=tmp_path, steps=10, threads=1, seeds=2, sizes=[28, 112])
    with pytest.raises(SystemExit, match="no cell 'adam-112-x-0'.*adamw"):
        claims.one(args)
    args = argparse.Namespace(only=["main-112", "main-224"], work=tmp_path, steps=10, threads=1, seeds=2,
                              sizes=[28, 112], jobs=2)
    with pytest.raises(SystemExit, match="--only main-224: no cell id starts so"):
        claims.run(args)
    assert not list(tmp_path.iterdir())  # refused before anything starts


def test_figure_of_a_folder_without_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no main-SIZE-x-0/samples folder to draw"):
        claims.figure(argparse.Namespace(work=tmp_path, out=tmp_path / "f.png"))
    assert not (tmp_path / "f.png").exists()
