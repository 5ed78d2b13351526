"""Framework integrations: Keras 3, LightGBM, XGBoost and a TensorBoard-style SummaryWriter.

Each one writes to a `MetricLogger`: the one passed as `logger=`, or one it starts
itself from the MetricLogger keyword arguments it was given (name=, project=,
params=, tags=, url=, api_key=, ...) and closes when training ends, which marks the
run finished. The hyperparameters the library knows become the run's params; params
beyond the run document's limits (1,000 params, keys of 255 bytes, string values of
4,096 bytes) or past PARAMS_BUDGET bytes are dropped with one warning instead of
failing the training.
"""

import json
import logging
from collections.abc import Mapping, Set
from types import TracebackType
from typing import Any, Self

from fetchml.client import MetricLogger
from fetchml.client.runinfo import MAX_KEY_BYTES, MAX_PARAMS, MAX_STRING_BYTES, param_value

logger = logging.getLogger(__name__)

__all__ = ["RunHandle", "RunOwner", "flat_params"]

_SHOWN = 5
"""How many dropped keys the warning names."""
PARAMS_BUDGET = 32768
"""The most params JSON an integration sends to one run, in bytes: half the run document's
64 KiB, which leaves room for the run's other keys and keeps each update within one
UPDATE_RUN."""


class RunHandle:
    """The MetricLogger an integration writes to: the one given, or one it starts on first use
    (again after it closed it) from `kwargs`, and closes in `close()`."""

    def __init__(self, given: MetricLogger | None, kwargs: Mapping[str, Any]) -> None:
        if given is not None and kwargs:
            raise TypeError(f"pass logger= or MetricLogger arguments, not both: {sorted(kwargs)}")
        self._given = given
        self._kwargs = dict(kwargs)
        self._own: MetricLogger | None = None
        self._sent: set[str] = set()
        """Param keys the run has from this handle (and the params= of a logger it starts)."""
        self._budget = PARAMS_BUDGET
        self._warned = False

    @property
    def logger(self) -> MetricLogger:
        """The logger (starting one when there is none open)."""
        if self._given is not None:
            return self._given
        if self._own is None or self._own.closed:
            self._own = MetricLogger(**self._kwargs)
            given = flat_params(self._kwargs.get("params") or {})[0]
            self._sent = set(given)
            self._budget = PARAMS_BUDGET - sum(entry_size(*item) for item in given.items())
        return self._own

    @property
    def run_id(self) -> str | None:
        """The run's ID (40 hex), None before the logger it starts has started."""
        current = self._given or self._own
        return None if current is None else current.run_id

    def set_params(self, params: Mapping[str, Any]) -> None:
        """Send the params that fit the run document's limits; warn once about the rest."""
        current = self.logger
        kept, dropped = flat_params(params, self._sent, self._budget)
        if dropped and not self._warned:
            self._warned = True
            shown = ", ".join(repr(key[:40]) for key in dropped[:_SHOWN])
            more = f" and {len(dropped) - _SHOWN} more" if len(dropped) > _SHOWN else ""
            logger.warning(
                "fetchml: %d params dropped (beyond %d params, keys of %d bytes, values of "
                "%d bytes or %d bytes in all): %s%s",
                len(dropped),
                MAX_PARAMS,
                MAX_KEY_BYTES,
                MAX_STRING_BYTES,
                PARAMS_BUDGET,
                shown,
                more,
            )
        if kept:
            current.set_params(kept)
            self._sent.update(kept)
            self._budget -= sum(entry_size(*item) for item in kept.items())

    def log(
        self, metrics: Mapping[str, Any], step: int | None, timestamp: float | None = None
    ) -> None:
        """Log each value (anything float() takes: numpy, jax and torch scalars too)."""
        values = {name: float(value) for name, value in metrics.items()}
        self.logger.log_dict(values, step=step, timestamp=timestamp)

    def flush(self) -> None:
        current = self._given or self._own
        if current is not None and not current.closed:
            current.flush()

    def close(self, error: BaseException | None = None) -> None:
        """Close the logger this handle started: the run is finished, or failed when training
        raised `error`. A given logger is only flushed."""
        if self._given is not None:
            self.flush()
        elif self._own is not None and error is not None:
            self._own.__exit__(type(error), error, error.__traceback__)
        elif self._own is not None:
            self._own.close()


def flat_params(
    params: Mapping[Any, Any], present: Set[str] = frozenset(), budget: int = PARAMS_BUDGET
) -> tuple[dict[str, Any], list[str]]:
    """Nested mappings flattened with "." and values as the run document stores them, split
    into what fits (keys of 1..255 bytes, strings of at most 4,096 bytes, at most 1,000 keys
    with those `present`, at most `budget` bytes of entries) and the dropped keys, in order."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    room = MAX_PARAMS - len(present)

    def walk(items: Mapping[Any, Any], prefix: str) -> None:
        nonlocal room, budget
        for key, raw in items.items():
            path = prefix + str(key)
            if isinstance(raw, Mapping):
                walk(raw, path + ".")
                continue
            value = param_value(raw)
            new = path not in present and path not in kept
            size = entry_size(path, value)
            if (
                not 1 <= len(path.encode()) <= MAX_KEY_BYTES
                or (isinstance(value, str) and len(value.encode()) > MAX_STRING_BYTES)
                or (new and room <= 0)
                or size > budget
            ):
                dropped.append(path)
                continue
            if new:
                room -= 1
            budget -= size
            kept[path] = value

    walk(params, "")
    return kept, dropped


def entry_size(key: str, value: Any) -> int:
    """About the bytes a param takes in the run document's JSON."""
    return len(json.dumps([key, value], ensure_ascii=False, separators=(",", ":")).encode())


class RunOwner:
    """An integration that writes to `self.run`: `close()` ends the run, and as a context
    manager it ends it with the block's exception (a failed run when it raised)."""

    run: RunHandle

    def close(self) -> None:
        self.run.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.run.close(exc)
