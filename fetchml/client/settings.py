"""Where the client finds its URL and API key.

Order, first found wins: explicit arguments, the environment (FETCHML_URL,
FETCHML_API_KEY), then `~/.ml/config.toml` (keys `api_url`, `api_key`), then
the default URL ws://127.0.0.1:9103/ws. There is no default key.
A URL setting may name several daemons of a cluster, separated by commas:
clients try them in order and fail over to the next (failover.py).
A MetricLogger resumes the run named by FETCHML_RUN_ID (40 hex) when given no
commit and no run_id.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fetchml.protocol.keys import key_hash

from .errors import ConfigurationError

DEFAULT_URL = "ws://127.0.0.1:9103/ws"
URL_ENV = "FETCHML_URL"
KEY_ENV = "FETCHML_API_KEY"
RUN_ID_ENV = "FETCHML_RUN_ID"


def default_config_path() -> Path:
    return Path.home() / ".ml" / "config.toml"


def normalize_url(url: str) -> str:
    """Accept ws(s)://, http(s):// (mapped to ws(s)) or bare HOST:PORT; default path /ws."""
    text = url.strip()
    if "://" not in text:
        text = "ws://" + text
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigurationError(f"invalid server URL {url!r}: expected ws://HOST:PORT/ws")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def parse_urls(text: str, source: str = "the URL") -> tuple[str, ...]:
    """One URL, or several separated by commas (whitespace around each ignored), each
    normalized; an empty item or a bad URL is a ConfigurationError naming it and `source`."""
    urls = []
    for item in text.split(","):
        if not item.strip():
            raise ConfigurationError(
                f"empty URL in {source} {text!r}: expected URLs separated by commas"
            )
        try:
            urls.append(normalize_url(item.strip()))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{exc.message} (in {source})") from None
    return tuple(urls)


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    """The URL to try first."""
    api_key: str
    others: tuple[str, ...] = ()
    """The URLs to fail over to, in order, after `url`."""

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.others)

    @property
    def url_list(self) -> str:
        """Every URL, as one comma-separated setting (FETCHML_URL of a worker's jobs)."""
        return ",".join(self.urls)

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.api_key)

    def starting_at(self, url: str) -> "Settings":
        """The same URLs in the same cycle, `url` (one of them) first."""
        urls = self.urls
        at = urls.index(url)
        return replace(self, url=url, others=urls[at + 1 :] + urls[:at])


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"invalid TOML in {path}: {exc}") from None


def resolve_settings(
    url: str | None = None,
    api_key: str | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """URL and key from the arguments, the environment, then the config file."""
    env = os.environ if environ is None else environ
    source = "--url (url=)" if url else URL_ENV
    url = url or env.get(URL_ENV) or None
    api_key = api_key or env.get(KEY_ENV) or None
    if url is None or api_key is None:
        path = config_path or default_config_path()
        config = _read_config(path)
        file_url, file_key = config.get("api_url"), config.get("api_key")
        if url is None and isinstance(file_url, str) and file_url:
            url, source = file_url, f"api_url of {path}"
        if api_key is None and isinstance(file_key, str) and file_key:
            api_key = file_key
    if api_key is None:
        raise ConfigurationError(
            f"no API key: pass --api-key (api_key=...), set {KEY_ENV}, "
            "or put api_key in ~/.ml/config.toml"
        )
    first, *others = parse_urls(url or DEFAULT_URL, source)
    return Settings(first, api_key, tuple(others))


def run_id_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """FETCHML_RUN_ID, or None when unset or empty."""
    env = os.environ if environ is None else environ
    return env.get(RUN_ID_ENV) or None
