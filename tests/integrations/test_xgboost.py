"""The XGBoost callback: short xgb.train runs against a real daemon."""

from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost as xgb

from fetchml.client import MetricLogger
from fetchml.integrations.xgboost import FetchmlCallback
from tests.support.runs import Stored

ReadRun = Callable[[str | None], Stored]


def matrices(noise: bool = False) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    rng = np.random.default_rng(0)
    x = rng.random((60, 3))
    x_valid = rng.random((20, 3))
    y_valid = rng.random(20) if noise else x_valid.sum(axis=1)
    return xgb.DMatrix(x, x.sum(axis=1)), xgb.DMatrix(x_valid, y_valid)


def test_evals_and_the_booster_config(logger_args: dict[str, Any], read_run: ReadRun) -> None:
    train, valid = matrices()
    evals: dict[str, Any] = {}
    callback = FetchmlCallback(name="xgb", params={"note": "mine"}, **logger_args)
    xgb.train(
        {"eta": 0.3, "max_depth": 3, "eval_metric": ["rmse", "mae"], "seed": 7},
        train,
        num_boost_round=3,
        evals=[(train, "train"), (valid, "valid")],
        evals_result=evals,
        verbose_eval=False,
        callbacks=[callback],
    )
    stored = read_run(callback.run.run_id)
    assert (stored.run.name, stored.run.status) == ("xgb", "finished")
    params = stored.run.params
    assert params["note"] == "mine"
    assert (params["eta"], params["max_depth"], params["seed"]) == (0.3, 3, 7)
    assert params["objective"] == "reg:squarederror" and params["booster"] == "gbtree"
    assert params["eval_metric"] == '["rmse","mae"]'
    assert params["subsample"] == 1 and params["sparse_threshold"] == 0.2
    assert stored.names == {"train/rmse", "train/mae", "valid/rmse", "valid/mae"}
    for data, metrics in evals.items():
        for metric, values in metrics.items():
            assert stored.series(f"{data}/{metric}") == list(enumerate(values))


def test_early_stopped_rounds_all_logged_and_a_given_logger_stays_open(
    logger_args: dict[str, Any], read_run: ReadRun
) -> None:
    train, valid = matrices(noise=True)
    evals: dict[str, Any] = {}
    with MetricLogger(name="xgb-given", **logger_args) as ml:
        booster = xgb.train(
            {"eta": 0.5},
            train,
            num_boost_round=50,
            evals=[(valid, "valid")],
            evals_result=evals,
            early_stopping_rounds=2,
            verbose_eval=False,
            callbacks=[FetchmlCallback(ml)],
        )
        assert not ml.closed
    assert booster.best_iteration + 3 == len(evals["valid"]["rmse"]) < 50
    stored = read_run(ml.run_id)
    assert stored.run.status == "finished"
    assert stored.series("valid/rmse") == list(enumerate(evals["valid"]["rmse"]))
