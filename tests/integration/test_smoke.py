import json

from fetchml.protocol.requests import WhoAmI
from fetchml.protocol.responses import Data
from tests.support.inproc import Daemon
from tests.support.keys import hash_of


async def test_whoami(daemon: Daemon) -> None:
    client = await daemon.client()
    response = await client.call(WhoAmI(key_hash=hash_of("alice")))
    assert isinstance(response, Data)
    assert response.data_type == "whoami"
    assert json.loads(response.payload) == {
        "user": "alice",
        "role": "researcher",
        "permissions": ["jobs:create", "jobs:read", "jobs:update"],
        "scope": "own",
        "read_scope": "own",
        "write_scope": "own",
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }
    await client.ws.close()
