"""`fetchml-server keygen`, `hash-key` and `check-config`: keys are made and hashed as the
config expects, the printed line pastes under `auth.api_keys`, and unsafe but valid
configs are warned about by `check-config` and `serve`."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fetchml.protocol.keys import key_hash
from fetchml.protocol.requests import WhoAmI
from fetchml.server.__main__ import main
from fetchml.server.config import ApiKey, config_warnings, load_config, parse_config
from tests.support.config import make_config, raw_config, write_config
from tests.support.daemon import DaemonProcess
from tests.support.inproc import DaemonFactory
from tests.support.keys import KEYS
from tests.support.wire import data_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "example.yaml"
ZEROS = "0" * 64


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fetchml.server", *args],
        input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def keygen(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keygen", *args])
    out, err = capsys.readouterr()
    return code, out, err


def printed(out: str) -> tuple[str, str]:
    """The raw key and the config line keygen printed."""
    (key,) = re.findall(r"^  (fml_\S+)$", out, re.M)
    (line,) = [x for x in out.splitlines() if "hash:" in x]
    return key, line


def test_keygen_prints_a_key_once_and_the_yaml_for_it() -> None:
    result = run("keygen", "--user", "alice", "--role", "researcher")
    assert result.returncode == 0, result.stderr
    (key,) = re.findall(r"^\s+(fml_\S+)$", result.stdout, re.M)
    assert len(key) >= 4 + 43  # 256 random bits, URL-safe base64
    (line,) = [x for x in result.stdout.splitlines() if x.strip().startswith("alice:")]
    config = parse_config({"auth": {"api_keys": yaml.safe_load(line)}})
    entry = config.auth.api_keys["alice"]
    assert entry.role == "researcher"
    assert entry.hash == hashlib.sha256(key.encode()).hexdigest()
    assert run("keygen", "--user", "alice", "--role", "researcher").stdout.count(key) == 0


USERS = {
    "walt": "worker",
    "yes": "researcher",  # YAML 1.1 reads a plain yes as true
    "null": "analyst",
    "123": "worker",
    "1e3": "worker",
    "bob smith": "researcher",
    "o'brien: x #1": "admin",
    "café": "analyst",
    "-dash": "researcher",
}


async def test_keygen_lines_paste_under_api_keys_and_the_keys_authenticate(
    capsys: pytest.CaptureFixture[str], start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Each printed line goes right under `api_keys:` of configs/example.yaml as shipped."""
    keys = {}
    lines = []
    for user, role in USERS.items():
        code, out, err = keygen(capsys, f"--user={user}", "--role", role)
        assert (code, err) == (0, "")
        keys[user], line = printed(out)
        lines.append(line)
    text = (
        EXAMPLE.read_text()
        .replace("./data/experiments", str(tmp_path / "experiments"))
        .replace("./data/jobs.sqlite3", str(tmp_path / "jobs.sqlite3"))
        .replace("port: 9103 ", "port: 0    ")
    )
    out_lines = text.splitlines()
    at = next(i for i, x in enumerate(out_lines) if x.startswith("  api_keys:")) + 1
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(out_lines[:at] + lines + out_lines[at:]) + "\n")

    config = load_config(path)
    assert set(config.auth.api_keys) == {"alice", *USERS}
    for user, role in USERS.items():
        digest = hashlib.sha256(keys[user].encode()).hexdigest()
        assert config.auth.api_keys[user] == ApiKey(digest, role)

    daemon = await start_daemon(config)
    client = await daemon.client()
    for user, role in USERS.items():
        whoami = data_of(await client.call(WhoAmI(key_hash=key_hash(keys[user]))), "whoami")
        assert (whoami["user"], whoami["role"]) == (user, role)


def test_keygen_refuses_an_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = keygen(capsys, "--user", "alice", "--role", "wizard")
    assert (code, out) == (2, "")
    assert err == (
        "error: unknown role 'wizard'; roles: admin, analyst, member, researcher, worker"
        " (custom roles need --config FILE)\n"
    )


def test_keygen_knows_custom_roles_only_with_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    roles = {"root": {"permissions": ["*"]}, "auditor": {"permissions": ["jobs:read"]}}
    raw = raw_config(tmp_path, auth={"roles": roles})
    config = write_config(tmp_path / "config.yaml", raw)
    code, out, err = keygen(capsys, "--user", "ann", "--role", "auditor")
    assert (code, out) == (2, "")
    assert "roles: admin, analyst, member, researcher, worker (custom" in err

    code, out, err = keygen(capsys, "--user", "ann", "--role", "auditor", "--config", str(config))
    assert (code, err) == (0, "")
    key, line = printed(out)
    assert line == f'    ann: {{hash: "{hashlib.sha256(key.encode()).hexdigest()}", role: auditor}}'

    code, out, err = keygen(capsys, "--user", "ann", "--role", "wizard", "--config", str(config))
    assert (code, out) == (2, "")
    assert err == (
        "error: unknown role 'wizard'; roles: admin, analyst, auditor, member, researcher, root, worker\n"
    )


def test_keygen_refuses_a_broken_config_and_an_empty_user(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("auth: {api_keys: {}}\nserver: {port: -1}\n")
    code, out, err = keygen(capsys, "--user", "a", "--role", "admin", "--config", str(broken))
    assert (code, out) == (1, "")
    assert err == f"{broken}: server.port: must be at least 0, got -1\n"
    code, out, err = keygen(capsys, "--user", "", "--role", "admin")
    assert (code, out, err) == (2, "", "error: --user must not be empty\n")


def test_hash_key_reads_the_raw_key_on_stdin() -> None:
    result = run("hash-key", stdin="fml_example_key_do_not_use\n")
    assert result.returncode == 0
    assert result.stdout == "5ba7dccf22514f45ae84bfb8b12cd02e0f842aa2a49fbd973c97288bebaf1cb6\n"


def test_hash_key_without_input_fails() -> None:
    result = run("hash-key")
    assert result.returncode == 1
    assert "no key on stdin" in result.stderr


# -- warnings --------------------------------------------------------------------------------

OPEN = (
    "server.host '{}' is not loopback and neither server.tls.enabled nor"
    " auth.require_handshake_key is on: keys and data cross the network in the clear"
)
PLACEHOLDER = (
    "auth.api_keys.{}.hash is the example's placeholder (64 zeros);"
    " make a key with `fetchml-server keygen`"
)
TLS = {"tls": {"enabled": True, "cert_file": "c.pem", "key_file": "k.pem"}}


@pytest.mark.parametrize(
    ("server", "auth", "warned"),
    [
        ({"host": "127.0.0.1"}, {}, False),
        ({"host": "127.0.0.2"}, {}, False),
        ({"host": "::1"}, {}, False),
        ({"host": "localhost"}, {}, False),
        ({"host": "0.0.0.0"}, {}, True),
        ({"host": "::"}, {}, True),
        ({"host": ""}, {}, True),
        ({"host": "10.1.2.3"}, {}, True),
        ({"host": "gpu-box.example.org"}, {}, True),
        ({"host": "0.0.0.0", **TLS}, {}, False),
        ({"host": "0.0.0.0"}, {"require_handshake_key": True}, False),
    ],
)
def test_listener_warning(
    tmp_path: Path, server: dict[str, object], auth: dict[str, object], warned: bool
) -> None:
    config = make_config(tmp_path, server=server, auth=auth)
    assert config_warnings(config) == ([OPEN.format(server["host"])] if warned else [])


def test_placeholder_key_warning(tmp_path: Path) -> None:
    api_keys = {user: {"hash": ZEROS, "role": "admin"} for user in ("zed", "amy")}
    api_keys["bea"] = {"hash": "1" * 64, "role": "admin"}
    config = make_config(tmp_path, auth={"api_keys": api_keys})
    assert config_warnings(config) == [PLACEHOLDER.format("amy"), PLACEHOLDER.format("zed")]


def test_check_config_prints_the_warnings_and_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{EXAMPLE}: ok\n"
    assert err == f"{EXAMPLE}: warning: {PLACEHOLDER.format('alice')}\n"

    clean = write_config(tmp_path / "clean.yaml", raw_config(tmp_path))
    assert main(["check-config", str(clean)]) == 0
    assert capsys.readouterr() == (f"{clean}: ok\n", "")


async def test_serve_logs_the_warnings(tmp_path: Path) -> None:
    raw = raw_config(tmp_path, server={"host": "0.0.0.0"})
    raw["auth"]["api_keys"]["placeholder"] = {"hash": ZEROS, "role": "worker"}
    config = write_config(tmp_path / "config.yaml", raw)
    daemon = DaemonProcess(config, tmp_path / "daemon.log").spawn()
    try:
        await daemon.wait_ready()
        client = await daemon.client()
        whoami = WhoAmI(key_hash=key_hash(KEYS["admin"][1]))
        assert data_of(await client.call(whoami), "whoami")["user"] == "admin"  # it serves
        await client.ws.close()
        await daemon.shutdown()
    finally:
        daemon.reap()
    log = daemon.log()
    for warning in (OPEN.format("0.0.0.0"), PLACEHOLDER.format("placeholder")):
        assert f"WARNING fetchml.server.app: {config}: {warning}" in log
