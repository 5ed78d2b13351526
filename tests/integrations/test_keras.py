"""The Keras 3 callback: a short fit on the JAX backend (conftest sets KERAS_BACKEND) against
a real daemon."""

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

from fetchml.integrations.keras import FetchmlCallback
from tests.support.runs import Stored


class BatchLogs(keras.callbacks.Callback):  # type: ignore[misc]
    """What Keras reports after each batch, by global batch index."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.logs.append({name: float(value) for name, value in (logs or {}).items()})


def test_fit_logs_epochs_batches_and_params(
    logger_args: dict[str, Any], read_run: Callable[[str | None], Stored]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((48, 3), dtype=np.float32)
    y = x.sum(axis=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5), loss="mse", metrics=["mae"])
    callback = FetchmlCallback(
        name="keras-fit",
        project="integrations",
        tags=["keras"],
        log_every_n_batches=3,
        **logger_args,
    )
    batches = BatchLogs()
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        validation_split=0.25,
        verbose=0,
        callbacks=[callback, batches],
    )

    stored = read_run(callback.run.run_id)
    run = stored.run
    assert (run.name, run.project, run.tags, run.status) == (
        "keras-fit",
        "integrations",
        ("keras",),
        "finished",
    )
    params = run.params
    assert (params["epochs"], params["steps"]) == (2, 5)  # 36 training samples, batches of 8
    assert params["optimizer"] == "SGD"
    assert params["optimizer.learning_rate"] == 0.05 and params["optimizer.momentum"] == 0.5
    assert params["optimizer.nesterov"] is False and params["optimizer.clipnorm"] == "None"
    for name in ("loss", "mae", "val_loss", "val_mae"):
        assert stored.series(name) == list(enumerate(history.history[name])), name
    assert len(batches.logs) == 10
    for name in ("loss", "mae"):
        want = [(i, batches.logs[i][name]) for i in (0, 3, 6, 9)]
        assert stored.series(f"batch/{name}") == want, name
    assert stored.names == {"loss", "mae", "val_loss", "val_mae", "batch/loss", "batch/mae"}


def test_log_every_n_batches_must_be_a_count() -> None:
    with pytest.raises(ValueError, match="log_every_n_batches"):
        FetchmlCallback(log_every_n_batches=-1)
