"""Key hashes and which raw keys a handshake may carry."""

import pytest

from fetchml.protocol.keys import KEY_HASH_SIZE, handshake_key_ok, key_hash


def test_key_hash_is_the_sha256_prefix() -> None:
    expected = bytes.fromhex("5ba7dccf22514f45ae84bfb8b12cd02e")
    assert key_hash("fml_example_key_do_not_use") == expected
    assert key_hash(b"fml_example_key_do_not_use") == expected
    assert len(expected) == KEY_HASH_SIZE


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("fml_abc-DEF_123", True),
        ("!~", True),
        ("", False),
        (" spaced", False),
        ("tab\tkey", False),
        ("clé", False),
        ("new\nline", False),
    ],
)
def test_handshake_keys_are_visible_ascii(key: str, ok: bool) -> None:
    assert handshake_key_ok(key) is ok
