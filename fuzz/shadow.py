"""What a correct server sees in the bytes a case sends: the *shadow* parse.

Each connection's bytes are fed to a server-side :class:`gearproto.Connection` (with
limits wide enough that only framing, not size policy, decides), and every request,
admin command and rejected packet it reports becomes a :class:`Request` saying which
reply a conforming server owes: a packet of given types, an admin line or listing, an
ERROR, or nothing (some requests only ever draw an ERROR).  The oracles compare the
target's replies with this list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gearproto import (
    NEED_DATA,
    Connection,
    ErrorCode,
    FieldKind,
    Limits,
    PacketType,
    RemoteProtocolError,
    Side,
    admin,
    events,
    packet_type,
)
from gearproto import PACKETS as _PACKETS

__all__ = ["REPLIES", "WIDE_LIMITS", "Request", "ShadowConn", "shadow_parse"]

_T = PacketType

#: Limits that never reject a field for its size: the shadow judges framing only.
WIDE_LIMITS = Limits(
    max_packet_size=0xFFFFFFFF,
    max_function=1 << 31,
    max_unique=1 << 31,
    max_handle=1 << 31,
    max_line=1 << 31,
    max_text=1 << 31,
    max_number=1 << 31,
)
#: The protocol's own limits (gearmand's and libgearman's): fields beyond them are
#: "oversize", and a server may refuse them.
REFERENCE_LIMITS = Limits()

#: Reply packet types owed to each request type (an ERROR is always acceptable too).
REPLIES: dict[int, frozenset[int]] = {
    _T.GRAB_JOB: frozenset({_T.JOB_ASSIGN, _T.NO_JOB}),
    _T.GRAB_JOB_UNIQ: frozenset({_T.JOB_ASSIGN_UNIQ, _T.NO_JOB}),
    _T.GRAB_JOB_ALL: frozenset({_T.JOB_ASSIGN_ALL, _T.JOB_ASSIGN_UNIQ, _T.NO_JOB}),
    _T.GET_STATUS: frozenset({_T.STATUS_RES}),
    _T.GET_STATUS_UNIQUE: frozenset({_T.STATUS_RES_UNIQUE}),
    _T.ECHO_REQ: frozenset({_T.ECHO_RES}),
    _T.OPTION_REQ: frozenset({_T.OPTION_RES}),
}
SUBMIT_TYPES = frozenset(
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
FOREGROUND_SUBMITS = frozenset(
    {_T.SUBMIT_JOB, _T.SUBMIT_JOB_HIGH, _T.SUBMIT_JOB_LOW, _T.SUBMIT_REDUCE_JOB}
)
for _t in SUBMIT_TYPES:
    REPLIES[_t] = frozenset({_T.JOB_CREATED})

WORK_TYPES = frozenset(
    {
        _T.WORK_STATUS,
        _T.WORK_COMPLETE,
        _T.WORK_FAIL,
        _T.WORK_EXCEPTION,
        _T.WORK_DATA,
        _T.WORK_WARNING,
    }
)
#: Stands for every ERROR code in :attr:`Request.codes`.
ANY_CODE = frozenset({b"*"})
#: ERROR codes a request without a reply may draw, by request kind.
WORK_ERRORS = frozenset({ErrorCode.JOB_NOT_FOUND, ErrorCode.ARGUMENT_TOO_LARGE})
OTHER_ERRORS = frozenset(
    {
        ErrorCode.INVALID_COMMAND,
        ErrorCode.ARGUMENT_TOO_LARGE,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.INVALID_PACKET,
        ErrorCode.PERMISSION_DENIED,
    }
)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as a correct server reads it, and the reply it owes."""

    #: Short name for reports and signatures: ``GET_STATUS``, ``admin:status``, ...
    label: str
    #: ``"packet"`` (owes one of ``replies`` or ERROR), ``"silent"`` (owes nothing but
    #: may draw an ERROR with a code in ``codes``), ``"error"`` (owes an ERROR),
    #: ``"line"`` / ``"listing"`` (owes an admin reply), ``"optional-line"`` (may draw
    #: an ``ERR`` line).
    kind: str
    replies: frozenset[int] = frozenset()
    codes: frozenset[bytes] = frozenset()
    #: The event or admin command the core parsed (``None`` for rejected packets).
    event: Any = None
    #: Length of the longest field (or admin line) beyond the protocol's reference
    #: limits; 0 if everything is within them.
    oversize: int = 0
    #: A foreground submission (its JOB_CREATED handle will get WORK_* packets).
    foreground: bool = False
    #: For rejected packets: what the core found wrong (for reports).
    detail: str = ""

    @property
    def owes_reply(self) -> bool:
        return self.kind not in ("silent", "optional-line")


@dataclass
class ShadowConn:
    """Everything one connection of a case sends, as a correct server reads it."""

    requests: list[Request] = field(default_factory=list)
    #: Why the byte stream stopped being framable, if it did.
    fatal: str | None = None
    #: Bytes left at the end that do not complete a packet or line.
    incomplete: int = 0
    #: Function names and client ids this connection registered or created.
    names: set[bytes] = field(default_factory=set)
    #: The connection sent text (admin) lines.
    admin: bool = False

    @property
    def framed(self) -> bool:
        """All bytes were read as whole packets/lines and nothing was fatal."""
        return self.fatal is None and self.incomplete == 0


def _oversize(event: Any) -> int:
    """How far ``event`` is beyond the reference limits (0: within them).

    The longest field over its own limit, or, when the NUL-terminated fields add up to
    more than a typical 8 KiB receive buffer (gearmand's), their total.
    """
    ptype = packet_type(event)
    spec = _PACKETS[ptype]
    longest = 0
    arguments = 0
    for index, (spec_field, value) in enumerate(zip(spec.fields, event, strict=False)):
        if not isinstance(value, bytes):
            continue
        if index < spec.nul_terminated:
            arguments += len(value) + 1
        elif spec_field.kind is not FieldKind.DATA:
            arguments += len(value)
        if spec_field.kind in (FieldKind.DATA, FieldKind.NUMBER, FieldKind.FLAG):
            continue
        if len(value) > REFERENCE_LIMITS.for_kind(spec_field.kind):
            longest = max(longest, len(value))
    if arguments > REFERENCE_LIMITS.max_line:
        return max(longest, arguments)
    return longest


def _frame_sizes(data: bytes) -> list[tuple[bool, int]]:
    """``(is_text, length)`` of every whole packet and line in ``data``, in order.

    Framed the way the core frames them, so entry *i* belongs to the *i*-th event or
    rejection the core reports.
    """
    out: list[tuple[bool, int]] = []
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == 0:
            if n - pos < 12:
                break
            size = int.from_bytes(data[pos + 8 : pos + 12], "big")
            out.append((False, size))
            pos += 12 + size
        else:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break
            out.append((True, newline + 1 - pos))
            pos = newline + 1
    return out


def _names_of(event: Any) -> list[bytes]:
    if isinstance(event, events.CanDo | events.CantDo | events.CanDoTimeout):
        return [event.function]
    if isinstance(event, events.SubmitJob | events.SubmitJobEpoch | events.SubmitJobSched):
        return [event.function]
    if isinstance(event, events.SubmitReduceJob):
        return [event.function, event.reducer]
    if isinstance(event, events.SetClientId):
        return [event.client_id]
    if isinstance(event, admin.CreateFunction):
        return [event.function]
    return []


def _request_for(event: Any, line_length: int = 0) -> Request:
    long_line = line_length if line_length > REFERENCE_LIMITS.max_line else 0
    if isinstance(event, admin.AdminBadCommand):
        if len(event.tokens) > admin.MAX_TOKENS:
            return Request("admin:too-many-tokens", "line", event=event, oversize=long_line)
        return Request(
            f"admin:bad:{event.reply.code.decode('latin-1')}",
            "line",
            event=event,
            oversize=long_line,
        )
    if type(event) in _ADMIN_TYPES:
        kind = "listing" if type(event) in admin.LISTING_COMMANDS else "line"
        return Request(f"admin:{type(event).__name__}", kind, event=event, oversize=long_line)
    ptype = packet_type(event)
    replies = REPLIES.get(ptype)
    oversize = _oversize(event)
    if replies is not None:
        return Request(
            ptype.name,
            "packet",
            replies,
            event=event,
            oversize=oversize,
            foreground=ptype in FOREGROUND_SUBMITS,
        )
    codes = WORK_ERRORS if ptype in WORK_TYPES else OTHER_ERRORS
    return Request(ptype.name, "silent", codes=codes, event=event, oversize=oversize)


_ADMIN_TYPES = frozenset(
    {
        admin.Workers,
        admin.Status,
        admin.PriorityStatus,
        admin.MaxQueue,
        admin.ShowJobs,
        admin.ShowUniqueJobs,
        admin.CancelJob,
        admin.CreateFunction,
        admin.DropFunction,
        admin.GetPid,
        admin.Verbose,
        admin.Version,
        admin.Shutdown,
    }
)


def shadow_parse(data: bytes) -> ShadowConn:
    """Read ``data`` (everything one connection sends) as a correct server would."""
    conn = Connection(Side.SERVER, limits=WIDE_LIMITS)
    out = ShadowConn()
    frames = iter(_frame_sizes(data))
    if data:
        conn.receive_data(data)
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            if exc.fatal:
                out.fatal = str(exc)
                # A server may explain why it closes with one last ERROR.
                out.requests.append(Request("fatal-frame", "silent", codes=ANY_CODE))
                return out
            code = exc.code or b""
            # Rejected packets carry no event; their size still tells whether they
            # overflow a typical receive buffer.
            _text, size = next(frames, (False, 0))
            big = size if size > REFERENCE_LIMITS.max_line else 0
            if code == ErrorCode.JOB_NOT_FOUND:
                # The shadow cannot know which jobs the real server assigned to this
                # connection: a WORK_* it rejects may be legitimate there.
                out.requests.append(
                    Request(
                        _label_of(exc), "silent", codes=WORK_ERRORS, oversize=big, detail=str(exc)
                    )
                )
            else:
                out.requests.append(
                    Request(
                        _label_of(exc),
                        "error",
                        codes=frozenset({code}) if code else frozenset(),
                        oversize=big,
                        detail=str(exc),
                    )
                )
            continue
        if event is NEED_DATA:
            out.incomplete = conn.buffered
            if out.incomplete:
                # A server may refuse the unfinished packet or line before it ends (a size
                # limit), with an ERROR or an ERR line.
                text = data[len(data) - out.incomplete] != 0
                out.requests.append(
                    Request("unfinished-line", "optional-line")
                    if text
                    else Request("unfinished-frame", "silent", codes=ANY_CODE)
                )
            return out
        if isinstance(event, events.ConnectionClosed):
            return out
        is_text, length = next(frames, (False, 0))
        line_length = length if is_text else 0
        if type(event) in _ADMIN_TYPES or isinstance(event, admin.AdminBadCommand):
            out.admin = True
        out.names.update(_names_of(event))
        out.requests.append(_request_for(event, line_length))


def _label_of(exc: RemoteProtocolError) -> str:
    """``rejected:<code>``: the ERROR a correct server answers decides the bug class."""
    return f"rejected:{(exc.code or b'ERROR').decode('latin-1')}"


def _packet_of(exc: RemoteProtocolError) -> str:
    """The packet name a core error message starts with ("malformed SUBMIT_JOB: ...")."""
    for token in str(exc).split(" ", 2)[:2]:
        token = token.rstrip(":")
        if token in PacketType.__members__:
            return token
    return ""
