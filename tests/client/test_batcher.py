"""The MetricLogger's batcher alone: no socket, no thread, exact bytes."""

import math
import threading
from typing import Any

import pytest

from fetchml.client import InvalidRequest
from fetchml.client.batches import (
    FLUSH,
    MAX_POINT,
    MESSAGE_HEAD,
    Batch,
    Batcher,
    Done,
    FlushToken,
    encode_name,
    queued,
)
from fetchml.client.encoding import WIDTH
from fetchml.client.ledger import Ledger
from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.keys import key_hash
from fetchml.protocol.metrics import encode_record
from fetchml.protocol.requests import LogMetricsAt, encode_request

KEY = key_hash("k")
COMMIT = bytes(range(20))
T = 1795735109.75
"""When the test's points were logged (records carry whole seconds)."""


def make(queue: list[Any], **kwargs: int) -> Batcher:
    batcher = Batcher(queue, Ledger("test"), key_hash=KEY, commit=COMMIT, **kwargs)
    for name in queue[0::WIDTH]:
        if name != FLUSH:
            batcher.names.setdefault(name, encode_name(name))
    return batcher


def codec(*points: tuple[str, float, int] | tuple[str, float, int, float]) -> bytes:
    """The codec's own LOG_METRICS_AT for (name, value, step[, time]) points."""
    records = b"".join(
        encode_record(int(p[3] if len(p) == 4 else T), p[2], p[1], p[0].encode()) for p in points
    )
    request = LogMetricsAt(key_hash=KEY, commit_id=COMMIT, count=len(points), records=records)
    return encode_request(request)


def sent(batcher: Batcher) -> list[Batch]:
    out = []
    while (batch := batcher.next_batch()) is not None:
        out.append(batch)
    return out


def test_points_in_codec_bytes_out() -> None:
    """Default steps follow the previous step of each name; the bytes are the codec's."""
    queue = queued(
        ("loss", 0.5, 3, T), ("acc", math.nan, None, T), ("é", 1, 7, T), ("loss", 2.0, None, T)
    )
    batcher = make(queue)
    batcher.drain(slots=1, cut=True)
    (batch,) = sent(batcher)
    assert batch.count == 4 and batcher.held == 4 and not queue
    assert batch.message == codec(
        ("loss", 0.5, 3), ("acc", math.nan, 0), ("é", 1.0, 7), ("loss", 2.0, 4)
    )


def test_split_at_batch_size_and_partial_only_when_cut() -> None:
    points = [("m", float(i), i, T + i) for i in range(25)]
    batcher = make(queued(*points), batch_size=10)
    batcher.drain(slots=64, cut=False)
    assert [b.message for b in sent(batcher)] == [codec(*points[:10]), codec(*points[10:20])]
    assert batcher.held == 25  # the last 5 wait for the next cut
    batcher.drain(slots=64, cut=True)
    assert [b.message for b in sent(batcher)] == [codec(*points[20:])]


def test_drain_takes_no_more_than_the_slots_allow() -> None:
    queue = queued(*(("m", 1.0, i, T) for i in range(35)))
    batcher = make(queue, batch_size=10)
    batcher.drain(slots=2, cut=True)
    assert [b.count for b in sent(batcher)] == [10, 10] and len(queue) == 15 * WIDTH


def test_split_before_a_point_would_pass_the_message_size() -> None:
    """100-byte names cost 121 bytes a record: 7 make 39 + 847 = 886 bytes, an eighth would
    make 1,007, more than 1,000, so the batch is cut after 7."""
    names = [f"{i:03d}" + "n" * 97 for i in range(20)]
    points = [(name, float(i), i, T) for i, name in enumerate(names)]
    batcher = make(queued(*points), batch_size=1000, max_message_bytes=1000)
    batcher.drain(slots=64, cut=True)
    batches = sent(batcher)
    assert [b.count for b in batches] == [7, 7, 6]
    assert [b.message for b in batches] == [
        codec(*points[:7]),
        codec(*points[7:14]),
        codec(*points[14:]),
    ]
    assert len(batches[0].message) == MESSAGE_HEAD + 7 * 121 == 886
    # Short names fill a large batch up to the size, in several drains.
    short = [("ab", float(i), i, T) for i in range(200)]
    queue = queued(*short[:50])
    filled = make(queue, batch_size=65535, max_message_bytes=1000)
    filled.drain(slots=64, cut=False)
    queue.extend(queued(*short[50:]))
    filled.drain(slots=64, cut=True)
    filled_batches = sent(filled)
    # 41 records make 39 + 41 * 23 = 982 bytes; one more would make 1,005.
    assert [b.count for b in filled_batches] == [41, 41, 41, 41, 36]
    assert b"".join(b.records for b in filled_batches) == codec(*short)[MESSAGE_HEAD:]
    # The smallest size still carries the longest point; below it is refused.
    smallest = make(
        queued(("x" * 255, 1.0, 0, T), ("y" * 255, 2.0, 0, T)),
        max_message_bytes=MESSAGE_HEAD + MAX_POINT,
    )
    smallest.drain(slots=64, cut=True)
    assert [b.count for b in sent(smallest)] == [1, 1]
    with pytest.raises(
        InvalidRequest, match=f"max_message_bytes must be at least {MESSAGE_HEAD + MAX_POINT}"
    ):
        make([], max_message_bytes=MESSAGE_HEAD + MAX_POINT - 1)
    with pytest.raises(InvalidRequest, match=r"batch_size must be 1\.\.65535"):
        make([], batch_size=0)


def test_acks_release_the_buffer() -> None:
    queue = queued(*(("m", 1.0, i, T) for i in range(30)))
    batcher = make(queue, batch_size=10, limit=30)
    batcher.drain(slots=64, cut=True)
    first, second, third = sent(batcher)
    assert (batcher.held, batcher.room) == (30, 0)
    batcher.acknowledged(second.seq)
    assert (batcher.held, batcher.room, batcher.ledger.acknowledged) == (20, 10 * WIDTH, 10)
    batcher.acknowledged(first.seq)
    batcher.acknowledged(third.seq)
    assert (batcher.held, batcher.room, batcher.ledger.acknowledged) == (0, 30 * WIDTH, 30)
    assert batcher.idle


def test_a_rejection_counts_its_points_and_is_never_resent() -> None:
    batcher = make(queued(*(("m", 1.0, i, T) for i in range(20))), batch_size=10)
    batcher.drain(slots=64, cut=True)
    first, second = sent(batcher)
    batcher.rejected(first.seq, "experiment gone", ErrorCode.RESOURCE_NOT_FOUND)
    ledger = batcher.ledger
    assert (ledger.rejected, ledger.rejections, ledger.rejected_code) == (
        10,
        {"experiment gone": 10},
        ErrorCode.RESOURCE_NOT_FOUND,
    )
    assert batcher.held == 10
    batcher.resend_all()
    assert sent(batcher) == [second]


def test_values_the_wire_cannot_carry_are_rejected_not_sent() -> None:
    batcher = make(queued(("m", "text", 0, T), ("m", 2.0, 1, T)))  # type: ignore[arg-type]
    batcher.drain(slots=1, cut=True)
    (batch,) = sent(batcher)
    assert batch.message == codec(("m", 2.0, 1))
    assert batcher.ledger.rejected == 1 and batcher.held == 1
    assert "metric 'm' not sent" in next(iter(batcher.ledger.rejections))


def test_a_reconnect_resends_every_unacked_batch_in_order_before_new_ones() -> None:
    queue = queued(*(("m", 1.0, i, T) for i in range(40)))
    batcher = make(queue, batch_size=10)
    batcher.drain(slots=64, cut=True)
    one, two, three, four = sent(batcher)
    batcher.acknowledged(two.seq)
    queue.extend(queued(*(("m", 2.0, i, T) for i in range(40, 45))))
    batcher.resend_all()
    assert batcher.ledger.resent_batches == 3
    batcher.drain(slots=64, cut=True)
    resent = sent(batcher)
    assert resent[:3] == [one, three, four]
    assert resent[3].message == codec(*[("m", 2.0, i) for i in range(40, 45)])
    assert len(resent) == 4


def test_flush_tokens_wait_for_every_earlier_point() -> None:
    queue = queued(*(("m", 1.0, i, T) for i in range(15)))
    token = FlushToken()
    queue.extend(queued(token))
    queue.extend(queued(*(("m", 1.0, i, T) for i in range(15, 20))))
    later = FlushToken()
    queue.extend(queued(later))
    batcher = make(queue, batch_size=10)
    batcher.drain(slots=64, cut=False)
    first, partial, after = sent(batcher)  # the token cuts the partial batch before it
    assert (first.count, partial.count, after.count) == (10, 5, 5)
    batcher.acknowledged(partial.seq)
    batcher.acknowledged(after.seq)
    assert not token.done.is_set() and not later.done.is_set()
    counts_when_done: list[tuple[int, int]] = []
    ledger = batcher.ledger

    class Seen(Done):
        def set(self) -> None:  # flush() reads the counts as soon as this is set
            counts_when_done.append((ledger.acknowledged, ledger.rejected))
            super().set()

    token.done = Seen()
    batcher.rejected(first.seq, "bad", ErrorCode.INVALID_REQUEST)
    assert token.done.is_set() and later.done.is_set()
    assert counts_when_done == [(10, 10)]
    # Nothing pending: a token is done as soon as it is drained.
    idle = FlushToken()
    queue.extend(queued(idle))
    batcher.drain(slots=64, cut=False)
    assert idle.done.is_set() and batcher.idle


def test_a_token_is_not_done_by_points_logged_after_it() -> None:
    queue = queued(("m", 1.0, 0, T))
    token = FlushToken()
    queue.extend(queued(token))
    queue.extend(queued(("m", 1.0, 1, T)))
    batcher = make(queue)
    batcher.drain(slots=64, cut=True)
    before, after = sent(batcher)
    batcher.acknowledged(after.seq)
    assert not token.done.is_set()
    batcher.acknowledged(before.seq)
    assert token.done.is_set()


def test_drop_all_counts_everything_unsettled_and_releases_tokens() -> None:
    queue = queued(*(("m", 1.0, i, T) for i in range(12)))
    batcher = make(queue, batch_size=10)
    batcher.drain(slots=64, cut=False)  # 10 in a batch, 2 encoded, not cut
    token = FlushToken()
    queue.extend(queued(("m", 1.0, 12, T), token))
    assert batcher.drop_all() == 13
    assert token.done.is_set() and batcher.idle and batcher.room < 0
    assert sent(batcher) == []


def test_records_carry_the_time_of_log_golden() -> None:
    """The LOG_METRICS_AT of two points logged at 1795735109 and 1795735110.9: the
    protocol's example bytes (whole seconds, the name's length, the records verbatim)."""
    key = key_hash("fml_example_key_do_not_use")
    commit = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
    queue = queued(("loss", 1.0, 0, 1795735109.0), ("loss", 0.5, None, 1795735110.9))
    batcher = Batcher(queue, Ledger("test"), key_hash=key, commit=commit)
    batcher.names["loss"] = encode_name("loss")
    batcher.drain(slots=1, cut=True)
    (batch,) = sent(batcher)
    assert batch.message.hex() == (
        "15 5ba7dccf22514f45ae84bfb8b12cd02e 0123456789abcdef0123456789abcdef01234567 0002 "
        "000000006b08be45 00000000 3ff0000000000000 046c6f7373 "
        "000000006b08be46 00000001 3fe0000000000000 046c6f7373"
    ).replace(" ", "")


def window(batcher: Batcher, base: int) -> list[Batch]:
    batcher.base = base
    batcher.drain(slots=64, cut=True)
    return sent(batcher)


def test_acknowledgements_move_the_window_start() -> None:
    batcher = make(queued(*(("m", 1.0, i, T) for i in range(30))), batch_size=10)
    one, two, three = window(batcher, 100)
    batcher.acknowledged(one.seq)
    batcher.rejected(two.seq, "bad", ErrorCode.INVALID_REQUEST)  # never stored
    assert batcher.base == 110
    batcher.acknowledged(three.seq)
    assert batcher.base == 120


def test_reconcile_skips_whole_batches_and_a_prefix_stored_before_the_drop() -> None:
    """The run holds the first batch and 3 records of the second (their answers were lost
    with the connection): those are skipped, the rest of the window goes again."""
    points = [("m", float(i), i, T) for i in range(25)]
    batcher = make(queued(*points), batch_size=10)
    one, _, three = window(batcher, 7)
    stored = one.records + codec(*points[10:13])[MESSAGE_HEAD:]
    assert batcher.reconcile(7 + 13, stored)
    assert (batcher.ledger.acknowledged, batcher.held, batcher.base) == (13, 12, 20)
    assert batcher.ledger.recovered == 13
    batcher.resend_all()
    assert [b.message for b in sent(batcher)] == [codec(*points[13:20]), three.message]
    # Acknowledging the rest moves the window on from the count the run had.
    for seq in list(batcher.unacked):
        batcher.acknowledged(seq)
    assert (batcher.base, batcher.ledger.acknowledged, batcher.idle) == (32, 25, True)


def test_reconcile_with_nothing_stored_resends_the_window() -> None:
    batcher = make(queued(*(("m", 1.0, i, T) for i in range(20))), batch_size=10)
    batches = window(batcher, 5)
    assert batcher.reconcile(5, b"") and batcher.base == 5
    batcher.resend_all()
    assert sent(batcher) == batches and batcher.ledger.acknowledged == 0


def test_reconcile_resends_everything_when_another_writer_appended() -> None:
    """Records that are not this logger's (one differing byte: another time) mean another
    writer: nothing is skipped, and the window starts after what the run holds."""
    points = [("m", float(i), i, T) for i in range(20)]
    batcher = make(queued(*points), batch_size=10)
    batches = window(batcher, 0)
    foreign = codec(("m", 0.0, 0, T + 1))[MESSAGE_HEAD:]
    assert not batcher.reconcile(1, foreign)
    assert (batcher.base, batcher.ledger.acknowledged, batcher.held) == (1, 0, 20)
    batcher.resend_all()
    assert sent(batcher) == batches
    # More records than the window holds: someone else's too.
    again = make(queued(*points[:5]), batch_size=10)
    (only,) = window(again, 0)
    extra = only.records + codec(("m", 9.0, 9, T))[MESSAGE_HEAD:]
    assert again.in_window == 5
    assert not again.reconcile(6, extra)
    assert again.ledger.acknowledged == 0 and again.base == 6
    assert not again.reconcile(1000, None)  # not read: more records than the window
    assert again.ledger.acknowledged == 0 and again.base == 1000


def test_done_wakes_its_waiter_and_stays_set() -> None:
    """A flush token's Done: set once by the worker, waited for by the caller's thread."""
    done = Done()
    assert not done.is_set() and not done.wait(0.01)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(done.wait(60)))
    waiter.start()
    done.set()
    done.set()  # a second set changes nothing
    waiter.join(60)
    assert woke == [True]
    assert done.is_set() and done.wait(0) and done.wait(0)


def test_a_long_queue_is_taken_from_the_front_without_moving_the_rest() -> None:
    """Deleting the front of a list moves what is behind it: a drain of ten points from a
    queue of a hundred would move ninety. The points taken are deleted only once no more
    are left than were taken; meanwhile the bound counts them as gone."""
    points = [("m", float(i), i, T) for i in range(100)]
    queue = queued(*points)
    batcher = make(queue, batch_size=10, limit=200)
    for drained in range(1, 5):
        batcher.drain(slots=1, cut=False)
        assert len(queue) == 100 * WIDTH and batcher.waiting == 100 - 10 * drained
        # log() appends while len(queue) < room: while fewer than `lag` wait, `limit` held.
        assert batcher.room - len(queue) == min(200 - 100, batcher.lag - batcher.waiting) * WIDTH
    batcher.drain(slots=1, cut=False)  # 50 taken, 50 behind them: deleted now
    assert len(queue) == 50 * WIDTH and batcher.waiting == 50
    later = [("m", float(i), i, T) for i in range(100, 110)]
    queue.extend(queued(*later))
    batcher.drain(slots=64, cut=True)
    assert not queue and batcher.waiting == 0 and batcher.held == 110
    assert b"".join(b.records for b in sent(batcher)) == codec(*points, *later)[MESSAGE_HEAD:]


def test_a_claim_is_encoded_apart_and_batched_before_later_points() -> None:
    """A caller that catches up takes every waiting point (claim_all) and encodes them
    without the lock; meanwhile the worker takes nothing, so the order holds."""
    points = [("m", float(i), None, T) for i in range(30)]
    queue = queued(*points[:25])
    batcher = make(queue, batch_size=10)
    claim = batcher.claim_all()
    assert claim is not None and batcher.claim_all() is None  # one claim at a time
    queue.extend(queued(*points[25:]))
    batcher.drain(slots=64, cut=True)
    assert sent(batcher) == [] and batcher.waiting == 5 and not batcher.idle
    batcher.add_claim(claim, batcher.encode(claim))
    batcher.drain(slots=64, cut=True)
    expected = [("m", float(i), i, T) for i in range(30)]  # default steps in logging order
    assert [b.message for b in sent(batcher)] == [
        codec(*expected[:10]),
        codec(*expected[10:20]),
        codec(*expected[20:30]),
    ]
    assert batcher.held == 30 and batcher.claim is None


def test_a_claim_counts_its_rejections_and_releases_its_tokens() -> None:
    token = FlushToken()
    queue = queued(("m", 1.0, 0, T), ("m", 2.0, 2**32, T), token, ("m", 3.0, 2, T))
    batcher = make(queue, batch_size=10)
    claim = batcher.claim_all()
    assert claim is not None
    batcher.add_claim(claim, batcher.encode(claim))
    (first,) = sent(batcher)
    assert first.message == codec(("m", 1.0, 0)) and not token.done.is_set()
    assert batcher.ledger.rejected == 1 and batcher.held == 2
    batcher.acknowledged(first.seq)
    assert token.done.is_set()


def test_drop_all_counts_a_claim_being_encoded() -> None:
    """The worker fails for good while a caller encodes its claim: drop_all counts the
    claim's points, releases its tokens, and the claim is not batched afterwards."""
    token = FlushToken()
    queue = queued(("m", 1.0, 0, T), token, ("m", 2.0, 1, T))
    batcher = make(queue, batch_size=10)
    claim = batcher.claim_all()
    assert claim is not None
    queue.extend(queued(("m", 3.0, 2, T)))
    encoded = batcher.encode(claim)
    assert batcher.drop_all() == 3 and token.done.is_set()
    batcher.add_claim(claim, encoded)
    assert sent(batcher) == [] and batcher.held == 0 and batcher.idle
