"""W&B logging (``pmf train --wandb PROJECT``) in offline mode: the run holds the scalars of metrics.jsonl at their
steps, the sample grids and the config; a resumed run continues the same W&B run; without the package, one line.

The wandb API reads runs from a server only, so the test reads the offline run's own file (``run-ID.wandb``: a
LevelDB-style log of 32 KiB blocks whose records are ``wandb_internal_pb2.Record`` protobufs)."""

import contextlib
import io
import json
import struct
import sys
from pathlib import Path

import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
BLOCK, HEADER = 32768, 7  # the log's block size; the file header and each record header are 7 bytes


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunks += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def history(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def train(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "--recipe", "tiny", "--log-every", "1", "--sample-every", "2", "--ckpt-every", "2",
                   "--no-progress", *argv])
    return rc, err.getvalue()


@pytest.mark.slow  # two W&B runs start their service: about a minute on the 2-core machine
def test_offline_wandb_run_holds_the_scalars_grids_and_config_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, value in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=tmp_path / "wandb",
                           WANDB_CONFIG_DIR=tmp_path / "config", WANDB_CACHE_DIR=tmp_path / "cache").items():
        monkeypatch.setenv(var, str(value))
    run = tmp_path / "run"
    assert train("--steps", "4", "--out", str(run), "--wandb", "pmf-test")[0] == 0
    run_id = (run / "wandb_id").read_text().strip()
    assert train("--steps", "6", "--out", str(run), "--wandb", "pmf-test", "--resume", "auto")[0] == 0
    assert (run / "wandb_id").read_text().strip() == run_id
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # the resume continued the same W&B run
    records = [r for f in files for r in wandb_records(f)]
    rows = history(records)
    scalars = {r["step"]: r for r in rows if "loss_u" in r}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert all(scalars[row["step"]][k] == row[k] for k in ("loss", "loss_u", "loss_v", "lr")), row
    assert sorted(scalars) == [1, 2, 3, 4, 5, 6]
    grids = [r for r in rows if "samples/path" in r]
    assert [r["step"] for r in grids] == [2, 4, 6] and all(r["samples/_type"] == "image-file" for r in grids)
    assert all((f.parent / "files" / r["samples/path"]).is_file() for f in files[:1] for r in grids[:2])
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    keys = {item.key: json.loads(item.value_json) for item in config.update}
    assert keys["arch"] == "pMF-Tiny/4" and keys["wandb"] == "pmf-test" and keys["batch_size"] == 16


def test_wandb_without_the_package_is_one_line_and_touches_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of wandb fails as if it were not installed
    rc, err = train("--steps", "2", "--out", str(tmp_path / "run"), "--wandb", "pmf-test")
    assert rc == 2 and "--wandb needs the wandb package" in err and "[wandb]" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
