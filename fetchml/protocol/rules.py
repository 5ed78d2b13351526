"""Field rules shared by every side of the wire: commits, steps, priorities, metric names."""

from .errors import MalformedRequest

COMMIT_SIZE = 20
"""A commit travels as 20 raw bytes; people write it as 40 hex characters."""
MAX_STEP = 0xFFFFFFFF
MAX_NAME_BYTES = 255
PRIORITY_MIN, PRIORITY_MAX = 0, 255
"""What QUEUE_JOB carries (u8)."""
CLI_PRIORITY_MIN, CLI_PRIORITY_MAX = 1, 10
"""What the `fetchml queue` command offers: a deliberate part of the wire's range."""
DEFAULT_PRIORITY = 5
"""The CLI's and the Client's when none is given."""


def parse_commit(commit: str | bytes) -> bytes:
    """A commit as the 20 raw bytes the wire carries, from 40 hex characters or 20 bytes."""
    if isinstance(commit, bytes):
        if len(commit) != COMMIT_SIZE:
            raise MalformedRequest(f"commit must be {COMMIT_SIZE} bytes, got {len(commit)}")
        return commit
    text = commit.strip()
    try:
        if len(text) == 2 * COMMIT_SIZE:
            return bytes.fromhex(text)
    except ValueError:
        pass
    raise MalformedRequest(f"commit must be 40 hex characters, got {commit!r}")


def check_step(step: int) -> int:
    if not 0 <= step <= MAX_STEP:
        raise MalformedRequest(f"step must be 0..{MAX_STEP}, got {step}")
    return int(step)


def check_priority(priority: int) -> int:
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise MalformedRequest(f"priority must be {PRIORITY_MIN}..{PRIORITY_MAX}, got {priority}")
    return int(priority)


def check_metric_name(name: str) -> bytes:
    """Encode a metric name, enforcing 1..255 bytes of UTF-8 without 0x00."""
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        raise MalformedRequest("metric name is not valid UTF-8") from None
    if not 0 < len(raw) <= MAX_NAME_BYTES or b"\0" in raw:
        raise MalformedRequest(
            f"metric name must be 1..{MAX_NAME_BYTES} bytes of UTF-8 without 0x00, "
            f"got {len(raw)} bytes"
        )
    return raw
