"""`fetchml prune`: prints what it will remove, asks on a terminal, prunes only when told."""

import os
import pty
import subprocess
import sys
from collections.abc import Callable

import pytest

from fetchml.client import InvalidRequest
from fetchml.client.models import prune_selection
from tests.support.cli import Cli
from tests.support.daemon import ROOT, DaemonProcess
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY

COMMITS = [commit_of(f"cli-prune-ask-{i}") for i in range(3)]


@pytest.fixture
def run(server_process: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Cli:
    """A fresh daemon holding three experiments, created one after another."""
    server_process.start()
    cli = Cli(server_process, capsys)
    for commit in COMMITS:
        cli.ok("log", commit, "x", "1", "--create")
    return cli


def listed(run: Cli) -> set[str]:
    rows = run.json("ls")
    assert isinstance(rows, list)
    return {row["commit_id"] for row in rows}


def test_dry_run_prints_and_removes_nothing(run: Cli) -> None:
    out = run.ok("prune", "--keep", "1", "--dry-run").splitlines()
    assert out[0] == "would remove 2 experiment(s):"
    victims = set(out[1:])
    assert len(victims) == 2 and victims < set(COMMITS)
    assert run.json("prune", "--keep", "1", "--dry-run") == {"would_prune": sorted(victims)}
    assert run.ok("prune", "--older-than", "1", "--dry-run") == "would remove 0 experiment(s)\n"
    assert listed(run) == set(COMMITS)
    out = run.ok("prune", "--keep", "1", "--yes").splitlines()
    assert out == ["pruned 2 experiment(s)", *sorted(victims)]
    assert listed(run) == set(COMMITS) - victims


def test_without_a_terminal_it_needs_yes(run: Cli) -> None:
    """pytest's stdin is not a terminal: like a script or a cron job."""
    code, out, err = run("prune", "--keep", "1")
    assert (code, out) == (1, "")
    assert err == "error: stdin is not a terminal: pass --yes to prune without asking\n"
    code, _, err = run("prune", "--keep", "1", "--json")
    assert code == 1 and "pass --yes" in err
    assert listed(run) == set(COMMITS)
    # nothing to remove: nothing to ask
    assert run.json("prune", "--older-than", "1") == {"pruned": []}
    assert run.ok("prune", "--keep", "3") == "pruned 0 experiment(s)\n"
    code, _, err = run("prune", "--keep", "1", "--yes", "--dry-run")
    assert code == 2 and "not allowed with argument" in err


def prune_on_a_terminal(
    server: DaemonProcess,
    answer: bytes,
    *flags: str,
    meanwhile: Callable[[], None] = lambda: None,
) -> tuple[int, str, str]:
    """`fetchml prune --keep 1` with a pseudo-terminal as stdin, answering `answer`
    (after calling `meanwhile`)."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "fetchml.client.cli", "--url", server.url, "--api-key", ADMIN_KEY]
    with subprocess.Popen(
        [*argv, "prune", "--keep", "1", *flags],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        os.close(slave)
        assert proc.stderr is not None and proc.stdout is not None
        err = b""
        while not err.endswith(b"[y/N] "):  # the question comes after the listing
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, err
            err += chunk
        meanwhile()
        os.write(master, answer)
        out, rest = proc.communicate(timeout=60)
        os.close(master)
    return proc.returncode, out.decode(), (err + rest).decode()


def test_asks_on_a_terminal(run: Cli) -> None:
    code, out, err = prune_on_a_terminal(run.server, b"n\n")
    victims = out.splitlines()[1:]
    assert code == 1 and out.splitlines()[0] == "will remove 2 experiment(s):"
    assert err == "remove these 2 experiment(s)? [y/N] error: not confirmed: nothing removed\n"
    assert listed(run) == set(COMMITS)

    code, out, err = prune_on_a_terminal(run.server, b"y\n")
    assert code == 0, err
    assert out.splitlines() == [
        "will remove 2 experiment(s):",
        *victims,
        "pruned 2 experiment(s)",
        *victims,
    ]
    assert listed(run) == set(COMMITS) - set(victims)


def test_json_asks_on_stderr(run: Cli) -> None:
    code, out, err = prune_on_a_terminal(run.server, b"yes\n", "--json")
    assert code == 0, err
    assert err.startswith("will remove 2 experiment(s):\n") and err.endswith("[y/N] ")
    assert out == '{"pruned":["' + '","'.join(sorted(set(COMMITS) - listed(run))) + '"]}\n'


def test_prints_what_was_actually_removed(run: Cli) -> None:
    """Another prune runs while the question is open: the answer prunes what is left."""
    gone: list[str] = []

    def meanwhile() -> None:
        gone.extend(run.ok("prune", "--keep", "2", "--yes").splitlines()[1:])

    code, out, err = prune_on_a_terminal(run.server, b"y\n", meanwhile=meanwhile)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "will remove 2 experiment(s):" and len(gone) == 1
    assert set(gone) < set(lines[1:3])
    assert lines[3:] == ["pruned 1 experiment(s)", *(set(lines[1:3]) - set(gone))]
    assert err.endswith(
        "[y/N] note: the experiments changed since the preview; the list above is what was removed\n"
    )
    assert len(listed(run)) == 1


@pytest.mark.parametrize(
    ("keep", "older"), [(None, None), (1, 1), (0, None), (None, 0), (1 << 32, None)]
)
def test_prune_arguments_checked_before_sending(keep: int | None, older: int | None) -> None:
    with pytest.raises(InvalidRequest):
        prune_selection(keep, older)
