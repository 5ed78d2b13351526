"""The worker's numbers and texts, without processes: slots and their GPUs, the heartbeat
interval, backoff, exit lines, and the cuts of output and error texts."""

import signal

import pytest

from fetchml.client import cli
from fetchml.worker.agent import heartbeat_interval, slots
from fetchml.worker.job import Slot
from fetchml.worker.link import backoff
from fetchml.worker.output import ERROR_BYTES, error_text, text_tail
from fetchml.worker.process import exit_line


def test_each_slot_owns_a_fixed_disjoint_share_of_the_gpus() -> None:
    assert slots("box", (), 1) == [Slot("box", ())]
    assert slots("box", ("0", "1", "2", "3"), 2) == [
        Slot("box/0", ("0", "1")),
        Slot("box/1", ("2", "3")),
    ]
    assert slots("box", ("a", "b", "c"), 2) == [Slot("box/0", ("a", "b")), Slot("box/1", ("c",))]
    assert slots("box", ("0",), 1) == [Slot("box", ("0",))]
    assert [s.gpus for s in slots("box", (), 3)] == [(), (), ()]


def test_heartbeats_go_four_times_a_lease_at_least_every_second_or_every_30_s_without() -> None:
    assert heartbeat_interval(120) == 30
    assert heartbeat_interval(6) == 1.5
    assert heartbeat_interval(2) == 1
    assert heartbeat_interval(0) == 30


def test_backoff_doubles_up_to_its_maximum_with_jitter() -> None:
    for attempt, low, high in [(1, 0.75, 1), (2, 1.5, 2), (3, 3, 4), (4, 6, 8), (5, 7.5, 10)]:
        delays = {backoff(attempt, 1.0, 10.0) for _ in range(50)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1
    assert backoff(100, 1.0, 10.0) <= 10


def test_exit_lines() -> None:
    assert exit_line(0) == "exit code 0"
    assert exit_line(3) == "exit code 3"
    assert exit_line(-signal.SIGKILL) == "killed by signal 9 (SIGKILL)"
    assert exit_line(-200) == "killed by signal 200"


def test_tails_keep_the_end_cut_at_a_character_boundary() -> None:
    assert text_tail(b"abc", 10) == "abc"
    assert text_tail("aé€".encode(), 4) == "€"  # the 2-byte é would be cut: dropped
    assert text_tail("aé€".encode(), 5) == "é€"
    assert text_tail(b"x\x00y", 10) == "x\ufffdy"  # JSON texts may not hold U+0000
    bad = text_tail(b"\xff" * 10, 10)  # each bad byte is 3 bytes of U+FFFD
    assert bad == "\ufffd" * 3 and len(bad.encode()) <= 10


def test_the_error_is_the_exit_line_then_the_end_of_stderr_within_4096_bytes() -> None:
    assert error_text("exit code 3", b"") == "exit code 3"
    assert error_text("exit code 3", b"boom\n\n") == "exit code 3\nboom"
    text = error_text("exit code 1", "é".encode() * 4000 + b"END")
    assert text.startswith("exit code 1\n\u00e9") and text.endswith("END")
    assert len(text.encode()) in (ERROR_BYTES, ERROR_BYTES - 1)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--gpus", "--concurrency", "--grace", "--workdir", "--name"):
        assert option in out
    assert cli.main(["--help"]) == 0
    assert "worker" in capsys.readouterr().out
