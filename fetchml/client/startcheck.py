"""What MetricLogger checks on its first connection, before any point is sent.

Side-effect free: WHOAMI gives the key's user, permissions and write scope
(a wrong key has already failed the handshake), and LIST_RUNS `{"id": ...}`
gives the experiment's owner and record count (GET_EXPERIMENT tells a missing
experiment from one outside the key's read scope). A key that may not write
to the experiment raises PermissionDenied; a local clock more than
MAX_CLOCK_AHEAD_S ahead of the daemon's (the response header's timestamp)
raises ConfigurationError. A missing experiment is fine when the logger may
create it, and also with create_experiment=False (its points are then
rejected by the daemon, as they always were). A fresh run (a new random ID)
only needs jobs:create and jobs:update.
"""

import json
import time
from dataclasses import dataclass
from typing import Any

from fetchml.protocol import requests as rq
from fetchml.protocol.responses import Data

from .connection import Client
from .errors import ConfigurationError, NotFound, PermissionDenied, ProtocolViolation

MAX_CLOCK_AHEAD_S = 300


@dataclass(frozen=True, slots=True)
class StartState:
    exists: bool | None
    """Whether the experiment exists (None: the key may not read it, so not known)."""
    count: int | None
    """Its record count (None: not known)."""


def wall_clock() -> float:
    """This machine's clock (Unix seconds)."""
    return time.time()


async def check_start(
    client: Client, commit: bytes, create: bool, *, fresh: bool = False
) -> StartState:
    """Raise if this key cannot log to `commit`, or if the local clock runs ahead."""
    response = await client._call(rq.WhoAmI(key_hash=client.settings.key_hash))
    if not isinstance(response, Data) or response.data_type != "whoami":
        raise ProtocolViolation("expected DATA 'whoami'")
    ahead = wall_clock() - response.timestamp
    if ahead > MAX_CLOCK_AHEAD_S:
        raise ConfigurationError(
            f"this machine's clock is {ahead:.0f} s ahead of the daemon's "
            f"(more than {MAX_CLOCK_AHEAD_S} s): set the clock right (NTP)"
        )
    me = _json(response.payload)
    user = str(me.get("user"))
    perms = {str(p) for p in me.get("permissions", ())}
    scope = str(me.get("write_scope", me.get("scope")))

    def can(permission: str) -> bool:
        return "*" in perms or permission in perms

    if not can("jobs:update"):
        raise PermissionDenied(
            f"the key of {user} (role {me.get('role')}) may not log metrics: it lacks jobs:update"
        )
    commit_hex = commit.hex()
    needs_existence = create and not can("jobs:create")
    if fresh:
        if needs_existence:
            raise PermissionDenied(f"{user} may not start a run: the key lacks jobs:create")
        return StartState(exists=False, count=0)
    if not can("jobs:read"):
        return StartState(exists=None, count=None)
    page = await client.list_runs_page({"id": commit_hex, "limit": 1})
    row = next((row for row in page.runs if row.id == commit_hex), None)
    if row is None:
        try:  # missing, or outside the key's read scope
            await client.get_experiment(commit)
        except NotFound:
            if needs_existence:
                raise PermissionDenied(
                    f"experiment {commit_hex} does not exist and {user} may not create it "
                    "(lacks jobs:create)"
                ) from None
            return StartState(exists=False, count=0)
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"{user} may not log to experiment {commit_hex}: {exc}"
            ) from None
        return StartState(exists=True, count=None)  # readable, yet not listed
    if scope != "all" and row.user != user:
        raise PermissionDenied(
            f"{user} may not log to experiment {commit_hex}: it belongs to "
            f"{row.user or 'nobody'} and {user}'s write scope is {scope}"
        )
    return StartState(exists=True, count=row.metrics_count)


def _json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError as exc:
        raise ProtocolViolation(f"unexpected JSON payload: {exc!r}") from None
    if not isinstance(obj, dict):
        raise ProtocolViolation("unexpected JSON payload: not an object")
    return obj
