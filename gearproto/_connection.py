"""``Connection``: one side of one Gearman connection, as a pure state machine.

Bytes go in through :meth:`Connection.receive_data` / :meth:`Connection.receive_eof`
and come out of :meth:`Connection.next_event` as events; events go in through
:meth:`Connection.send` and come out as bytes.  Nothing here does I/O, sleeps,
starts threads or reads a clock.

What is tracked, and why:

* **Replies in order.**  Gearman has no request ids: JOB_CREATED, STATUS_RES,
  ECHO_RES, OPTION_RES, JOB_ASSIGN*/NO_JOB and admin replies answer requests in the
  order they were sent.  Both sides keep the queue of requests still owed a reply, so a
  client knows what each reply answers (:attr:`Connection.answered`) and a server
  cannot answer out of turn.  Requests that normally get no reply (CAN_DO, WORK_*, ...)
  may still get an ERROR; runs of them are kept as one counted entry.
* **Handles.**  A client may see WORK_* only for foreground jobs it submitted (one
  count per submission, so a job coalesced twice ends twice); a worker may send WORK_*
  only for jobs assigned to it.  A server's view tracks the same from the other end.
* **Worker sub-state**: grabbing, sleeping, working or idle.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from . import admin as _admin
from ._codec import (
    DECODERS,
    HEADER,
    LARGE_BODY,
    MAX_TYPE,
    ParseError,
    decode_slice,
    encode,
    encode_parts,
)
from ._codec import event_fields as _event_fields
from ._spec import PACKETS, REQ, RES, Direction, FieldKind, PacketType
from .admin import AdminCommand, AdminError, AdminReply
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    EVENT_CLASSES,
    ConnectionClosed,
    Error,
    Event,
    PacketEvent,
    SubmitJob,
    SubmitReduceJob,
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


class Side(enum.Enum):
    """Which end of the connection this object plays."""

    #: Sends ``\\0REQ`` packets and admin commands: a client, a worker, or both.
    CLIENT = "client"
    #: Sends ``\\0RES`` packets and admin replies: a server's view of one peer.
    SERVER = "server"


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`Connection.next_event` when more bytes are needed.
NEED_DATA: Final = NeedData.NEED_DATA


class ConnectionState(enum.Enum):
    OPEN = "open"
    #: The peer closed the connection and every event before that was read.
    CLOSED = "closed"
    #: A fatal protocol error happened; the connection must be closed.
    ERROR = "error"


class WorkerState(enum.Enum):
    """What the worker side of a connection is doing (see :attr:`Connection.worker_state`)."""

    IDLE = "idle"
    #: A GRAB_JOB* is waiting for its reply.
    GRABBING = "grabbing"
    #: PRE_SLEEP was sent and no NOOP has arrived since.
    SLEEPING = "sleeping"
    #: Holding at least one assigned job.
    WORKING = "working"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits enforced on everything sent and received.

    The packet size is checked on the declared size in the header, before any of the
    body is buffered.  The defaults follow gearmand and libgearman.
    """

    #: Largest packet body, and largest admin listing, accepted or sent.
    max_packet_size: int = 64 * 1024 * 1024
    #: Longest function name (libgearman's limit is 512).
    max_function: int = 512
    #: Longest unique id (gearmand: 64).
    max_unique: int = 64
    #: Longest job handle (gearmand: 64).
    max_handle: int = 64
    #: Longest admin line, line ending included (gearmand's buffer: 8 KiB).
    max_line: int = 8192
    #: Longest other text field (option names, client ids, error texts, ...).
    max_text: int = 8192
    #: Most digits in a number field (gearmand refuses timeouts over 20 characters).
    max_number: int = 20

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")
        if self.max_packet_size > 0xFFFFFFFF:
            raise ValueError("Limits.max_packet_size cannot exceed 2**32 - 1")

    def for_kind(self, kind: FieldKind) -> int:
        """The limit that applies to fields of ``kind``."""
        return {
            FieldKind.FUNCTION: self.max_function,
            FieldKind.UNIQUE: self.max_unique,
            FieldKind.HANDLE: self.max_handle,
            FieldKind.DATA: self.max_packet_size,
            FieldKind.NUMBER: self.max_number,
            FieldKind.FLAG: self.max_number,
            FieldKind.TEXT: self.max_text,
        }[kind]


# ------------------------------------------------------------------ request table

_T = PacketType

# The replies each request type waits for; ERROR is always acceptable too.
_REPLIES: dict[PacketType, frozenset[int]] = {
    _T.GRAB_JOB: frozenset({_T.JOB_ASSIGN, _T.NO_JOB}),
    _T.GRAB_JOB_UNIQ: frozenset({_T.JOB_ASSIGN_UNIQ, _T.NO_JOB}),
    _T.GRAB_JOB_ALL: frozenset({_T.JOB_ASSIGN_ALL, _T.JOB_ASSIGN_UNIQ, _T.NO_JOB}),
    _T.GET_STATUS: frozenset({_T.STATUS_RES}),
    _T.GET_STATUS_UNIQUE: frozenset({_T.STATUS_RES_UNIQUE}),
    _T.ECHO_REQ: frozenset({_T.ECHO_RES}),
    _T.OPTION_REQ: frozenset({_T.OPTION_RES}),
}
_SUBMIT_TYPES = frozenset(
    {
        _T.SUBMIT_JOB,
        _T.SUBMIT_JOB_BG,
        _T.SUBMIT_JOB_HIGH,
        _T.SUBMIT_JOB_HIGH_BG,
        _T.SUBMIT_JOB_LOW,
        _T.SUBMIT_JOB_LOW_BG,
        _T.SUBMIT_JOB_SCHED,
        _T.SUBMIT_JOB_EPOCH,
        _T.SUBMIT_REDUCE_JOB,
        _T.SUBMIT_REDUCE_JOB_BACKGROUND,
    }
)
_FOREGROUND_SUBMITS = frozenset(
    {_T.SUBMIT_JOB, _T.SUBMIT_JOB_HIGH, _T.SUBMIT_JOB_LOW, _T.SUBMIT_REDUCE_JOB}
)
for _t in _SUBMIT_TYPES:
    _REPLIES[_t] = frozenset({_T.JOB_CREATED})

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
_ASSIGN_TYPES = frozenset({_T.JOB_ASSIGN, _T.JOB_ASSIGN_UNIQ, _T.JOB_ASSIGN_ALL})
_GRAB_TYPES = frozenset({_T.GRAB_JOB, _T.GRAB_JOB_UNIQ, _T.GRAB_JOB_ALL})
_REPLY_TYPES = frozenset(t for replies in _REPLIES.values() for t in replies) | {_T.ERROR}

# ERROR codes a request that normally gets no reply can draw.  A run of such requests
# is one queue entry; an ERROR with another code proves they all succeeded.
_WORK_ERRORS = frozenset({ErrorCode.JOB_NOT_FOUND, ErrorCode.ARGUMENT_TOO_LARGE})
_OTHER_ERRORS = frozenset(
    {
        ErrorCode.INVALID_COMMAND,
        ErrorCode.ARGUMENT_TOO_LARGE,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.PERMISSION_DENIED,
    }
)

# gearmand's texts for ERROR JOB_NOT_FOUND, which differ by packet type.
_NOT_FOUND_TEXT = {
    _T.WORK_DATA: b"Job does not exist on server",
    _T.WORK_WARNING: b"Job does not exist on server",
    _T.WORK_EXCEPTION: b"An exception was received for a job that does not exist",
}
_NOT_FOUND_DEFAULT = b"Job given in work result not found"

# Entry kinds in the queue of requests owed a reply.
_K_PACKET = 0  # a binary request waiting for one of ``replies`` or ERROR
_K_SILENT = 1  # a run of ``count`` requests that get no reply unless an ERROR
_K_REJECTED = 2  # a request the core refused on a server: the server owes an ERROR
_K_LISTING = 3  # an admin command answered by a listing (or an ERR line)
_K_LINE = 4  # an admin command answered by one OK/ERR line


class _Pending:
    """One entry of the reply queue."""

    __slots__ = ("accepts", "count", "kind", "replies", "request")

    def __init__(
        self,
        kind: int,
        request: Any,
        replies: frozenset[int] = frozenset(),
        accepts: frozenset[bytes] = frozenset(),
    ) -> None:
        self.kind = kind
        self.request = request
        self.replies = replies
        self.accepts = accepts
        self.count = 1


# ------------------------------------------------------------------ field checks


def _field_checks(limits: Limits) -> list[tuple[tuple[int, int, str, FieldKind, bool], ...]]:
    """Per packet type: (index, limit, name, kind, is_tail) for every field."""
    table: list[tuple[tuple[int, int, str, FieldKind, bool], ...]] = [()]
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


_TOO_LARGE_TEXT = {
    FieldKind.UNIQUE: b"Unique value too large",
    FieldKind.HANDLE: b"Job handle too large",
    FieldKind.FUNCTION: b"Function name too large",
    FieldKind.NUMBER: b"Number too large",
    FieldKind.FLAG: b"Number too large",
}


AnyEvent: TypeAlias = Event | AdminCommand | AdminReply


class Connection:
    """One side of a Gearman connection.

    Args:
        side: :attr:`Side.CLIENT` for clients and workers (they send ``\\0REQ``),
            :attr:`Side.SERVER` for a server's view of one connected peer.
        limits: size limits for both directions.

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
    """

    def __init__(self, side: Side, *, limits: Limits | None = None) -> None:
        if not isinstance(side, Side):
            raise TypeError(f"side must be a Side, not {side!r}")
        self.side: Final = side
        self.limits: Final = limits if limits is not None else Limits()
        self._our_magic = REQ if side is Side.CLIENT else RES
        self._their_magic = RES if side is Side.CLIENT else REQ
        self._checks = _field_checks(self.limits)
        self._max_packet = self.limits.max_packet_size
        self._max_line = self.limits.max_line
        # Receive buffer: the unparsed tail plus chunks received since, and how many
        # bytes must be present before parsing can make progress (so a large packet
        # arriving in small pieces is joined once, not once per piece).
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 1
        # True while the buffer holds the start of an admin line without its "\n":
        # only a chunk with a newline (or too many bytes) can then make progress.
        self._line_wait = False
        self._eof = False
        self._ready: deque[tuple[Any, Any]] = deque()
        self._state = ConnectionState.OPEN
        self._error: RemoteProtocolError | None = None
        # An admin listing being read (client side): the command and its rows.
        self._listing: list[bytes] | None = None
        self._listing_size = 0
        # Replies owed, oldest first.
        self._pending: deque[_Pending] = deque()
        # Client side: fg handles we may see WORK_* for (one count per submission),
        # and handles we may send WORK_* for.  Server side: the same, seen from
        # the server (handles it may forward WORK_* for / expects WORK_* for).
        self._client_handles: dict[bytes, int] = {}
        self._worker_handles: set[bytes] = set()
        # Handles that ended recently: late WORK_* for them (gearmand forwards a
        # cancelled job's result after its WORK_FAIL) are delivered, not errors.
        self._finished: dict[bytes, None] = {}
        self._grabs = 0
        self._sleeping = False
        #: The request the event last returned by :meth:`next_event` answers (a
        #: packet event or an admin command), or ``None`` if it answers nothing.
        self.answered: Any = None

    # ----------------------------------------------------------------- inspection

    def __repr__(self) -> str:
        return (
            f"<Connection {self.side.value} {self._state.value}"
            f" pending={len(self._pending)} buffered={self._size}>"
        )

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def pending_replies(self) -> int:
        """How many replies are still owed on this connection.

        Requests that get no reply unless they fail (CAN_DO, WORK_*, ...) do not count.
        """
        return sum(1 for p in self._pending if p.kind != _K_SILENT)

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

    # -------------------------------------------------------------------- receive

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer.  An empty chunk is ignored (not EOF)."""
        if self._eof:
            raise LocalProtocolError("receive_data() after receive_eof()")
        if data:
            chunk = data if type(data) is bytes else bytes(data)
            self._chunks.append(chunk)
            self._size += len(chunk)
            if self._line_wait:
                if b"\n" in chunk or self._size >= self._max_line:
                    self._need = 0
                else:
                    self._need = self._size + 1

    def receive_eof(self) -> None:
        """The peer closed its side.  Buffered events are still returned first."""
        self._eof = True

    def next_event(self) -> Event | AdminCommand | AdminReply | NeedData:
        """The next event from the peer, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer broke the protocol (see its ``fatal``).
        """
        ready = self._ready
        if not ready:
            self._parse()
            if not ready:
                if self._eof:
                    return self._at_eof()
                self.answered = None
                return NEED_DATA
        event, answered = ready.popleft()
        if type(event) is RemoteProtocolError:
            self.answered = None
            if event.fatal:
                self._state = ConnectionState.ERROR
                self._error = event
                ready.clear()
            raise event
        self.answered = answered
        return event  # type: ignore[no-any-return]

    def events(self) -> Iterator[Event | AdminCommand | AdminReply]:
        """Iterate over the events available now (stops at :data:`NEED_DATA`)."""
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event

    def _at_eof(self) -> ConnectionClosed:
        if self._size:
            self._size = 0
            self._chunks.clear()
            self._state = ConnectionState.ERROR
            self._error = RemoteProtocolError(
                "peer closed the connection in the middle of a packet or line"
            )
            raise self._error
        self._state = ConnectionState.CLOSED
        self.answered = None
        return ConnectionClosed()

    def _fail(self, message: str, code: bytes, text: bytes, *, fatal: bool) -> None:
        """Queue a RemoteProtocolError (after the events parsed before it)."""
        hint = Error(code, text) if self.side is Side.SERVER else None
        if not fatal and self.side is Side.SERVER:
            # The server now owes this peer an ERROR in this request's place.
            self._pending.append(_Pending(_K_REJECTED, None))
        self._ready.append((RemoteProtocolError(message, hint=hint, fatal=fatal), None))

    def _fail_text(self, message: str, reply: AdminError, *, fatal: bool) -> None:
        hint = reply if self.side is Side.SERVER else None
        self._ready.append((RemoteProtocolError(message, hint=hint, fatal=fatal), None))

    def _parse(self) -> None:
        """Turn every complete packet and line in the buffer into queued events."""
        if self._state is not ConnectionState.OPEN:
            if self._error is not None:
                raise RemoteProtocolError(
                    f"connection already failed: {self._error}", hint=self._error.hint
                )
            return
        if self._size < self._need:
            return
        chunks = self._chunks
        src = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        n = len(src)
        pos = 0
        unpack = HEADER.unpack_from
        decoders = DECODERS
        their_magic = self._their_magic
        max_packet = self._max_packet
        fatal_seen = False
        while pos < n:
            if self._listing is None and src[pos] == 0:
                if n - pos < 12:
                    break
                magic, ptype, size = unpack(src, pos)
                if magic != their_magic or not 0 < ptype <= MAX_TYPE or size > max_packet:
                    if not self._bad_header(magic, ptype, size):
                        fatal_seen = True
                        break
                end = pos + 12 + size
                if end > n:
                    break
                body_start = pos + 12
                pos = end
                if magic != their_magic:
                    # A \0RES packet sent to a server: gearmand parses it and answers
                    # ERROR INVALID_MAGIC, keeping the connection.
                    self._fail(
                        f"{PacketType(ptype).name} sent with the response magic",
                        ErrorCode.INVALID_MAGIC,
                        b"Request magic expected",
                        fatal=False,
                    )
                    continue
                try:
                    if size < LARGE_BODY:
                        event = decoders[ptype](src[body_start:end])
                    else:
                        event = decode_slice(ptype, src, body_start, end)
                except ParseError as exc:
                    self._fail(
                        f"malformed {PacketType(ptype).name}: {exc.text.decode()}",
                        exc.code,
                        exc.text,
                        fatal=self.side is Side.CLIENT,
                    )
                    if self.side is Side.CLIENT:
                        fatal_seen = True
                        break
                    continue
                if self._received_packet(ptype, event):
                    fatal_seen = True
                    break
            else:
                newline = src.find(b"\n", pos, pos + self._max_line)
                if newline < 0:
                    if n - pos >= self._max_line:
                        self._fail_text(
                            f"admin line longer than {self._max_line} bytes",
                            AdminError(b"INVALID_ARGUMENTS", b"Line+too+long"),
                            fatal=True,
                        )
                        fatal_seen = True
                    break
                line_end = newline - 1 if newline > pos and src[newline - 1] == 13 else newline
                line = src[pos:line_end]
                pos = newline + 1
                if self._received_line(line):
                    fatal_seen = True
                    break
        if fatal_seen:
            # Nothing after a fatal error can be framed; drop it.
            self._chunks = []
            self._size = 0
            self._need = 1 << 62
            self._line_wait = False
            return
        rest = n - pos
        self._line_wait = False
        if rest == 0:
            self._chunks = []
            self._size = 0
            self._need = 1
            return
        tail = src[pos:] if pos else src
        self._chunks = [tail]
        self._size = rest
        if self._listing is None and tail[0] == 0:
            if rest < 12:
                self._need = 12
            else:
                self._need = 12 + unpack(tail, 0)[2]
        else:
            self._need = rest + 1
            self._line_wait = True

    def _bad_header(self, magic: bytes, ptype: int, size: int) -> bool:
        """Report a header that cannot be accepted; True if the stream may go on."""
        if not 0 < ptype <= MAX_TYPE:
            self._fail(
                f"invalid packet type {ptype}",
                ErrorCode.INVALID_COMMAND,
                b"Invalid command expected",
                fatal=True,
            )
            return False
        if size > self._max_packet:
            self._fail(
                f"{PacketType(ptype).name} declares a {size}-byte body;"
                f" the limit is {self._max_packet}",
                ErrorCode.ARGUMENT_TOO_LARGE,
                b"Packet too large",
                fatal=True,
            )
            return False
        if magic == self._our_magic and self.side is Side.SERVER:
            return True  # \0RES to a server: answered with INVALID_MAGIC, not fatal
        self._fail(
            f"invalid magic {magic!r}",
            ErrorCode.INVALID_MAGIC,
            b"Invalid magic value",
            fatal=True,
        )
        return False

    # ------------------------------------------------------------- receive: state

    def _check_fields(self, ptype: int, event: Any) -> tuple[FieldKind, str] | None:
        """The first field of ``event`` over its limit, if any (received events)."""
        for index, limit, name, kind, _is_tail in self._checks[ptype]:
            if kind is FieldKind.DATA or kind is FieldKind.NUMBER or kind is FieldKind.FLAG:
                continue
            if len(event[index]) > limit:
                return kind, name
        return None

    def _received_packet(self, ptype: int, event: Any) -> bool:
        """Apply a received packet to the state; True if a fatal error was queued."""
        spec = PACKETS[ptype]  # type: ignore[index]
        over = self._check_fields(ptype, event)
        if self.side is Side.SERVER:
            if spec.direction is Direction.RESPONSE:
                self._fail(
                    f"{spec.name} is a response; a server does not accept it",
                    ErrorCode.INVALID_COMMAND,
                    b"Command not expected",
                    fatal=False,
                )
                return False
            if over is not None:
                kind, name = over
                self._fail(
                    f"{spec.name}: {name} longer than its limit",
                    ErrorCode.ARGUMENT_TOO_LARGE,
                    _TOO_LARGE_TEXT.get(kind, b"Argument too large"),
                    fatal=False,
                )
                return False
            return self._server_received(ptype, event)
        if spec.direction is Direction.REQUEST:
            self._fail(
                f"{spec.name} is a request; a server does not send it",
                ErrorCode.INVALID_COMMAND,
                b"Command not expected",
                fatal=True,
            )
            return True
        if over is not None:
            self._fail(
                f"{spec.name}: {over[1]} longer than its limit",
                ErrorCode.ARGUMENT_TOO_LARGE,
                b"Argument too large",
                fatal=True,
            )
            return True
        return self._client_received(ptype, event)

    def _server_received(self, ptype: int, event: Any) -> bool:
        """A request arrived at a server."""
        append = self._ready.append
        if ptype in _WORK_TYPES:
            handle = event[0]
            if handle not in self._worker_handles:
                self._fail(
                    f"{PacketType(ptype).name} for a job not assigned to this connection",
                    ErrorCode.JOB_NOT_FOUND,
                    _NOT_FOUND_TEXT.get(ptype, _NOT_FOUND_DEFAULT),  # type: ignore[call-overload]
                    fatal=False,
                )
                return False
            if ptype in _TERMINAL:
                self._worker_handles.discard(handle)
            self._push_silent(event, _WORK_ERRORS)
            append((event, None))
            return False
        replies = _REPLIES.get(ptype)  # type: ignore[call-overload]
        if replies is not None:
            self._pending.append(_Pending(_K_PACKET, event, replies))
            if ptype in _GRAB_TYPES:
                self._grabs += 1
                self._sleeping = False
        else:
            if ptype == _T.PRE_SLEEP:
                self._sleeping = True
            elif ptype == _T.RESET_ABILITIES:
                pass
            self._push_silent(event, _OTHER_ERRORS)
        append((event, None))
        return False

    def _client_received(self, ptype: int, event: Any) -> bool:
        """A response arrived at a client or worker."""
        if ptype in _WORK_TYPES:
            handle = event[0]
            if ptype == _T.WORK_FAIL and handle not in self._client_handles:
                # gearmand's exception fallback sends WORK_FAIL "handle\0" (issue #108).
                stripped = handle[:-1] if handle.endswith(b"\0") else handle
                if stripped in self._client_handles:
                    handle = stripped
                    event = type(event)(stripped)
            count = self._client_handles.get(handle)
            if count is None:
                if handle in self._finished:
                    self._ready.append((event, None))
                    return False
                self._fail(
                    f"{PacketType(ptype).name} for a job this client did not submit",
                    ErrorCode.JOB_NOT_FOUND,
                    b"Unknown job handle",
                    fatal=False,
                )
                return False
            if ptype in _TERMINAL:
                if count == 1:
                    del self._client_handles[handle]
                    self._remember_finished(handle)
                else:
                    self._client_handles[handle] = count - 1
            self._ready.append((event, None))
            return False
        if ptype == _T.NOOP:
            self._sleeping = False
            self._ready.append((event, None))
            return False
        # Everything else a server sends is a reply to something we sent.
        entry = self._match_reply(ptype, event)
        if entry is None:
            self._fail(
                f"{PacketType(ptype).name} received, but no request is waiting for it",
                ErrorCode.INVALID_COMMAND,
                b"Unexpected reply",
                fatal=True,
            )
            return True
        request = entry.request
        if entry.kind == _K_PACKET:
            req_type = _packet_type_of(request)
            if req_type in _GRAB_TYPES:
                self._grabs -= 1
            if ptype == _T.JOB_CREATED and req_type in _FOREGROUND_SUBMITS:
                handle = event[0]
                self._client_handles[handle] = self._client_handles.get(handle, 0) + 1
                self._finished.pop(handle, None)
            elif ptype in _ASSIGN_TYPES:
                self._worker_handles.add(event[0])
        self._ready.append((event, request))
        return False

    def _match_reply(self, ptype: int, event: Any) -> _Pending | None:
        """Pop and return the queue entry that ``event`` (a reply) answers."""
        pending = self._pending
        is_error = ptype == _T.ERROR
        code = event[0] if is_error else None
        while pending:
            entry = pending[0]
            kind = entry.kind
            if kind == _K_SILENT:
                if is_error and code in entry.accepts:
                    entry.count -= 1
                    if entry.count == 0:
                        pending.popleft()
                    return entry
                pending.popleft()  # no error came for them: they all succeeded
                continue
            if kind == _K_PACKET and (is_error or ptype in entry.replies):
                return pending.popleft()
            if kind == _K_REJECTED and is_error:
                return pending.popleft()
            return None
        if is_error:
            # An ERROR with nothing outstanding (a server about to close, say).
            return _Pending(_K_SILENT, None)
        return None

    def _push_silent(self, event: Any, accepts: frozenset[bytes]) -> None:
        pending = self._pending
        if pending:
            last = pending[-1]
            if last.kind == _K_SILENT and last.accepts is accepts:
                last.count += 1
                last.request = event
                return
        pending.append(_Pending(_K_SILENT, event, accepts=accepts))

    def _remember_finished(self, handle: bytes) -> None:
        finished = self._finished
        finished[handle] = None
        if len(finished) > 1024:
            del finished[next(iter(finished))]

    # ----------------------------------------------------------- receive: text

    def _received_line(self, line: bytes) -> bool:
        """One admin line arrived; True if a fatal error was queued."""
        if self.side is Side.SERVER:
            command = _admin.parse_command(line)
            kind = _K_LISTING if type(command) in _admin.LISTING_COMMANDS else _K_LINE
            self._pending.append(_Pending(kind, command))
            self._ready.append((command, None))
            return False
        return self._client_line(line)

    def _client_line(self, line: bytes) -> bool:
        listing = self._listing
        if listing is not None:
            if line == b".":
                self._listing = None
                entry = self._pending.popleft()
                try:
                    reply = _admin.parse_listing(type(entry.request), listing)
                except _admin.AdminParseError as exc:
                    self._fail(
                        f"malformed admin listing: {exc}", b"INVALID_PACKET", b"", fatal=True
                    )
                    return True
                self._ready.append((reply, entry.request))
                return False
            self._listing_size += len(line) + 1
            if self._listing_size > self._max_packet:
                self._fail(
                    "admin listing larger than max_packet_size",
                    b"ARGUMENT_TOO_LARGE",
                    b"",
                    fatal=True,
                )
                return True
            listing.append(line)
            return False
        pending = self._pending
        while pending and pending[0].kind == _K_SILENT:
            pending.popleft()
        if not pending or pending[0].kind not in (_K_LISTING, _K_LINE):
            self._fail(
                f"text line {line[:40]!r} received, but no admin command is waiting",
                b"INVALID_PACKET",
                b"",
                fatal=True,
            )
            return True
        entry = pending[0]
        is_error_line = (
            line.startswith(b"ERR ") and type(entry.request) is not _admin.ShowUniqueJobs
        )
        if entry.kind == _K_LISTING and not is_error_line:
            if line == b".":
                pending.popleft()
                reply = _admin.parse_listing(type(entry.request), [])
                self._ready.append((reply, entry.request))
                return False
            self._listing = [line]
            self._listing_size = len(line) + 1
            return False
        pending.popleft()
        try:
            reply = _admin.parse_reply_line(line)
        except _admin.AdminParseError as exc:
            self._fail(f"malformed admin reply: {exc}", b"INVALID_PACKET", b"", fatal=True)
            return True
        self._ready.append((reply, entry.request))
        return False

    # ----------------------------------------------------------------------- send

    def send(self, event: PacketEvent | AdminCommand | AdminReply) -> bytes:
        """The bytes to write for ``event``; updates the state.

        Raises:
            LocalProtocolError: ``event`` may not be sent now from this side, or a
                field is invalid.  Nothing changed and nothing must be written.
        """
        if self._state is ConnectionState.ERROR:
            raise LocalProtocolError("the connection is in an error state")
        cls = type(event)
        if cls in EVENT_CLASSES_SET:
            self._before_send_packet(event)
            return encode(event, self._our_magic)  # type: ignore[arg-type]
        return self._send_text(event)

    def send_parts(self, event: PacketEvent | AdminCommand | AdminReply) -> list[bytes]:
        """Like :meth:`send`, but a packet's payload is a separate, uncopied chunk.

        Write the chunks in order (``writelines``, ``sendmsg``); useful for
        multi-megabyte payloads.
        """
        if self._state is ConnectionState.ERROR:
            raise LocalProtocolError("the connection is in an error state")
        if type(event) in EVENT_CLASSES_SET:
            self._before_send_packet(event)
            return encode_parts(event, self._our_magic)  # type: ignore[arg-type]
        return [self._send_text(event)]

    def send_failed(self) -> None:
        """Tell the core that bytes it produced could not be written.

        The peer's view of the connection is now unknown, so the connection enters
        the error state and must be closed.
        """
        self._state = ConnectionState.ERROR
        if self._error is None:
            self._error = RemoteProtocolError("a write to the peer failed")

    def _send_text(self, event: Any) -> bytes:
        cls = type(event)
        if self.side is Side.CLIENT:
            if cls not in _ADMIN_COMMANDS:
                raise LocalProtocolError(f"a client cannot send {cls.__name__}")
            data = _admin.format_command(event)
            if len(data) > self._max_line:
                raise LocalProtocolError(f"admin line longer than {self._max_line} bytes")
            kind = _K_LISTING if cls in _admin.LISTING_COMMANDS else _K_LINE
            self._pending.append(_Pending(kind, event))
            return data
        if cls not in _ADMIN_REPLIES:
            raise LocalProtocolError(f"a server cannot send {cls.__name__}")
        pending = self._pending
        index = 0
        while index < len(pending) and pending[index].kind == _K_SILENT:
            index += 1
        if index == len(pending) or pending[index].kind not in (_K_LISTING, _K_LINE):
            raise LocalProtocolError(f"{cls.__name__} sent, but no admin command is waiting")
        entry = pending[index]
        listing_reply = cls is not _admin.AdminOk and cls is not AdminError
        if listing_reply and (
            entry.kind != _K_LISTING or _LISTING_FOR[cls] is not type(entry.request)
        ):
            raise LocalProtocolError(
                f"{cls.__name__} does not answer {type(entry.request).__name__}"
            )
        if cls is _admin.AdminOk and entry.kind == _K_LISTING:
            raise LocalProtocolError(f"AdminOk does not answer {type(entry.request).__name__}")
        data = _admin.format_reply(event)
        for _ in range(index + 1):
            pending.popleft()
        return data

    def _validate(self, ptype: PacketType, event: Any) -> None:
        """Check the fields of an event about to be sent."""
        for index, limit, name, kind, is_tail in self._checks[ptype]:
            value = event[index]
            if kind is FieldKind.NUMBER:
                if type(value) is not int or value < 0:
                    raise LocalProtocolError(
                        f"{ptype.name}.{name} must be a non-negative int, not {value!r}"
                    )
                if len(b"%d" % value) > limit:
                    raise LocalProtocolError(f"{ptype.name}.{name} has more than {limit} digits")
                continue
            if kind is FieldKind.FLAG:
                if type(value) is not bool:
                    raise LocalProtocolError(f"{ptype.name}.{name} must be a bool")
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
                raise LocalProtocolError(f"{ptype.name}.{name} must not contain NUL bytes")

    def _before_send_packet(self, event: Any) -> None:
        cls = type(event)
        if cls is SubmitJob:
            if event.priority not in (0, 1, 2):
                raise LocalProtocolError(f"invalid priority {event.priority!r}")
            if type(event.background) is not bool:
                raise LocalProtocolError("SubmitJob.background must be a bool")
        elif cls is SubmitReduceJob and type(event.background) is not bool:
            raise LocalProtocolError("SubmitReduceJob.background must be a bool")
        ptype, fields = _event_fields(event)
        spec = PACKETS[ptype]
        self._validate(ptype, event)
        size = sum(len(f) for f in fields) + max(len(fields) - 1, 0)
        if size > self._max_packet:
            raise LocalProtocolError(
                f"{ptype.name} body is {size} bytes; the limit is {self._max_packet}"
            )
        if self.side is Side.CLIENT:
            if spec.direction is Direction.RESPONSE:
                raise LocalProtocolError(f"{ptype.name} is sent by servers only")
            self._client_sending(ptype, event)
        else:
            if spec.direction is Direction.REQUEST:
                raise LocalProtocolError(f"{ptype.name} is sent to servers only")
            self._server_sending(ptype, event)

    def _client_sending(self, ptype: PacketType, event: Any) -> None:
        if ptype in _WORK_TYPES:
            handle = event[0]
            if handle not in self._worker_handles:
                raise LocalProtocolError(
                    f"{ptype.name} for {handle!r}, which is not assigned to this worker"
                )
            if ptype in _TERMINAL:
                self._worker_handles.discard(handle)
            self._push_silent(event, _WORK_ERRORS)
            return
        replies = _REPLIES.get(ptype)
        if replies is not None:
            self._pending.append(_Pending(_K_PACKET, event, replies))
            if ptype in _GRAB_TYPES:
                self._grabs += 1
                self._sleeping = False
            return
        if ptype == _T.PRE_SLEEP:
            self._sleeping = True
        self._push_silent(event, _OTHER_ERRORS)

    def _server_sending(self, ptype: PacketType, event: Any) -> None:
        if ptype in _WORK_TYPES:
            handle = event[0]
            count = self._client_handles.get(handle)
            if count is None:
                raise LocalProtocolError(
                    f"{ptype.name} for {handle!r}: this peer is not a client of that job"
                )
            if ptype in _TERMINAL:
                if count == 1:
                    del self._client_handles[handle]
                else:
                    self._client_handles[handle] = count - 1
            return
        if ptype == _T.NOOP:
            return
        pending = self._pending
        index = 0
        is_error = ptype == _T.ERROR
        while index < len(pending):
            entry = pending[index]
            if entry.kind != _K_SILENT:
                break
            if is_error and event.code in entry.accepts:
                break
            index += 1
        if index == len(pending):
            if is_error:
                # An ERROR nothing asked for, e.g. before closing an idle connection.
                for _ in range(index):
                    pending.popleft()
                return
            raise LocalProtocolError(f"{ptype.name} sent, but no request is waiting for it")
        entry = pending[index]
        if entry.kind == _K_SILENT:
            for _ in range(index):
                pending.popleft()
            entry.count -= 1
            if entry.count == 0:
                pending.popleft()
            return
        if entry.kind in (_K_LISTING, _K_LINE):
            raise LocalProtocolError(f"{ptype.name} sent, but an admin reply is due first")
        if entry.kind == _K_REJECTED and not is_error:
            raise LocalProtocolError(f"{ptype.name} sent, but an ERROR is due first")
        if entry.kind == _K_PACKET and not is_error and ptype not in entry.replies:
            raise LocalProtocolError(
                f"{ptype.name} does not answer {_packet_type_of(entry.request).name}"
            )
        for _ in range(index + 1):
            pending.popleft()
        if entry.kind != _K_PACKET:
            return
        req_type = _packet_type_of(entry.request)
        if req_type in _GRAB_TYPES:
            self._grabs -= 1
        if ptype == _T.JOB_CREATED and req_type in _FOREGROUND_SUBMITS:
            handle = event.handle
            self._client_handles[handle] = self._client_handles.get(handle, 0) + 1
        elif ptype in _ASSIGN_TYPES:
            self._worker_handles.add(event.handle)

    # ------------------------------------------------------------ server helpers

    def forget_assignment(self, handle: bytes) -> None:
        """A server took job ``handle`` back from this worker (requeue, timeout, ...).

        Later WORK_* for it from the peer are then refused with JOB_NOT_FOUND.
        """
        self._worker_handles.discard(handle)

    def forget_client_job(self, handle: bytes) -> None:
        """This peer no longer follows job ``handle``; no more WORK_* may go to it."""
        self._client_handles.pop(handle, None)


EVENT_CLASSES_SET: frozenset[type[Any]] = frozenset(EVENT_CLASSES.values())
_ADMIN_COMMANDS: frozenset[type[Any]] = frozenset(
    {
        _admin.Workers,
        _admin.Status,
        _admin.PriorityStatus,
        _admin.MaxQueue,
        _admin.ShowJobs,
        _admin.ShowUniqueJobs,
        _admin.CancelJob,
        _admin.CreateFunction,
        _admin.DropFunction,
        _admin.GetPid,
        _admin.Verbose,
        _admin.Version,
        _admin.Shutdown,
    }
)
_LISTING_FOR: dict[type[Any], type[Any]] = {
    _admin.WorkersReply: _admin.Workers,
    _admin.StatusReply: _admin.Status,
    _admin.PriorityStatusReply: _admin.PriorityStatus,
    _admin.ShowJobsReply: _admin.ShowJobs,
    _admin.ShowUniqueJobsReply: _admin.ShowUniqueJobs,
}
_ADMIN_REPLIES: frozenset[type[Any]] = frozenset(_LISTING_FOR) | {_admin.AdminOk, AdminError}


def _packet_type_of(event: Any) -> PacketType:
    from .events import packet_type

    return packet_type(event)


__all__ += ["ProtocolError"]
