"""The README's training-script example and CLI tour run against a real daemon."""

import asyncio
import os
import re
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


async def test_cli_tour(daemon: Daemon, tmp_path: Path) -> None:
    lines = [line for line in block("CLI tour", "sh").splitlines() if line.strip()]
    assert len(lines) >= 8
    for line in lines:
        args = line.split()
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
