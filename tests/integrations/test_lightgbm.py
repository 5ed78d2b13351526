"""The LightGBM callback: short lgb.train runs against a real daemon."""

from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from fetchml.client import MetricLogger
from fetchml.integrations.lightgbm import FetchmlCallback, callback
from tests.support.runs import Stored

ReadRun = Callable[[str | None], Stored]
PARAMS = {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5, "num_leaves": 4}


def datasets(noise: bool = False) -> tuple[lgb.Dataset, lgb.Dataset]:
    """Training data, and validation data (random targets with `noise`: early stopping
    then stops after 5 rounds)."""
    rng = np.random.default_rng(0)
    x = rng.random((60, 3))
    x_valid = rng.random((20, 3))
    y_valid = rng.random(20) if noise else x_valid.sum(axis=1)
    train = lgb.Dataset(x, x.sum(axis=1))
    return train, lgb.Dataset(x_valid, y_valid, reference=train)


def test_every_evaluation_and_the_booster_params(
    logger_args: dict[str, Any], read_run: ReadRun
) -> None:
    train, valid = datasets()
    evals: dict[str, Any] = {}
    params = PARAMS | {"learning_rate": 0.2, "metric": ["l2", "l1"]}
    with MetricLogger(name="gbm", **logger_args) as ml:
        lgb.train(
            params,
            train,
            num_boost_round=4,
            valid_sets=[train, valid],
            valid_names=["train", "valid"],
            callbacks=[callback(logger=ml), lgb.record_evaluation(evals)],
        )
        assert not ml.closed  # a given logger stays open
    stored = read_run(ml.run_id)
    assert stored.run.params == PARAMS | {
        "learning_rate": 0.2,
        "metric": '["l2","l1"]',
        "num_iterations": 4,
    }
    assert stored.names == {"train/l2", "train/l1", "valid/l2", "valid/l1"}
    for data, metrics in evals.items():
        for metric, values in metrics.items():
            assert stored.series(f"{data}/{metric}") == list(enumerate(values))


def test_a_run_it_starts_finishes_after_the_last_round(
    logger_args: dict[str, Any], read_run: ReadRun
) -> None:
    train, valid = datasets()
    cb = callback(name="gbm-own", **logger_args)
    lgb.train(PARAMS, train, num_boost_round=3, valid_sets=[valid], callbacks=[cb])
    stored = read_run(cb.run.run_id)
    assert (stored.run.name, stored.run.status) == ("gbm-own", "finished")
    assert [step for step, _ in stored.series("valid_0/l2")] == [0, 1, 2]


def test_early_stopping_then_close_finishes_the_run(
    logger_args: dict[str, Any], read_run: ReadRun
) -> None:
    train, valid = datasets(noise=True)
    evals: dict[str, Any] = {}
    with FetchmlCallback(name="gbm-early", **logger_args) as cb:
        lgb.train(
            PARAMS,
            train,
            num_boost_round=20,
            valid_sets=[valid],
            valid_names=["valid"],
            callbacks=[lgb.early_stopping(2, verbose=False), cb, lgb.record_evaluation(evals)],
        )
        cb.run.flush()
        assert read_run(cb.run.run_id).run.status == "running"
    stored = read_run(cb.run.run_id)
    assert stored.run.status == "finished"
    assert len(evals["valid"]["l2"]) == 5  # stopped early
    assert stored.series("valid/l2") == list(enumerate(evals["valid"]["l2"]))


def test_cv_logs_the_mean_over_the_folds(logger_args: dict[str, Any], read_run: ReadRun) -> None:
    train, _ = datasets()
    cb = callback(name="gbm-cv", **logger_args)
    result = lgb.cv(PARAMS, train, num_boost_round=3, nfold=2, stratified=False, callbacks=[cb])
    stored = read_run(cb.run.run_id)
    assert stored.run.status == "finished" and stored.run.params["num_leaves"] == 4
    means = result["valid l2-mean"]
    assert isinstance(means, list)
    assert stored.series("valid/l2") == list(enumerate(means))


def test_a_raising_block_fails_the_run(logger_args: dict[str, Any], read_run: ReadRun) -> None:
    def stop_at_round_one(env: Any) -> None:
        if env.iteration == 1:
            raise RuntimeError("diverged")

    train, valid = datasets()
    with pytest.raises(RuntimeError, match="diverged"), callback(**logger_args) as cb:
        lgb.train(PARAMS, train, 5, valid_sets=[valid], callbacks=[cb, stop_at_round_one])
    stored = read_run(cb.run.run_id)
    assert stored.run.status == "failed"
    # the caller's callbacks run first: round 1 raised before it was logged
    assert [step for step, _ in stored.series("valid_0/l2")] == [0]
