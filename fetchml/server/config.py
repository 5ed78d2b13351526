"""YAML config as frozen dataclasses. Unknown keys and bad values are errors naming the key."""

import ipaddress
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PERMISSIONS = frozenset(
    {"jobs:create", "jobs:read", "jobs:update", "jobs:delete", "jobs:claim", "*"}
)
SCOPES = frozenset({"own", "all"})
MAX_MESSAGE_LIMIT = 4 << 20
"""PROTOCOL.md: one request's records must fit in one 8 MiB flush."""
MIN_MESSAGE_LIMIT = 128 << 10
"""A run document (up to 64 KiB) must fit in a response."""
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A config problem; the message names the key."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9103
    tls: TLSConfig = field(default_factory=TLSConfig)
    max_message_bytes: int = 1 << 20
    max_connections: int = 10000
    max_inflight_requests: int = 4096
    compression: bool = False
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    shutdown_timeout_s: float = 10.0
    watch_buffer_bytes: int = 8 << 20
    auth_timeout_s: float = 10.0
    max_connections_per_ip: int = 256
    heavy_queries_per_user: int = 2


@dataclass(frozen=True, slots=True)
class StorageConfig:
    base_path: Path = Path("./data/experiments")
    jobs_db: Path = Path("./data/jobs.sqlite3")
    durability: str = "write"
    max_open_files: int = 256
    cache_bytes: int = 256 << 20
    index_bytes: int = 16 << 20


@dataclass(frozen=True, slots=True)
class Role:
    permissions: frozenset[str]
    read_scope: str
    write_scope: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    hash: str
    role: str


_RESEARCH = frozenset({"jobs:create", "jobs:read", "jobs:update"})
BUILTIN_ROLES = {
    "admin": Role(frozenset({"*"}), "all", "all"),
    "researcher": Role(_RESEARCH, "own", "own"),
    "analyst": Role(frozenset({"jobs:read"}), "all", "all"),
    "worker": Role(frozenset({"jobs:read", "jobs:update", "jobs:claim"}), "all", "all"),
    "member": Role(_RESEARCH, "all", "own"),
}
"""A config's own role of the same name replaces one of these."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    api_keys: dict[str, ApiKey]
    roles: dict[str, Role] = field(default_factory=lambda: dict(BUILTIN_ROLES))
    ip_whitelist: tuple[Network, ...] = ()
    require_handshake_key: bool = False


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    control_requests_per_minute: int = 600


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"
    audit_file: str = ""
    audit_max_bytes: int = 10 << 20
    audit_keep: int = 5


@dataclass(frozen=True, slots=True)
class JobsConfig:
    keep_days: float = 90.0
    lease_s: float = 120.0
    """A running job (queued with a spec) with no heartbeat for this long has lost its
    worker; 0 turns leases off."""


@dataclass(frozen=True, slots=True)
class RunsConfig:
    crash_after_s: float = 300.0
    """A `running` run with no heartbeat and no append for this long is reported `crashed`."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    redis_url: str = ""
    """Empty: standalone (the default). redis://, rediss:// (TLS) or unix:// turns cluster
    mode on: jobs, node registration, fan-out and limits go through this Redis."""
    key_prefix: str = "fetchml:"
    node_name: str = ""
    """This node's name among the cluster's; empty: host:port."""

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@dataclass(frozen=True, slots=True)
class Config:
    auth: AuthConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


_ACCEPTS: dict[Any, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    Path: lambda v: isinstance(v, str) and bool(v),
}


def _scalar(value: Any, kind: Any, key: str) -> Any:
    if not _ACCEPTS[kind](value):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    if kind is float:
        return float(value)
    return Path(value).expanduser() if kind is Path else value


def _section(cls: Any, raw: Any, prefix: str, special: dict[str, Any] | None = None) -> Any:
    """Build a dataclass from a mapping; `special` parses keys that are not scalars."""
    data = _mapping(raw, prefix)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}: unknown key")
    for name, f in known.items():
        if name not in data and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{prefix}.{name}: required")
    values: dict[str, Any] = {}
    for key, value in data.items():
        parse = (special or {}).get(key)
        full = f"{prefix}.{key}"
        values[key] = parse(value, full) if parse else _scalar(value, known[key].type, full)
    return cls(**values)


def _positive(key: str, value: float, low: float = 1) -> None:
    if value < low:
        raise ConfigError(f"{key}: must be at least {low}, got {value}")


def _choice(key: str, value: str, choices: frozenset[str] | set[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(sorted(choices))}, got {value!r}")


def _roles(raw: Any, key: str) -> dict[str, Role]:
    roles = dict(BUILTIN_ROLES)
    for name, spec in _mapping(raw, key).items():
        spec = _mapping(spec, f"{key}.{name}")
        for sub in spec:
            if sub not in ("permissions", "scope", "read_scope", "write_scope"):
                raise ConfigError(f"{key}.{name}.{sub}: unknown key")
        perms = spec.get("permissions", [])
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise ConfigError(f"{key}.{name}.permissions: expected a list of strings")
        for perm in perms:
            _choice(f"{key}.{name}.permissions", perm, PERMISSIONS)
        scopes: dict[str, str] = {}
        for sub in ("scope", "read_scope", "write_scope"):
            scopes[sub] = spec.get(sub, scopes.get("scope", "own"))
            _choice(f"{key}.{name}.{sub}", scopes[sub], SCOPES)
        roles[str(name)] = Role(frozenset(perms), scopes["read_scope"], scopes["write_scope"])
    return roles


def _api_keys(raw: Any, key: str) -> dict[str, ApiKey]:
    keys = {}
    for user, spec in _mapping(raw, key).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}.{user}: expected {{hash: <64 hex>, role: <role>}}")
        entry: ApiKey = _section(ApiKey, spec, f"{key}.{user}")
        if not _HEX64.match(entry.hash.lower()):
            raise ConfigError(f"{key}.{user}.hash: expected the 64-hex SHA-256 of the key")
        keys[str(user)] = ApiKey(entry.hash.lower(), entry.role)
    return keys


def _networks(raw: Any, key: str) -> tuple[Network, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: expected a list of CIDRs")
    try:
        return tuple(ipaddress.ip_network(str(cidr), strict=False) for cidr in raw)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _tls(raw: Any, key: str) -> TLSConfig:
    tls: TLSConfig = _section(TLSConfig, raw, key)
    if tls.enabled and not (tls.cert_file and tls.key_file):
        raise ConfigError(f"{key}: enabled needs cert_file and key_file")
    return tls


def parse_config(raw: Any) -> Config:
    data = _mapping(raw, "config")
    for key in data:
        if key not in {f.name for f in fields(Config)}:
            raise ConfigError(f"{key}: unknown key")
    if "auth" not in data or "api_keys" not in _mapping(data["auth"], "auth"):
        raise ConfigError("auth.api_keys: required")
    auth: AuthConfig = _section(
        AuthConfig,
        data["auth"],
        "auth",
        {"api_keys": _api_keys, "roles": _roles, "ip_whitelist": _networks},
    )
    for user, entry in auth.api_keys.items():
        _choice(f"auth.api_keys.{user}.role", entry.role, set(auth.roles))
    server: ServerConfig = _section(ServerConfig, data.get("server"), "server", {"tls": _tls})
    _positive("server.port", server.port, 0)
    if server.port > 65535:
        raise ConfigError(f"server.port: must be at most 65535, got {server.port}")
    _positive("server.max_message_bytes", server.max_message_bytes, MIN_MESSAGE_LIMIT)
    if server.max_message_bytes > MAX_MESSAGE_LIMIT:
        raise ConfigError(
            f"server.max_message_bytes: must be at most {MAX_MESSAGE_LIMIT}, got {server.max_message_bytes}"
        )
    for name in (
        "max_connections",
        "max_inflight_requests",
        "watch_buffer_bytes",
        "max_connections_per_ip",
        "heavy_queries_per_user",
    ):
        _positive(f"server.{name}", getattr(server, name))
    for name in (
        "open_timeout_s",
        "ping_interval_s",
        "ping_timeout_s",
        "shutdown_timeout_s",
        "auth_timeout_s",
    ):
        _positive(f"server.{name}", getattr(server, name), 0)
    storage: StorageConfig = _section(StorageConfig, data.get("storage"), "storage")
    _choice("storage.durability", storage.durability, {"write", "fsync"})
    _positive("storage.max_open_files", storage.max_open_files)
    _positive("storage.cache_bytes", storage.cache_bytes, 1 << 20)
    _positive("storage.index_bytes", storage.index_bytes, 0)
    rate: RateLimitConfig = _section(RateLimitConfig, data.get("rate_limit"), "rate_limit")
    _positive("rate_limit.control_requests_per_minute", rate.control_requests_per_minute)
    log: LoggingConfig = _section(LoggingConfig, data.get("logging"), "logging")
    _choice("logging.level", log.level, {"debug", "info", "warning", "error"})
    _choice("logging.format", log.format, {"text", "json"})
    _positive("logging.audit_max_bytes", log.audit_max_bytes, 4096)
    _positive("logging.audit_keep", log.audit_keep, 0)
    jobs: JobsConfig = _section(JobsConfig, data.get("jobs"), "jobs")
    _positive("jobs.keep_days", jobs.keep_days, 0)
    _positive("jobs.lease_s", jobs.lease_s, 0)
    runs: RunsConfig = _section(RunsConfig, data.get("runs"), "runs")
    _positive("runs.crash_after_s", runs.crash_after_s, 1)
    cluster: ClusterConfig = _section(ClusterConfig, data.get("cluster"), "cluster")
    scheme = cluster.redis_url.partition("://")[0]
    if cluster.redis_url and scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            f"cluster.redis_url: expected redis://, rediss:// or unix://, got {cluster.redis_url!r}"
        )
    if cluster.redis_url and not cluster.key_prefix:
        raise ConfigError("cluster.key_prefix: must not be empty")
    return Config(
        auth=auth,
        server=server,
        storage=storage,
        rate_limit=rate,
        logging=log,
        jobs=jobs,
        runs=runs,
        cluster=cluster,
    )


def load_config(path: Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    return parse_config(raw)


PLACEHOLDER_HASH = "0" * 64
"""The key hash of configs/example.yaml: it stands for no key anyone has."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_warnings(config: Config) -> list[str]:
    """What is valid but unsafe: `check-config` prints these, `serve` logs them."""
    found = []
    server = config.server
    if not (_loopback(server.host) or server.tls.enabled or config.auth.require_handshake_key):
        found.append(
            f"server.host {server.host!r} is not loopback and neither server.tls.enabled nor"
            " auth.require_handshake_key is on: keys and data cross the network in the clear"
        )
    for user, entry in sorted(config.auth.api_keys.items()):
        if entry.hash == PLACEHOLDER_HASH:
            found.append(
                f"auth.api_keys.{user}.hash is the example's placeholder (64 zeros);"
                " make a key with `fetchml-server keygen`"
            )
    return found
