"""server.tls: wss:// with the certificate and key named in the config."""

import json
import shutil
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from fetchml.protocol.requests import WhoAmI, encode_request
from fetchml.protocol.responses import Data, decode_response
from tests.support.inproc import DaemonFactory
from tests.support.keys import hash_of
from tests.support.tls import self_signed

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


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
