"""The web dashboard's files: `GET /` and `GET /static/<path>` from the installed
package's `fetchml/web/`, with a Content-Security-Policy that allows only this origin."""

import dataclasses
import hashlib
import http
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
INDEX = "index.html"
STATIC_PREFIX = "/static/"
SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    # Revalidated on every use (a 304 when unchanged): an upgraded daemon never runs
    # with yesterday's scripts.
    ("Cache-Control", "no-cache"),
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def is_web_path(path: str) -> bool:
    return path == "/" or path.startswith(STATIC_PREFIX)


def web_response(connection: ServerConnection, request: Request, path: str) -> Response:
    """The file `path` names (its query string already removed), or 404."""
    name = INDEX if path == "/" else static_name(path)
    found = assets().get(name) if name else None
    if found is None:
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
    fresh = any(found.etag in tags for tags in request.headers.get_all("If-None-Match"))
    response = connection.respond(http.HTTPStatus.NOT_MODIFIED if fresh else http.HTTPStatus.OK, "")
    headers = response.headers
    del headers["Content-Type"], headers["Content-Length"]
    headers.update(SECURITY_HEADERS, ETag=found.etag)
    if fresh:
        return response
    headers.update({"Content-Type": found.content_type, "Content-Length": str(len(found.body))})
    return dataclasses.replace(response, body=found.body)


def static_name(path: str) -> str | None:
    """The file under WEB_ROOT that `/static/<path>` names: segments of [A-Za-z0-9._-],
    never `.` or `..`; None for anything else."""
    segments = path.removeprefix(STATIC_PREFIX).split("/")
    if all(SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        return "/".join(segments)
    return None


@cache
def assets() -> dict[str, Asset]:
    """Every regular file of the package's web directory (symlinks are not followed), by
    its path under it, read once: about 200 KB."""
    found = {}
    for top, _, files in os.walk(WEB_ROOT):
        for file in (Path(top) / f for f in files):
            if file.is_symlink() or not file.is_file():
                continue
            body = file.read_bytes()
            content_type = TYPES.get(file.suffix, "text/plain; charset=utf-8")
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[file.relative_to(WEB_ROOT).as_posix()] = Asset(body, content_type, etag)
    return found
