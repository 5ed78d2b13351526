"""A job's output.log and the texts cut from it: the run's output tail, the error text.

stdout goes to the file directly (the process holds it open); stderr passes
through the worker, which appends it to the file and keeps its last 4 KiB
for the error text. Lines the worker adds start with `[fetchml worker]`.
"""

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 16_384
"""The run document's `output`: at most this many bytes of UTF-8."""
ERROR_BYTES = 4_096
"""UPDATE_JOB's `error` is kept to this many bytes by the daemon; the worker sends no more."""
STDERR_RING_BYTES = 4_096
NOTE_PREFIX = "[fetchml worker] "


def cut_utf8(data: bytes, limit: int) -> bytes:
    """The last `limit` bytes at most, starting on a UTF-8 character boundary."""
    if len(data) <= limit:
        return data
    data = data[len(data) - limit :]
    start = 0
    while start < min(len(data), 3) and data[start] & 0xC0 == 0x80:
        start += 1
    return data[start:]


def text_tail(data: bytes, limit: int) -> str:
    """The end of `data` as text of at most `limit` UTF-8 bytes: undecodable bytes and
    U+0000 (which JSON texts may not hold) become U+FFFD."""
    text = cut_utf8(data, limit).decode("utf-8", "replace").replace("\x00", "\ufffd")
    encoded = text.encode()
    if len(encoded) > limit:  # replacements are 3 bytes where the bad byte was 1
        text = cut_utf8(encoded, limit).decode()
    return text


def error_text(headline: str, stderr: bytes) -> str:
    """`headline` (the exit line), then as much of the end of stderr as fits in
    ERROR_BYTES of UTF-8."""
    head = text_tail(headline.encode(), ERROR_BYTES)
    room = ERROR_BYTES - len(head.encode()) - 1
    tail = text_tail(stderr, room) if room > 0 else ""
    tail = tail.rstrip()
    return f"{head}\n{tail}" if tail else head


class OutputLog:
    """`<job dir>/output.log`, opened for appending (kept across attempts of a job)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.stderr = bytearray()
        self._failed = False

    @property
    def fd(self) -> int:
        """The descriptor the job's stdout is given."""
        return self._fd

    def _write(self, data: bytes) -> None:
        """Append; a failure (disk full) is logged once and costs only the log's lines."""
        try:
            os.write(self._fd, data)
        except OSError as exc:
            if not self._failed:
                logger.warning("%s: %s (output lost)", self.path, exc.strerror or exc)
            self._failed = True

    def write_stderr(self, chunk: bytes) -> None:
        self._write(chunk)
        self.stderr += chunk
        del self.stderr[:-STDERR_RING_BYTES]

    def note(self, line: str) -> None:
        """A line of the worker's own in the log (at the start of a line)."""
        size = self.size()
        fresh = size == 0 or os.pread(self._fd, 1, size - 1) == b"\n"
        text = f"{NOTE_PREFIX}{line}\n" if fresh else f"\n{NOTE_PREFIX}{line}\n"
        self._write(text.encode())

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def tail(self) -> str:
        """The run document's `output`: the file's last OUTPUT_TAIL_BYTES as text."""
        data = os.pread(self._fd, OUTPUT_TAIL_BYTES, max(0, self.size() - OUTPUT_TAIL_BYTES))
        return text_tail(data, OUTPUT_TAIL_BYTES)

    def close(self) -> None:
        os.close(self._fd)
