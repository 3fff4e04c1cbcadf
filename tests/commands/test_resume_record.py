"""A resumed ``pmf train`` runs with the run's own config, so its record never disagrees with what ran: flags
left out take the run's values, flags that contradict it are refused (each named), and the printed resume
command (the same command plus ``--resume auto``) works for ``--init`` runs too."""

import json

import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--sample-every", "0", "--no-progress", "--workers", "0", "--log-every", "1", "--ckpt-every", "2"]


def rows(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_resume_without_the_flags_keeps_the_runs_config_in_its_record(tmp_path, fixtures_dir, capsys):
    out, init = tmp_path / "R", str(fixtures_dir / "net_tiny.pt")
    first = ["train", "--recipe", "tiny", "--init", init, "--out", str(out), "--lr", "1e-4", "--steps", "2", *FAST]
    assert main(first) == 0
    assert main(["train", "--out", str(out), "--steps", "3", "--resume", "auto", *FAST]) == 0
    for record in (out / "config.json", out / "checkpoints" / "step_00000003.json"):
        cfg = json.loads(record.read_text())
        assert (cfg["optim"]["lr"], cfg["init"], cfg["steps"], cfg["data"]) == (1e-4, init, 3, "digits"), record
    assert [r["lr"] for r in rows(out)] == [1e-4] * 3  # what ran is what the record says
    # the same command plus --resume auto continues an --init run (its weights, not the init's)
    capsys.readouterr()
    assert main([*first[:first.index("--steps")], "--steps", "4", *FAST, "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out and rows(out)[-1]["step"] == 4


def test_flags_that_contradict_the_run_are_refused_each_named(tmp_path, capsys):
    out = tmp_path / "R"
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--steps", "2", "--lr", "1e-3", *FAST]) == 0
    record = (out / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--steps", "3", "--lr", "0.01", "--seed", "9",
                 "--resume", "auto", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr 0.01 (the run has 0.001)" in err[0] and "--seed 9 (the run has 0)" in err[0]
    assert "--steps" not in err[0] and (out / "config.json").read_text() == record  # nothing written


def test_an_init_given_to_a_resume_must_be_the_runs(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "R"
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--steps", "2", *FAST]) == 0
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--init", str(fixtures_dir / "net_tiny.pt"),
                 "--steps", "3", "--resume", "auto", *FAST]) == 2
    assert "--init " in capsys.readouterr().err
    # --resume auto in a folder without checkpoints starts the --init run (a requeue script runs one command)
    fresh = tmp_path / "F"
    assert main(["train", "--recipe", "tiny", "--out", str(fresh), "--init", str(fixtures_dir / "net_tiny.pt"),
                 "--steps", "1", "--resume", "auto", *FAST]) == 0
    assert json.loads((fresh / "config.json").read_text())["init"] == str(fixtures_dir / "net_tiny.pt")


def test_a_record_of_an_older_version_is_said_and_the_commands_config_runs(tmp_path, capsys):
    out = tmp_path / "R"
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--steps", "2", *FAST]) == 0
    step = out / "checkpoints" / "step_00000002.json"
    step.write_text(json.dumps({**json.loads(step.read_text()), "retired_field": 1}))
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--steps", "3", "--resume", "auto", *FAST]) == 0
    err = capsys.readouterr().err
    assert "does not read in this version" in err and "retired_field" in err
    assert json.loads((out / "config.json").read_text())["steps"] == 3


def test_the_same_command_with_model_overrides_resumes_though_the_record_holds_the_fitted_fields(tmp_path, capsys):
    """--model-overrides given again on a resume agree with the record, which also holds what pmf train fitted
    to the data (here the image size of --image-size); an override that differs is still refused."""
    out = tmp_path / "R"
    def command(overrides):
        return ["train", "--recipe", "tiny", "--out", str(out), "--image-size", "48", "--model-overrides", overrides,
                *FAST]

    first = command('{"patch_size": 16}')
    assert main([*first, "--steps", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["model_overrides"] == {"patch_size": 16, "input_size": 48}
    assert main([*first, "--steps", "3", "--resume", "auto"]) == 0 and rows(out)[-1]["step"] == 3
    capsys.readouterr()
    assert main([*command('{"patch_size": 8}'), "--steps", "4", "--resume", "auto"]) == 2
    assert '--model-overrides {"patch_size": 8}' in capsys.readouterr().err
