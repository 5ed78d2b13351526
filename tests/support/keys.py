"""The test users and their keys, and the hashes requests carry (computed here, not by the
codec, so the tests check the daemon's hashing independently)."""

import hashlib

KEYS = {
    "admin": ("root", "fml_test_admin_key"),
    "alice": ("researcher", "fml_test_alice_key"),
    "bob": ("researcher", "fml_test_bob_key"),
    "ana": ("analyst", "fml_test_analyst_key"),
    "wendy": ("worker", "fml_test_worker_key"),
}
"""user -> (role, raw key); "root" is the built-in admin role under another name."""

ADMIN_KEY = KEYS["admin"][1]
ALICE_KEY = KEYS["alice"][1]
BOB_KEY = KEYS["bob"][1]
ANALYST_KEY = KEYS["ana"][1]
WORKER_KEY = KEYS["wendy"][1]


def key_hash(raw: str) -> bytes:
    """What a request carries: the first 16 bytes of the key's SHA-256."""
    return hashlib.sha256(raw.encode()).digest()[:16]


def hash_of(user: str) -> bytes:
    return key_hash(KEYS[user][1])


def key_entry(raw_key: str, role: str) -> dict[str, str]:
    """An `auth.api_keys` entry: the key's full SHA-256 in hex, and its role."""
    return {"hash": hashlib.sha256(raw_key.encode()).hexdigest(), "role": role}


ADMIN = hash_of("admin")
UNKNOWN_KEY = key_hash("fml_not_a_configured_key")
