"""How a job ends, and the exceptions the bindings raise.

Every client job ends in exactly one :class:`Outcome`.  ``await job.wait()`` (or
``job.wait()`` in the blocking binding) returns it; ``job.result()`` returns the data of a
:class:`Completed` outcome and raises the matching :class:`JobError` for every other one,
so code that only wants the data never has to look at outcome classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = [
    "Abandoned",
    "Accepted",
    "AdminCommandError",
    "Completed",
    "ConnectError",
    "ConnectionLost",
    "Disconnected",
    "ExceptionRaised",
    "Failed",
    "GearmanError",
    "JobAbandoned",
    "JobDisconnected",
    "JobError",
    "JobException",
    "JobFailed",
    "JobRejected",
    "JobTimedOut",
    "Outcome",
    "Rejected",
    "RequestTimeout",
    "ServerError",
    "TimedOut",
]

#: The phase a timeout ended: waiting for a server connection, waiting for JOB_CREATED,
#: or waiting for the job's result.
Phase: TypeAlias = Literal["connect", "created", "complete"]


# ---------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Completed:
    """WORK_COMPLETE: the job succeeded.  ``partial`` holds every WORK_DATA chunk seen."""

    data: bytes
    partial: tuple[bytes, ...] = ()

    @property
    def assembled(self) -> bytes:
        """The WORK_DATA chunks followed by the final data, as one result."""
        return b"".join(self.partial) + self.data


@dataclass(frozen=True, slots=True)
class Accepted:
    """A background job was acknowledged (JOB_CREATED); the server now owns it."""

    handle: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    """WORK_FAIL: the job failed without data (or the server gave up on it)."""


@dataclass(frozen=True, slots=True)
class ExceptionRaised:
    """WORK_EXCEPTION: the job failed with exception ``data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The job's own timeout for ``phase`` ran out (see docs/timeouts.md)."""

    phase: Phase
    seconds: float


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection carrying the job was lost and the job could not be resubmitted.

    ``acknowledged`` tells whether a server had answered JOB_CREATED (the job may have
    run, or may still run, there); ``cause`` is the underlying error if there was one.
    """

    reason: str
    acknowledged: bool
    cause: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server answered the submission with an ERROR packet (e.g. queue full)."""

    code: bytes
    text: bytes


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The caller gave up on the job (cancelled wait of ``call()``, or ``abandon()``)."""


Outcome: TypeAlias = (
    Completed | Accepted | Failed | ExceptionRaised | TimedOut | Disconnected | Rejected | Abandoned
)


# -------------------------------------------------------------------------- exceptions


class GearmanError(Exception):
    """Base class of every error raised by the bindings."""


class ConnectError(GearmanError, ConnectionError):
    """No server could be reached; ``causes`` maps each address tried to its error."""

    def __init__(self, message: str, causes: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.causes: dict[str, BaseException] = dict(causes or {})


class ConnectionLost(GearmanError, ConnectionError):
    """The connection closed (or broke the protocol) while a reply was awaited."""


class RequestTimeout(GearmanError, TimeoutError):
    """A request (echo, status, admin command) got no reply within its timeout."""


class ServerError(GearmanError):
    """The server answered a request with an ERROR packet."""

    def __init__(self, code: bytes, text: bytes) -> None:
        super().__init__(f"{code.decode(errors='replace')}: {text.decode(errors='replace')}")
        self.code = code
        self.text = text


class AdminCommandError(GearmanError):
    """The server answered an admin command with an ``ERR`` line."""

    def __init__(self, code: bytes, text: bytes) -> None:
        readable = text.replace(b"+", b" ").decode(errors="replace")
        super().__init__(f"{code.decode(errors='replace')} {readable}".rstrip())
        self.code = code
        self.text = text


class JobError(GearmanError):
    """A job ended without completing; ``outcome`` says how."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class JobFailed(JobError):
    """The job ended with WORK_FAIL."""


class JobException(JobError):
    """The job ended with WORK_EXCEPTION; ``data`` is what the worker sent."""

    @property
    def data(self) -> bytes:
        assert isinstance(self.outcome, ExceptionRaised)
        return self.outcome.data


class JobTimedOut(JobError, TimeoutError):
    """The job's timeout ran out (``outcome.phase`` says which)."""


class JobDisconnected(JobError, ConnectionError):
    """The job's connection was lost and it could not be resubmitted."""


class JobRejected(JobError):
    """The server refused the submission with an ERROR packet."""


class JobAbandoned(JobError):
    """The caller abandoned the job."""


def raise_for(outcome: Outcome) -> bytes:
    """``outcome``'s data if it is :class:`Completed`; otherwise raise its :class:`JobError`.

    A background job's :class:`Accepted` outcome returns its handle.
    """
    match outcome:
        case Completed(data=data):
            return data
        case Accepted(handle=handle):
            return handle
        case Failed():
            raise JobFailed("the job failed (WORK_FAIL)", outcome)
        case ExceptionRaised(data=data):
            raise JobException(f"the job raised: {data.decode(errors='replace')}", outcome)
        case TimedOut(phase=phase, seconds=seconds):
            raise JobTimedOut(f"timed out after {seconds:g} s waiting for {phase}", outcome)
        case Disconnected(reason=reason):
            raise JobDisconnected(reason, outcome)
        case Rejected(code=code, text=text):
            raise JobRejected(
                f"submission refused: {code.decode(errors='replace')}"
                f" {text.decode(errors='replace')}",
                outcome,
            )
        case Abandoned():
            raise JobAbandoned("the job was abandoned", outcome)
    raise TypeError(f"not an outcome: {outcome!r}")
