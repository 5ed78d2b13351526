"""The `fetchml` CLI run in-process (cli.main) against a daemon, output captured."""

import json

import pytest

from fetchml.client import cli

from .daemon import DaemonProcess
from .keys import ADMIN_KEY


class Cli:
    def __init__(self, server: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
        self.server = server
        self.capsys = capsys

    def __call__(self, *argv: str, key: str = ADMIN_KEY) -> tuple[int, str, str]:
        code = cli.main(["--url", self.server.url, "--api-key", key, *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str, key: str = ADMIN_KEY) -> str:
        code, out, err = self(*argv, key=key)
        assert code == 0, err
        return out

    def json(self, *argv: str, key: str = ADMIN_KEY) -> object:
        return json.loads(self.ok(*argv, "--json", key=key))
