"""XGBoost: `xgb.train(params, dtrain, evals=[...], callbacks=[FetchmlCallback(name="xgb")])`.

Logs the newest value of every evaluation metric of each round as
`<dataset>/<metric>` (`valid/rmse`) at step = the round's index (from 0). Params:
the booster's effective configuration (every `*_param` section of its saved
config: `eta`, `max_depth`, `objective`, `seed`, ...; numbers as numbers), the
booster type and the evaluation metrics. A logger the callback started is closed
when training ends, early stopping included.
"""

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xgboost

from fetchml.client import MetricLogger

from . import RunHandle

__all__ = ["FetchmlCallback"]


class FetchmlCallback(xgboost.callback.TrainingCallback):
    def __init__(self, logger: MetricLogger | None = None, **logger_kwargs: Any) -> None:
        """`logger` or MetricLogger keyword arguments (a run it starts and finishes itself)."""
        super().__init__()
        self.run = RunHandle(logger, logger_kwargs)

    def before_training(self, model: Any) -> Any:
        self.run.set_params(booster_params(json.loads(model.save_config())))
        return model

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        metrics = {
            f"{data}/{metric}": values[-1]
            for data, by_metric in evals_log.items()
            for metric, values in by_metric.items()
            if values
        }
        if metrics:
            self.run.log(metrics, epoch)
        return False

    def after_training(self, model: Any) -> Any:
        self.run.close()
        return model


def booster_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat parameters in a booster's saved config (`learner.*._param` sections)."""
    learner = config.get("learner", {})
    params: dict[str, Any] = {}

    def walk(node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                if key.endswith("_param"):
                    params.update({name: _number(text) for name, text in value.items()})
                else:
                    walk(value)

    walk(learner)
    booster = learner.get("gradient_booster", {}).get("name")
    if booster is not None:
        params["booster"] = booster
    metrics = [metric.get("name") for metric in learner.get("metrics", ())]
    if metrics:
        params["eval_metric"] = metrics
    return params


def _number(text: Any) -> Any:
    """A config value: its int, else its float (XGBoost keeps float32: the shortest form of
    that), else itself."""
    if not isinstance(text, str):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(str(np.float32(text)))
    except ValueError:
        return text
