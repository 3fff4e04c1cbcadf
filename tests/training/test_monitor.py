"""The metrics log: TensorBoard is optional (an extra), but a TensorBoard that fails is not hidden."""

import sys
import types

import pytest

from pmf.training.monitor import MetricsLog


def _fake_tensorboard(monkeypatch, writer):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)


def test_metrics_log_writes_tensorboard_scalars_when_installed(tmp_path, monkeypatch):
    scalars = []

    class Writer:
        def __init__(self, folder):
            self.folder = folder

        def add_scalar(self, name, value, step):
            scalars.append((name, value, step))

    _fake_tensorboard(monkeypatch, Writer)
    log = MetricsLog(tmp_path / "metrics.jsonl", None, True)
    log.write({"step": 3, "loss": 0.5, "note": "x"})
    assert scalars == [("loss", 0.5, 3)] and log.tb.folder == str(tmp_path / "tensorboard")


def test_metrics_log_without_tensorboard_keeps_the_jsonl(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails: not installed
    log = MetricsLog(tmp_path / "metrics.jsonl", None, True)
    log.write({"step": 1, "loss": 0.25})
    assert log.tb is None and (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.25}\n'


def test_a_failing_tensorboard_is_not_swallowed(tmp_path, monkeypatch):
    def broken(folder):
        raise PermissionError(f"cannot write {folder}")

    _fake_tensorboard(monkeypatch, broken)
    with pytest.raises(PermissionError, match="cannot write"):
        MetricsLog(tmp_path / "metrics.jsonl", None, True)


def test_a_training_grid_has_one_class_per_column():
    from pmf.training.monitor import grid_columns

    for count, classes, want in [(64, 3, 9), (100, 10, 10), (64, 10, 10), (16, 10, 10), (64, 1, 8), (64, 1000, 8),
                                 (16, 2, 4)]:
        nrow = grid_columns(count, classes)
        assert nrow == want, (count, classes)
        if classes <= count:  # image i = row * nrow + column is class i % classes: the column decides it
            assert nrow % classes == 0
