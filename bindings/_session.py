"""What every binding shares about one server: its slot, its live connection, timers.

A :class:`Slot` is one configured server (address, connection state, reconnect
backoff, the bytes waiting to be written).  A :class:`Session` is one live connection to
it: a :class:`gearproto.Connection` plus the queue of requests still owed a reply, in
the order they were sent.  Replies are matched to requests with
:attr:`gearproto.Connection.answered` (the core matches them FIFO), checked by identity
against our own queue so that a reply to a request we never recorded (an ERROR for a
fire-and-forget packet) is never mistaken for another one's.

The engines (client, worker) drive sessions and talk to the binding through the small
:class:`Driver` interface; nothing here does I/O or reads a clock (``now`` is passed in).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from typing import Any, Protocol

from gearproto import NEED_DATA, Connection, Limits, RemoteProtocolError, Side
from gearproto.events import ConnectionClosed

from ._routing import ServerAddress
from ._tls import describe_tls_error

__all__ = ["BACKLOG", "Driver", "Session", "Slot", "SlotState", "Timers", "describe_error"]

#: Chunks in a slot's outbox that make the binding write before the loop comes round.
BACKLOG = 256


class SlotState(enum.Enum):
    IDLE = "idle"  # never connected
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"  # failed; waiting for its reconnect time
    CLOSED = "closed"  # the owner was closed


class Driver(Protocol):
    """What an engine asks of its binding.  No method may call back into the engine."""

    def connect(self, slot: Slot) -> None:
        """Open a connection to ``slot.address``; report ``connected``/``connect_failed``."""

    def close(self, slot: Slot, session: Session) -> None:
        """Close ``session``'s connection; the engine already forgot it."""

    def flush(self, slot: Slot) -> None:
        """``slot.outbox`` has bytes to write (called when it stops being empty)."""

    def backlog(self, slot: Slot) -> None:
        """``slot.outbox`` grew long (many sends without a pause): write now if you can.

        Lets the server start on a burst of submissions while the caller is still
        making them; a binding that cannot write from here ignores it.
        """

    def timer_changed(self) -> None:
        """The engine's next timer may now be earlier than before."""


class Slot:
    """One configured server and the state of our connection to it."""

    __slots__ = (
        "address",
        "failures",
        "index",
        "io",
        "last_error",
        "outbox",
        "queue",
        "retry_at",
        "session",
        "state",
    )

    def __init__(self, index: int, address: ServerAddress) -> None:
        self.index = index
        self.address = address
        self.state = SlotState.IDLE
        self.session: Session | None = None
        #: Consecutive failed connects (or connections lost before any reply).
        self.failures = 0
        self.retry_at = 0.0
        self.last_error: BaseException | None = None
        #: Bytes produced by the core, waiting to be written, in order.
        self.outbox: list[bytes] = []
        #: Work waiting for this slot to connect (engine-specific objects).
        self.queue: list[Any] = []
        #: Free for the binding (its transport, stream or socket).
        self.io: Any = None

    def __repr__(self) -> str:
        return f"<Slot {self.address} {self.state.value}>"

    def take_output(self) -> bytes:
        """Everything waiting to be written, as one chunk."""
        out = self.outbox
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data


class Session:
    """One live connection: the core's state machine and the replies we are owed."""

    __slots__ = ("conn", "driver", "fifo", "replied", "slot")

    def __init__(self, slot: Slot, driver: Driver, limits: Limits | None) -> None:
        self.slot = slot
        self.driver = driver
        self.conn = Connection(Side.CLIENT, limits=limits)
        #: (request event, owner) for every request still owed a reply, oldest first.
        self.fifo: deque[tuple[Any, Any]] = deque()
        #: True once the server answered anything (the connection is known to work).
        self.replied = False

    @property
    def alive(self) -> bool:
        return self.slot.session is self

    def send(self, event: Any, owner: Any = None) -> None:
        """Encode ``event`` and queue it for writing; ``owner`` receives its reply.

        Raises:
            LocalProtocolError: the event is invalid; nothing was queued.
        """
        data = self.conn.send(event)
        outbox = self.slot.outbox
        outbox.append(data)
        if owner is not None:
            self.fifo.append((event, owner))
        queued = len(outbox)
        if queued == 1:
            self.driver.flush(self.slot)
        elif queued >= BACKLOG:
            self.driver.backlog(self.slot)

    def events(self, data: bytes | None) -> list[tuple[Any, Any]]:
        """Feed ``data`` (``None`` = EOF) and return ``(event, owner)`` pairs.

        ``owner`` is the object recorded for the request the event answers, or ``None``
        for unsolicited events (WORK_*, NOOP) and for ERRORs answering fire-and-forget
        packets.  Non-fatal protocol errors (one bad packet) are skipped.

        Raises:
            RemoteProtocolError: the server broke the protocol; close the connection.
        """
        conn = self.conn
        if data is None:
            conn.receive_eof()
        else:
            conn.receive_data(data)
        out: list[tuple[Any, Any]] = []
        fifo = self.fifo
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                if exc.fatal:
                    raise
                continue
            if event is NEED_DATA or type(event) is ConnectionClosed:
                return out
            answered = conn.answered
            if answered is not None and fifo and fifo[0][0] is answered:
                out.append((event, fifo.popleft()[1]))
                self.replied = True
            else:
                out.append((event, None))


class Timers:
    """A heap of (deadline, callback argument) with lazy deletion by the caller."""

    __slots__ = ("_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._counter = itertools.count()

    def push(self, deadline: float, item: Any) -> bool:
        """Add ``item`` due at ``deadline``; True if it is now the earliest."""
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._counter), item))
        return heap[0][2] is item

    def next(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Any]:
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def __len__(self) -> int:
        return len(self._heap)


def describe_error(error: BaseException) -> str:
    """``Type: message`` for an error, in words for TLS failures."""
    name = type(error).__name__
    text = describe_tls_error(error) or str(error)
    return f"{name}: {text}" if text else name
