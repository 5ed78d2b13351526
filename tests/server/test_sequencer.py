"""The connection's ordering rules without sockets: messages in, actions out.

Each test feeds messages to a Sequencer whose accept step maps bytes to the outcome
dispatch would give, then plays the writer: take the next action, finish it, repeat.
"""

import asyncio
from collections.abc import Callable

import pytest

from fetchml.protocol.enums import Opcode
from fetchml.protocol.requests import CreateExperiment
from fetchml.protocol.responses import Response, Success
from fetchml.server.auth import Identity
from fetchml.server.dispatch import Answer, Barrier, Outcome, Pipelined, StartWatch
from fetchml.server.sequencer import Action, Close, Sequencer
from fetchml.server.watch import Subscriber

WHO = Identity(
    user="alice",
    role="researcher",
    permissions=frozenset({"*"}),
    read_scope="all",
    write_scope="all",
)


class Peer:
    """Outcomes by message, and the barriers' runs (none until the writer calls them)."""

    def __init__(self) -> None:
        self.outcomes: dict[bytes, Outcome] = {}
        self.accepted: list[bytes] = []
        self.runs: list[str] = []

    def accept(self, message: bytes) -> Outcome:
        self.accepted.append(message)
        return self.outcomes[message]

    def answer(self, name: str) -> bytes:
        self.outcomes[name.encode()] = Answer(name.encode())
        return name.encode()

    def log(self, name: str) -> bytes:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.outcomes[name.encode()] = Pipelined(future, Opcode.LOG_METRIC, 1)
        return name.encode()

    def barrier(self, name: str) -> bytes:
        async def run() -> Response:
            self.runs.append(name)
            return Success(timestamp=0, message=name)

        req = CreateExperiment(key_hash=bytes(16), commit_id=bytes(20), job_name=name)
        self.outcomes[name.encode()] = Barrier(req, WHO, run)
        return name.encode()

    def watch(self, name: str) -> bytes:
        self.outcomes[name.encode()] = StartWatch(bytes(16), Subscriber("ab" * 20, 0, "", 1024))
        return name.encode()


def label(action: Action) -> str:
    match action:
        case Answer():
            return action.packet.decode()
        case Barrier():
            return f"barrier {action.req.job_name}"  # type: ignore[union-attr]
        case Pipelined():
            return "log"
        case StartWatch():
            return "watch"
        case Close():
            return f"close {action.code} {action.reason}"


def drain(seq: Sequencer) -> list[str]:
    """Play the writer until nothing is left: every action is finished before the next."""
    out = []
    while (action := seq.next_action()) is not None:
        out.append(label(action))
        if isinstance(action, Close):
            break
        seq.done()
    return out


@pytest.fixture
def peer() -> Peer:
    return Peer()


def sequencer(peer: Peer, max_inflight: int = 100) -> Sequencer:
    return Sequencer(peer.accept, max_inflight)


async def test_responses_in_request_order_one_at_a_time(peer: Peer) -> None:
    seq = sequencer(peer)
    for message in (peer.answer("a1"), peer.log("l1"), peer.answer("a2"), peer.log("l2")):
        seq.receive(message)
    assert seq.reading

    first = seq.next_action()
    assert first is not None and label(first) == "a1"
    assert seq.next_action() is None  # nothing more until the first is sent
    seq.done()
    assert drain(seq) == ["log", "a2", "log"]
    assert (seq.accepted, seq.answered) == (4, 4)
    assert seq.next_action() is None


async def test_barrier_runs_after_earlier_answers_and_holds_later_messages(peer: Peer) -> None:
    seq = sequencer(peer)
    seq.receive(peer.log("l1"))
    seq.receive(peer.answer("a1"))
    seq.receive(peer.barrier("b"))
    assert not seq.reading  # nothing later is taken in before the barrier is applied

    head = seq.next_action()
    assert head is not None and label(head) == "log"
    seq.done()
    assert label(seq.next_action()) == "a1"  # type: ignore[arg-type]
    assert not seq.reading
    seq.done()
    barrier = seq.next_action()
    assert isinstance(barrier, Barrier)
    assert peer.runs == []  # the sequencer never runs the work: the writer does, now
    assert not seq.reading
    seq.done()
    assert seq.reading
    seq.receive(peer.answer("a2"))
    assert drain(seq) == ["a2"]


async def test_backpressure_stops_reading_at_max_inflight(peer: Peer) -> None:
    seq = sequencer(peer, max_inflight=3)
    for i in range(3):
        assert seq.reading
        seq.receive(peer.log(f"l{i}"))
    assert not seq.reading
    assert seq.accepted - seq.answered == 3
    seq.next_action()
    assert not seq.reading  # handed out is not answered
    seq.done()
    assert seq.reading
    seq.receive(peer.log("l3"))
    assert not seq.reading
    assert drain(seq) == ["log"] * 3
    assert seq.reading


async def test_text_message_closes_1003_after_earlier_answers(peer: Peer) -> None:
    seq = sequencer(peer)
    seq.receive(peer.log("l1"))
    seq.receive(peer.barrier("b"))
    seq.receive(peer.answer("a1"))  # read while the barrier waits: still answered
    seq.receive("WHOAMI")
    seq.receive(peer.answer("a2"))  # after the close was decided: not accepted
    assert not seq.reading and seq.closing == Close(1003, "binary messages only")
    assert peer.accepted == [b"l1", b"b", b"a1"]
    assert drain(seq) == ["log", "barrier b", "a1", "close 1003 binary messages only"]
    assert seq.next_action() is None  # the close is the last action


async def test_any_message_after_watch_closes_1008(peer: Peer) -> None:
    seq = sequencer(peer)
    seq.receive(peer.log("l1"))
    seq.receive(peer.watch("w"))
    assert seq.reading  # read on: a request after the watch is a violation to report
    seq.receive(peer.answer("a1"))
    assert peer.accepted == [b"l1", b"w"]
    assert drain(seq) == ["log", "watch", "close 1008 no requests after WATCH_METRICS"]

    text = sequencer(peer)
    text.receive(peer.watch("w"))
    text.receive("text")
    assert drain(text) == ["watch", "close 1008 no requests after WATCH_METRICS"]


async def test_bad_key_shut_answers_the_failing_request_then_closes(peer: Peer) -> None:
    seq = sequencer(peer)

    def bad_key(message: bytes) -> Outcome:
        seq.shut(1008, "too many authentication failures")  # as the throttle does, mid-accept
        return Answer(b"auth error")

    seq.receive(peer.log("l1"))
    seq._accept = bad_key
    seq.receive(b"bad key")
    seq._accept = peer.accept
    seq.receive(peer.answer("a1"))  # already buffered: never accepted
    seq.shut(1001, "server shutting down")  # the first close wins
    assert not seq.reading
    assert peer.accepted == [b"l1"]
    assert drain(seq) == ["log", "auth error", "close 1008 too many authentication failures"]


async def test_shut_during_a_barrier_closes_after_it(peer: Peer) -> None:
    seq = sequencer(peer)
    seq.receive(peer.barrier("b"))
    barrier = seq.next_action()
    assert isinstance(barrier, Barrier)
    seq.shut(1001, "server shutting down")
    assert seq.next_action() is None  # the barrier is still running
    seq.done()
    assert drain(seq) == ["close 1001 server shutting down"]


def test_idle_shut_closes_at_once() -> None:
    never: Callable[[bytes], Outcome] = lambda message: pytest.fail("nothing to accept")  # noqa: E731
    seq = Sequencer(never, 4)
    seq.shut(1008, "authentication timeout")
    seq.receive(b"late")
    assert drain(seq) == ["close 1008 authentication timeout"]


async def test_peek_shows_the_next_action_without_handing_it_out(peer: Peer) -> None:
    seq = sequencer(peer)
    assert seq.peek() is None
    seq.receive(peer.answer("a1"))
    seq.receive(peer.log("l1"))
    seen = seq.peek()
    assert seen is not None and label(seen) == "a1"
    assert seq.peek() is seen and seq.answered == 0  # peeking twice hands out nothing
    assert seq.next_action() is seen
    assert seq.peek() is None  # while an action is out, nothing is next
    seq.done()
    following = seq.peek()
    assert following is not None and label(following) == "log"
    seq.shut(1001, "bye")
    assert drain(seq) == ["log", "close 1001 bye"]
    assert seq.peek() is None
