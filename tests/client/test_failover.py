"""Several URLs, comma-separated, in --url, FETCHML_URL and api_url: the clients try them
in order and fail over to the next (fetchml/client/failover.py). Killing nodes under a
logger, a watch and the worker: tests/reliability/test_failover.py."""

import asyncio
from pathlib import Path

import pytest

from fetchml.client import Client, MetricLogger, cli
from fetchml.client.errors import AuthenticationFailed, ConfigurationError, ConnectFailed
from fetchml.client.failover import Failover
from fetchml.client.settings import resolve_settings
from tests.support.daemon import free_port
from tests.support.experiments import commit_of
from tests.support.inproc import Daemon
from tests.support.keys import ADMIN_KEY

A, B, C = "ws://10.0.0.1:9103/ws", "ws://10.0.0.2:9103/ws", "wss://c.example/ws"


def dead_url() -> str:
    """A port nothing listens on: the connection is refused."""
    return f"ws://127.0.0.1:{free_port()}/ws"


def test_urls_from_the_flag_the_environment_and_the_config(tmp_path: Path) -> None:
    flag = resolve_settings(" 10.0.0.1:9103 ,ws://10.0.0.2:9103/ws", "k", environ={})
    assert (flag.url, flag.others, flag.urls) == (A, (B,), (A, B))
    env = resolve_settings(api_key="k", environ={"FETCHML_URL": f"{A},{B}, https://c.example"})
    assert env.urls == (A, B, C)
    config = tmp_path / "config.toml"
    config.write_text('api_url = "http://10.0.0.2:9103 , 10.0.0.1:9103"\napi_key = "k"\n')
    assert resolve_settings(config_path=config, environ={}).urls == (B, A)
    one = resolve_settings(A, "k", environ={})
    assert (one.url, one.others, one.url_list) == (A, (), A)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{A},,{B}", r"empty URL in --url \(url=\) 'ws://10.0.0.1:9103/ws,,ws://"),
        (f"{A},", "empty URL in --url"),
        (" , ", "empty URL in --url"),
        (f"{A},ftp://b", r"invalid server URL 'ftp://b': expected ws://HOST:PORT/ws \(in --url"),
    ],
)
def test_a_bad_url_list_names_the_bad_item(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_settings(text, "k", environ={})


def test_bad_url_lists_from_the_environment_and_the_config_name_their_source(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ConfigurationError, match=r"'ws://': expected ws://HOST:PORT/ws \(in FETCHML_URL\)"
    ):
        resolve_settings(api_key="k", environ={"FETCHML_URL": f"{A}, ws://"})
    config = tmp_path / "config.toml"
    config.write_text(f'api_url = "{A},,"\n')
    with pytest.raises(ConfigurationError, match=f"empty URL in api_url of {config}"):
        resolve_settings(api_key="k", config_path=config, environ={})


def test_failover_goes_round_the_list_and_backs_off_once_every_url_failed() -> None:
    urls = Failover([A, B, C], lambda rounds: 10.0 * rounds)
    tried = []
    waits = []
    for _ in range(6):
        tried.append(urls.url)
        waits.append(urls.failed())
    assert tried == [A, B, C, A, B, C]
    assert waits == [0.0, 0.0, 10.0, 0.0, 0.0, 20.0]
    assert urls.rounds == 2
    urls.succeeded()  # A works: stay on it
    assert (urls.url, urls.failures) == (A, 0)
    assert urls.failed() == 0.0 and urls.url == B
    urls.dropped()  # B worked, then died: C at once, and counting starts afresh
    assert (urls.url, urls.failures) == (C, 0)
    single = Failover([A], lambda rounds: float(rounds))
    assert [single.failed() for _ in range(3)] == [1.0, 2.0, 3.0]  # the loop's own backoff
    assert single.url == A


async def test_a_client_connects_to_the_first_url_that_answers(daemon: Daemon) -> None:
    dead = dead_url()
    async with Client.connect(f"{dead},{daemon.url}", ADMIN_KEY) as client:
        assert client.url == daemon.url
        assert (await client.whoami()).user == "admin"
        assert client.settings.urls == (daemon.url, dead)  # its watches start here too
        commit = commit_of("failover-client")
        await client.create_experiment(commit)
        await client.log_metric(commit, "loss", 0.5, step=1)
        watch = client.watch(commit)
        page = await anext(watch)
        assert [r.step for r in page.records] == [1]
        await watch.aclose()


async def test_a_client_names_every_url_when_none_answers() -> None:
    first, second = dead_url(), dead_url()
    with pytest.raises(ConnectFailed, match="no daemon of 2 URLs answers") as caught:
        await Client.connect(f"{first},{second}", ADMIN_KEY)
    assert first in caught.value.message and second in caught.value.message


async def test_a_logger_starts_on_the_first_url_that_answers(daemon: Daemon) -> None:
    """The start check waits until every URL was tried once: a refused key on the second
    raises in the constructor (not only at the first flush)."""
    urls = f"{dead_url()},{daemon.url}"
    with pytest.raises(AuthenticationFailed):
        await asyncio.to_thread(MetricLogger, url=urls, api_key="fml_not_a_key", name="x")

    def log_three() -> str:
        with MetricLogger(url=urls, api_key=ADMIN_KEY, name="listed") as ml:
            for step in range(3):
                ml.log("loss", 1.0, step=step)
        return ml.run_id

    run_id = await asyncio.to_thread(log_three)
    async with Client.connect(daemon.url, ADMIN_KEY) as client:
        assert [p.step for p in await client.query(run_id)] == [0, 1, 2]


async def test_the_cli_with_a_url_list_uses_the_live_daemon(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = f"{dead_url()},{daemon.url}"
    argv = ["--url", urls, "--api-key", ADMIN_KEY, "whoami", "--json"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert '"user":"admin"' in capsys.readouterr().out
    bad = ["--url", f"{daemon.url},,", "--api-key", ADMIN_KEY, "whoami"]
    assert await asyncio.to_thread(cli.main, bad) == 1
    assert "error: empty URL in --url" in capsys.readouterr().err
