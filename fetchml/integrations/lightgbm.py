"""LightGBM: `lgb.train(params, data, valid_sets=[...], callbacks=[callback(name="gbm")])`.

Logs every evaluation result of each boosting round as `<dataset>/<metric>`
(`valid/l2`, `train/auc`; under lgb.cv the mean over the folds) at step = the
round's index (from 0); the booster params become the run's params. A logger the callback
started is closed after the last round; when early stopping ends training sooner,
close it with `cb.close()` or `with callback(...) as cb:` (a block that raises
fails the run; a logger left open closes at exit).
"""

from typing import Any

from lightgbm.callback import CallbackEnv

from fetchml.client import MetricLogger

from . import RunHandle, RunOwner

__all__ = ["FetchmlCallback", "callback"]


class FetchmlCallback(RunOwner):
    """A LightGBM callback (called after every round); also a context manager."""

    before_iteration = False

    def __init__(self, logger: MetricLogger | None = None, **logger_kwargs: Any) -> None:
        """`logger` or MetricLogger keyword arguments (a run it starts and finishes itself)."""
        self.run = RunHandle(logger, logger_kwargs)
        self.order = 20
        """After the caller's callbacks, before early stopping's (30), which may end a round."""

    def __call__(self, env: CallbackEnv) -> None:
        if env.iteration == env.begin_iteration:
            self.run.set_params(env.params)
        metrics = {f"{row[0]}/{row[1]}": row[2] for row in env.evaluation_result_list or ()}
        if metrics:
            self.run.log(metrics, env.iteration)
        if env.iteration + 1 >= env.end_iteration:
            self.run.close()


def callback(logger: MetricLogger | None = None, **logger_kwargs: Any) -> FetchmlCallback:
    """The callback for `lgb.train(..., callbacks=[...])` and `lgb.cv`."""
    return FetchmlCallback(logger, **logger_kwargs)
