"""scripts/fetchml.service: the hardening settings, systemd-analyze's verdict on them, and
the README's install steps agreeing with the unit."""

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fetchml.worker import cli as worker_cli

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "scripts" / "fetchml.service"
CHECK_UNIT = ROOT / "scripts" / "check-unit"
MAX_EXPOSURE = 2.0


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given (a key may repeat, e.g. SystemCallFilter=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        assert "=" in line, f"not a KEY=VALUE line: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


HARDENING = {
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RemoveIPC": "yes",
    "UMask": "0077",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native",
    "DevicePolicy": "closed",
}
"""The sandboxing both units share."""

EXPECTED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/opt/fetchml/.venv/bin/fetchml-server serve --config /etc/fetchml/config.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "TimeoutStopSec": "20",
    "User": "fetchml",
    "Group": "fetchml",
    "StateDirectory": "fetchml",
    "ConfigurationDirectory": "fetchml",
    "LogsDirectory": "fetchml",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "MemoryDenyWriteExecute": "yes",
    "ProcSubset": "pid",
    "PrivateUsers": "yes",
    "LimitNOFILE": "65536",
    **HARDENING,
}


@pytest.mark.parametrize(("key", "value"), EXPECTED.items(), ids=list(EXPECTED))
def test_unit_setting(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service.get(key) == [value]


def test_unit_runs_as_a_static_user(service: dict[str, list[str]]) -> None:
    """systemd refuses a dynamic user named like a static group (so Group=fetchml beside
    DynamicUser= would not start); the install steps make a static user and group."""
    assert "DynamicUser" not in service


def test_unit_system_call_filter(service: dict[str, list[str]]) -> None:
    filters = service.get("SystemCallFilter", [])
    assert "@system-service" in filters
    denied = [f for f in filters if f.startswith("~")]
    assert len(denied) == 1
    assert set(denied[0][1:].split()) == {"@privileged", "@resources"}


def test_unit_leaves_ip_filtering_to_the_operator(service: dict[str, list[str]]) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert "IPAddressDeny" not in service
    assert "IPAddressAllow" not in service
    assert "#IPAddressDeny=" in text
    assert "#IPAddressAllow=" in text


def test_unit_header_documents_install_and_wx() -> None:
    text = UNIT.read_text(encoding="utf-8")
    header = text.split("[Unit]")[0]
    assert "Install" in header
    assert "/etc/systemd/system/" in header
    assert "/var/lib/fetchml" in header
    assert re.search(r"#.*CPython.*JIT", text)


def test_unit_install_section() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _require_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is not None:
        return
    reason = "systemd-analyze is not installed (apt-get install -y --no-install-recommends systemd)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def run_check_unit(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_UNIT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_check_unit_passes() -> None:
    _require_systemd_analyze()
    result = run_check_unit()
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"exposure (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_check_unit_fails_a_weak_unit(tmp_path: Path) -> None:
    _require_systemd_analyze()
    weak = tmp_path / "weak.service"
    weak.write_text("[Service]\nType=simple\nExecStart=/bin/true\n", encoding="utf-8")
    result = run_check_unit(str(weak))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "above 2.0" in result.stdout


def test_check_unit_without_systemd_analyze_exits_3(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = run_check_unit(env={"PATH": str(bin_dir)})
    assert result.returncode == 3
    assert "systemd-analyze not found" in result.stderr


def test_check_unit_fails_an_unknown_setting(tmp_path: Path) -> None:
    _require_systemd_analyze()
    typo = tmp_path / "typo.service"
    typo.write_text(UNIT.read_text(encoding="utf-8").replace("\nUser=", "\nUsr="))
    result = run_check_unit(str(typo))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Unknown key 'Usr'" in result.stderr
    assert "verify reported problems" in result.stderr


# -- the README's install steps -----------------------------------------------------------------


def install_steps() -> list[str]:
    """The commands of the first sh block under README.md's "## Operating it"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Operating it\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_install_steps_agree_with_the_unit(service: dict[str, list[str]]) -> None:
    steps = install_steps()
    (user,) = service["User"]
    (exec_start,) = service["ExecStart"]
    program, _, args = exec_start.partition(" ")
    config = args.split("--config ", 1)[1].split()[0]
    venv = program.rsplit("/bin/", 1)[0]

    assert f"python3 -m venv {venv} && {venv}/bin/pip install /path/to/fetchml" in steps
    useradd = [s for s in steps if s.startswith("useradd ")]
    assert useradd == [
        "useradd --system --user-group --no-create-home --home-dir /var/lib/fetchml"
        f" --shell /usr/sbin/nologin {user}"
    ]
    assert service["Group"] == [user]  # --user-group makes the group of the same name
    assert "install -D -m 0644 scripts/fetchml.service /etc/systemd/system/fetchml.service" in steps
    # The config: readable by root and the service's group, by nobody else.
    config_step = f"install -D -o root -g {user} -m 0640 configs/example.yaml {config}"
    assert config_step in steps
    assert f"{program} check-config {config}" in steps
    assert steps.index(useradd[0]) < steps.index(config_step)  # -g needs the group
    assert steps[-1] == "systemctl daemon-reload && systemctl enable --now fetchml"
    # The unit's own header gives the same commands.
    header = UNIT.read_text(encoding="utf-8").split("[Unit]")[0]
    assert config_step in header
    assert f"{program} check-config {config}" in header
    assert f"--shell /usr/sbin/nologin {user}" in header


# -- check-unit's limit -------------------------------------------------------------------------


def test_check_unit_takes_a_max_exposure() -> None:
    """The daemon's unit (1.2) fails a limit of 1.0, given as an argument or in the
    environment; a limit that is not a number is refused before anything runs."""
    _require_systemd_analyze()
    result = run_check_unit(str(UNIT), "1.0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "above 1.0" in result.stdout
    result = run_check_unit(env={**os.environ, "MAX_EXPOSURE": "1.0"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "above 1.0" in result.stdout
    result = run_check_unit(str(UNIT), "3.0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(max 3.0): OK" in result.stdout
    result = run_check_unit(str(UNIT), "two")
    assert result.returncode == 2
    assert "MAX_EXPOSURE must be a number" in result.stderr


# -- the worker's unit --------------------------------------------------------------------------

WORKER_UNIT = ROOT / "scripts" / "fetchml-worker.service"
WORKER_MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def worker() -> dict[str, list[str]]:
    return parse_unit(WORKER_UNIT.read_text(encoding="utf-8"))["Service"]


WORKER_EXPECTED = {
    "Type": "exec",
    "EnvironmentFile": "/etc/fetchml/worker.env",
    "Restart": "on-failure",
    "KillMode": "mixed",
    "User": "fetchml-worker",
    "Group": "fetchml-worker",
    "StateDirectory": "fetchml-worker",
    "WorkingDirectory": "/var/lib/fetchml-worker",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "SystemCallErrorNumber": "EPERM",
    **HARDENING,
}


@pytest.mark.parametrize(("key", "value"), WORKER_EXPECTED.items(), ids=list(WORKER_EXPECTED))
def test_worker_unit_setting(worker: dict[str, list[str]], key: str, value: str) -> None:
    assert worker.get(key) == [value]


def test_worker_unit_lets_jobs_use_gpus_and_jits(worker: dict[str, list[str]]) -> None:
    """User code needs the NVIDIA devices (and nothing else of /dev), JIT compilers
    (writable and executable memory) and the driver's files under /proc."""
    assert worker["DeviceAllow"] == [
        "char-nvidia-frontend rw",
        "char-nvidia-uvm rw",
        "char-nvidia-caps r",
    ]
    for absent in ("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset", "PrivateNetwork"):
        assert absent not in worker, absent
    assert worker["SystemCallFilter"] == ["@system-service", "~@privileged"]


def worker_options(worker: dict[str, list[str]]) -> argparse.Namespace:
    """ExecStart='s `fetchml worker` options as the command parses them (%H: a host name)."""
    (exec_start,) = worker["ExecStart"]
    program, command, *args = exec_start.replace("%H", "gpu-box-1").split()
    assert (program, command) == ("/opt/fetchml/.venv/bin/fetchml", "worker")
    parser = argparse.ArgumentParser()
    worker_cli.add_parser(parser.add_subparsers())
    return parser.parse_args([command, *args])


def test_worker_unit_runs_the_worker_on_its_state_directory(
    worker: dict[str, list[str]],
) -> None:
    options = worker_options(worker)
    (state,) = worker["StateDirectory"]
    assert options.workdir == Path("/var/lib") / state / "jobs"
    assert options.name == "gpu-box-1"


def test_worker_unit_stop_outlasts_the_grace(worker: dict[str, list[str]]) -> None:
    """systemd's SIGTERM reaches the worker alone (KillMode=mixed), which gives its jobs
    --grace seconds, then SIGTERM and --grace more before SIGKILL: TimeoutStopSec= must
    cover both, or systemd SIGKILLs the jobs before the worker reports them."""
    (stop,) = worker["TimeoutStopSec"]
    assert int(stop) > 2 * worker_options(worker).grace


def test_check_unit_passes_the_worker_unit() -> None:
    _require_systemd_analyze()
    result = run_check_unit(str(WORKER_UNIT), str(WORKER_MAX_EXPOSURE))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"exposure (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout
    print(f"worker unit exposure {match.group(1)} (max {WORKER_MAX_EXPOSURE})")
    assert float(match.group(1)) <= WORKER_MAX_EXPOSURE


def readme_worker_steps() -> list[str]:
    """The commands of the first sh block under README.md's "## Workers"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Workers\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_worker_steps_agree_with_the_unit(worker: dict[str, list[str]]) -> None:
    steps = readme_worker_steps()
    header = WORKER_UNIT.read_text(encoding="utf-8").split("[Unit]")[0]
    (user,) = worker["User"]
    (home,) = worker["WorkingDirectory"]
    (env_file,) = worker["EnvironmentFile"]
    useradd = (
        f"useradd --system --user-group --no-create-home --home-dir {home}"
        f" --shell /usr/sbin/nologin {user}"
    )
    install = (
        "install -D -m 0644 scripts/fetchml-worker.service"
        " /etc/systemd/system/fetchml-worker.service"
    )
    env_step = f"install -D -o root -g root -m 0600 /dev/null {env_file}"
    keygen = "fetchml-server keygen --user gpu-box-1 --role worker"
    for step in (useradd, install, env_step, keygen):
        assert step in steps, step
        assert " ".join(step.split()) in " ".join(header.replace("\\\n#", " ").split()), step
    assert steps[-1] == "systemctl daemon-reload && systemctl enable --now fetchml-worker"
