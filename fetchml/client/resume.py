"""What a run holds from a logger's window on, read back after a reconnect.

LIST_RUNS `{"id": ...}` gives the run's record count (the daemon counts at
request time), QUERY_METRICS (`after`, `limit`) the records from the window's
start, as the raw bytes of the DATA `metrics` payload: LOG_METRICS_AT stores
records byte for byte, so the logger compares them with its own (batches.py).
"""

from fetchml.protocol import requests as rq
from fetchml.protocol.errors import MalformedResponse
from fetchml.protocol.metrics import decode_metrics_payload

from .connection import Client
from .errors import ProtocolViolation

PAGE_HEAD = 12
"""A DATA `metrics` payload's bytes before its records: next:u64, count:u32."""


async def stored_after(
    client: Client, commit: bytes, start: int, most: int
) -> tuple[int, bytes | None]:
    """The experiment's record count, and the bytes of its records from index `start` on
    (None, unread, when there are more than `most`: not all the caller's own)."""
    hex_id = commit.hex()
    page = await client.list_runs_page({"id": hex_id, "limit": 1})
    count = next((row.metrics_count for row in page.runs if row.id == hex_id), 0)
    if count - start > most:
        return count, None
    stored = bytearray()
    after = start
    while after < count:
        request = rq.QueryMetrics(
            key_hash=client.settings.key_hash, commit_id=commit, after=after, limit=count - after
        )
        payload = await client._data(request, "metrics")
        try:
            records = decode_metrics_payload(payload).records
        except MalformedResponse as exc:
            raise ProtocolViolation(exc.message) from None
        if not records:
            return count, None  # fewer than counted: someone else is at work
        stored += payload[PAGE_HEAD:]
        after += len(records)
    return count, bytes(stored)
