"""sd_notify over $NOTIFY_SOCKET, without libsystemd.

systemd (`Type=notify`) passes the path of an AF_UNIX datagram socket in
NOTIFY_SOCKET (a leading '@' means the abstract namespace) and, with
`WatchdogSec=`, the watchdog period in WATCHDOG_USEC (for the process in
WATCHDOG_PID, when set). A notification is one datagram of newline-separated
`KEY=VALUE` fields. Outside systemd every method is a no-op returning False,
and a failed send is logged at debug level, never raised: the daemon must not
die because its supervisor went away.
"""

import logging
import os
import socket
import time
from collections.abc import Mapping

import anyio

logger = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to the socket named in `env` (default: os.environ)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        if env is None:
            env = os.environ
        self._address = _parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval = _parse_watchdog(
            env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        )

    @property
    def enabled(self) -> bool:
        """True when NOTIFY_SOCKET names a usable address."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (each `KEY=VALUE`) as one datagram; True if it was sent."""
        if self._address is None or not fields:
            return False
        data = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop on a full receive queue: a lost
                # notification is better than a stalled daemon.
                sock.setblocking(False)
                sock.sendto(data, self._address)
        except OSError as exc:
            logger.debug("sd_notify to %r failed: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1: startup is complete (and, after `reloading()`, the reload)."""
        if status:
            return self.notify("READY=1", _status_field(status))
        return self.notify("READY=1")

    def reloading(self) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC timestamp systemd's notify-reload expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=<text>: one line shown by `systemctl status`."""
        return self.notify(_status_field(text))

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked for."""
        return self._watchdog_interval

    async def watchdog_loop(self) -> None:
        """Send WATCHDOG=1 every half period, forever; return at once without a watchdog or socket.

        It runs on the event loop on purpose: if the loop stalls, the pings
        stop and systemd restarts the service.
        """
        interval = self._watchdog_interval
        if interval is None or self._address is None:
            return
        logger.debug("systemd watchdog: pinging every %.3f s", interval)
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(interval)


def _parse_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        logger.debug("NOTIFY_SOCKET %r is not a path or abstract address; ignored", value)
    return None


def _parse_watchdog(usec: str, pid: str) -> float | None:
    if not usec:
        return None
    try:
        period = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        logger.debug("bad WATCHDOG_USEC=%r or WATCHDOG_PID=%r; watchdog off", usec, pid)
        return None
    if period <= 0:
        return None
    return period / 2 / 1_000_000


def _status_field(text: str) -> str:
    # A newline would start a new field; systemd shows one line anyway.
    return "STATUS=" + " ".join(text.splitlines())
