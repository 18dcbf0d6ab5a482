"""The declarative packet table: every Gearman packet type, its direction and its fields.

This one table drives the codec, the event classes' consistency test, the generated
protocol table in the docs, the hypothesis strategies and the fuzzer's generators.

Wire layout of a binary packet: 4-byte magic (``\\0REQ`` towards the server,
``\\0RES`` from it), 4-byte big-endian type, 4-byte big-endian body size, body.
In the body every field but the last is terminated by a NUL byte; the last field
(the *tail*) is the rest of the body and may itself contain NUL bytes.  Packets
with no fields have an empty body.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "HEADER_SIZE",
    "PACKETS",
    "REQ",
    "RES",
    "Direction",
    "FieldKind",
    "FieldSpec",
    "PacketSpec",
    "PacketType",
    "Priority",
]

#: Magic of packets sent to a server.
REQ = b"\0REQ"
#: Magic of packets sent by a server.
RES = b"\0RES"
#: Every binary packet starts with a header of this many bytes.
HEADER_SIZE = 12


class PacketType(enum.IntEnum):
    """Packet type numbers, as on the wire (``gearman_command_t``)."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


class Priority(enum.IntEnum):
    """Job priority; the numbers are gearmand's (and its queue tables')."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


class Direction(enum.Enum):
    """Which side of a connection may send a packet type."""

    #: Sent to the server (``\\0REQ``) by a client or a worker.
    REQUEST = "request"
    #: Sent by the server (``\\0RES``).
    RESPONSE = "response"
    #: Sent by a worker to the server, then forwarded by the server to clients.
    BOTH = "both"


class FieldKind(enum.Enum):
    """What a field holds; decides its Python type and which size limit applies."""

    #: A function name (bytes), limited by ``Limits.max_function``.
    FUNCTION = "function"
    #: A client-chosen unique id (bytes), limited by ``Limits.max_unique``.
    UNIQUE = "unique"
    #: A server-chosen job handle (bytes), limited by ``Limits.max_handle``.
    HANDLE = "handle"
    #: An opaque payload (bytes); only the packet size limits it.
    DATA = "data"
    #: A decimal ASCII integer, exposed as ``int``.
    NUMBER = "number"
    #: ``0`` or ``1`` as ASCII, exposed as ``bool``.
    FLAG = "flag"
    #: A short text (option names, client ids, error codes, ...), kept as bytes.
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a packet body: its name (the event's attribute) and its kind."""

    name: str
    kind: FieldKind


@dataclass(frozen=True, slots=True)
class PacketSpec:
    """One row of the packet table."""

    type: PacketType
    direction: Direction
    fields: tuple[FieldSpec, ...]
    #: What gearmand does with it, in a few words (rendered into the docs table).
    summary: str

    @property
    def name(self) -> str:
        """The packet's name, e.g. ``"SUBMIT_JOB"``."""
        return self.type.name

    @property
    def tail(self) -> FieldSpec | None:
        """The opaque last field (rest of the body), or ``None`` for empty bodies."""
        return self.fields[-1] if self.fields else None

    @property
    def nul_terminated(self) -> int:
        """How many fields are NUL-terminated (all but the tail)."""
        return max(len(self.fields) - 1, 0)

    @property
    def may_send_request(self) -> bool:
        """Whether clients and workers send it (with ``\\0REQ``)."""
        return self.direction is not Direction.RESPONSE

    @property
    def may_send_response(self) -> bool:
        """Whether servers send it (with ``\\0RES``)."""
        return self.direction is not Direction.REQUEST


def _f(spec: str) -> tuple[FieldSpec, ...]:
    """Parse a compact field list like ``"handle:handle data:data"``."""
    out = []
    for item in spec.split():
        name, _, kind = item.partition(":")
        out.append(FieldSpec(name, FieldKind(kind)))
    return tuple(out)


_REQ, _RES, _BOTH = Direction.REQUEST, Direction.RESPONSE, Direction.BOTH
_SUBMIT = "function:function unique:unique data:data"
_WORK = "handle:handle data:data"

_ROWS: list[tuple[PacketType, Direction, str, str]] = [
    (PacketType.CAN_DO, _REQ, "function:function", "register a function"),
    (PacketType.CANT_DO, _REQ, "function:function", "unregister a function"),
    (PacketType.RESET_ABILITIES, _REQ, "", "unregister all functions"),
    (PacketType.PRE_SLEEP, _REQ, "", "worker sleeps until NOOP"),
    (PacketType.UNUSED, _REQ, "", "reserved number; answered with ERROR"),
    (PacketType.NOOP, _RES, "", "wake a sleeping worker"),
    (PacketType.SUBMIT_JOB, _REQ, _SUBMIT, "foreground job, normal priority"),
    (PacketType.JOB_CREATED, _RES, "handle:handle", "handle of a submitted job"),
    (PacketType.GRAB_JOB, _REQ, "", "ask for a job"),
    (PacketType.NO_JOB, _RES, "", "no job to hand out"),
    (PacketType.JOB_ASSIGN, _RES, "handle:handle function:function data:data", "a job"),
    (
        PacketType.WORK_STATUS,
        _BOTH,
        "handle:handle numerator:number denominator:number",
        "progress",
    ),
    (PacketType.WORK_COMPLETE, _BOTH, _WORK, "success with result"),
    (PacketType.WORK_FAIL, _BOTH, "handle:handle", "failure"),
    (PacketType.GET_STATUS, _REQ, "handle:handle", "status of a job by handle"),
    (PacketType.ECHO_REQ, _REQ, "data:data", "echo request"),
    (PacketType.ECHO_RES, _RES, "data:data", "echo reply"),
    (PacketType.SUBMIT_JOB_BG, _REQ, _SUBMIT, "background job, normal priority"),
    (PacketType.ERROR, _RES, "code:text text:text", "error report"),
    (
        PacketType.STATUS_RES,
        _RES,
        "handle:handle known:flag running:flag numerator:number denominator:number",
        "answer to GET_STATUS",
    ),
    (PacketType.SUBMIT_JOB_HIGH, _REQ, _SUBMIT, "foreground job, high priority"),
    (PacketType.SET_CLIENT_ID, _REQ, "client_id:text", "name this connection"),
    (
        PacketType.CAN_DO_TIMEOUT,
        _REQ,
        "function:function timeout:number",
        "register a function with a job timeout (ms)",
    ),
    (PacketType.ALL_YOURS, _REQ, "", "not implemented by gearmand"),
    (PacketType.WORK_EXCEPTION, _BOTH, _WORK, "failure with exception data"),
    (PacketType.OPTION_REQ, _REQ, "option:text", "enable a connection option"),
    (PacketType.OPTION_RES, _RES, "option:text", "option accepted"),
    (PacketType.WORK_DATA, _BOTH, _WORK, "partial result"),
    (PacketType.WORK_WARNING, _BOTH, _WORK, "warning data"),
    (PacketType.GRAB_JOB_UNIQ, _REQ, "", "ask for a job, with its unique id"),
    (
        PacketType.JOB_ASSIGN_UNIQ,
        _RES,
        "handle:handle function:function unique:unique data:data",
        "a job with its unique id",
    ),
    (PacketType.SUBMIT_JOB_HIGH_BG, _REQ, _SUBMIT, "background job, high priority"),
    (PacketType.SUBMIT_JOB_LOW, _REQ, _SUBMIT, "foreground job, low priority"),
    (PacketType.SUBMIT_JOB_LOW_BG, _REQ, _SUBMIT, "background job, low priority"),
    (
        PacketType.SUBMIT_JOB_SCHED,
        _REQ,
        "function:function unique:unique minute:text hour:text mday:text"
        " month:text wday:text data:data",
        "cron-style job; not implemented by gearmand",
    ),
    (
        PacketType.SUBMIT_JOB_EPOCH,
        _REQ,
        "function:function unique:unique epoch:number data:data",
        "background job not run before a Unix time",
    ),
    (
        PacketType.SUBMIT_REDUCE_JOB,
        _REQ,
        "function:function unique:unique reducer:function aggregator:text data:data",
        "foreground map/reduce job",
    ),
    (
        PacketType.SUBMIT_REDUCE_JOB_BACKGROUND,
        _REQ,
        "function:function unique:unique reducer:function aggregator:text data:data",
        "background map/reduce job",
    ),
    (PacketType.GRAB_JOB_ALL, _REQ, "", "ask for a job, with unique id and reducer"),
    (
        PacketType.JOB_ASSIGN_ALL,
        _RES,
        "handle:handle function:function unique:unique reducer:function data:data",
        "a job with unique id and reducer",
    ),
    (PacketType.GET_STATUS_UNIQUE, _REQ, "unique:unique", "status of a job by unique id"),
    (
        PacketType.STATUS_RES_UNIQUE,
        _RES,
        "unique:unique known:flag running:flag numerator:number denominator:number"
        " client_count:number",
        "answer to GET_STATUS_UNIQUE",
    ),
]

#: The packet table, indexed by type.
PACKETS: dict[PacketType, PacketSpec] = {
    ptype: PacketSpec(ptype, direction, _f(fields), summary)
    for ptype, direction, fields, summary in _ROWS
}
assert list(PACKETS) == list(PacketType), "the table must list every type, in order"
