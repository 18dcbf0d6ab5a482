"""``Connection``: one side of one Gearman connection, as a pure state machine.

Bytes go in through :meth:`Connection.receive_data` / :meth:`Connection.receive_eof`
and come out of :meth:`Connection.next_event` as events; events go in through
:meth:`Connection.send` and come out as bytes.  Nothing here does I/O, sleeps,
starts threads or reads a clock.

What is tracked, and why:

* **Replies in order.**  Gearman has no request ids: JOB_CREATED, STATUS_RES,
  ECHO_RES, OPTION_RES, JOB_ASSIGN*/NO_JOB and admin replies answer requests in the
  order they were sent.  Both sides keep the queue of requests still owed a reply, so
  a client knows what each reply answers (:attr:`Connection.answered`) and a server
  cannot answer out of turn.  Requests that normally get no reply (CAN_DO, WORK_*,
  ...) may still draw an ERROR; consecutive ones are kept as one counted *run*, and
  an ERROR is attributed to a run only if its code is one such requests draw (see
  ``_CODE_BITS``).  A reply to a later request proves the run succeeded.
* **Handles.**  A client may see WORK_* only for foreground jobs it submitted (one
  count per submission, so a job coalesced twice ends twice); a worker may send
  WORK_* only for jobs assigned to it.  A server's view tracks the same from the
  other end.
* **Worker sub-state**: grabbing, sleeping, working or idle.

The receive path is the hot loop of every binding and of the job server, so the
common packet types are decoded inline in ``_parse_requests`` / ``_parse_responses``
(one list index per packet picks the branch); everything else, and every packet the
fast path has doubts about, goes through the generic, table-driven slow path.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Iterator
from typing import Any, Final, TypeAlias

from . import admin as _admin
from ._codec import HEADER, LARGE_BODY, MAX_TYPE, ParseError, decode_body, decode_slice
from ._spec import PACKETS, REQ, RES, Direction, FieldKind, PacketType, Priority
from ._types import NEED_DATA, ConnectionState, Limits, NeedData, Side, WorkerState
from .admin import AdminCommand, AdminError, AdminReply
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .events import (
    EVENT_CLASSES,
    SUBMIT_VARIANTS,
    ConnectionClosed,
    EchoReq,
    EchoRes,
    Error,
    Event,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    JobCreated,
    NoJob,
    Noop,
    OptionReq,
    OptionRes,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    Unused,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
    packet_type,
)

__all__ = [
    "NEED_DATA",
    "Connection",
    "ConnectionState",
    "Limits",
    "NeedData",
    "Side",
    "WorkerState",
]


# ------------------------------------------------------------------ request tables

_T = PacketType

#: What each request class waits for (ERROR always answers too).
_REPLIES: dict[type[Any], frozenset[type[Any]]] = {
    SubmitJob: frozenset({JobCreated}),
    SubmitReduceJob: frozenset({JobCreated}),
    SubmitJobEpoch: frozenset({JobCreated}),
    SubmitJobSched: frozenset({JobCreated}),
    GetStatus: frozenset({StatusRes}),
    GetStatusUnique: frozenset({StatusResUnique}),
    EchoReq: frozenset({EchoRes}),
    OptionReq: frozenset({OptionRes}),
    GrabJob: frozenset({JobAssign, NoJob}),
    GrabJobUniq: frozenset({JobAssignUniq, NoJob}),
    # gearmand answers GRAB_JOB_ALL with JOB_ASSIGN_UNIQ for jobs without a reducer.
    GrabJobAll: frozenset({JobAssignAll, JobAssignUniq, NoJob}),
    # Type 5 is reserved: every server answers it with ERROR.
    Unused: frozenset(),
}
_REPLY_NAME: dict[type[Any], str] = {
    EVENT_CLASSES[t]: t.name for t in PacketType if PACKETS[t].direction is Direction.RESPONSE
}
_SUBMIT_CLASSES = frozenset({SubmitJob, SubmitReduceJob, SubmitJobEpoch, SubmitJobSched})
_GRAB_CLASSES = frozenset({GrabJob, GrabJobUniq, GrabJobAll})
_ASSIGN_CLASSES = frozenset({JobAssign, JobAssignUniq, JobAssignAll})
_WORK_CLASSES = frozenset(
    {WorkStatus, WorkComplete, WorkFail, WorkException, WorkData, WorkWarning}
)

_WORK_TYPES = frozenset(
    {
        _T.WORK_STATUS,
        _T.WORK_COMPLETE,
        _T.WORK_FAIL,
        _T.WORK_EXCEPTION,
        _T.WORK_DATA,
        _T.WORK_WARNING,
    }
)
_TERMINAL = frozenset({_T.WORK_COMPLETE, _T.WORK_FAIL, _T.WORK_EXCEPTION})

# Requests that get no reply unless they fail belong to one of two groups; an ERROR
# is attributed to a run of them only if its code is one their group draws.  The
# codes are gearmand's: JOB_NOT_FOUND answers WORK_* for a job the worker does not
# hold; the others answer CAN_DO & co. (ALL_YOURS draws INVALID_COMMAND; a server
# may refuse a too-long function or a bad client id or timeout).  Every other code
# (QUEUE_ERROR, UNKNOWN_OPTION, ...) answers a request that expects a reply.
_WORK_BIT = 1
_OTHER_BIT = 2
_CODE_BITS: dict[bytes, int] = {
    ErrorCode.JOB_NOT_FOUND: _WORK_BIT,
    ErrorCode.INVALID_ARGUMENT: _WORK_BIT | _OTHER_BIT,
    ErrorCode.INVALID_COMMAND: _OTHER_BIT,
    ErrorCode.ARGUMENT_TOO_LARGE: _OTHER_BIT,
    ErrorCode.PERMISSION_DENIED: _OTHER_BIT,
}

# gearmand's texts for ERROR JOB_NOT_FOUND, which differ by packet type.
_NOT_FOUND_TEXT: dict[int, bytes] = {
    _T.WORK_DATA: b"Job does not exist on server",
    _T.WORK_WARNING: b"Job does not exist on server",
    _T.WORK_EXCEPTION: b"An exception was received for a job that does not exist",
}
_NOT_FOUND_DEFAULT = b"Job given in work result not found"
_TOO_LARGE_TEXT = {
    FieldKind.UNIQUE: b"Unique value too large",
    FieldKind.HANDLE: b"Job handle too large",
    FieldKind.FUNCTION: b"Function name too large",
    FieldKind.NUMBER: b"Number too large",
    FieldKind.TEXT: b"Argument too large",
}


# A run of consecutive requests that get no reply unless they fail is one queue
# entry: a plain list (built inline by the parse loop, where a constructor call
# would cost more than the rest of the packet) of
#   [count, work, last, work_last, other_last]
# -- ``work`` of the ``count`` requests are WORK_*; the latest request of each group
# is what an ERROR attributed to the run reports as answered.  Requests and admin
# commands are tuples and _Owed is its own class, so ``type(entry) is list`` tells
# a run apart.
_COUNT, _WORK, _LAST, _WORK_LAST, _OTHER_LAST = range(5)


def _run_mask(run: list[Any]) -> int:
    """Which groups of ERROR codes a run may draw."""
    return (_WORK_BIT if run[_WORK] else 0) | (_OTHER_BIT if run[_COUNT] > run[_WORK] else 0)


class _Owed:
    """A request the server-side core refused: the server owes an ERROR for it."""

    __slots__ = ("hint",)

    def __init__(self, hint: Error | AdminError | None) -> None:
        self.hint = hint

    def __repr__(self) -> str:
        return f"<refused request; {self.hint!r} is owed>"


# ------------------------------------------------------------------ fast-path tables

_HEADER_QI = struct.Struct(">QI")
_pack_header = HEADER.pack
#: SUBMIT_JOB* packet type by (priority, background), for the client's fast path.
_FAST_SUBMIT_TYPES: dict[tuple[int, bool], PacketType] = {
    key: ptype for ptype, key in SUBMIT_VARIANTS.items()
}
#: WORK_* events with a handle and a payload, for the worker's fast path:
#: (packet type, whether it ends the job).
_FAST_WORK: dict[type[Any], tuple[PacketType, bool]] = {
    WorkComplete: (PacketType.WORK_COMPLETE, True),
    WorkException: (PacketType.WORK_EXCEPTION, True),
    WorkData: (PacketType.WORK_DATA, False),
    WorkWarning: (PacketType.WORK_WARNING, False),
}
_REQ_BASE = int.from_bytes(REQ, "big") << 32
_RES_BASE = int.from_bytes(RES, "big") << 32

# Branch numbers of the inline decoders, indexed by packet type (0 = slow path).
# The parse loops compare against these numbers as literals.
(
    _S_WORK,
    _S_SUBMIT,
    _S_GRAB,
    _S_SLEEP,
    _S_ECHO,
    _S_ABILITY,
    _S_ONE_FIELD,
    _S_WORK_STATUS,
    _S_WORK_FAIL,
    _S_CLIENT_ID,
    _S_RESET,
) = range(1, 12)
(
    _C_CREATED,
    _C_WORK,
    _C_NOOP,
    _C_NOJOB,
    _C_ASSIGN,
    _C_ECHO,
    _C_WORK_STATUS,
    _C_WORK_FAIL,
    _C_STATUS,
    _C_OPTION,
) = range(1, 11)
assert MAX_TYPE == 42, "the parse loops test 0 < type < 43"


def _branches(table: dict[PacketType, int]) -> list[int]:
    return [table.get(PacketType(t), 0) if t else 0 for t in range(MAX_TYPE + 1)]


_SERVER_BRANCH = _branches(
    {
        **dict.fromkeys(SUBMIT_VARIANTS, _S_SUBMIT),
        _T.WORK_COMPLETE: _S_WORK,
        _T.WORK_DATA: _S_WORK,
        _T.WORK_WARNING: _S_WORK,
        _T.WORK_EXCEPTION: _S_WORK,
        _T.GRAB_JOB: _S_GRAB,
        _T.GRAB_JOB_UNIQ: _S_GRAB,
        _T.GRAB_JOB_ALL: _S_GRAB,
        _T.ECHO_REQ: _S_ECHO,
        _T.CAN_DO: _S_ABILITY,
        _T.CANT_DO: _S_ABILITY,
        _T.PRE_SLEEP: _S_SLEEP,
        _T.GET_STATUS: _S_ONE_FIELD,
        _T.GET_STATUS_UNIQUE: _S_ONE_FIELD,
        _T.OPTION_REQ: _S_ONE_FIELD,
        _T.WORK_STATUS: _S_WORK_STATUS,
        _T.WORK_FAIL: _S_WORK_FAIL,
        _T.SET_CLIENT_ID: _S_CLIENT_ID,
        _T.RESET_ABILITIES: _S_RESET,
    }
)
_CLIENT_BRANCH = _branches(
    {
        _T.JOB_CREATED: _C_CREATED,
        _T.WORK_COMPLETE: _C_WORK,
        _T.WORK_DATA: _C_WORK,
        _T.WORK_WARNING: _C_WORK,
        _T.WORK_EXCEPTION: _C_WORK,
        _T.NOOP: _C_NOOP,
        _T.NO_JOB: _C_NOJOB,
        _T.JOB_ASSIGN: _C_ASSIGN,
        _T.JOB_ASSIGN_UNIQ: _C_ASSIGN,
        _T.JOB_ASSIGN_ALL: _C_ASSIGN,
        _T.ECHO_RES: _C_ECHO,
        _T.WORK_STATUS: _C_WORK_STATUS,
        _T.WORK_FAIL: _C_WORK_FAIL,
        _T.STATUS_RES: _C_STATUS,
        _T.OPTION_RES: _C_OPTION,
    }
)
# Per type: the event class; the priority/background of a SUBMIT_JOB variant; whether
# a WORK_* ends its job; how many NULs an assignment has; the singletons of bodiless
# packets.
_CLASS: list[Any] = [None] + [EVENT_CLASSES[t] for t in PacketType]
_PRIORITY_OF: list[Any] = [
    SUBMIT_VARIANTS[PacketType(t)][0] if t and t in SUBMIT_VARIANTS else None
    for t in range(MAX_TYPE + 1)
]
_BACKGROUND_OF: list[Any] = [
    SUBMIT_VARIANTS[PacketType(t)][1] if t and t in SUBMIT_VARIANTS else None
    for t in range(MAX_TYPE + 1)
]
_ENDS_JOB = [t in _TERMINAL for t in range(MAX_TYPE + 1)]
_ASSIGN_NULS = [PACKETS[PacketType(t)].nul_terminated if t else 0 for t in range(MAX_TYPE + 1)]
_SINGLETON: list[Any] = [None] + [
    EVENT_CLASSES[t]() if not PACKETS[t].fields else None for t in PacketType
]
_NOOP = Noop()
_NO_JOB = NoJob()

_tuple_new = tuple.__new__

# How many ended jobs a client remembers, so that late WORK_* for them pass.
_FINISHED_KEPT = 1024

# Fields kinds whose length is checked on receive (numbers are checked separately).
_LENGTH_KINDS = frozenset({FieldKind.FUNCTION, FieldKind.UNIQUE, FieldKind.HANDLE, FieldKind.TEXT})

# On the wire a number field has at most this many characters after parse_int()
# (30 digits and a sign); a server may relay any number it received.
_MAX_RELAYED_NUMBER = 32

_FieldCheck: TypeAlias = tuple[int, int, str, FieldKind, bool]


_CHECKS_CACHE: dict[Limits, tuple[list[tuple[_FieldCheck, ...]], list[int]]] = {}


def _field_checks(limits: Limits) -> tuple[list[tuple[_FieldCheck, ...]], list[int]]:
    """Per packet type: (index, limit, name, kind, is_tail) for every field, and the
    limit of the only field of one-field packets (for the fast paths).

    Built once per distinct ``Limits`` (they are frozen), not once per connection.
    """
    tables = _CHECKS_CACHE.get(limits)
    if tables is None:
        if len(_CHECKS_CACHE) > 64:
            _CHECKS_CACHE.clear()
        checks = _build_field_checks(limits)
        single = [row[0][1] if len(row) == 1 else 0 for row in checks]
        tables = _CHECKS_CACHE[limits] = (checks, single)
    return tables


def _build_field_checks(limits: Limits) -> list[tuple[_FieldCheck, ...]]:
    table: list[tuple[_FieldCheck, ...]] = [()]
    for ptype in PacketType:
        spec = PACKETS[ptype]
        last = len(spec.fields) - 1
        table.append(
            tuple(
                (i, limits.for_kind(f.kind), f.name, f.kind, i == last)
                for i, f in enumerate(spec.fields)
            )
        )
    return table


def _is_background(request: Any) -> bool:
    cls = type(request)
    if cls is SubmitJob or cls is SubmitReduceJob:
        return bool(request.background)
    # SUBMIT_JOB_EPOCH and SUBMIT_JOB_SCHED jobs run later: nobody waits for them.
    return True


def _describe(request: Any) -> str:
    if type(request) in _EVENT_CLASS_SET:
        return packet_type(request).name
    return type(request).__name__


#: Anything next_event() returns, and so anything a relay may hand to send().
AnyEvent: TypeAlias = Event | AdminCommand | AdminReply


class Connection:
    """One side of a Gearman connection, as a sans-IO state machine.

    Args:
        side: :attr:`Side.CLIENT` for clients and workers (they send ``\\0REQ``),
            :attr:`Side.SERVER` for a server's view of one connected peer.
        limits: size limits for both directions (default :class:`Limits`).

    Typical use by an I/O binding::

        conn = Connection(Side.CLIENT)
        sock.sendall(conn.send(SubmitJob(b"reverse", b"", b"hello")))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data) if data else conn.receive_eof()
                continue
            ...

    Attributes:
        side: the side given to the constructor.
        limits: the limits given to the constructor.
        answered: the request that the event last returned by :meth:`next_event`
            answers (the packet event or admin command that was sent), or ``None``
            if it answers nothing (WORK_*, NOOP, a request received by a server).
    """

    __slots__ = (
        "_answers",
        "_checks",
        "_chunks",
        "_client_handles",
        "_dead",
        "_eof",
        "_error",
        "_field_limit",
        "_finished",
        "_grabs",
        "_line_limit",
        "_line_wait",
        "_listing",
        "_listing_size",
        "_max_packet",
        "_need",
        "_our_magic",
        "_parse_loop",
        "_pending",
        "_raise_next",
        "_ready",
        "_ri",
        "_size",
        "_sleeping",
        "_state",
        "_their_magic",
        "_worker_handles",
        "answered",
        "limits",
        "side",
    )

    def __init__(self, side: Side, *, limits: Limits | None = None) -> None:
        if not isinstance(side, Side):
            raise TypeError(f"side must be Side.CLIENT or Side.SERVER, not {side!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, not {type(limits).__name__}")
        self.side: Final = side
        self.limits: Final = limits if limits is not None else Limits()
        self._our_magic = REQ if side is Side.CLIENT else RES
        self._their_magic = RES if side is Side.CLIENT else REQ
        # Per type: the checks of every field, and the limit of a packet's only field.
        self._checks, self._field_limit = _field_checks(self.limits)
        # The receive loop of this side: compiled (gearproto._speedups) or Python.
        speedups = _speedups
        if side is Side.SERVER:
            self._parse_loop: Any = (
                Connection._parse_requests if speedups is None else speedups.parse_requests
            )
        else:
            self._parse_loop = (
                Connection._parse_responses if speedups is None else speedups.parse_responses
            )
        self._max_packet = self.limits.max_packet_size
        # A server reads command lines (gearmand: 8 KiB); a client reads reply
        # lines, and a `workers` row can be much longer than that.
        self._line_limit = (
            self.limits.max_line if side is Side.SERVER else self.limits.max_packet_size
        )
        # Receive buffer: the unparsed tail plus chunks received since, and how many
        # bytes must be present before parsing can make progress (so a large packet
        # arriving in small pieces is joined once, not once per piece).
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 1
        # True while the buffer holds the start of a text line without its "\n":
        # only a chunk with a newline (or one that passes the limit) makes progress.
        self._line_wait = False
        self._eof = False
        # After a fatal error nothing more is buffered or parsed.
        self._dead = False
        # Events parsed and not yet returned: ready[ri:], plus the request each
        # reply answers, keyed by its index in ready.
        self._ready: list[Any] = []
        self._ri = 0
        self._answers: dict[int, Any] = {}
        # The error to raise once the events parsed before it are returned.
        self._raise_next: RemoteProtocolError | None = None
        self._state = ConnectionState.OPEN
        self._error: RemoteProtocolError | None = None
        # An admin listing being read (client side): its rows so far.
        self._listing: list[bytes] | None = None
        self._listing_size = 0
        # Requests owed a reply, oldest first: request events, admin commands,
        # runs (lists) and, on a server, _Owed entries.
        self._pending: deque[Any] = deque()
        # Client role: handles of foreground jobs it may see WORK_* for, one count
        # per submission.  Worker role: handles it may send WORK_* for.  A server's
        # view tracks the same for the peer.
        self._client_handles: dict[bytes, int] = {}
        self._worker_handles: set[bytes] = set()
        # Handles that ended recently: late WORK_* for them (gearmand forwards a
        # cancelled job's result after its WORK_FAIL) are delivered, not errors.
        self._finished: dict[bytes, None] = {}
        self._grabs = 0
        self._sleeping = False
        self.answered: Any = None

    # ----------------------------------------------------------------- inspection

    def __repr__(self) -> str:
        return (
            f"<Connection {self.side.value} {self._state.value}"
            f" pending_replies={self.pending_replies} worker={self.worker_state.value}"
            f" buffered={self._size}>"
        )

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life cycle."""
        return self._state

    @property
    def pending_replies(self) -> int:
        """How many replies are still owed on this connection.

        Requests that get no reply unless they fail (CAN_DO, WORK_*, ...) do not count.
        """
        return sum(1 for p in self._pending if type(p) is not list)

    @property
    def worker_state(self) -> WorkerState:
        """What the worker role of this connection is doing (from either side's view)."""
        if self._grabs:
            return WorkerState.GRABBING
        if self._sleeping:
            return WorkerState.SLEEPING
        if self._worker_handles:
            return WorkerState.WORKING
        return WorkerState.IDLE

    @property
    def assigned_handles(self) -> frozenset[bytes]:
        """Handles of jobs assigned to the worker role and not yet finished."""
        return frozenset(self._worker_handles)

    @property
    def client_handles(self) -> frozenset[bytes]:
        """Handles of foreground jobs the client role is waiting on."""
        return frozenset(self._client_handles)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return self._size

    @property
    def implementation(self) -> str:
        """``"c"`` if this connection parses with the compiled accelerator, else ``"python"``.

        Both behave identically; see :data:`gearproto.IMPLEMENTATION`.
        """
        loop = self._parse_loop
        python = loop is Connection._parse_requests or loop is Connection._parse_responses
        return "python" if python else "c"

    # -------------------------------------------------------------------- receive

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer.

        An empty chunk is ignored (it is not EOF: call :meth:`receive_eof`).  After a
        fatal protocol error the bytes are dropped, so a misbehaving peer cannot make
        the connection buffer without bound.

        Raises:
            LocalProtocolError: :meth:`receive_eof` was already called.
        """
        if self._eof:
            raise LocalProtocolError("receive_data() called after receive_eof()")
        if not data or self._dead:
            return
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._line_wait and (b"\n" in chunk or self._size >= self._line_limit):
            self._need = 0

    def receive_eof(self) -> None:
        """The peer closed its side.  Events buffered before that are returned first."""
        self._eof = True

    def next_event(self) -> Event | AdminCommand | AdminReply | NeedData:
        """The next event from the peer, or :data:`NEED_DATA`.

        After the peer closed the connection (and every event was returned) this
        returns :class:`~gearproto.events.ConnectionClosed`.  Sets :attr:`answered`.

        Raises:
            RemoteProtocolError: the peer broke the protocol.  If ``fatal`` is false
                exactly one packet or line was refused and you may go on calling
                ``next_event()``; otherwise the connection must be closed.
        """
        ri = self._ri
        ready = self._ready
        if ri < len(ready):
            self._ri = ri + 1
            answers = self._answers
            self.answered = answers.pop(ri) if ri in answers else None
            return ready[ri]  # type: ignore[no-any-return]
        return self._next_event_slow()

    def next_events(self) -> list[Event | AdminCommand | AdminReply]:
        """Every event available now, as a list (empty if more data is needed).

        The fast way for a server to drain a connection: one call per read instead of
        one per event.  :attr:`answered` is set for the last event of the list only,
        so a client that needs to know what each reply answers uses
        :meth:`next_event` instead.  ConnectionClosed is not included; call
        :meth:`next_event` when this returns an empty list after EOF.

        Raises:
            RemoteProtocolError: as :meth:`next_event`, if no event comes before it.
        """
        ready = self._ready
        if self._ri >= len(ready):
            event = self._next_event_slow()
            if event is NEED_DATA or type(event) is ConnectionClosed:
                return []
            ready = self._ready
            self._ri -= 1
        out = ready[self._ri :] if self._ri else ready
        last = len(ready) - 1
        self.answered = self._answers.get(last)
        self._ready = []
        self._ri = 0
        self._answers = {}
        return out

    def events(self) -> Iterator[Event | AdminCommand | AdminReply]:
        """Iterate over the events available now (stops at :data:`NEED_DATA`).

        :attr:`answered` is set for each event as it is yielded.
        """
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event

    def _next_event_slow(self) -> Event | AdminCommand | AdminReply | NeedData:
        if self._ready:
            self._ready = []
            self._ri = 0
            self._answers = {}
        self.answered = None
        error = self._raise_next
        if error is None:
            if self._state is not ConnectionState.OPEN:
                return self._after_close()
            self._parse()
            if self._ready:
                return self.next_event()
            error = self._raise_next
        if error is not None:
            self._raise_next = None
            if error.fatal:
                self._state = ConnectionState.ERROR
                self._error = error
            raise error
        if self._eof:
            return self._at_eof()
        return NEED_DATA

    def _after_close(self) -> ConnectionClosed:
        if self._state is ConnectionState.CLOSED:
            return ConnectionClosed()
        raise RemoteProtocolError(
            f"the connection already failed: {self._error}",
            hint=self._error.hint if self._error is not None else None,
        )

    def _at_eof(self) -> ConnectionClosed:
        problem = None
        if self._listing is not None:
            problem = f"after {len(self._listing)} row(s) of an admin listing"
        elif self._size:
            head = b"".join(self._chunks)
            if head[0] == 0 and len(head) >= 12:
                size = _HEADER_QI.unpack_from(head)[1]
                problem = f"after {len(head) - 12} of {size} body bytes of a packet"
            elif head[0] == 0:
                problem = f"after {len(head)} of the 12 bytes of a packet header"
            else:
                problem = f"in the middle of a text line ({len(head)} bytes without newline)"
        if problem is not None:
            self._chunks = []
            self._size = 0
            self._listing = None
            self._state = ConnectionState.ERROR
            self._error = RemoteProtocolError(f"the peer closed the connection {problem}")
            raise self._error
        self._state = ConnectionState.CLOSED
        return ConnectionClosed()

    # -------------------------------------------------------------- receive: errors

    def _fail(self, message: str, code: bytes, text: bytes, *, fatal: bool) -> None:
        """Queue a RemoteProtocolError for a binary packet, after the events before it."""
        hint = Error(code, text) if self.side is Side.SERVER else None
        self._queue_error(message, hint, fatal)

    def _queue_error(self, message: str, hint: Error | AdminError | None, fatal: bool) -> None:
        if not fatal and self.side is Side.SERVER:
            # The server now owes this peer an ERROR in the refused request's place.
            self._pending.append(_Owed(hint))
        self._raise_next = RemoteProtocolError(message, hint=hint, fatal=fatal)
        if fatal:
            self._dead = True

    # -------------------------------------------------------------- receive: parse

    def _parse(self) -> None:
        """Turn the complete packets and lines in the buffer into ready events.

        Stops at the first error, which is raised once the events before it have
        been returned; parsing resumes after it on the next call.
        """
        if self._size < self._need or self._dead:
            return
        chunks = self._chunks
        src = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        pos = self._parse_loop(self, src)
        self._line_wait = False
        if self._dead:
            self._chunks = []
            self._size = 0
            return
        rest = len(src) - pos
        if rest == 0:
            self._chunks = []
            self._size = 0
            self._need = 1
            return
        tail = src[pos:] if pos else src
        self._chunks = [tail]
        self._size = rest
        if self._raise_next is not None:
            self._need = 0  # more may be parseable right after the error
        elif tail[0] == 0 and self._listing is None:
            # A header that reached this point was valid: wait for the whole packet.
            self._need = 12 if rest < 12 else 12 + _HEADER_QI.unpack_from(tail)[1]
        else:
            self._need = 1 << 62
            self._line_wait = True

    def _parse_requests(self, src: bytes) -> int:
        """Server side: parse requests from ``src``; returns the position reached.

        The branch numbers are literals (see ``_SERVER_BRANCH``) and every table is
        a local: in this loop a global lookup costs more than the comparison.  The
        run of requests without reply being read is kept in locals and written to
        the queue when something else is queued, or at the end.
        """
        n = len(src)
        pos = 0
        unpack = _HEADER_QI.unpack_from
        struct_error = struct.error
        base = _REQ_BASE
        branch_of = _SERVER_BRANCH
        classes = _CLASS
        priority_of = _PRIORITY_OF
        bg_of = _BACKGROUND_OF
        ends_job = _ENDS_JOB
        singletons = _SINGLETON
        emit = self._ready.append
        owe = self._pending.append
        worker_handles = self._worker_handles
        limits = self.limits
        max_function = limits.max_function
        max_unique = limits.max_unique
        # Longer numbers take the slow path, where parse_int() reads them (capped).
        max_digits = min(limits.max_number, 30)
        field_limit = self._field_limit
        fast_max = min(LARGE_BODY - 1, self._max_packet)
        new = _tuple_new
        run_count = run_work = 0
        run_last: Any = None
        run_wlast: Any = None
        run_olast: Any = None
        pending = self._pending
        if pending and type(pending[-1]) is list:
            # Continue the run left at the end of the queue, so that every run this
            # loop writes is a new entry.
            run_count, run_work, run_last, run_wlast, run_olast = pending.pop()
        event: Any
        while pos < n:
            try:
                key, size = unpack(src, pos)
            except struct_error:  # less than a header left
                key = size = 0
            ptype = key - base  # magic and type in one test: 1..42 only for \0REQ
            if 0 < ptype < 43 and size <= fast_max:
                end = pos + 12 + size
                if end > n:
                    break
                branch = branch_of[ptype]
                if branch == 1:  # WORK_COMPLETE, WORK_DATA, WORK_WARNING, WORK_EXCEPTION
                    handle, nul, data = src[pos + 12 : end].partition(b"\0")
                    if nul and handle in worker_handles:
                        run_last = run_wlast = new(classes[ptype], (handle, data))
                        if ends_job[ptype]:
                            worker_handles.discard(handle)
                        run_count += 1
                        run_work += 1
                        emit(run_last)
                        pos = end
                        continue
                elif branch == 2:  # SUBMIT_JOB and its five variants
                    parts = src[pos + 12 : end].split(b"\0", 2)
                    if len(parts) == 3:  # else a NUL is missing: the slow path reports it
                        function, unique, data = parts
                        if len(function) <= max_function and len(unique) <= max_unique:
                            event = new(
                                SubmitJob,
                                (function, unique, data, priority_of[ptype], bg_of[ptype]),
                            )
                            if run_count:
                                owe([run_count, run_work, run_last, run_wlast, run_olast])
                                run_count = run_work = 0
                            owe(event)
                            emit(event)
                            pos = end
                            continue
                elif branch == 3:  # GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL
                    event = singletons[ptype]
                    if run_count:
                        owe([run_count, run_work, run_last, run_wlast, run_olast])
                        run_count = run_work = 0
                    owe(event)
                    self._grabs += 1
                    self._sleeping = False
                    emit(event)
                    pos = end
                    continue
                elif branch == 4:  # PRE_SLEEP
                    run_last = run_olast = singletons[ptype]
                    self._sleeping = True
                    run_count += 1
                    emit(run_last)
                    pos = end
                    continue
                elif branch == 5:  # ECHO_REQ
                    event = new(EchoReq, (src[pos + 12 : end],))
                    if run_count:
                        owe([run_count, run_work, run_last, run_wlast, run_olast])
                        run_count = run_work = 0
                    owe(event)
                    emit(event)
                    pos = end
                    continue
                elif branch == 6:  # CAN_DO, CANT_DO
                    if size <= max_function:
                        run_last = run_olast = new(classes[ptype], (src[pos + 12 : end],))
                        run_count += 1
                        emit(run_last)
                        pos = end
                        continue
                elif branch == 7:  # GET_STATUS, GET_STATUS_UNIQUE, OPTION_REQ
                    if size <= field_limit[ptype]:
                        event = new(classes[ptype], (src[pos + 12 : end],))
                        if run_count:
                            owe([run_count, run_work, run_last, run_wlast, run_olast])
                            run_count = run_work = 0
                        owe(event)
                        emit(event)
                        pos = end
                        continue
                elif branch == 8:  # WORK_STATUS
                    parts = src[pos + 12 : end].split(b"\0", 2)
                    if len(parts) == 3:
                        handle, numerator, denominator = parts
                        if (
                            handle in worker_handles
                            and numerator.isdigit()
                            and denominator.isdigit()
                            and len(numerator) <= max_digits
                            and len(denominator) <= max_digits
                        ):
                            run_last = run_wlast = new(
                                WorkStatus, (handle, int(numerator), int(denominator))
                            )
                            run_count += 1
                            run_work += 1
                            emit(run_last)
                            pos = end
                            continue
                elif branch == 9:  # WORK_FAIL
                    handle = src[pos + 12 : end]
                    if handle in worker_handles:
                        worker_handles.discard(handle)
                        run_last = run_wlast = new(WorkFail, (handle,))
                        run_count += 1
                        run_work += 1
                        emit(run_last)
                        pos = end
                        continue
                elif branch == 10:  # SET_CLIENT_ID
                    if size <= field_limit[ptype]:
                        run_last = run_olast = new(classes[ptype], (src[pos + 12 : end],))
                        run_count += 1
                        emit(run_last)
                        pos = end
                        continue
                elif branch == 11:  # RESET_ABILITIES
                    run_last = run_olast = singletons[ptype]
                    run_count += 1
                    emit(run_last)
                    pos = end
                    continue
            if run_count:
                self._push_run(run_last, run_count, run_work, run_wlast, run_olast)
                run_count = run_work = 0
            pos, go_on = self._slow_request(src, pos)
            if not go_on:
                break
        if run_count:
            self._push_run(run_last, run_count, run_work, run_wlast, run_olast)
        return pos

    def _parse_responses(self, src: bytes) -> int:
        """Client side: parse replies from ``src``; returns the position reached.

        Same shape as :meth:`_parse_requests`, with ``_CLIENT_BRANCH``.
        """
        n = len(src)
        pos = 0
        unpack = _HEADER_QI.unpack_from
        struct_error = struct.error
        base = _RES_BASE
        branch_of = _CLIENT_BRANCH
        classes = _CLASS
        ends_job = _ENDS_JOB
        assign_nuls = _ASSIGN_NULS
        submit_classes = _SUBMIT_CLASSES
        grab_classes = _GRAB_CLASSES
        replies_to = _REPLIES
        ready = self._ready
        emit = ready.append
        answers = self._answers
        pending = self._pending
        client_handles = self._client_handles
        limits = self.limits
        max_handle = limits.max_handle
        max_function = limits.max_function
        max_unique = limits.max_unique
        max_text = limits.max_text
        finished = self._finished
        finished_max = 2 * _FINISHED_KEPT
        fast_max = min(LARGE_BODY - 1, self._max_packet)
        new = _tuple_new
        while pos < n:
            if self._listing is not None:
                key = size = 0  # every byte of a listing is text
            else:
                try:
                    key, size = unpack(src, pos)
                except struct_error:  # less than a header left
                    key = size = 0
            ptype = key - base
            if 0 < ptype < 43 and size <= fast_max:
                end = pos + 12 + size
                if end > n:
                    break
                branch = branch_of[ptype]
                if branch == 2:  # WORK_COMPLETE, WORK_DATA, WORK_WARNING, WORK_EXCEPTION
                    handle, nul, data = src[pos + 12 : end].partition(b"\0")
                    count = client_handles.get(handle) if nul else None
                    if count is not None:
                        if ends_job[ptype]:
                            if count == 1:
                                del client_handles[handle]
                                finished[handle] = None
                                if len(finished) > finished_max:
                                    self._trim_finished()
                                    finished = self._finished
                            else:
                                client_handles[handle] = count - 1
                        emit(new(classes[ptype], (handle, data)))
                        pos = end
                        continue
                elif branch == 3:  # NOOP
                    self._sleeping = False
                    emit(_NOOP)
                    pos = end
                    continue
                elif branch == 7:  # WORK_STATUS
                    parts = src[pos + 12 : end].split(b"\0", 2)
                    if len(parts) == 3:
                        handle, numerator, denominator = parts
                        if (
                            handle in client_handles
                            and numerator.isdigit()
                            and denominator.isdigit()
                            and len(numerator) <= 30
                            and len(denominator) <= 30
                        ):
                            emit(new(WorkStatus, (handle, int(numerator), int(denominator))))
                            pos = end
                            continue
                elif branch == 8:  # WORK_FAIL
                    handle = src[pos + 12 : end]
                    count = client_handles.get(handle)
                    if count is not None:
                        if count == 1:
                            del client_handles[handle]
                            finished[handle] = None
                            if len(finished) > finished_max:
                                self._trim_finished()
                                finished = self._finished
                        else:
                            client_handles[handle] = count - 1
                        emit(new(WorkFail, (handle,)))
                        pos = end
                        continue
                elif branch and pending:  # a reply to the oldest request owed one
                    request = pending[0]
                    if type(request) is list:
                        # Requests without reply before it: a reply proves they succeeded.
                        while pending and type(pending[0]) is list:
                            pending.popleft()
                        request = pending[0] if pending else None
                    rclass = type(request)
                    if branch == 1:  # JOB_CREATED
                        if rclass in submit_classes and size <= max_handle:
                            pending.popleft()
                            handle = src[pos + 12 : end]
                            # A foreground submission (inline _is_background).
                            if (rclass is SubmitJob and not request[4]) or (
                                rclass is SubmitReduceJob and not request[5]
                            ):
                                client_handles[handle] = client_handles.get(handle, 0) + 1
                                if finished:
                                    finished.pop(handle, None)
                            answers[len(ready)] = request
                            emit(new(JobCreated, (handle,)))
                            pos = end
                            continue
                    elif branch == 5:  # JOB_ASSIGN, JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL
                        cls = classes[ptype]
                        if rclass in grab_classes and cls in replies_to[rclass]:
                            nuls = assign_nuls[ptype]
                            parts = src[pos + 12 : end].split(b"\0", nuls)
                            if (
                                len(parts) == nuls + 1
                                and len(parts[0]) <= max_handle
                                and len(parts[1]) <= max_function
                                and (nuls == 2 or len(parts[2]) <= max_unique)
                                and (nuls < 4 or len(parts[3]) <= max_function)
                            ):
                                pending.popleft()
                                self._grabs -= 1
                                self._worker_handles.add(parts[0])
                                answers[len(ready)] = request
                                emit(new(cls, parts))
                                pos = end
                                continue
                    elif branch == 4:  # NO_JOB
                        if rclass in grab_classes:
                            pending.popleft()
                            self._grabs -= 1
                            answers[len(ready)] = request
                            emit(_NO_JOB)
                            pos = end
                            continue
                    elif branch == 6:  # ECHO_RES
                        if rclass is EchoReq:
                            pending.popleft()
                            answers[len(ready)] = request
                            emit(new(EchoRes, (src[pos + 12 : end],)))
                            pos = end
                            continue
                    elif branch == 9:  # STATUS_RES
                        parts = src[pos + 12 : end].split(b"\0", 4)
                        if rclass is GetStatus and len(parts) == 5:
                            handle, known, running, numerator, denominator = parts
                            if (
                                (known == b"1" or known == b"0")
                                and (running == b"1" or running == b"0")
                                and numerator.isdigit()
                                and denominator.isdigit()
                                and len(numerator) <= 30
                                and len(denominator) <= 30
                                and len(handle) <= max_handle
                            ):
                                pending.popleft()
                                answers[len(ready)] = request
                                emit(
                                    new(
                                        StatusRes,
                                        (
                                            handle,
                                            known == b"1",
                                            running == b"1",
                                            int(numerator),
                                            int(denominator),
                                        ),
                                    )
                                )
                                pos = end
                                continue
                    elif branch == 10:  # OPTION_RES
                        if rclass is OptionReq and size <= max_text:
                            pending.popleft()
                            answers[len(ready)] = request
                            emit(new(OptionRes, (src[pos + 12 : end],)))
                            pos = end
                            continue
            pos, go_on = self._slow_response(src, pos)
            if not go_on:
                break
            # The slow path may have trimmed the finished jobs into a new dict.
            finished = self._finished
        return pos

    # ------------------------------------------------------- receive: slow path

    def _header(self, src: bytes, pos: int) -> tuple[int, int, int, bool] | None:
        """Check the header at ``pos``: (type, body start, body end, magic ok).

        ``None`` if a fatal error was queued or more bytes are needed (then
        ``self._dead`` tells which).
        """
        magic = src[pos : pos + 4]
        ptype, size = struct.unpack_from(">II", src, pos + 4)
        if magic != REQ and magic != RES:
            self._fail(
                f"invalid magic {magic!r} (expected {self._their_magic!r}); the stream"
                " is not Gearman",
                ErrorCode.INVALID_MAGIC,
                b"Invalid magic value",
                fatal=True,
            )
            return None
        if not 0 < ptype <= MAX_TYPE:
            self._fail(
                f"invalid packet type {ptype} (valid types are 1 to {MAX_TYPE})",
                ErrorCode.INVALID_COMMAND,
                b"Invalid command expected",
                fatal=True,
            )
            return None
        if size > self._max_packet:
            self._fail(
                f"{PacketType(ptype).name} declares a {size}-byte body;"
                f" the limit is {self._max_packet} bytes",
                ErrorCode.ARGUMENT_TOO_LARGE,
                b"Packet too large",
                fatal=True,
            )
            return None
        end = pos + 12 + size
        if end > len(src):
            return None
        return ptype, pos + 12, end, magic == self._their_magic

    def _decode(self, ptype: int, src: bytes, start: int, end: int) -> Any:
        """Decode one body and check its field lengths; ``None`` if refused."""
        name = PacketType(ptype).name
        server = self.side is Side.SERVER
        try:
            if end - start < LARGE_BODY:
                event: Any = decode_body(ptype, src[start:end])
            else:
                event = decode_slice(ptype, src, start, end)
        except ParseError as exc:
            self._fail(
                f"malformed {name}: {exc.text.decode()}", exc.code, exc.text, fatal=not server
            )
            return None
        for index, limit, field, kind, _tail in self._checks[ptype]:
            if kind in _LENGTH_KINDS:
                length = len(event[index])
                if length > limit:
                    self._fail(
                        f"{name}.{field} is {length} bytes; the limit is {limit}",
                        ErrorCode.ARGUMENT_TOO_LARGE,
                        _TOO_LARGE_TEXT[kind],
                        fatal=not server,
                    )
                    return None
            elif server and kind is FieldKind.NUMBER:
                length = len(b"%d" % event[index])
                if length > limit:
                    self._fail(
                        f"{name}.{field} has {length} characters; the limit is {limit}",
                        ErrorCode.ARGUMENT_TOO_LARGE,
                        _TOO_LARGE_TEXT[kind],
                        fatal=False,
                    )
                    return None
        return event

    def _slow_request(self, src: bytes, pos: int) -> tuple[int, bool]:
        """Server side, one packet or line the fast path did not take."""
        if src[pos] != 0:
            return self._take_line(src, pos)
        if len(src) - pos < 12:
            return pos, False
        header = self._header(src, pos)
        if header is None:
            return pos, False
        ptype, start, end, magic_ok = header
        name = PacketType(ptype).name
        if not magic_ok:
            # gearmand parses a \0RES packet sent to it and answers INVALID_MAGIC.
            self._fail(
                f"{name} sent with the response magic \\0RES; requests use \\0REQ",
                ErrorCode.INVALID_MAGIC,
                b"Request magic expected",
                fatal=False,
            )
            return end, False
        if PACKETS[PacketType(ptype)].direction is Direction.RESPONSE or ptype == _T.UNUSED:
            self._fail(
                f"{name} ({ptype}) is not a request; a server does not accept it",
                ErrorCode.INVALID_COMMAND,
                b"Command not expected",
                fatal=False,
            )
            return end, False
        event = self._decode(ptype, src, start, end)
        if event is None:
            return end, False
        return end, self._request_arrived(ptype, event)

    def _request_arrived(self, ptype: int, event: Any) -> bool:
        if ptype in _WORK_TYPES:
            handle = event[0]
            if handle not in self._worker_handles:
                self._fail(
                    f"{PacketType(ptype).name} for job {handle!r}, which is not assigned"
                    " to this connection",
                    ErrorCode.JOB_NOT_FOUND,
                    _NOT_FOUND_TEXT.get(ptype, _NOT_FOUND_DEFAULT),
                    fatal=False,
                )
                return False
            if ptype in _TERMINAL:
                self._worker_handles.discard(handle)
            self._push_run(event, 1, 1, event)
        elif type(event) in _REPLIES:
            self._pending.append(event)
            if type(event) in _GRAB_CLASSES:
                self._grabs += 1
                self._sleeping = False
        else:
            if ptype == _T.PRE_SLEEP:
                self._sleeping = True
            self._push_run(event, other_last=event)
        self._ready.append(event)
        return True

    def _slow_response(self, src: bytes, pos: int) -> tuple[int, bool]:
        """Client side, one packet or line the fast path did not take."""
        if src[pos] != 0 or self._listing is not None:
            return self._take_line(src, pos)
        if len(src) - pos < 12:
            return pos, False
        header = self._header(src, pos)
        if header is None:
            return pos, False
        ptype, start, end, magic_ok = header
        name = PacketType(ptype).name
        if not magic_ok:
            self._fail(
                f"{name} sent with the request magic \\0REQ by the server", b"", b"", fatal=True
            )
            return pos, False
        if PACKETS[PacketType(ptype)].direction is Direction.REQUEST:
            self._fail(f"{name} is a request; a server does not send it", b"", b"", fatal=True)
            return pos, False
        event = self._decode(ptype, src, start, end)
        if event is None:
            return pos, False
        return end, self._response_arrived(ptype, event)

    def _response_arrived(self, ptype: int, event: Any) -> bool:
        if ptype in _WORK_TYPES:
            handle = event[0]
            handles = self._client_handles
            if ptype == _T.WORK_FAIL and handle not in handles and handle.endswith(b"\0"):
                # gearmand's exception fallback sends WORK_FAIL "handle\0" (issue #108).
                if handle[:-1] in handles:
                    handle = handle[:-1]
                    event = type(event)(handle)
            count = handles.get(handle)
            if count is None:
                if handle in self._finished:
                    self._ready.append(event)
                    return True
                self._fail(
                    f"{PacketType(ptype).name} for job {handle!r}, which this connection"
                    " did not submit in the foreground",
                    ErrorCode.JOB_NOT_FOUND,
                    b"",
                    fatal=False,
                )
                return False
            if ptype in _TERMINAL:
                if count == 1:
                    del handles[handle]
                    self._remember_finished(handle)
                else:
                    handles[handle] = count - 1
            self._ready.append(event)
            return True
        if ptype == _T.NOOP:
            self._sleeping = False
            self._ready.append(event)
            return True
        # Everything else a server sends answers something this side sent.
        found = self._locate(event, event[0] if ptype == _T.ERROR else None)
        if type(found) is str:
            self._fail(found, b"", b"", fatal=True)
            return False
        request = self._consume(found, event)  # type: ignore[arg-type]
        if request is not None:
            self._answers[len(self._ready)] = request
        self._ready.append(event)
        return True

    # ----------------------------------------------------------- receive: text

    def _take_line(self, src: bytes, pos: int) -> tuple[int, bool]:
        limit = self._line_limit
        newline = src.find(b"\n", pos, pos + limit)
        if newline < 0:
            if len(src) - pos >= limit:
                what = "admin command line" if self.side is Side.SERVER else "admin reply line"
                self._queue_error(
                    f"{what} longer than {limit} bytes",
                    AdminError(b"INVALID_ARGUMENTS", b"Line+too+long")
                    if self.side is Side.SERVER
                    else None,
                    True,
                )
            return pos, False
        raw = src[pos:newline]
        if self.side is Side.SERVER:
            line = raw[:-1] if raw[-1:] == b"\r" else raw
            command = _admin.parse_command(line)
            self._pending.append(command)
            self._ready.append(command)
            return newline + 1, True
        return newline + 1, self._reply_line(raw)

    def _reply_line(self, raw: bytes) -> bool:
        """One line of an admin reply arrived at a client; False if an error was queued."""
        listing = self._listing
        pending = self._pending
        if listing is not None:
            if raw == b"." or raw == b".\r":
                command = pending.popleft()
                self._listing = None
                try:
                    reply = _admin.parse_listing(type(command), listing)
                except _admin.AdminParseError as exc:
                    self._fail(
                        f"malformed reply to {_describe(command)}: {exc}", b"", b"", fatal=True
                    )
                    return False
                self._answers[len(self._ready)] = command
                self._ready.append(reply)
                return True
            self._listing_size += len(raw) + 1
            if self._listing_size > self._max_packet:
                self._fail(
                    f"admin listing longer than max_packet_size ({self._max_packet} bytes)",
                    b"",
                    b"",
                    fatal=True,
                )
                return False
            listing.append(raw)
            return True
        while pending and type(pending[0]) is list:
            pending.popleft()
        command = pending[0] if pending else None
        ctype = type(command)
        if ctype not in _admin.COMMAND_CLASSES:
            waiting = "nothing" if command is None else _describe(command)
            self._fail(
                f"admin reply line {raw[:60]!r} received while waiting for {waiting}",
                b"",
                b"",
                fatal=True,
            )
            return False
        line = raw[:-1] if raw[-1:] == b"\r" else raw
        if ctype in _admin.LISTING_COMMANDS and not _admin.is_listing_error(ctype, line):
            if raw == b"." or raw == b".\r":
                pending.popleft()
                self._answers[len(self._ready)] = command
                self._ready.append(_admin.parse_listing(ctype, []))
                return True
            self._listing = [raw]
            self._listing_size = len(raw) + 1
            return True
        try:
            reply = _admin.parse_reply_line(line)
        except _admin.AdminParseError as exc:
            self._fail(f"malformed reply to {_describe(command)}: {exc}", b"", b"", fatal=True)
            return False
        pending.popleft()
        self._answers[len(self._ready)] = command
        self._ready.append(reply)
        return True

    # ------------------------------------------------------------- reply matching

    def _push_run(
        self,
        last: Any,
        count: int = 1,
        work: int = 0,
        work_last: Any = None,
        other_last: Any = None,
    ) -> None:
        """Queue ``count`` requests without reply (``work`` of them WORK_*)."""
        pending = self._pending
        if pending:
            run = pending[-1]
            if type(run) is list:
                run[_COUNT] += count
                run[_LAST] = last
                if work:
                    run[_WORK] += work
                    run[_WORK_LAST] = work_last
                if count > work:
                    run[_OTHER_LAST] = other_last
                return
        pending.append([count, work, last, work_last, other_last])

    def _locate(self, reply: Any, code: bytes | None) -> int | str:
        """Where in the queue the request that ``reply`` (a packet event) answers is.

        Returns its index, ``len(pending)`` for an ERROR that answers nothing
        (a server may send one before closing), or a message saying why the reply
        does not fit.  Changes nothing.
        """
        pending = self._pending
        count = len(pending)
        bits = _CODE_BITS.get(code, 0) if code is not None else 0
        index = 0
        while index < count:
            entry = pending[index]
            if type(entry) is not list:
                break
            if bits & _run_mask(entry):
                return index
            index += 1
        what = packet_type(reply).name + (
            " sent" if self.side is Side.SERVER else " received from the server"
        )
        reply_class = type(reply)
        if index == count:
            if code is not None:
                return index
            return f"{what}, but no request is waiting for a reply"
        entry = pending[index]
        entry_class = type(entry)
        if entry_class is _Owed:
            if code is None:
                return f"{what}, but an ERROR is owed first for a refused request"
            return index
        if entry_class in _admin.COMMAND_CLASSES:
            return f"{what}, but the reply to admin command {_describe(entry)} is due first"
        if code is None and reply_class not in _REPLIES[entry_class]:
            expected = " or ".join(sorted(_REPLY_NAME[c] for c in _REPLIES[entry_class]))
            return (
                f"{what}, but the reply due first is the one to {_describe(entry)}"
                f" ({expected or 'ERROR'})"
            )
        return index

    def _consume(self, index: int, reply: Any) -> Any:
        """Pop the entry at ``index`` (and the runs before it) for ``reply``.

        Updates the handle and worker state and returns the request answered.
        """
        pending = self._pending
        for _ in range(index):
            pending.popleft()
        if not pending:
            return None  # an ERROR that answers nothing
        entry = pending[0]
        if type(entry) is list:
            return self._run_failed(entry, _CODE_BITS.get(reply.code, 0))
        pending.popleft()
        if type(entry) is _Owed:
            return None
        request_class = type(entry)
        if request_class in _GRAB_CLASSES:
            self._grabs -= 1
            if type(reply) in _ASSIGN_CLASSES:
                self._worker_handles.add(reply.handle)
        elif type(reply) is JobCreated and not _is_background(entry):
            handle = reply.handle
            self._client_handles[handle] = self._client_handles.get(handle, 0) + 1
            self._finished.pop(handle, None)
        return entry

    def _run_failed(self, run: list[Any], bits: int) -> Any:
        """An ERROR with code group ``bits`` answers one request of ``run``."""
        count, work = run[_COUNT], run[_WORK]
        if bits & _WORK_BIT and work and not (bits & _OTHER_BIT and count > work):
            request = run[_WORK_LAST]
            if work == 1 and bits == _WORK_BIT:
                # The run's only WORK_* failed: the job is not this worker's any more.
                self._worker_handles.discard(request.handle)
            run[_WORK] -= 1
        else:
            request = run[_OTHER_LAST] if count > work else run[_LAST]
        run[_COUNT] -= 1
        if run[_COUNT] == 0:
            self._pending.popleft()
        return request

    def _remember_finished(self, handle: bytes) -> None:
        finished = self._finished
        finished[handle] = None
        if len(finished) > 2 * _FINISHED_KEPT:
            self._trim_finished()

    def _trim_finished(self) -> None:
        # Keep the newest half; rebuilding beats deleting from the front, which leaves
        # a trail of dead slots for every later lookup of the oldest key to skip.
        items = list(self._finished)
        self._finished = dict.fromkeys(items[-_FINISHED_KEPT:])

    # ----------------------------------------------------------------------- send

    def send(self, event: AnyEvent) -> bytes:
        """The bytes to write for ``event``; updates the state.

        A server may still send :class:`~gearproto.events.Error` and
        :class:`~gearproto.admin.AdminError` after a fatal error (the error's
        ``hint``), to tell the peer why it is being disconnected.

        Raises:
            LocalProtocolError: ``event`` may not be sent now from this side, or a
                field is invalid.  Nothing changed and nothing must be written.
        """
        if type(event) not in _EVENT_CLASS_SET:
            if self._state is not ConnectionState.OPEN and not self._farewell(event):
                raise LocalProtocolError(f"cannot send on a connection that is {self._state.value}")
            return self._send_text(event)
        cls = type(event)
        if cls is SubmitJob:
            fast = self._fast_submit(event)
            if fast is not None:
                return fast[0] + fast[1]
        elif cls in _FAST_WORK:
            fast = self._fast_work(event)
            if fast is not None:
                return fast[0] + fast[1]
        ptype, fields, size = self._prepare_packet(event)
        return _pack_header(self._our_magic, ptype, size) + b"\0".join(fields)

    def _fast_submit(self, event: Any) -> tuple[bytes, bytes] | None:
        """A client's SubmitJob whose fields plainly pass every check: the packet as
        (header and function and unique, payload), with the state updated as the
        general path would; ``None`` for anything else, which the general path then
        accepts or refuses with its message.  The one request most programs send
        most, without the per-field loop of :meth:`_wire_fields`."""
        if self.side is not Side.CLIENT or self._state is not ConnectionState.OPEN:
            return None
        function, unique, data, priority, background = event
        if type(background) is not bool or (
            type(priority) is not Priority and type(priority) is not int
        ):
            return None  # (bool and float compare equal to 0/1 too: the slow path decides)
        ptype = _FAST_SUBMIT_TYPES.get((priority, background))
        if (
            ptype is None
            or type(function) is not bytes
            or type(unique) is not bytes
            or type(data) is not bytes
            or b"\0" in function
            or b"\0" in unique
        ):
            return None
        checks = self._checks[ptype]
        size = len(function) + len(unique) + len(data) + 2
        if (
            len(function) > checks[0][1]
            or len(unique) > checks[1][1]
            or len(data) > checks[2][1]
            or size > self._max_packet
        ):
            return None
        self._pending.append(event)
        return _pack_header(REQ, ptype, size) + function + b"\0" + unique + b"\0", data

    def _fast_work(self, event: Any) -> tuple[bytes, bytes] | None:
        """A worker's WORK_COMPLETE, WORK_DATA, WORK_WARNING or WORK_EXCEPTION for a
        job it holds, with fields that plainly pass every check: like
        :meth:`_fast_submit`, (header and handle, payload) or ``None``."""
        if self.side is not Side.CLIENT or self._state is not ConnectionState.OPEN:
            return None
        handle, data = event
        if type(handle) is not bytes or type(data) is not bytes:
            return None
        ptype, terminal = _FAST_WORK[type(event)]
        checks = self._checks[ptype]
        size = len(handle) + len(data) + 1
        if (
            handle not in self._worker_handles
            or b"\0" in handle
            or len(handle) > checks[0][1]
            or len(data) > checks[1][1]
            or size > self._max_packet
        ):
            return None
        if terminal:
            self._worker_handles.discard(handle)
        self._push_run(event, 1, 1, event)
        return _pack_header(REQ, ptype, size) + handle + b"\0", data

    def send_parts(self, event: AnyEvent) -> list[bytes]:
        """Like :meth:`send`, but a packet's payload is a separate, uncopied chunk.

        Write the chunks in order (``writelines``, ``sendmsg``); for multi-megabyte
        payloads this saves copying the payload into one joined ``bytes``.

        Raises:
            LocalProtocolError: as :meth:`send`.
        """
        if type(event) not in _EVENT_CLASS_SET:
            return [self.send(event)]
        cls = type(event)
        if cls is SubmitJob:
            fast = self._fast_submit(event)
            if fast is not None:
                return list(fast)
        elif cls in _FAST_WORK:
            fast = self._fast_work(event)
            if fast is not None:
                return list(fast)
        ptype, fields, size = self._prepare_packet(event)
        header = _pack_header(self._our_magic, ptype, size)
        if not fields:
            return [header]
        head = b"".join([f + b"\0" for f in fields[:-1]])
        return [header + head, fields[-1]]

    def _prepare_packet(self, event: Any) -> tuple[PacketType, list[bytes], int]:
        """Check ``event`` and apply it to the state: (type, fields as bytes, body size)."""
        if self._state is not ConnectionState.OPEN and not self._farewell(event):
            raise LocalProtocolError(f"cannot send on a connection that is {self._state.value}")
        cls = type(event)
        if cls is SubmitJob:
            priority = event.priority
            if type(priority) is bool or priority not in (0, 1, 2):
                raise LocalProtocolError(
                    f"SubmitJob.priority must be a Priority (0, 1 or 2), not {priority!r}"
                )
        if (cls is SubmitJob or cls is SubmitReduceJob) and type(event.background) is not bool:
            raise LocalProtocolError(
                f"{cls.__name__}.background must be a bool, not {event.background!r}"
            )
        ptype = packet_type(event)
        fields = self._wire_fields(ptype, event)
        size = sum([len(f) for f in fields]) + max(len(fields) - 1, 0)
        if size > self._max_packet:
            raise LocalProtocolError(
                f"{ptype.name} body is {size} bytes; the limit is {self._max_packet}"
            )
        direction = _DIRECTION[ptype]
        if self.side is Side.CLIENT:
            if direction is Direction.RESPONSE:
                raise LocalProtocolError(f"{ptype.name} is sent by servers, not by clients")
            self._client_sending(ptype, event)
        else:
            if direction is Direction.REQUEST:
                raise LocalProtocolError(f"{ptype.name} is sent to servers, not by them")
            self._server_sending(ptype, event)
        return ptype, fields, size

    def send_failed(self) -> None:
        """Tell the core that bytes it produced could not be written.

        The peer's view of the connection is now unknown, so the connection enters
        the error state and must be closed.
        """
        self._state = ConnectionState.ERROR
        self._dead = True
        if self._error is None:
            self._error = RemoteProtocolError("a write to the peer failed")

    def _farewell(self, event: Any) -> bool:
        """True for the last ERROR a server may send before closing a failed connection."""
        if self._state is not ConnectionState.ERROR or self.side is not Side.SERVER:
            return False
        return type(event) is Error or type(event) is AdminError

    def _send_text(self, event: Any) -> bytes:
        cls = type(event)
        if self.side is Side.CLIENT:
            if cls not in _admin.COMMAND_CLASSES or cls is _admin.AdminBadCommand:
                raise LocalProtocolError(
                    f"a client sends packet events and admin commands, not {cls.__name__}"
                )
            data = _admin.format_command(event)
            if len(data) > self.limits.max_line:
                raise LocalProtocolError(
                    f"admin line of {len(data)} bytes; the limit is {self.limits.max_line}"
                )
            self._pending.append(event)
            return data
        if cls not in _ADMIN_REPLIES:
            raise LocalProtocolError(
                f"a server sends packet events and admin replies, not {cls.__name__}"
            )
        if self._state is not ConnectionState.OPEN:
            return _admin.format_reply(event)
        pending = self._pending
        index = 0
        while index < len(pending) and type(pending[index]) is list:
            index += 1
        if index == len(pending):
            raise LocalProtocolError(f"{cls.__name__} sent, but no admin command is waiting")
        entry = pending[index]
        etype = type(entry)
        if etype is _Owed:
            if cls is not AdminError:
                raise LocalProtocolError(
                    f"{cls.__name__} sent, but an error is owed first for a refused request"
                )
        elif etype not in _admin.COMMAND_CLASSES:
            raise LocalProtocolError(
                f"{cls.__name__} sent, but the reply to {_describe(entry)} is due first"
            )
        elif cls is not AdminError:
            expected = _admin.REPLY_FOR.get(etype, _admin.AdminOk)
            if etype is _admin.AdminBadCommand:
                expected = AdminError
            if cls is not expected:
                raise LocalProtocolError(
                    f"{cls.__name__} does not answer {etype.__name__}"
                    f" (send {expected.__name__} or AdminError)"
                )
        data = _admin.format_reply(event)
        for _ in range(index + 1):
            pending.popleft()
        return data

    def _wire_fields(self, ptype: PacketType, event: Any) -> list[bytes]:
        """Check the fields of an event about to be sent; return them as wire bytes."""
        server = self.side is Side.SERVER
        out: list[bytes] = []
        for index, limit, name, kind, is_tail in self._checks[ptype]:
            value = event[index]
            if kind is FieldKind.NUMBER:
                if type(value) is not int:
                    raise LocalProtocolError(
                        f"{ptype.name}.{name} must be an int, not {type(value).__name__}"
                    )
                text = b"%d" % value
                allowed = max(limit, _MAX_RELAYED_NUMBER) if server else limit
                if len(text) > allowed:
                    raise LocalProtocolError(
                        f"{ptype.name}.{name} has {len(text)} characters; the limit is {allowed}"
                    )
                out.append(text)
                continue
            if kind is FieldKind.FLAG:
                if type(value) is not bool:
                    raise LocalProtocolError(
                        f"{ptype.name}.{name} must be a bool, not {type(value).__name__}"
                    )
                out.append(b"1" if value else b"0")
                continue
            if type(value) is not bytes:
                raise LocalProtocolError(
                    f"{ptype.name}.{name} must be bytes, not {type(value).__name__}"
                )
            if len(value) > limit:
                raise LocalProtocolError(
                    f"{ptype.name}.{name} is {len(value)} bytes; the limit is {limit}"
                )
            if not is_tail and b"\0" in value:
                raise LocalProtocolError(
                    f"{ptype.name}.{name} contains a NUL byte, which would end the field"
                )
            out.append(value)
        return out

    def _client_sending(self, ptype: PacketType, event: Any) -> None:
        if ptype in _WORK_TYPES:
            handle = event[0]
            if handle not in self._worker_handles:
                raise LocalProtocolError(
                    f"{ptype.name} for job {handle!r}, which is not assigned to this worker"
                )
            if ptype in _TERMINAL:
                self._worker_handles.discard(handle)
            self._push_run(event, 1, 1, event)
            return
        cls = type(event)
        if cls in _REPLIES:
            self._pending.append(event)
            if cls in _GRAB_CLASSES:
                self._grabs += 1
                self._sleeping = False
            return
        if ptype == _T.PRE_SLEEP:
            self._sleeping = True
        self._push_run(event, other_last=event)

    def _server_sending(self, ptype: PacketType, event: Any) -> None:
        if ptype in _WORK_TYPES:
            handle = event[0]
            count = self._client_handles.get(handle)
            if count is None:
                raise LocalProtocolError(
                    f"{ptype.name} for job {handle!r}: this peer is not waiting for that job"
                    " (no foreground submission of it, or it already ended)"
                )
            if ptype in _TERMINAL:
                if count == 1:
                    del self._client_handles[handle]
                else:
                    self._client_handles[handle] = count - 1
            return
        if ptype == _T.NOOP:
            self._sleeping = False
            return
        if self._state is not ConnectionState.OPEN:
            return  # the farewell ERROR after a fatal error answers nothing
        found = self._locate(event, event.code if ptype == _T.ERROR else None)
        if type(found) is str:
            raise LocalProtocolError(found)
        if ptype == _T.ERROR:
            # The core itself refused a request: sending its hint answers that one,
            # though a run before it could draw the same code.
            pending = self._pending
            index = 0
            while index < len(pending) and type(pending[index]) is list:
                index += 1
            if index < len(pending) and type(pending[index]) is _Owed:
                if pending[index].hint == event:
                    found = index
        self._consume(found, event)  # type: ignore[arg-type]

    # ------------------------------------------------------------ server helpers

    def forget_assignment(self, handle: bytes) -> None:
        """A server took job ``handle`` back from this worker (requeue, timeout, ...).

        Later WORK_* for it from the peer are then refused with JOB_NOT_FOUND.
        """
        self._worker_handles.discard(handle)

    def forget_client_job(self, handle: bytes) -> None:
        """This peer no longer follows job ``handle``; no more WORK_* may go to it."""
        self._client_handles.pop(handle, None)


_EVENT_CLASS_SET: frozenset[type[Any]] = frozenset(EVENT_CLASSES.values())
_DIRECTION: dict[PacketType, Direction] = {t: spec.direction for t, spec in PACKETS.items()}
# Kept under its old name for code that imported it.
EVENT_CLASSES_SET = _EVENT_CLASS_SET
_ADMIN_REPLIES: frozenset[type[Any]] = frozenset(_admin.REPLY_FOR.values()) | {
    _admin.AdminOk,
    AdminError,
}


# ------------------------------------------------------------------ accelerator

#: Version of the table hand-over below; gearproto/_speedups.c checks it, so that a
#: stale build of the extension is never used with newer tables.
_SPEEDUPS_API = 3

# The Python next_event() and receive_data(): the reference, and what the compiled
# ones defer to for connections on the Python loops and for anything unusual.
_python_next_event = Connection.next_event
_python_receive_data = Connection.receive_data


def _load_speedups() -> Any:
    """The compiled receive loops (gearproto._speedups), configured; or ``None``.

    ``None`` when the extension was not built (no compiler at install time), is stale,
    or ``GEARPROTO_PURE_PYTHON`` is set to anything but ``0``: then every connection
    runs the Python loops above, which are the reference implementation.
    """
    if os.environ.get("GEARPROTO_PURE_PYTHON", "0") not in ("", "0"):
        return None
    try:
        from . import _speedups as module
    except ImportError:
        return None
    if getattr(module, "API_VERSION", None) != _SPEEDUPS_API:
        return None
    methods = module.configure(
        {
            "server_branch": _SERVER_BRANCH,
            "client_branch": _CLIENT_BRANCH,
            "ends_job": [int(flag) for flag in _ENDS_JOB],
            "assign_nuls": _ASSIGN_NULS,
            "classes": _CLASS,
            "singletons": _SINGLETON,
            "priority_of": _PRIORITY_OF,
            "background_of": _BACKGROUND_OF,
            "SubmitJob": SubmitJob,
            "SubmitReduceJob": SubmitReduceJob,
            "EchoReq": EchoReq,
            "EchoRes": EchoRes,
            "WorkStatus": WorkStatus,
            "WorkFail": WorkFail,
            "JobCreated": JobCreated,
            "StatusRes": StatusRes,
            "OptionRes": OptionRes,
            "OptionReq": OptionReq,
            "GetStatus": GetStatus,
            "submit_classes": _SUBMIT_CLASSES,
            "grab_classes": _GRAB_CLASSES,
            "replies_to": _REPLIES,
            "noop": _NOOP,
            "no_job": _NO_JOB,
            "large_body": LARGE_BODY,
            "finished_max": 2 * _FINISHED_KEPT,
            "req": REQ,
            "res": RES,
            "Connection": Connection,
            "python_next_event": _python_next_event,
            "next_event_doc": _python_next_event.__doc__,
            "python_receive_data": _python_receive_data,
            "receive_data_doc": _python_receive_data.__doc__,
            "state_open": ConnectionState.OPEN,
            "need_data": NEED_DATA,
        }
    )
    # The compiled next_event() and receive_data() read and write the slots directly
    # and need no Python frame: once the loops are compiled, Python frames are most
    # of the cost of an event, and of a small read.
    for name, method in methods.items():
        setattr(Connection, name, method)
    return module


# The accelerator new connections use (None: the Python loops).  Tests swap it to
# run one suite against both implementations.
_speedups: Any = _load_speedups()


def _use_python_loops(conn: Connection) -> Connection:
    """Make ``conn`` parse with the Python loops (the reference), whatever is built.

    For differential tests and the fuzzer, which run both implementations side by
    side; call it on a fresh connection.
    """
    server = conn.side is Side.SERVER
    conn._parse_loop = Connection._parse_requests if server else Connection._parse_responses
    return conn


#: Which receive loops new connections use: ``"c"`` or ``"python"``.
IMPLEMENTATION: Final = "python" if _speedups is None else "c"
