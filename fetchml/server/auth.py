"""API keys, roles, permissions and scope; the handshake checks; control-request limits."""

import hmac
import ipaddress
import time
from dataclasses import dataclass

from fetchml.protocol.keys import KEY_HASH_SIZE

from .config import AuthConfig, Network
from .errors import Overloaded, PermissionDenied


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    role: str
    permissions: frozenset[str]
    read_scope: str
    write_scope: str

    @property
    def scope(self) -> str:
        """What WHOAMI reports as `scope`: the write scope."""
        return self.write_scope

    def can(self, permission: str) -> bool:
        return "*" in self.permissions or permission in self.permissions

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise PermissionDenied("Insufficient permissions")

    def sees(self, owner: str | None) -> bool:
        """Read scope: `all` sees everything; `own` only what the caller owns (None: nobody)."""
        return self.read_scope == "all" or (owner is not None and owner == self.user)

    def writes(self, owner: str | None) -> bool:
        """Write scope, by the same rule."""
        return self.write_scope == "all" or (owner is not None and owner == self.user)

    def require_read(
        self, owner: str | None, message: str = "Access denied: not your experiment"
    ) -> None:
        if not self.sees(owner):
            raise PermissionDenied(message)

    def require_write(
        self, owner: str | None, message: str = "Access denied: not your experiment"
    ) -> None:
        if not self.writes(owner):
            raise PermissionDenied(message)

    @property
    def read_owner(self) -> str | None:
        """The owner reads are limited to (None: everyone's)."""
        return None if self.read_scope == "all" else self.user

    @property
    def write_owner(self) -> str | None:
        """The owner writes are limited to (None: everyone's)."""
        return None if self.write_scope == "all" else self.user


class KeyTable:
    """Key hashes to identities, looked up in constant time over all entries."""

    def __init__(self, config: AuthConfig) -> None:
        self._entries: list[tuple[bytes, Identity]] = []
        for user, entry in sorted(config.api_keys.items()):
            role = config.roles[entry.role]
            identity = Identity(
                user, entry.role, role.permissions, role.read_scope, role.write_scope
            )
            self._entries.append((bytes.fromhex(entry.hash)[:KEY_HASH_SIZE], identity))
        self._networks: tuple[Network, ...] = config.ip_whitelist
        self.require_key = config.require_handshake_key
        """A /ws upgrade needs a valid raw key (auth.require_handshake_key)."""

    def lookup(self, digest: bytes) -> Identity | None:
        found = None
        for candidate, identity in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = identity
        return found

    def allows_peer(self, host: str | None) -> bool:
        if not self._networks:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


class RateLimiter:
    """Token bucket per user for control requests: `per_minute` burst, refilled evenly."""

    shared = False
    """Counted by `count` when the request runs (in Redis), not by `check` when accepted."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, user: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(user, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            raise Overloaded(f"rate limit exceeded: {self.per_minute} control requests per minute")
        self._buckets[user] = (tokens - 1.0, now)

    async def count(self, user: str) -> None:
        self.check(user)
