"""server.tls: wss:// with the certificate and key named in the config."""

import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from fetchml.protocol.requests import WhoAmI, encode_request
from fetchml.protocol.responses import Data, decode_response
from tests.support.inproc import DaemonFactory
from tests.support.keys import hash_of

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_wss_with_the_configured_certificate(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    daemon = await start_daemon(server={"tls": tls})
    url = daemon.url.replace("ws://", "wss://")

    async with connect(url, ssl=ssl.create_default_context(cafile=str(cert))) as ws:
        await ws.send(encode_request(WhoAmI(key_hash=hash_of("alice"))))
        reply = await ws.recv()
    assert isinstance(reply, bytes)
    response = decode_response(reply)
    assert isinstance(response, Data)
    assert json.loads(response.payload)["user"] == "alice"

    with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust it
        async with connect(url, ssl=ssl.create_default_context()):
            pass
