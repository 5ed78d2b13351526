"""The dashboard's files over plain HTTP: GET / and /static/<path>, their headers, the path
rules, the address whitelist and the size of what a browser loads."""

import gzip
from pathlib import Path

import pytest

from fetchml.server import web
from tests.support.http import http_get
from tests.support.inproc import Daemon, DaemonFactory

WEB = Path(web.__file__).resolve().parent.parent / "web"


async def get(daemon: Daemon, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET (the path sent exactly as given): status, headers, body."""
    response = await http_get(daemon, path, *headers)
    return response.status, response.headers, response.body


def directives(csp: str) -> dict[str, str]:
    return {d.split()[0]: " ".join(d.split()[1:]) for d in csp.split(";") if d.strip()}


def assert_locked_down(headers: dict[str, str]) -> None:
    csp = directives(headers["content-security-policy"])
    for name in ("default-src", "script-src", "connect-src"):
        assert csp[name] == "'self'", (name, csp)
    assert csp["style-src"] in ("'self'", "'self' 'unsafe-inline'")
    assert csp["frame-ancestors"] == "'none'"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


async def test_index_is_served_with_a_same_origin_policy_and_no_cache(daemon: Daemon) -> None:
    status, headers, body = await get(daemon, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert_locked_down(headers)
    assert b'<script type="module" src="/static/app.js"></script>' in body
    assert b"http://" not in body and b"https://" not in body  # nothing from another origin
    again = await get(daemon, "/?x=1")
    assert again[0] == 200 and again[2] == body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/codec.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/vendor/uPlot.esm.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/uPlot.min.css", "text/css; charset=utf-8"),
        ("/static/vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
    ],
)
async def test_static_files_have_an_etag_and_answer_304_when_unchanged(
    daemon: Daemon, path: str, content_type: str
) -> None:
    status, headers, body = await get(daemon, path)
    assert status == 200
    assert headers["content-type"] == content_type
    assert body == (WEB / path.removeprefix("/static/")).read_bytes()
    assert_locked_down(headers)
    etag = headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    status, headers, body = await get(daemon, path, f"If-None-Match: {etag}")
    assert (status, body, headers["etag"]) == (304, b"", etag)
    status, _, body = await get(daemon, path, 'If-None-Match: "stale"')
    assert status == 200 and body


@pytest.mark.parametrize(
    "path",
    [
        "/static/../pyproject.toml",
        "/static/../server/web.py",
        "/static/vendor/../codec.js",
        "/static/%2e%2e/server/web.py",
        "/static/./codec.js",
        "/static/",
        "/static//codec.js",
        "/static/vendor",
        "/static/missing.js",
        "/static/codec.js/",
        "/static/~codec.js",
        "/static",
        "/index.html",
        "/app.js",
        "/favicon.ico",
    ],
)
async def test_other_paths_are_404(daemon: Daemon, path: str) -> None:
    status, headers, body = await get(daemon, path)
    assert (status, body) == (404, b"not found\n")
    assert "etag" not in headers


async def test_a_symlink_in_the_web_directory_is_not_followed(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "web"
    root.mkdir()
    (root / "real.js").write_text("export {};\n")
    (root / "link.js").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "outside.txt").write_text("secret\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.js").write_text("secret\n")
    (root / "dir").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setattr(web, "WEB_ROOT", root)
    web.assets.cache_clear()
    try:
        assert (await get(daemon, "/static/real.js"))[0] == 200
        assert (await get(daemon, "/static/link.js"))[0] == 404
        assert (await get(daemon, "/static/dir/x.js"))[0] == 404
    finally:
        web.assets.cache_clear()


async def test_the_address_whitelist_applies_to_the_dashboard(
    start_daemon: DaemonFactory,
) -> None:
    daemon = await start_daemon(auth={"ip_whitelist": ["10.1.2.0/24"]})
    for path in ("/", "/static/app.js"):
        status, _, body = await get(daemon, path)
        assert (status, body) == (403, b"forbidden\n")


def test_the_page_loads_under_300_kb_compressed() -> None:
    files = sorted(p for p in WEB.rglob("*") if p.is_file())
    sizes = {p.relative_to(WEB).as_posix(): len(gzip.compress(p.read_bytes(), 9)) for p in files}
    total = sum(sizes.values())
    print(f"dashboard assets: {len(files)} files, {total} bytes gzipped: {sizes}")
    assert {"index.html", "app.js", "vendor/uPlot.esm.js"} <= set(sizes)
    assert total < 300_000


async def test_keys_do_not_gate_the_dashboard_files(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(auth={"require_handshake_key": True})
    assert (await get(daemon, "/ws"))[0] == 401
    for path in ("/", "/static/app.js"):
        assert (await get(daemon, path))[0] == 200
