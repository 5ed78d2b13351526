"""meta.bin, byte-compatible with fetch_ml's Go manager: who made an experiment and when.

(metrics.bin records are in metrics.py.)
"""

import struct
from dataclasses import dataclass

from .errors import MalformedRecord

_META_HEAD = struct.Struct(">Bq")
META_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """meta.bin: who made an experiment and when."""

    commit_id: str
    timestamp: int
    job_name: str = ""
    user: str = ""

    def __post_init__(self) -> None:
        for field in ("commit_id", "job_name", "user"):
            if len(getattr(self, field).encode()) > 255:
                raise MalformedRecord(f"metadata {field} longer than 255 bytes")
        if not -(2**63) <= self.timestamp < 2**63:
            raise MalformedRecord("metadata timestamp out of int64 range")


def encode_metadata(meta: Metadata) -> bytes:
    parts = [_META_HEAD.pack(META_VERSION, meta.timestamp)]
    for text in (meta.commit_id, meta.job_name, meta.user):
        raw = text.encode()
        parts.append(bytes((len(raw),)) + raw)
    return b"".join(parts)


def decode_metadata(data: bytes) -> Metadata:
    """Parse meta.bin; every defect is a MalformedRecord, never another exception."""
    if len(data) < 10:
        raise MalformedRecord("metadata file too short")
    version, timestamp = _META_HEAD.unpack_from(data)
    if version != META_VERSION:
        raise MalformedRecord("unsupported metadata version")
    fields: list[str] = []
    pos = _META_HEAD.size
    while len(fields) < 3 and pos < len(data):
        length = data[pos]
        if pos + 1 + length > len(data):
            raise MalformedRecord("metadata string runs past the end of the file")
        fields.append(data[pos + 1 : pos + 1 + length].decode("utf-8", "replace"))
        pos += 1 + length
    fields += [""] * (3 - len(fields))
    return Metadata(commit_id=fields[0], timestamp=timestamp, job_name=fields[1], user=fields[2])
