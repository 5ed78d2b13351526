"""The TensorBoard-style SummaryWriter against a real daemon, and the params limits every
integration shares."""

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fetchml.client import MetricLogger
from fetchml.integrations.tensorboard import SummaryWriter
from tests.support.runs import Stored

ReadRun = Callable[[str | None], Stored]


def test_scalars_hparams_and_close(logger_args: dict[str, Any], read_run: ReadRun) -> None:
    walltime = float(int(time.time()) - 3600)
    with SummaryWriter("runs/exp1", "-lr0.1", **logger_args) as writer:
        writer.add_scalar("loss", 0.5, 0)
        writer.add_scalar("loss", np.float32(0.25), global_step=1, walltime=walltime)
        writer.add_scalar("lr", 0.1)  # no step: 0, then one more per call
        writer.add_scalar("lr", 0.05)
        writer.add_scalars("acc", {"train": 0.9, "val": 0.8}, 2)
        writer.add_hparams(
            {"lr": 0.1, "opt": {"name": "sgd"}, "layers": [64, 32], "act": None, "bn": True},
            {"hparam/best_val": 0.8},
            global_step=2,
        )
        writer.flush()
        assert read_run(writer.run.run_id).run.status == "running"
    stored = read_run(writer.run.run_id)
    assert stored.run.name == "runs/exp1-lr0.1"
    assert stored.run.status == "finished"
    assert stored.run.params == {
        "lr": 0.1,
        "opt.name": "sgd",
        "layers": "[64,32]",
        "act": "None",
        "bn": True,
    }
    assert stored.series("loss") == [(0, 0.5), (1, 0.25)]
    assert stored.series("lr") == [(0, 0.1), (1, 0.05)]
    assert stored.series("acc/train") == [(2, 0.9)]
    assert stored.series("acc/val") == [(2, 0.8)]
    assert stored.series("hparam/best_val") == [(2, 0.8)]
    stamps = {(r.name, r.step): r.timestamp for r in stored.records}
    assert stamps[("loss", 1)] == walltime  # walltime is the point's time
    assert stamps[("loss", 0)] > walltime


def test_a_raising_block_fails_the_run(logger_args: dict[str, Any], read_run: ReadRun) -> None:
    with pytest.raises(KeyError), SummaryWriter(name="broken", **logger_args) as writer:
        writer.add_scalar("loss", 1.0, 0)
        raise KeyError("boom")
    stored = read_run(writer.run.run_id)
    assert (stored.run.name, stored.run.status) == ("broken", "failed")
    assert stored.series("loss") == [(0, 1.0)]


def test_a_given_logger_stays_open(logger_args: dict[str, Any], read_run: ReadRun) -> None:
    with MetricLogger(name="shared", **logger_args) as ml:
        with pytest.raises(TypeError, match="not both"):
            SummaryWriter(logger=ml, name="other")
        writer = SummaryWriter("ignored", logger=ml)
        writer.add_scalar("x", 1.0, 3)
        writer.close()
        assert not ml.closed
        assert read_run(ml.run_id).series("x") == [(3, 1.0)]  # close() flushed
        ml.log("y", 2.0, step=0)
    stored = read_run(ml.run_id)
    assert (stored.run.name, stored.run.status) == ("shared", "finished")


def test_params_beyond_the_limits_are_dropped_with_one_warning(
    logger_args: dict[str, Any], read_run: ReadRun, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 params at most (with the run's own), keys of 1..255 bytes, string values of at
    most 4,096 bytes: the rest is dropped, with one warning however often it happens."""
    many = {f"p{i:04d}": i for i in range(1003)}
    bad = {"k" * 256: 1, "": 2, "long": "v" * 4097, "é" * 127 + "x": "ok", "s": "é" * 2048}
    with (
        caplog.at_level(logging.WARNING, logger="fetchml.integrations"),
        SummaryWriter(params={"given": 1}, **logger_args) as writer,
    ):
        writer.add_hparams(bad | many, {})
        writer.add_hparams({"p0000": -1, "late": 1}, {})  # a known key fits; a new one does not
    warnings = [r for r in caplog.records if r.name == "fetchml.integrations"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert message.startswith("fetchml: 9 params dropped") and "'long'" in message
    params = read_run(writer.run.run_id).run.params
    assert len(params) == 1000
    assert params["given"] == 1 and params["p0000"] == -1 and params["é" * 127 + "x"] == "ok"
    assert params["s"] == "é" * 2048 and params["p0996"] == 996
    assert not {"k" * 256, "", "long", "p0997", "late"} & set(params)


def test_params_past_half_the_run_document_are_dropped(
    logger_args: dict[str, Any], read_run: ReadRun, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty 4,000-byte values make an update larger than one UPDATE_RUN carries: the first
    eight fit in the 32 KiB an integration may use, the rest are dropped with one warning."""
    with (
        caplog.at_level(logging.WARNING, logger="fetchml.integrations"),
        SummaryWriter(**logger_args) as writer,
    ):
        writer.add_hparams({f"v{i:02d}": "x" * 4000 for i in range(20)}, {"m": 1.0})
        writer.add_hparams({"small": 1}, {})  # ~10 bytes still fit
    warnings = [r.getMessage() for r in caplog.records if r.name == "fetchml.integrations"]
    assert len(warnings) == 1 and warnings[0].startswith("fetchml: 12 params dropped")
    params = read_run(writer.run.run_id).run.params
    assert set(params) == {f"v{i:02d}" for i in range(8)} | {"small"}


def test_used_after_close_it_starts_a_new_run(
    logger_args: dict[str, Any], read_run: ReadRun
) -> None:
    writer = SummaryWriter(name="again", **logger_args)
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    first = writer.run.run_id
    writer.add_scalar("loss", 2.0, 0)
    writer.flush()
    second = writer.run.run_id
    assert second != first
    assert read_run(second).run.status == "running"
    writer.close()
    for run_id, value in ((first, 1.0), (second, 2.0)):
        stored = read_run(run_id)
        assert (stored.run.name, stored.run.status) == ("again", "finished")
        assert stored.series("loss") == [(0, value)]
