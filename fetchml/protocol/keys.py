"""API keys on the wire: the 16-byte hash every request carries, and the raw key a
WebSocket handshake may carry (`X-API-Key`, `Authorization: Bearer`, or the
subprotocol token `fetchml.key.<key>`)."""

import hashlib

KEY_HASH_SIZE = 16
SUBPROTOCOL = "fetchml"
"""Selected by the server when a client offers it."""
KEY_TOKEN_PREFIX = "fetchml.key."


def key_hash(raw_key: str | bytes) -> bytes:
    """The first 16 bytes of SHA-256 of the raw key."""
    raw = raw_key.encode() if isinstance(raw_key, str) else raw_key
    return hashlib.sha256(raw).digest()[:KEY_HASH_SIZE]


def handshake_key_ok(raw_key: str) -> bool:
    """Whether a raw key can travel in a handshake: visible ASCII, at least one character.
    Other keys are sent only as their hash in requests."""
    return bool(raw_key) and all("!" <= c <= "~" for c in raw_key)
