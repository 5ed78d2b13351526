"""Keras 3: `model.fit(..., callbacks=[FetchmlCallback(name="mnist", project="demo")])`.

Logs the epoch metrics Keras reports (`loss`, `val_loss`, ...) at step = epoch and,
with `log_every_n_batches=N`, the running batch metrics as `batch/<metric>` at step
= the global batch index (0, N, 2N, ... counted over the whole fit). Params: what
Keras knows of the fit (`epochs`, `steps` per epoch), the optimizer's class name as
`optimizer` and its config as `optimizer.<key>`. A run the callback started is
finished at the end of the fit.
"""

import warnings
from typing import Any

import keras
import numpy as np

from fetchml.client import MetricLogger

from . import RunHandle

__all__ = ["FetchmlCallback"]


class FetchmlCallback(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(
        self,
        logger: MetricLogger | None = None,
        *,
        log_every_n_batches: int = 0,
        **logger_kwargs: Any,
    ) -> None:
        """`logger` or MetricLogger keyword arguments (a run it starts and finishes itself)."""
        super().__init__()
        if not isinstance(log_every_n_batches, int) or log_every_n_batches < 0:
            raise ValueError(f"log_every_n_batches must be an int >= 0, got {log_every_n_batches}")
        self.run = RunHandle(logger, logger_kwargs)
        self._every = log_every_n_batches
        self._batch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._batch = 0
        self.run.set_params(self._fit_params())

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._every and self._batch % self._every == 0 and logs:
            self.run.log({f"batch/{name}": value for name, value in logs.items()}, self._batch)
        self._batch += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs:
            self.run.log(logs, epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.run.close()

    def _fit_params(self) -> dict[str, Any]:
        known = self.params or {}
        params = {key: known[key] for key in ("epochs", "steps") if key in known}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            params["optimizer"] = type(optimizer).__name__
            with warnings.catch_warnings():  # Keras reads its variables the numpy 1 way
                warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                config = dict(optimizer.get_config())
            config.pop("name", None)
            rate = config.get("learning_rate")
            if isinstance(rate, float):  # held in a float32 variable: its shortest form
                config["learning_rate"] = float(str(np.float32(rate)))
            params.update({f"optimizer.{key}": value for key, value in config.items()})
        return params
