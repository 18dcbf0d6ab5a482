"""One event class per Gearman packet type, plus connection-level events.

Events are immutable named tuples: cheap to build (the parser makes millions of them),
hashable, pattern-matchable (``case WorkComplete(handle=h, data=d):``) and typed.
Two events are equal only if they are of the same class and have equal fields.

Every identifier and payload is ``bytes`` and is never decoded.  Numbers on the wire
(decimal ASCII) are ``int``; the 0/1 flags of STATUS_RES are ``bool``.

Events are not validated when built; :meth:`gearproto.Connection.send` validates them
against the connection's limits and state and raises
:class:`~gearproto.LocalProtocolError` before producing any byte.

The six SUBMIT_JOB* variants are one class, :class:`SubmitJob`, whose ``priority`` and
``background`` fields pick the packet type; the two SUBMIT_REDUCE_JOB* variants are
:class:`SubmitReduceJob` with a ``background`` field.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, TypeAlias, TypeVar

from ._spec import PacketType, Priority

__all__ = [
    "AllYours",
    "CanDo",
    "CanDoTimeout",
    "CantDo",
    "ConnectionClosed",
    "EchoReq",
    "EchoRes",
    "Error",
    "Event",
    "GetStatus",
    "GetStatusUnique",
    "GrabJob",
    "GrabJobAll",
    "GrabJobUniq",
    "JobAssign",
    "JobAssignAll",
    "JobAssignUniq",
    "JobCreated",
    "NoJob",
    "Noop",
    "OptionReq",
    "OptionRes",
    "PacketEvent",
    "PreSleep",
    "ResetAbilities",
    "SetClientId",
    "StatusRes",
    "StatusResUnique",
    "SubmitJob",
    "SubmitJobEpoch",
    "SubmitJobSched",
    "SubmitReduceJob",
    "Unused",
    "WorkComplete",
    "WorkData",
    "WorkException",
    "WorkFail",
    "WorkStatus",
    "WorkWarning",
    "packet_type",
]

_T = TypeVar("_T")


def _typed_eq(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _typed_ne(self: tuple[Any, ...], other: object) -> bool:
    return not _typed_eq(self, other)


def _typed_hash(self: tuple[Any, ...]) -> int:
    return hash((type(self).__name__, tuple.__hash__(self)))


#: Longest ``bytes`` value shown whole in an event's repr; longer ones are cut.
REPR_BYTES = 64


def _field_repr(value: object) -> str:
    if type(value) is bytes and len(value) > REPR_BYTES:
        return f"{value[:REPR_BYTES]!r}...<{len(value)} bytes>"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def _typed_repr(self: tuple[Any, ...]) -> str:
    fields: tuple[str, ...] = getattr(self, "_fields", ())
    inner = ", ".join(
        f"{name}={_field_repr(value)}" for name, value in zip(fields, self, strict=True)
    )
    return f"{type(self).__name__}({inner})"


def _event(cls: type[_T]) -> type[_T]:
    """Make a NamedTuple compare and hash by class as well as by fields.

    Also gives it a repr that stays readable for multi-megabyte payloads (long
    ``bytes`` values are cut, with their length shown) and prints enums by name.
    """
    cls.__eq__ = _typed_eq  # type: ignore[assignment,method-assign]
    cls.__ne__ = _typed_ne  # type: ignore[assignment,method-assign]
    cls.__hash__ = _typed_hash  # type: ignore[assignment,method-assign]
    cls.__repr__ = _typed_repr  # type: ignore[assignment,method-assign]
    return cls


# --------------------------------------------------------------------------- worker


@_event
class CanDo(NamedTuple):
    """CAN_DO (1): the worker can run ``function``."""

    function: bytes


@_event
class CantDo(NamedTuple):
    """CANT_DO (2): the worker no longer runs ``function``."""

    function: bytes


@_event
class ResetAbilities(NamedTuple):
    """RESET_ABILITIES (3): the worker forgets every function."""


@_event
class PreSleep(NamedTuple):
    """PRE_SLEEP (4): the worker sleeps until the server sends NOOP."""


@_event
class Unused(NamedTuple):
    """Type 5, reserved; servers answer it with ERROR INVALID_COMMAND."""


@_event
class Noop(NamedTuple):
    """NOOP (6): wake-up call for a sleeping worker."""


@_event
class GrabJob(NamedTuple):
    """GRAB_JOB (9): ask for a job; answered by JOB_ASSIGN or NO_JOB."""


@_event
class NoJob(NamedTuple):
    """NO_JOB (10): nothing to hand out."""


@_event
class JobAssign(NamedTuple):
    """JOB_ASSIGN (11): a job for the worker."""

    handle: bytes
    function: bytes
    data: bytes


@_event
class GrabJobUniq(NamedTuple):
    """GRAB_JOB_UNIQ (30): ask for a job; answered by JOB_ASSIGN_UNIQ or NO_JOB."""


@_event
class JobAssignUniq(NamedTuple):
    """JOB_ASSIGN_UNIQ (31): a job with the unique id its client gave."""

    handle: bytes
    function: bytes
    unique: bytes
    data: bytes


@_event
class GrabJobAll(NamedTuple):
    """GRAB_JOB_ALL (39): like GRAB_JOB_UNIQ, but reduce jobs come as JOB_ASSIGN_ALL."""


@_event
class JobAssignAll(NamedTuple):
    """JOB_ASSIGN_ALL (40): a job with its unique id and reducer function."""

    handle: bytes
    function: bytes
    unique: bytes
    reducer: bytes
    data: bytes


@_event
class SetClientId(NamedTuple):
    """SET_CLIENT_ID (22): the id the server shows for this connection."""

    client_id: bytes


@_event
class CanDoTimeout(NamedTuple):
    """CAN_DO_TIMEOUT (23): like CAN_DO, with a per-job timeout in milliseconds."""

    function: bytes
    timeout: int


@_event
class AllYours(NamedTuple):
    """ALL_YOURS (24): defined by the protocol, implemented by no known server."""


# ----------------------------------------------------------------------- work results


@_event
class WorkStatus(NamedTuple):
    """WORK_STATUS (12): progress ``numerator``/``denominator`` of a job."""

    handle: bytes
    numerator: int
    denominator: int


@_event
class WorkComplete(NamedTuple):
    """WORK_COMPLETE (13): the job succeeded with ``data`` as its result."""

    handle: bytes
    data: bytes


@_event
class WorkFail(NamedTuple):
    """WORK_FAIL (14): the job failed."""

    handle: bytes


@_event
class WorkException(NamedTuple):
    """WORK_EXCEPTION (25): the job failed with exception ``data``."""

    handle: bytes
    data: bytes


@_event
class WorkData(NamedTuple):
    """WORK_DATA (28): a chunk of partial result."""

    handle: bytes
    data: bytes


@_event
class WorkWarning(NamedTuple):
    """WORK_WARNING (29): warning data about a running job."""

    handle: bytes
    data: bytes


# ---------------------------------------------------------------------------- client


@_event
class SubmitJob(NamedTuple):
    """SUBMIT_JOB and its variants (7, 18, 21, 32, 33, 34).

    ``priority`` and ``background`` pick the packet type: SUBMIT_JOB (normal),
    SUBMIT_JOB_HIGH, SUBMIT_JOB_LOW and their ``_BG`` forms.  An empty ``unique``
    means "never coalesce"; ``b"-"`` asks gearmand to coalesce by payload.
    """

    function: bytes
    unique: bytes
    data: bytes
    priority: Priority = Priority.NORMAL
    background: bool = False


@_event
class SubmitJobSched(NamedTuple):
    """SUBMIT_JOB_SCHED (35): cron-style job (fields are raw cron texts).

    Defined by the protocol; gearmand answers it with ERROR INVALID_COMMAND.
    """

    function: bytes
    unique: bytes
    minute: bytes
    hour: bytes
    mday: bytes
    month: bytes
    wday: bytes
    data: bytes


@_event
class SubmitJobEpoch(NamedTuple):
    """SUBMIT_JOB_EPOCH (36): background job, not run before Unix time ``epoch``."""

    function: bytes
    unique: bytes
    epoch: int
    data: bytes


@_event
class SubmitReduceJob(NamedTuple):
    """SUBMIT_REDUCE_JOB (37) and SUBMIT_REDUCE_JOB_BACKGROUND (38).

    The wire carries four NUL-terminated fields before the data; the fourth,
    ``aggregator``, is ignored by gearmand and sent empty by libgearman.
    """

    function: bytes
    unique: bytes
    reducer: bytes
    aggregator: bytes
    data: bytes
    background: bool = False


@_event
class JobCreated(NamedTuple):
    """JOB_CREATED (8): the handle of a submitted (or coalesced) job."""

    handle: bytes


@_event
class GetStatus(NamedTuple):
    """GET_STATUS (15): ask for a job's status by handle."""

    handle: bytes


@_event
class StatusRes(NamedTuple):
    """STATUS_RES (20): answer to GET_STATUS."""

    handle: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int


@_event
class GetStatusUnique(NamedTuple):
    """GET_STATUS_UNIQUE (41): ask for a job's status by unique id."""

    unique: bytes


@_event
class StatusResUnique(NamedTuple):
    """STATUS_RES_UNIQUE (42): answer to GET_STATUS_UNIQUE (first field: the unique)."""

    unique: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int
    client_count: int


@_event
class EchoReq(NamedTuple):
    """ECHO_REQ (16): the server echoes ``data`` back."""

    data: bytes


@_event
class EchoRes(NamedTuple):
    """ECHO_RES (17): the echoed data."""

    data: bytes


@_event
class Error(NamedTuple):
    """ERROR (19): the server reports an error (``code`` like ``b"JOB_NOT_FOUND"``)."""

    code: bytes
    text: bytes


@_event
class OptionReq(NamedTuple):
    """OPTION_REQ (26): enable an option; gearmand knows only ``b"exceptions"``."""

    option: bytes


@_event
class OptionRes(NamedTuple):
    """OPTION_RES (27): the option was accepted (echoes the requested bytes)."""

    option: bytes


# ------------------------------------------------------------------ connection level


@_event
class ConnectionClosed(NamedTuple):
    """The peer closed the connection (``receive_eof()`` was called)."""


#: Every event that is one binary packet.
PacketEvent: TypeAlias = (
    CanDo
    | CantDo
    | ResetAbilities
    | PreSleep
    | Unused
    | Noop
    | SubmitJob
    | JobCreated
    | GrabJob
    | NoJob
    | JobAssign
    | WorkStatus
    | WorkComplete
    | WorkFail
    | GetStatus
    | EchoReq
    | EchoRes
    | Error
    | StatusRes
    | SetClientId
    | CanDoTimeout
    | AllYours
    | WorkException
    | OptionReq
    | OptionRes
    | WorkData
    | WorkWarning
    | GrabJobUniq
    | JobAssignUniq
    | SubmitJobSched
    | SubmitJobEpoch
    | SubmitReduceJob
    | GrabJobAll
    | JobAssignAll
    | GetStatusUnique
    | StatusResUnique
)

#: Every binary-packet event plus :class:`ConnectionClosed`.
Event: TypeAlias = PacketEvent | ConnectionClosed

# Which class carries which packet type (SubmitJob and SubmitReduceJob carry several).
EVENT_CLASSES: dict[PacketType, type[Any]] = {
    PacketType.CAN_DO: CanDo,
    PacketType.CANT_DO: CantDo,
    PacketType.RESET_ABILITIES: ResetAbilities,
    PacketType.PRE_SLEEP: PreSleep,
    PacketType.UNUSED: Unused,
    PacketType.NOOP: Noop,
    PacketType.SUBMIT_JOB: SubmitJob,
    PacketType.JOB_CREATED: JobCreated,
    PacketType.GRAB_JOB: GrabJob,
    PacketType.NO_JOB: NoJob,
    PacketType.JOB_ASSIGN: JobAssign,
    PacketType.WORK_STATUS: WorkStatus,
    PacketType.WORK_COMPLETE: WorkComplete,
    PacketType.WORK_FAIL: WorkFail,
    PacketType.GET_STATUS: GetStatus,
    PacketType.ECHO_REQ: EchoReq,
    PacketType.ECHO_RES: EchoRes,
    PacketType.SUBMIT_JOB_BG: SubmitJob,
    PacketType.ERROR: Error,
    PacketType.STATUS_RES: StatusRes,
    PacketType.SUBMIT_JOB_HIGH: SubmitJob,
    PacketType.SET_CLIENT_ID: SetClientId,
    PacketType.CAN_DO_TIMEOUT: CanDoTimeout,
    PacketType.ALL_YOURS: AllYours,
    PacketType.WORK_EXCEPTION: WorkException,
    PacketType.OPTION_REQ: OptionReq,
    PacketType.OPTION_RES: OptionRes,
    PacketType.WORK_DATA: WorkData,
    PacketType.WORK_WARNING: WorkWarning,
    PacketType.GRAB_JOB_UNIQ: GrabJobUniq,
    PacketType.JOB_ASSIGN_UNIQ: JobAssignUniq,
    PacketType.SUBMIT_JOB_HIGH_BG: SubmitJob,
    PacketType.SUBMIT_JOB_LOW: SubmitJob,
    PacketType.SUBMIT_JOB_LOW_BG: SubmitJob,
    PacketType.SUBMIT_JOB_SCHED: SubmitJobSched,
    PacketType.SUBMIT_JOB_EPOCH: SubmitJobEpoch,
    PacketType.SUBMIT_REDUCE_JOB: SubmitReduceJob,
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: SubmitReduceJob,
    PacketType.GRAB_JOB_ALL: GrabJobAll,
    PacketType.JOB_ASSIGN_ALL: JobAssignAll,
    PacketType.GET_STATUS_UNIQUE: GetStatusUnique,
    PacketType.STATUS_RES_UNIQUE: StatusResUnique,
}

# The implied values of fields that the wire encodes in the packet type.
SUBMIT_VARIANTS: dict[PacketType, tuple[Priority, bool]] = {
    PacketType.SUBMIT_JOB: (Priority.NORMAL, False),
    PacketType.SUBMIT_JOB_BG: (Priority.NORMAL, True),
    PacketType.SUBMIT_JOB_HIGH: (Priority.HIGH, False),
    PacketType.SUBMIT_JOB_HIGH_BG: (Priority.HIGH, True),
    PacketType.SUBMIT_JOB_LOW: (Priority.LOW, False),
    PacketType.SUBMIT_JOB_LOW_BG: (Priority.LOW, True),
}
_SUBMIT_TYPES = {v: k for k, v in SUBMIT_VARIANTS.items()}
_SINGLE_TYPE: dict[type[Any], PacketType] = {
    cls: ptype for ptype, cls in EVENT_CLASSES.items() if cls not in (SubmitJob, SubmitReduceJob)
}


def _submit_type(ev: Any) -> PacketType:
    # Priority is an IntEnum: plain 0/1/2 hash and compare like its members.
    try:
        return _SUBMIT_TYPES[(ev.priority, ev.background)]
    except (KeyError, TypeError):
        raise ValueError(
            f"SubmitJob needs a Priority and a bool background, not {ev.priority!r}"
            f" and {ev.background!r}"
        ) from None


def _reduce_type(ev: Any) -> PacketType:
    return (
        PacketType.SUBMIT_REDUCE_JOB_BACKGROUND if ev.background else PacketType.SUBMIT_REDUCE_JOB
    )


def packet_type(event: PacketEvent) -> PacketType:
    """The packet type that carries ``event`` on the wire.

    Raises:
        TypeError: ``event`` is not a packet event.
        ValueError: a SubmitJob's priority or background is not valid.
    """
    cls = type(event)
    single = _SINGLE_TYPE.get(cls)
    if single is not None:
        return single
    if cls is SubmitJob:
        return _submit_type(event)
    if cls is SubmitReduceJob:
        return _reduce_type(event)
    raise TypeError(f"{cls.__name__} is not a packet event")
