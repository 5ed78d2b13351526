"""Opening the WebSocket, with handshake failures turned into FetchmlErrors."""

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from fetchml.protocol.enums import LogLevel
from fetchml.protocol.keys import handshake_key_ok
from fetchml.protocol.responses import Log, Progress

from ..frames import TakingClientConnection
from .errors import AuthenticationFailed, ConfigurationError, ConnectFailed, PermissionDenied

logger = logging.getLogger(__name__)

USER_AGENT = "fetchml-client/0.1"

EventHandler = Callable[[Progress | Log], None]
"""Receives the PROGRESS and LOG packets that precede a final response."""

_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


def log_event(event: Progress | Log) -> None:
    """The default EventHandler: server LOG and PROGRESS packets go to this module's logger."""
    if isinstance(event, Log):
        logger.log(_LEVELS.get(event.level, logging.INFO), "server: %s", event.message)
    else:
        logger.info("progress %d/%d %s", event.value, event.total, event.message)


def handle_event(on_event: EventHandler, event: Progress | Log) -> None:
    """Hand `event` to `on_event`; what the handler raises is logged, not raised."""
    try:
        on_event(event)
    except Exception:
        logger.exception("on_event callback failed")


def handshake_headers(api_key: str | None) -> dict[str, str] | None:
    """The handshake's `X-API-Key` header, for a key that may go there (see open_websocket)."""
    if api_key and handshake_key_ok(api_key):
        return {"X-API-Key": api_key}
    return None


@contextlib.contextmanager
def handshake_errors(url: str) -> Iterator[None]:
    """Raise every failure to open the WebSocket to `url` as a FetchmlError: HTTP 401
    AuthenticationFailed, 403 PermissionDenied, another status or a network error
    ConnectFailed, a bad URL ConfigurationError."""
    try:
        yield
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise AuthenticationFailed("Invalid API key") from None
        if status == 403:
            raise PermissionDenied(f"{url}: forbidden (HTTP 403, IP not allowed)") from None
        raise ConnectFailed(f"cannot connect to {url}: HTTP {status}") from None
    except InvalidURI as exc:
        raise ConfigurationError(f"invalid server URL {url!r}: {exc}") from None
    except (OSError, InvalidHandshake) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectFailed(f"cannot connect to {url}: {reason or type(exc).__name__}") from exc


def unreachable(failures: Sequence[ConnectFailed]) -> ConnectFailed:
    """What connecting raises when none of the URLs answered (each failure, in order)."""
    if len(failures) == 1:
        return failures[0]
    reasons = "; ".join(str(exc) for exc in failures)
    return ConnectFailed(f"no daemon of {len(failures)} URLs answers: {reasons}")


async def open_websocket(
    url: str,
    open_timeout: float = 10.0,
    api_key: str | None = None,
    ping_interval: float | None = 20.0,
) -> ClientConnection:
    """Connect to the daemon's /ws endpoint; every failure is a FetchmlError.

    With `api_key`, the raw key goes in the handshake (`X-API-Key`): a wrong key
    fails here with AuthenticationFailed, and a daemon that requires handshake
    keys lets the connection in. A key that is not visible ASCII (see
    protocol.keys) goes only in the requests, as its hash. `ping_interval` None sends
    no keepalive pings (for a caller whose own requests time out instead).
    """
    with handshake_errors(url):
        return await connect(
            url,
            additional_headers=handshake_headers(api_key),
            compression=None,
            max_size=None,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            user_agent_header=USER_AGENT,
            create_connection=TakingClientConnection,
        )


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before connection attempt `attempt` (1-based) after a drop.

    The first retry is immediate, then `initial` doubling up to `maximum`, with jitter.
    """
    if attempt <= 1:
        return 0.0
    return min(maximum, initial * 2.0 ** min(attempt - 2, 30)) * random.uniform(0.5, 1.0)
