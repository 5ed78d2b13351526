"""The config rules: every ConfigError names the key (and the bad value) exactly."""

import copy
from pathlib import Path
from typing import Any

import pytest

from fetchml.server.config import (
    BUILTIN_ROLES,
    MAX_MESSAGE_LIMIT,
    MIN_MESSAGE_LIMIT,
    ConfigError,
    Role,
    load_config,
    parse_config,
)
from tests.support.config import raw_config
from tests.support.keys import KEYS, key_entry

HOME = Path("/srv/fetchml")
GOOD = raw_config(HOME)
ROLES = "admin, analyst, member, researcher, root, worker"
PERMISSIONS = "*, jobs:claim, jobs:create, jobs:delete, jobs:read, jobs:update"


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def changed(**sections: dict[str, Any]) -> dict[str, Any]:
    """GOOD with keys of some sections replaced."""
    raw = copy.deepcopy(GOOD)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def test_the_good_config_and_the_defaults() -> None:
    config = parse_config(GOOD)
    assert config.server.port == 0
    assert config.storage.base_path == HOME / "experiments"
    assert config.server.max_message_bytes == 1 << 20
    assert config.rate_limit.control_requests_per_minute == 600
    assert set(config.auth.roles) == {*BUILTIN_ROLES, "root"}
    assert config.auth.roles["root"] == Role(frozenset({"*"}), "all", "all")
    assert {user: key.role for user, key in config.auth.api_keys.items()} == {
        user: role for user, (role, _) in KEYS.items()
    }


def test_values_are_normalised() -> None:
    entry = key_entry("k", "admin")
    config = parse_config(
        changed(
            auth={"api_keys": {"u": {**entry, "hash": entry["hash"].upper()}}},
            server={"shutdown_timeout_s": 3},
            storage={"base_path": "~/exp"},
        )
    )
    assert config.auth.api_keys["u"].hash == entry["hash"]
    assert config.server.shutdown_timeout_s == 3.0
    assert isinstance(config.server.shutdown_timeout_s, float)
    assert config.storage.base_path == Path("~/exp").expanduser()


def test_the_document_and_its_sections_must_be_mappings() -> None:
    assert error_of(["server"]) == "config: expected a mapping, got list"
    assert error_of(GOOD | {"server": 5}) == "server: expected a mapping, got int"
    roles = {"auth": {**GOOD["auth"], "roles": {"r": "all"}}}
    assert error_of(GOOD | roles) == "auth.roles.r: expected a mapping, got str"


def test_unknown_keys_are_named() -> None:
    assert error_of(GOOD | {"colour": 1}) == "colour: unknown key"
    assert error_of(changed(server={"max_inflight": 5})) == "server.max_inflight: unknown key"
    tls = {"tls": {"enabled": False, "ca": "x"}}
    assert error_of(changed(server=tls)) == "server.tls.ca: unknown key"
    entry = {**key_entry("k", "admin"), "note": "x"}
    assert error_of(changed(auth={"api_keys": {"u": entry}})) == "auth.api_keys.u.note: unknown key"
    roles = {"root": {"permissions": []}, "r": {"permissions": [], "colour": "red"}}
    assert error_of(changed(auth={"roles": roles})) == "auth.roles.r.colour: unknown key"


def test_api_keys_are_required() -> None:
    assert error_of({"server": {}}) == "auth.api_keys: required"
    assert error_of({"auth": {"roles": {}}}) == "auth.api_keys: required"
    assert error_of({"auth": {"api_keys": {"u": {"hash": "0" * 64}}}}) == (
        "auth.api_keys.u.role: required"
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "kind"),
    [
        ("server", "port", "9103", "int"),
        ("server", "port", True, "int"),
        ("server", "port", 1.5, "int"),
        ("server", "compression", "yes", "bool"),
        ("server", "ping_timeout_s", "20", "float"),
        ("server", "host", 127, "str"),
        ("storage", "base_path", "", "Path"),
        ("storage", "jobs_db", 7, "Path"),
        ("logging", "audit_file", None, "str"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_type_and_value(
    section: str, key: str, value: object, kind: str
) -> None:
    assert error_of(changed(**{section: {key: value}})) == (
        f"{section}.{key}: expected {kind}, got {value!r}"
    )


@pytest.mark.parametrize(
    ("section", "key", "low", "value"),
    [
        ("server", "port", 0, -1),
        ("server", "max_message_bytes", 131072, 131071),
        ("server", "max_connections", 1, 0),
        ("server", "max_inflight_requests", 1, 0),
        ("server", "watch_buffer_bytes", 1, 0),
        ("server", "max_connections_per_ip", 1, 0),
        ("server", "heavy_queries_per_user", 1, 0),
        ("server", "open_timeout_s", 0, -0.5),
        ("server", "ping_interval_s", 0, -0.5),
        ("server", "ping_timeout_s", 0, -0.5),
        ("server", "shutdown_timeout_s", 0, -0.5),
        ("server", "auth_timeout_s", 0, -0.5),
        ("storage", "max_open_files", 1, 0),
        ("storage", "cache_bytes", 1 << 20, (1 << 20) - 1),
        ("rate_limit", "control_requests_per_minute", 1, 0),
        ("logging", "audit_max_bytes", 4096, 4095),
        ("logging", "audit_keep", 0, -1),
        ("jobs", "keep_days", 0, -0.5),
    ],
)
def test_a_value_below_its_minimum_names_the_minimum(
    section: str, key: str, low: int, value: float
) -> None:
    assert error_of(changed(**{section: {key: value}})) == (
        f"{section}.{key}: must be at least {low}, got {value}"
    )
    parse_config(changed(**{section: {key: low}}))  # the minimum itself is fine


def test_values_above_their_maximum() -> None:
    assert error_of(changed(server={"port": 65536})) == (
        "server.port: must be at most 65535, got 65536"
    )
    too_big = MAX_MESSAGE_LIMIT + 1
    assert error_of(changed(server={"max_message_bytes": too_big})) == (
        f"server.max_message_bytes: must be at most {MAX_MESSAGE_LIMIT}, got {too_big}"
    )
    parse_config(changed(server={"port": 65535, "max_message_bytes": MAX_MESSAGE_LIMIT}))


@pytest.mark.parametrize(
    ("section", "key", "value", "choices"),
    [
        ("storage", "durability", "sometimes", "fsync, write"),
        ("logging", "level", "verbose", "debug, error, info, warning"),
        ("logging", "format", "xml", "json, text"),
    ],
)
def test_a_value_outside_its_choices_names_them(
    section: str, key: str, value: str, choices: str
) -> None:
    assert error_of(changed(**{section: {key: value}})) == (
        f"{section}.{key}: must be one of {choices}, got {value!r}"
    )


def test_tls_enabled_needs_both_files() -> None:
    for files in ({}, {"cert_file": "c.pem"}, {"key_file": "k.pem"}):
        tls = {"enabled": True, **files}
        assert error_of(changed(server={"tls": tls})) == (
            "server.tls: enabled needs cert_file and key_file"
        )
    tls = {"enabled": True, "cert_file": "c.pem", "key_file": "k.pem"}
    assert parse_config(changed(server={"tls": tls})).server.tls.enabled


def test_roles_rules() -> None:
    def with_role(spec: object) -> dict[str, Any]:
        return changed(auth={"roles": {**GOOD["auth"]["roles"], "r": spec}})

    def role_error(spec: object) -> str:
        return error_of(with_role(spec))

    assert role_error({"permissions": "jobs:read"}) == (
        "auth.roles.r.permissions: expected a list of strings"
    )
    assert (
        role_error({"permissions": [1]}) == "auth.roles.r.permissions: expected a list of strings"
    )
    assert role_error({"permissions": ["jobs:fly"]}) == (
        f"auth.roles.r.permissions: must be one of {PERMISSIONS}, got 'jobs:fly'"
    )
    assert (
        role_error({"scope": "some"}) == "auth.roles.r.scope: must be one of all, own, got 'some'"
    )
    assert parse_config(with_role({})).auth.roles["r"] == Role(frozenset(), "own", "own")


def test_max_message_bytes_floor_holds_a_whole_run_document() -> None:
    assert MIN_MESSAGE_LIMIT == 131072
    for small in (64, 4096, 65536, 131071):
        assert error_of(changed(server={"max_message_bytes": small})) == (
            f"server.max_message_bytes: must be at least 131072, got {small}"
        )


@pytest.mark.parametrize(
    ("spec", "read", "write"),
    [
        ({}, "own", "own"),
        ({"scope": "all"}, "all", "all"),
        ({"read_scope": "all"}, "all", "own"),
        ({"write_scope": "all"}, "own", "all"),
        ({"scope": "all", "write_scope": "own"}, "all", "own"),
        ({"scope": "all", "read_scope": "own"}, "own", "all"),
        ({"scope": "own", "read_scope": "all", "write_scope": "all"}, "all", "all"),
        ({"read_scope": "own", "write_scope": "all"}, "own", "all"),
    ],
)
def test_role_scopes_default_to_scope_then_own(spec: dict[str, str], read: str, write: str) -> None:
    roles = {**GOOD["auth"]["roles"], "r": {"permissions": ["jobs:read"], **spec}}
    role = parse_config(changed(auth={"roles": roles})).auth.roles["r"]
    assert (role.read_scope, role.write_scope) == (read, write)


@pytest.mark.parametrize("key", ["read_scope", "write_scope"])
def test_a_bad_read_or_write_scope_is_named(key: str) -> None:
    roles = {**GOOD["auth"]["roles"], "r": {"permissions": [], key: "mine"}}
    assert error_of(changed(auth={"roles": roles})) == (
        f"auth.roles.r.{key}: must be one of all, own, got 'mine'"
    )


def test_member_is_built_in_and_a_config_may_replace_it() -> None:
    member = parse_config(GOOD).auth.roles["member"]
    assert member == Role(frozenset({"jobs:create", "jobs:read", "jobs:update"}), "all", "own")
    roles = {**GOOD["auth"]["roles"], "member": {"permissions": ["jobs:read"]}}
    config = parse_config(changed(auth={"roles": roles}))
    assert config.auth.roles["member"] == Role(frozenset({"jobs:read"}), "own", "own")
    assert BUILTIN_ROLES["member"] == member  # the built-in itself is untouched


def test_api_key_rules() -> None:
    def key_error(entry: object) -> str:
        return error_of(changed(auth={"api_keys": {"u": entry}}))

    assert key_error("secret") == "auth.api_keys.u: expected {hash: <64 hex>, role: <role>}"
    assert key_error({"hash": "ab" * 16, "role": "admin"}) == (
        "auth.api_keys.u.hash: expected the 64-hex SHA-256 of the key"
    )
    assert key_error({"hash": "g" * 64, "role": "admin"}) == (
        "auth.api_keys.u.hash: expected the 64-hex SHA-256 of the key"
    )
    assert key_error(key_entry("k", "wizard")) == (
        f"auth.api_keys.u.role: must be one of {ROLES}, got 'wizard'"
    )


def test_ip_whitelist_rules() -> None:
    assert error_of(changed(auth={"ip_whitelist": "10.0.0.0/8"})) == (
        "auth.ip_whitelist: expected a list of CIDRs"
    )
    assert error_of(changed(auth={"ip_whitelist": ["10.0.0.0/8", "nowhere"]})) == (
        "auth.ip_whitelist: 'nowhere' does not appear to be an IPv4 or IPv6 network"
    )
    config = parse_config(changed(auth={"ip_whitelist": ["10.1.2.3/8", "::1"]}))
    assert [str(n) for n in config.auth.ip_whitelist] == ["10.0.0.0/8", "::1/128"]


def test_load_config_names_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value) == "cannot read config: No such file or directory"
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert str(info.value).startswith("invalid YAML: ")


def test_cluster_mode_is_off_unless_a_redis_url_is_given() -> None:
    assert not parse_config(GOOD).cluster.enabled
    cluster = parse_config(changed(cluster={"redis_url": "rediss://:pw@redis:6380/0"})).cluster
    assert cluster.enabled and cluster.key_prefix == "fetchml:" and cluster.node_name == ""
    assert error_of(changed(cluster={"redis_url": "http://redis"})) == (
        "cluster.redis_url: expected redis://, rediss:// or unix://, got 'http://redis'"
    )
    assert error_of(changed(cluster={"redis_url": "redis://r", "key_prefix": ""})) == (
        "cluster.key_prefix: must not be empty"
    )
    assert error_of(changed(cluster={"redis": "x"})) == "cluster.redis: unknown key"
