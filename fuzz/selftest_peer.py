"""One fake connection of the server-core fuzz target, and the checks on its output.

Every connection the target opens on :class:`~gearproto.server.ServerCore` has two
views of the protocol, both built from the core library:

* the *mirror*, a ``Connection(Side.SERVER)`` with the server's limits, reads exactly
  the bytes the connection sends: it says which requests the server received, which
  replies it owes, and which ERROR (or ``ERR`` line) a malformed frame must draw.
  Every reply the server writes is decoded and handed to ``mirror.send()``: a reply
  the core library would refuse to send at that point (out of turn, unsolicited,
  WORK_* to a connection that does not follow the job, a listing for a command that
  is answered by one line) is a server bug;
* for *strict* connections (everything they send went through ``client.send()``), the
  client's own ``Connection(Side.CLIENT)`` reads the server's bytes too: its view of
  owed replies, handles and listings must accept every byte, and each answer must
  match its request (ECHO data, STATUS handles, ERROR codes a valid request may get).

The mirror is drained lazily: before a reply is checked, just enough of the received
requests are read to know what it may answer, so a fatal frame later in the same
write does not end the mirror before the replies to the requests before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gearproto import (
    NEED_DATA,
    PACKETS,
    RES,
    Connection,
    ConnectionState,
    Direction,
    ErrorCode,
    Limits,
    LocalProtocolError,
    PacketType,
    RemoteProtocolError,
    Side,
    admin,
)
from gearproto import events as ev
from gearproto._codec import ParseError, decode_body

__all__ = ["Failure", "FakeConn", "StepNotes"]

_T = PacketType
_HEADER = 12
_TERMINAL = (ev.WorkComplete, ev.WorkFail, ev.WorkException)
_ANSWERS_NOTHING = frozenset({b"TIMEOUT", b"TOO_MANY_CONNECTIONS"})

#: ERROR codes a well-formed request may draw from the server, by request class.
ALLOWED_ERRORS: dict[type[Any], frozenset[bytes]] = {
    ev.SubmitJob: frozenset({b"QUEUE_ERROR"}),
    ev.SubmitJobEpoch: frozenset({b"QUEUE_ERROR", b"INVALID_ARGUMENT"}),
    ev.SubmitReduceJob: frozenset({b"QUEUE_ERROR", b"ARGUMENT_TOO_LARGE"}),
    ev.SubmitJobSched: frozenset({b"INVALID_COMMAND"}),
    ev.CanDoTimeout: frozenset({b"INVALID_ARGUMENT"}),
    ev.OptionReq: frozenset({b"UNKNOWN_OPTION"}),
    ev.Unused: frozenset({b"INVALID_COMMAND"}),
    ev.AllYours: frozenset({b"INVALID_COMMAND"}),
    ev.WorkComplete: frozenset({ErrorCode.JOB_NOT_FOUND}),
    ev.WorkFail: frozenset({ErrorCode.JOB_NOT_FOUND}),
    ev.WorkException: frozenset({ErrorCode.JOB_NOT_FOUND}),
    ev.WorkData: frozenset({ErrorCode.JOB_NOT_FOUND}),
    ev.WorkWarning: frozenset({ErrorCode.JOB_NOT_FOUND}),
    ev.WorkStatus: frozenset({ErrorCode.JOB_NOT_FOUND}),
}
#: ``ERR`` codes a well-formed admin command may draw, by command class.
ALLOWED_ADMIN_ERRORS: dict[type[Any], frozenset[bytes]] = {
    admin.CancelJob: frozenset({b"UNKNOWN_JOB", b"PERMISSION_DENIED"}),
    admin.DropFunction: frozenset({b"there", b"function", b"PERMISSION_DENIED"}),
    admin.MaxQueue: frozenset({b"PERMISSION_DENIED"}),
    admin.CreateFunction: frozenset({b"PERMISSION_DENIED"}),
    admin.Shutdown: frozenset({b"PERMISSION_DENIED"}),
}


class Failure(AssertionError):
    """The server core broke an invariant (the fuzz target's finding)."""

    #: The id of a known defect this failure is an instance of, if any.
    defect: str | None = None


@dataclass
class StepNotes:
    """What the requests read during one step did, for the job-conservation check."""

    #: Handles of jobs a worker ended (WORK_COMPLETE / FAIL / EXCEPTION it held).
    ended: set[bytes] = field(default_factory=set)
    #: Handles named by ``cancel job``.
    cancelled: set[bytes] = field(default_factory=set)
    #: Handles acknowledged by JOB_CREATED in this step, with the connection.
    created: list[tuple[int, bytes]] = field(default_factory=list)
    #: (connection, reply, request) for strict answers, for checks against the tables.
    answers: list[tuple[int, Any, Any]] = field(default_factory=list)


def _response_types() -> frozenset[int]:
    return frozenset(
        int(t) for t, spec in PACKETS.items() if spec.direction is not Direction.REQUEST
    )


_RESPONSE_TYPES = _response_types()


class FakeConn:
    """One connection to the core: what it sent, and the checks on what came back."""

    def __init__(
        self,
        conn_id: int,
        limits: Limits,
        *,
        strict: bool,
        local: bool,
        on_defect: Callable[[str, str], None],
    ) -> None:
        self.conn_id = conn_id
        self.on_defect = on_defect
        self.strict = strict
        self.local = local
        self.limits = limits
        self.mirror = Connection(Side.SERVER, limits=limits)
        self.client = Connection(Side.CLIENT, limits=limits) if strict else None
        #: Server output not yet decoded (a reply must never be left half-written).
        self.out = bytearray()
        #: Admin commands (or refused lines) owed a text reply, in order.
        self.admin_owed: deque[Any] = deque()
        self.listing: list[bytes] | None = None
        #: Bytes chosen for this connection but not given to the core yet (a split).
        self.unsent = b""
        #: A big packet being read into the core's own buffer (take_large_frame).
        self.frame: memoryview | None = None
        self.frame_filled = 0
        #: The incomplete packet or line the core holds, as our framer sees it, and
        #: when it began arriving (the core's partial-packet timer).
        self.tail = b""
        self.partial_since: float | None = None
        self.framing_broken = False
        #: The mirror found a fatal frame: its ERROR must come, then the close.
        self.fatal: Any = None
        self.fatal_answered = False
        #: Replies still owed for requests before the fatal frame (held for a commit).
        self.owed_before_fatal = 0
        self.eof_sent = False
        self.refused = False
        self.closed = False
        #: When bytes last went either way, and when they last came from the peer.
        self.last_active = 0.0
        self.last_input = 0.0
        self.timeout_sent = False
        self.sent = 0
        self.notes = StepNotes()
        #: What the connection sent from the first frame the mirror has not read yet.
        self.stream = bytearray()
        self.frame_pos = 0
        #: ERRORs taken as refusals of requests without a reply since the last answer.
        self.run_errors: list[Any] = []
        #: An ERROR could not be placed for sure: replies are only decoded from then on.
        self.unsure = False

    def __repr__(self) -> str:
        kind = "strict" if self.strict else "rogue"
        return f"<conn {self.conn_id} {kind}>"

    def fail(self, message: str) -> Failure:
        return Failure(f"connection {self.conn_id} ({'strict' if self.strict else 'rogue'}):"
                       f" {message}")  # fmt: skip

    # ---------------------------------------------------------------- what we send

    def sending(self, data: bytes, now: float) -> None:
        """``data`` is about to be given to the core (mirror and framer follow it)."""
        if not data:
            return
        self.sent += len(data)
        self.last_active = now
        self.last_input = now
        if self.mirror.state is ConnectionState.OPEN:
            self.mirror.receive_data(data)
            self.stream += data
        self._frame(data, now)

    def _frame(self, data: bytes, now: float) -> None:
        """Track the incomplete frame at the end of the stream, as the core frames it."""
        if self.framing_broken:
            return
        buf = self.tail + data
        was_partial = bool(self.tail)
        pos = 0
        completed = False
        n = len(buf)
        limits = self.limits
        while pos < n:
            if buf[pos] == 0:
                if n - pos < _HEADER:
                    break
                size = int.from_bytes(buf[pos + 8 : pos + 12], "big")
                magic = buf[pos : pos + 4]
                ptype = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                # The core waits for the declared body of any \0REQ packet within the
                # size limit (and of a \0RES one of a known type) before judging it.
                waits = size <= limits.max_packet_size and (
                    magic == b"\0REQ" or (magic == b"\0RES" and 0 < ptype <= 42)
                )
                if not waits:
                    self.framing_broken = True  # unframeable: the core closes
                    self.tail = b""
                    self.partial_since = None
                    return
                if pos + _HEADER + size > n:
                    break
                pos += _HEADER + size
            else:
                newline = buf.find(b"\n", pos, pos + limits.max_line)
                if newline < 0:
                    if n - pos >= limits.max_line:
                        self.framing_broken = True  # over-long line: the core closes
                        self.tail = b""
                        self.partial_since = None
                        return
                    break
                pos = newline + 1
            completed = True
        self.tail = buf[pos:]
        if not self.tail:
            self.partial_since = None
        elif completed or not was_partial:
            self.partial_since = now

    def eof(self) -> None:
        # The mirror is not told: replies owed before the EOF still come, and the core
        # reads nothing after it (an unfinished frame is simply dropped).
        self.eof_sent = True

    # ------------------------------------------------------------- the mirror

    def _pull(self) -> bool:
        """Read one more request from the mirror; False when it has none."""
        mirror = self.mirror
        if mirror.state is not ConnectionState.OPEN:
            return False
        length = self._frame_length()
        try:
            event = mirror.next_event()
        except RemoteProtocolError as exc:
            hint = exc.hint
            if exc.fatal:
                self.fatal = hint if hint is not None else exc
                self.owed_before_fatal = mirror.pending_replies
                if hint is None:
                    self.fatal_answered = True  # nothing to say
                elif any(_same_refusal(e, hint) for e in self.run_errors):
                    # Its ERROR already came and was taken for a refusal of a request
                    # without a reply (the codes are shared); it was this one's.
                    self.fatal_answered = True
            else:
                self._advance(length)
            if isinstance(hint, admin.AdminError):
                self.admin_owed.append(hint)
            return mirror.state is ConnectionState.OPEN
        if event is NEED_DATA or type(event) is ev.ConnectionClosed:
            return False
        self._advance(length)
        notes = self.notes
        cls = type(event)
        request: Any = event
        if cls in _TERMINAL:
            notes.ended.add(request.handle)
        elif cls is admin.CancelJob:
            notes.cancelled.add(request.handle)
        if cls in admin.COMMAND_CLASSES:
            self.admin_owed.append(event)
        return True

    def pull_all(self) -> None:
        while self._pull():
            pass

    def _pull_until(self, enough: Any, reply: Any) -> None:
        """Read requests until ``enough()``; a fatal frame is read only if ``reply`` is
        its refusal (the replies to the requests before it come first)."""
        while not enough():
            fatal = self._next_fatal()
            if fatal is not None and not _same_refusal(reply, fatal):
                return
            if not self._pull():
                return

    def _pull_until_owed(self, reply: Any) -> None:
        self._pull_until(lambda: self.mirror.pending_replies > 0, reply)

    def _pull_until_admin(self, reply: Any) -> None:
        self._pull_until(lambda: bool(self.admin_owed), reply)

    # The stream as the mirror frames it, to look one frame ahead.

    def _frame_length(self) -> int:
        """Bytes of the next frame in the stream (0: incomplete or unframeable)."""
        buf = self.stream
        pos = self.frame_pos
        n = len(buf)
        if pos >= n:
            return 0
        if buf[pos] == 0:
            if n - pos < _HEADER:
                return 0
            size = int.from_bytes(buf[pos + 8 : pos + 12], "big")
            return _HEADER + size if n - pos >= _HEADER + size else 0
        newline = buf.find(b"\n", pos)
        return newline + 1 - pos if newline >= 0 else 0

    def _advance(self, length: int) -> None:
        self.frame_pos += length
        if self.frame_pos > 1 << 16:
            del self.stream[: self.frame_pos]
            self.frame_pos = 0

    def _next_fatal(self) -> Any:
        """The refusal the next frame draws if it ends the connection, else ``None``."""
        buf = self.stream
        pos = self.frame_pos
        n = len(buf)
        limits = self.limits
        if pos >= n:
            return None
        if buf[pos] == 0:
            if n - pos < _HEADER:
                return None
            magic = bytes(buf[pos : pos + 4])
            ptype = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            size = int.from_bytes(buf[pos + 8 : pos + 12], "big")
            if magic in (b"\0REQ", RES) and 0 < ptype <= 42 and size <= limits.max_packet_size:
                return None
            head = bytes(buf[pos : pos + _HEADER])
        else:
            if buf.find(b"\n", pos, pos + limits.max_line) >= 0 or n - pos < limits.max_line:
                return None
            head = bytes(buf[pos : pos + limits.max_line])
        scout = Connection(Side.SERVER, limits=limits)
        scout.receive_data(head)
        try:
            scout.next_event()
        except RemoteProtocolError as exc:
            if exc.fatal:
                return exc.hint if exc.hint is not None else exc
        return None

    # ------------------------------------------------------- what comes back

    def received(self, data: bytes, now: float) -> None:
        """Bytes the core wrote to this connection."""
        if not data:
            return
        self.last_active = now
        self.out += data
        self._decode()
        client = self.client
        if client is not None:
            try:
                client.receive_data(data)
            except LocalProtocolError as exc:
                raise self.fail(f"the client cannot take more bytes: {exc}") from None
            self._client_events()

    def _decode(self) -> None:
        buf = self.out
        pos = 0
        n = len(buf)
        while pos < n:
            if self.listing is not None or buf[pos] != 0:
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    break
                self._line(bytes(buf[pos:newline]))
                pos = newline + 1
                continue
            if n - pos < _HEADER:
                break
            magic = bytes(buf[pos : pos + 4])
            ptype = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            size = int.from_bytes(buf[pos + 8 : pos + 12], "big")
            if n - pos - _HEADER < size:
                break
            body = bytes(buf[pos + _HEADER : pos + _HEADER + size])
            pos += _HEADER + size
            if magic != RES:
                raise self.fail(f"reply with magic {magic!r} (type {ptype})")
            if ptype not in _RESPONSE_TYPES:
                raise self.fail(f"the server sent packet type {ptype}, not a reply type")
            try:
                event = decode_body(ptype, body)
            except ParseError as exc:
                raise self.fail(f"{_T(ptype).name} reply does not parse: {exc}") from None
            self._packet(event)
        del buf[:pos]

    def _packet(self, event: Any) -> None:
        cls = type(event)
        mirror = self.mirror
        if cls is not ev.Noop and cls not in _WORK_REPLIES:
            if cls is ev.Error and event.code in _ANSWERS_NOTHING:
                self.timeout_sent = self.timeout_sent or event.code == b"TIMEOUT"
            else:
                self._pull_until_owed(event)
        if cls is ev.JobCreated:
            self.notes.created.append((self.conn_id, event.handle))
        if cls is ev.Error and len(event.text) > self.limits.max_text:
            # The limit is on what peers send; the server's own texts may be longer.
            event = ev.Error(event.code, event.text[: self.limits.max_text])
        if self.unsure:
            return
        if mirror.state is not ConnectionState.OPEN:
            self._after_fatal(event)
            return
        owed = mirror.pending_replies
        first: Any = _first_owed(mirror) if cls is ev.Error else None
        if (
            type(first).__name__ == "_Owed"
            and event.code == b"INVALID_COMMAND"
            and first.hint is not None
            and first.hint.code in (b"ARGUMENT_TOO_LARGE", b"INVALID_PACKET")
        ):
            # SUBMIT_JOB_SCHED is refused whatever its fields hold.
            self.on_defect(
                "sched-fields-unchecked",
                f"connection {self.conn_id}: {_show(event)} where the core library answers"
                f" {_show(first.hint)}",
            )
            event = first.hint
        try:
            mirror.send(event)
        except LocalProtocolError as exc:
            raise self.fail(f"the server sent {_show(event)}, which is not allowed here: {exc}"
                            ) from None  # fmt: skip
        if cls is ev.Error and mirror.pending_replies == owed:
            self.run_errors.append(event)
            if owed and event.code in ALLOWED_ERRORS.get(type(_first_owed(mirror)), ()):
                # Taken for the refusal of a request without a reply, though the
                # request owed one after it may draw the same code: Gearman cannot
                # tell which (no request ids).  Only byte fuzzing makes such
                # sequences; from here on this connection's replies are only decoded.
                self.unsure = True
        elif mirror.pending_replies < owed:
            self.run_errors.clear()

    def _after_fatal(self, event: Any) -> None:
        """A reply after the mirror read a fatal frame: replies owed before it (held
        back for a store commit), then the ERROR explaining the close."""
        cls = type(event)
        if cls is ev.Noop or cls in _WORK_REPLIES:
            return
        if self.owed_before_fatal:
            self.owed_before_fatal -= 1
            return
        if cls is ev.Error:
            hint = self.fatal
            if isinstance(hint, ev.Error) and event.code == hint.code:
                self.fatal_answered = True
                return
            if event.code in _ANSWERS_NOTHING or event.code in _RUN_ERRORS:
                return  # a timeout, or the refusal of a request without a reply
            raise self.fail(f"ERROR {event.code!r} after a fatal frame, expected {_show(hint)}")
        raise self.fail(f"the server sent {_show(event)} after a fatal frame ({_show(self.fatal)})")

    def _line(self, raw: bytes) -> None:
        if self.listing is not None:
            if raw in (b".", b".\r"):
                rows, self.listing = self.listing, None
                command = self.admin_owed[0]
                try:
                    reply = admin.parse_listing(type(command), rows)
                except admin.AdminParseError as exc:
                    raise self.fail(f"the listing for {_show(command)} does not parse: {exc}"
                                    ) from None  # fmt: skip
                self._admin_reply(reply)
            else:
                self.listing.append(raw)
            return
        line = raw[:-1] if raw.endswith(b"\r") else raw
        refusal: Any = None
        if line.startswith(b"ERR "):
            code, _, text = line[4:].partition(b" ")
            refusal = admin.AdminError(code, text)
        self._pull_until_admin(refusal)
        if not self.admin_owed:
            if raw.startswith(b"ERR TIMEOUT "):
                self.timeout_sent = True  # the farewell of a timed-out text connection
                return
            raise self.fail(f"text line {raw[:80]!r}, but no admin command was sent")
        command = self.admin_owed[0]
        if type(command) in admin.LISTING_COMMANDS and not admin.is_listing_error(
            type(command), line
        ):
            if raw in (b".", b".\r"):
                self._admin_reply(admin.parse_listing(type(command), []))
            else:
                self.listing = [raw]
            return
        try:
            reply = admin.parse_reply_line(line)
        except admin.AdminParseError as exc:
            raise self.fail(f"reply to {_show(command)} is not OK/ERR: {exc}") from None
        if type(command) is admin.AdminBadCommand and reply != command.reply:
            raise self.fail(f"{_show(command)} was answered {reply!r}, expected {command.reply!r}")
        self._admin_reply(reply)

    def _admin_reply(self, reply: Any) -> None:
        owed = self.admin_owed.popleft()
        if self.unsure:
            return
        if isinstance(owed, admin.AdminError):
            # A refused line (over-long): the refusal itself is owed.
            if not isinstance(reply, admin.AdminError) or reply.code != owed.code:
                raise self.fail(f"a refused admin line was answered {reply!r}, not {owed!r}")
            if self.fatal is owed:
                self.fatal_answered = True
        if self.mirror.state is not ConnectionState.OPEN:
            if isinstance(owed, admin.AdminError):
                return  # the farewell after a fatal frame
            if self.owed_before_fatal:
                self.owed_before_fatal -= 1  # owed before the fatal frame (held back)
                return
            raise self.fail(f"{_show(reply)} after a fatal frame ({_show(self.fatal)})")
        try:
            self.mirror.send(reply)
        except LocalProtocolError as exc:
            raise self.fail(f"the server sent {_show(reply)}, which is not allowed here: {exc}"
                            ) from None  # fmt: skip

    # ----------------------------------------------------------- strict client

    def _client_events(self) -> None:
        client = self.client
        assert client is not None
        while True:
            try:
                event = client.next_event()
            except RemoteProtocolError as exc:
                if self.timeout_sent:
                    # An idle or partial timeout's farewell ERR line answers nothing,
                    # which a client cannot place; the connection is closing anyway.
                    self.client = None
                    return
                raise self.fail(f"the client refuses the server's reply: {exc}") from None
            if event is NEED_DATA:
                return
            request = client.answered
            self._check_answer(event, request)

    def _check_answer(self, reply: Any, request: Any) -> None:
        cls = type(reply)
        if cls is ev.ConnectionClosed:
            return
        if request is not None:
            self.notes.answers.append((self.conn_id, reply, request))
        if cls is ev.Error:
            if request is None or reply.code in _ANSWERS_NOTHING:
                return
            if type(request) not in _OWED_REQUESTS:
                # Requests without a reply form runs, and an ERROR is placed on a run
                # by its code alone: which member drew it is not known.
                allowed = _RUN_ERRORS
            else:
                allowed = ALLOWED_ERRORS.get(type(request), frozenset())
            if reply.code not in allowed:
                raise self.fail(
                    f"ERROR {reply.code!r} ({reply.text[:60]!r}) for the valid request"
                    f" {_show(request)}"
                )
            return
        if cls is admin.AdminError:
            if reply.code == b"TIMEOUT":
                return  # the line was still unfinished when the partial timeout came
            allowed = ALLOWED_ADMIN_ERRORS.get(type(request), frozenset())
            if reply.code not in allowed and not (
                reply.code == b"PERMISSION_DENIED" and not self.local
            ):
                raise self.fail(f"ERR {reply.code!r} for the valid command {_show(request)}")
            return
        if cls is ev.EchoRes and (type(request) is not ev.EchoReq or reply.data != request.data):
            raise self.fail(f"ECHO_RES {reply.data[:40]!r} for {_show(request)}")
        if cls is ev.StatusRes and reply.handle != request.handle:
            raise self.fail(f"STATUS_RES for {reply.handle!r} answers {_show(request)}")
        if cls is ev.StatusResUnique and reply.unique != request.unique:
            raise self.fail(f"STATUS_RES_UNIQUE for {reply.unique!r} answers {_show(request)}")
        if cls is ev.OptionRes and reply.option != request.option:
            raise self.fail(f"OPTION_RES {reply.option!r} answers {_show(request)}")


#: Requests that are owed a reply (the others get one only if refused).
_OWED_REQUESTS = frozenset(
    {
        ev.SubmitJob, ev.SubmitJobEpoch, ev.SubmitJobSched, ev.SubmitReduceJob, ev.GetStatus,
        ev.GetStatusUnique, ev.EchoReq, ev.OptionReq, ev.GrabJob, ev.GrabJobUniq,
        ev.GrabJobAll, ev.Unused,
    }
)  # fmt: skip
_RUN_ERRORS = frozenset(
    {
        ErrorCode.JOB_NOT_FOUND, ErrorCode.INVALID_ARGUMENT, ErrorCode.INVALID_COMMAND,
        ErrorCode.ARGUMENT_TOO_LARGE, ErrorCode.PERMISSION_DENIED,
    }
)  # fmt: skip
_WORK_REPLIES = frozenset(
    {ev.WorkComplete, ev.WorkFail, ev.WorkException, ev.WorkData, ev.WorkWarning, ev.WorkStatus}
)


def _first_owed(mirror: Connection) -> Any:
    """The first request ``mirror`` still owes a reply to (private state: this is the
    core's own test)."""
    for entry in mirror._pending:
        if type(entry) is not list:
            return entry
    return None


def _same_refusal(reply: Any, fatal: Any) -> bool:
    """Whether ``reply`` is the ERROR (or ERR line) the fatal frame draws."""
    if isinstance(fatal, ev.Error):
        return type(reply) is ev.Error and reply.code == fatal.code
    if isinstance(fatal, admin.AdminError):
        return isinstance(reply, admin.AdminError) and reply.code == fatal.code
    return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
