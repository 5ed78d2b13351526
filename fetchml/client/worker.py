"""The MetricLogger's background thread: its own event loop running a Shipper.

Other threads wake it (`nudge`), wait for it (`join`) and, when their time is
up, cancel whatever it awaits (`abort`: a connect, a reply that never comes).
"""

import asyncio
import contextlib
import logging
import threading

from .shipper import Shipper

logger = logging.getLogger(__name__)

ABORT_WAIT_S = 0.5
"""How long abort() waits for the thread to finish once cancelled."""


class Worker:
    def __init__(self, ship: Shipper, name: str) -> None:
        self.ship = ship
        self.crash: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def nudge(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker has stopped
            self._loop.call_soon_threadsafe(self.ship.wake)

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self) -> None:
        """Stop now: cancel the shipper wherever it waits, then give the thread a moment."""
        self.ship.abort = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._cancel)
        self._thread.join(ABORT_WAIT_S)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._task = loop.create_task(self.ship.run())
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass  # aborted
        except BaseException as exc:
            self.crash = exc
            logger.exception("metric logger %s: worker crashed", self.ship.ledger.label)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self.ship.started.set()
                self.ship.space.set()
