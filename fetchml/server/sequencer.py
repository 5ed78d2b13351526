"""The ordering rules of one connection, as data: messages in, actions out, no I/O.

The connection feeds every message it reads to `receive` and performs the actions
`next_action` hands out, one at a time, calling `done` once each is over (its
response sent, or queued for a write that goes out before the connection waits for
anything else). The rules:

- Responses go out strictly in request order, one final response per request.
- A Barrier runs only once every earlier request is answered (it is handed out after
  them), and no later message is taken in until it is done, so requests on a
  connection apply in order and reads see earlier writes.
- At most `max_inflight` accepted requests are unanswered: beyond it `reading` is
  False and the connection stops reading (TCP pushes back).
- Any message after WATCH_METRICS closes with 1008, a text message with 1003, and
  `shut` with its own code; the first of these wins, nothing is accepted after it, and
  the Close comes after every request accepted before it is answered.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .dispatch import Answer, Barrier, Outcome, Pipelined, StartWatch


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Action = Pipelined | Answer | Barrier | StartWatch | Close

TEXT = Close(1003, "binary messages only")
AFTER_WATCH = Close(1008, "no requests after WATCH_METRICS")


class Sequencer:
    def __init__(self, accept: Callable[[bytes], Outcome], max_inflight: int) -> None:
        self._accept = accept
        """Decode, authenticate and dispatch one binary message (it may call `shut`)."""
        self._max = max_inflight
        self._queue: deque[Outcome] = deque()
        self._current: Action | None = None
        self._barrier = False
        self.accepted = 0
        self.answered = 0
        self.watching = False
        self.closing: Close | None = None

    @property
    def reading(self) -> bool:
        """Whether the next message may be taken in now (False while closing, while a
        barrier is queued or running, and at max_inflight unanswered requests)."""
        return (
            self.closing is None and not self._barrier and self.accepted - self.answered < self._max
        )

    def receive(self, message: bytes | str) -> None:
        if self.closing is not None:
            return  # read after the close was decided: not accepted
        if self.watching:
            self.shut(AFTER_WATCH.code, AFTER_WATCH.reason)
            return
        if isinstance(message, str):
            self.shut(TEXT.code, TEXT.reason)
            return
        outcome = self._accept(message)
        self.accepted += 1
        if isinstance(outcome, Barrier):
            self._barrier = True
        elif isinstance(outcome, StartWatch):
            self.watching = True
        self._queue.append(outcome)

    def shut(self, code: int, reason: str) -> None:
        """Accept nothing more; close with `code` once everything accepted is answered."""
        if self.closing is None:
            self.closing = Close(code, reason)

    def peek(self) -> Action | None:
        """What `next_action` would hand out now, without handing it out."""
        if self._current is not None:
            return None
        return self._queue[0] if self._queue else self.closing

    def next_action(self) -> Action | None:
        """What to do next, once the action before it is done; None: nothing yet.
        The Close, once handed out, is the last action."""
        if self._current is not None:
            return None
        if self._queue:
            self._current = self._queue.popleft()
        elif self.closing is not None:
            self._current = self.closing
        return self._current

    def done(self) -> None:
        """The action handed out last is over: its response is sent or queued to be."""
        current, self._current = self._current, None
        assert current is not None and not isinstance(current, Close)
        self.answered += 1
        if isinstance(current, Barrier):
            self._barrier = False
