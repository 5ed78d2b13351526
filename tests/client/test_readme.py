"""The README's training-script example and CLI tour run against a real daemon."""

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from fetchml.client import Client
from tests.support.inproc import Daemon
from tests.support.keys import KEYS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def block(heading: str, language: str) -> str:
    """The first fenced block of `language` after a `## heading`."""
    section = README.split(f"## {heading}\n", 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block under {heading!r}"
    return match.group(1)


def env_for(daemon: Daemon) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FETCHML_URL": daemon.url,
        "FETCHML_API_KEY": KEYS["admin"][1],
        "HOME": str(ROOT / "tests"),  # no ~/.ml/config.toml of the machine's user
    }


async def test_training_script_example(daemon: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(block("Log metrics from a training script", "python"))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env=env_for(daemon),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    async with Client.connect(daemon.url, api_key=KEYS["admin"][1]) as c:
        (run,) = [row async for row in c.list_runs({"name": "resnet-50"})]
        records = await c.query(run.id)
    assert run.run is not None and run.run.status == "finished"
    assert run.run.params == {"opt.lr": 0.001, "opt.betas": "[0.9,0.999]", "batch": 64}
    loss = [r for r in records if r.name == "loss"]
    assert [r.step for r in loss] == list(range(1000))
    assert loss[999].value == 1.0 / 1000
    assert sorted({r.name for r in records}) == ["acc", "loss", "lr"]
    assert len(records) == 1000 + 2 * 10


async def test_sync_client_example(daemon: Daemon, tmp_path: Path) -> None:
    (example,) = [
        code
        for code in re.findall(r"```python\n(.*?)```", README, re.S)
        if "SyncClient.connect" in code
    ]
    script = tmp_path / "plain.py"
    script.write_text(example)
    async with Client.connect(daemon.url, api_key=KEYS["admin"][1]) as c:
        await c.create_experiment(COMMIT)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env={**env_for(daemon), "FETCHML_RUN_ID": COMMIT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "step,value,timestamp" and lines[1].startswith("11,0.25,"), lines
    async with Client.connect(daemon.url, api_key=KEYS["admin"][1]) as c:
        records = await c.query(COMMIT)
    assert sorted((r.name, r.step, r.value) for r in records) == [
        ("loss", 11, 0.25),
        ("val/acc", 10, 0.91),
    ]


async def test_cli_tour(daemon: Daemon, tmp_path: Path) -> None:
    lines = [line for line in block("CLI tour", "sh").splitlines() if line.strip()]
    assert len(lines) >= 8
    for line in lines:
        args = shlex.split(line)
        assert args[0] == "fetchml"
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "fetchml.client.cli", *args[1:]],
            env=env_for(daemon),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{line}: {result.stderr}"
    assert (tmp_path / "loss.csv").read_text().count("\n") == 2  # header and the one point


async def test_runs_sweep_example(daemon: Daemon, tmp_path: Path) -> None:
    """The sweep script, then the shell commands, run by bash with `fetchml` the CLI."""
    env = env_for(daemon)
    script = tmp_path / "sweep.py"
    script.write_text(block("Runs", "python"))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shell = f'set -euo pipefail\nfetchml() {{ "{sys.executable}" -m fetchml.client.cli "$@"; }}\n'
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", shell + block("Runs", "sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    async with Client.connect(daemon.url, api_key=KEYS["admin"][1]) as c:
        page = await c.list_runs_page({"project": "sweep", "order": "oldest"})
    runs = {row.run.name: row for row in page.runs if row.run is not None}
    assert sorted(runs) == ["lr-0.001", "lr-0.01", "lr-0.1"] and page.total == 3
    assert all(row.run and row.run.status == "finished" for row in runs.values())
    best = runs["lr-0.01"].run
    assert best is not None and best.tags == ("best",)
    assert best.notes == "lr 0.01: the best of the sweep"
    out = done.stdout
    assert "* lr " in out and f"commit   {runs['lr-0.01'].id}" in out
    assert f"{runs['lr-0.01'].id[:8]} lr-0.01: tags best" in out
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert rows[0] == "run,name,step,value,timestamp" and len(rows) == 1 + 300
    assert {row.split(",")[0] for row in rows[1:]} == {row.id for row in runs.values()}
