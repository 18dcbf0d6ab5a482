"""The worker, without I/O: registration, the grab cycle, capacity, drain, timeouts.

The grab cycle follows gearmand's rules (protocol reference §4.5):

* A connection starts with a probe: one grab before anything else (see
  :meth:`WorkerEngine.connected`), falling back from GRAB_JOB_ALL to GRAB_JOB_UNIQ to
  GRAB_JOB on ERROR INVALID_COMMAND; then it registers its functions.
* A connection is *awake* when it may have work: just connected, woken by NOOP, or it
  just handed us a job.  Awake connections are sent GRAB_JOB_ALL (JOB_ASSIGN_ALL carries
  a reduce job's reducer; other jobs come as JOB_ASSIGN_UNIQ), one per free slot.
* NO_JOB makes a connection not awake; once none of its grabs is outstanding it sends
  PRE_SLEEP and waits for NOOP.  gearmand sends at most one NOOP between two grabs, so
  a NOOP that arrives while every slot is busy is remembered (the connection stays
  awake) and answered with a grab as soon as a slot frees.
* Free slots = ``concurrency`` - running jobs - outstanding grabs, over every server:
  the worker never asks for a job it could not start at once.

Draining stops new grabs, lets outstanding grabs and running jobs finish, then reports
itself done; the binding then closes the connections.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gearproto import Limits, RemoteProtocolError
from gearproto.events import (
    CanDo,
    CanDoTimeout,
    CantDo,
    Error,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    NoJob,
    Noop,
    PreSleep,
    SetClientId,
    WorkComplete,
    WorkData,
    WorkFail,
    WorkStatus,
    WorkWarning,
)
from gearproto.events import WorkException as WorkExceptionEvent

from ._routing import Backoff, ServerAddress
from ._session import Driver, Session, Slot, SlotState, Timers, describe_error

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = [
    "FunctionSpec",
    "JobFail",
    "WorkException",
    "WorkerEngine",
    "WorkerJob",
    "WorkerOptions",
    "result_bytes",
]


class JobFail(Exception):
    """Raise in a job function to end the job with WORK_FAIL (no data)."""


class WorkException(Exception):
    """Raise in a job function to end the job with WORK_EXCEPTION carrying ``data``."""

    def __init__(self, data: bytes | str) -> None:
        super().__init__(data)
        self.data = data.encode() if isinstance(data, str) else bytes(data)


@dataclass(frozen=True)
class FunctionSpec:
    """A registered function: the callable and its time limits (seconds)."""

    name: bytes
    func: Callable[..., Any]
    #: Local limit: the job is ended (WORK_EXCEPTION) and, if async, cancelled.
    timeout: float | None = None
    #: Sent as CAN_DO_TIMEOUT: the server takes the job back after this long.
    server_timeout: float | None = None

    @functools.cached_property
    def is_async(self) -> bool:
        """``func`` is a coroutine function (asked once: inspect is slow per job)."""
        return inspect.iscoroutinefunction(self.func)

    def registration(self) -> CanDo | CanDoTimeout:
        if self.server_timeout is None:
            return CanDo(self.name)
        return CanDoTimeout(self.name, max(1, math.ceil(self.server_timeout * 1000)))


@dataclass(frozen=True)
class WorkerOptions:
    """Worker settings; durations in seconds."""

    #: Jobs run at the same time, over every server.
    concurrency: int = 1
    client_id: bytes | None = None
    connect_timeout: float | None = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    limits: Limits | None = None
    #: TLS for every connection (the binding wraps its sockets); None: plaintext.
    ssl_context: SSLContext | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


class _Ending(enum.Enum):
    COMPLETE = "complete"
    FAIL = "fail"
    EXCEPTION = "exception"


def result_bytes(value: Any) -> bytes:
    """A job function's return value as bytes (``None`` is empty; ``str`` is UTF-8)."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a job function must return bytes, str or None, not {type(value).__name__}")


def exception_bytes(exc: BaseException) -> bytes:
    """What WORK_EXCEPTION carries for an exception raised by a job function."""
    if isinstance(exc, WorkException):
        return exc.data
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip().encode(errors="replace")


class WorkerJob:
    """A job assigned to this worker: its request, and ways to report progress.

    ``send_data``, ``send_warning`` and ``send_status`` return ``False`` (and send
    nothing) once the job can no longer report: it timed out, or its connection was lost.
    """

    __slots__ = (
        "_engine",
        "_session",
        "data",
        "deadline",
        "expired",
        "finished",
        "function",
        "handle",
        "reducer",
        "server",
        "spec",
        "unique",
    )

    def __init__(
        self,
        engine: WorkerEngine,
        session: Session,
        spec: FunctionSpec | None,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        reducer: bytes | None = None,
    ) -> None:
        self._engine = engine
        self._session = session
        self.spec = spec
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        #: A reduce job's reducer function (JOB_ASSIGN_ALL); ``None`` for other jobs.
        self.reducer = reducer
        self.server: ServerAddress = session.slot.address
        self.deadline: float | None = None
        #: The local timeout ran out (the job was reported failed).
        self.expired = False
        self.finished = False

    def __repr__(self) -> str:
        return f"<WorkerJob {self.function!r} {self.handle!r}>"

    @property
    def cancelled(self) -> bool:
        """True once nothing the job does can reach its client any more."""
        return self.expired or self.finished or not self._session.alive

    def send_data(self, data: bytes | str) -> bool:
        """WORK_DATA: a chunk of partial result."""
        return self._send(WorkData(self.handle, result_bytes(data)))

    def send_warning(self, data: bytes | str) -> bool:
        """WORK_WARNING: a warning about the job."""
        return self._send(WorkWarning(self.handle, result_bytes(data)))

    def send_status(self, numerator: int, denominator: int) -> bool:
        """WORK_STATUS: progress as numerator/denominator."""
        return self._send(WorkStatus(self.handle, int(numerator), int(denominator)))

    def _send(self, event: Any) -> bool:
        return self._engine.job_send(self, event)


class _WorkerSession(Session):
    __slots__ = ("awake", "grab", "grabs", "jobs", "ready", "sleeping")

    def __init__(self, slot: Slot, driver: Driver, limits: Limits | None) -> None:
        super().__init__(slot, driver, limits)
        #: The grab packet the server understands is known and the functions are
        #: registered (see WorkerEngine.connected).
        self.ready = False
        self.awake = True
        self.sleeping = False
        self.grabs = 0
        #: GRAB_JOB_ALL shows reduce jobs' reducer (JOB_ASSIGN_ALL; other jobs come as
        #: JOB_ASSIGN_UNIQ); servers without it get GRAB_JOB_UNIQ, then GRAB_JOB.
        self.grab: type[GrabJobAll] | type[GrabJobUniq] | type[GrabJob] = GrabJobAll
        self.jobs: dict[bytes, WorkerJob] = {}


#: Connection failures are logged here: a worker retries for ever, and nothing else
#: would tell that it cannot reach a server (refused, TLS certificate, ...).
log = logging.getLogger("gearproto.bindings.worker")

_GRAB = object()  # owner of GRAB_JOB* requests
_PROBE = object()  # owner of the grab that finds out which grab the server knows

#: The grab to fall back to when a server answers ERROR INVALID_COMMAND.
_GRAB_FALLBACK: dict[type[Any], type[GrabJobUniq] | type[GrabJob]] = {
    GrabJobAll: GrabJobUniq,
    GrabJobUniq: GrabJob,
}

_T_JOB = 0
_T_RETRY = 1


class WorkerEngine:
    """Every server of one worker, its functions, and the jobs it runs."""

    def __init__(
        self,
        servers: Sequence[ServerAddress],
        driver: Any,
        options: WorkerOptions,
        job_class: type[WorkerJob] = WorkerJob,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.driver = driver
        self.job_class = job_class
        self.rng = rng or random.Random()
        self.slots = [Slot(i, address) for i, address in enumerate(servers)]
        self.functions: dict[bytes, FunctionSpec] = {}
        self.timers = Timers()
        self.running = 0
        self.grabs = 0
        self.draining = False
        self.drained = False
        self.closed = False
        self.jobs_done = 0
        self._next = 0

    # ----------------------------------------------------------- registration

    def register(self, spec: FunctionSpec) -> None:
        self.functions[spec.name] = spec
        for session in self._sessions():
            session.send(spec.registration())
            session.awake = True
        self._pump()

    def unregister(self, name: bytes) -> None:
        if self.functions.pop(name, None) is None:
            raise KeyError(name)
        for session in self._sessions():
            session.send(CantDo(name))

    def _sessions(self) -> list[_WorkerSession]:
        """Sessions with their functions registered (the others register when ready)."""
        sessions = [s.session for s in self.slots if isinstance(s.session, _WorkerSession)]
        return [session for session in sessions if session.ready]

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for slot in self.slots:
            if slot.state is SlotState.IDLE:
                slot.state = SlotState.CONNECTING
                self.driver.connect(slot)

    def connected(self, slot: Slot, now: float) -> Session | None:
        """A new connection: first find out which grab the server knows, then register.

        The first packet is a grab, sent before anything else: with no function
        registered yet it can only be answered NO_JOB, or ERROR INVALID_COMMAND by a
        server that does not know it (then the next simpler grab is tried).  It must
        come first because an ERROR does not say which request it answers: behind
        CAN_DO or SET_CLIENT_ID packets (which are only ever answered by an ERROR) it
        would be taken as theirs, and the refused grab would wait for a reply forever.
        """
        if slot.state is not SlotState.CONNECTING or self.closed:
            return None
        session = _WorkerSession(slot, self.driver, self.options.limits)
        slot.session = session
        slot.state = SlotState.UP
        slot.outbox.clear()
        session.send(session.grab(), _PROBE)
        return session

    def _probed(self, session: _WorkerSession, event: Any, now: float) -> None:
        """The answer to the connection's first grab."""
        cls = type(event)
        if cls is Error:
            fallback = _GRAB_FALLBACK.get(session.grab)
            if event.code == b"INVALID_COMMAND" and fallback is not None:
                session.grab = fallback  # an older server: ask the simpler way
                session.send(fallback(), _PROBE)
                return
        elif cls is not NoJob:
            # A job although nothing is registered yet (a server that remembers a
            # worker's functions?): run it, or fail it if the function is unknown.
            self._assigned(session, event, now)
        session.ready = True
        session.awake = True
        if self.options.client_id:
            session.send(SetClientId(self.options.client_id))
        for spec in self.functions.values():
            session.send(spec.registration())

    def connect_failed(self, slot: Slot, error: BaseException, now: float) -> None:
        if slot.state is not SlotState.CONNECTING:
            return
        self._mark_down(slot, error, now)
        self._check_drained()

    def _mark_down(self, slot: Slot, error: BaseException, now: float) -> None:
        slot.failures += 1
        slot.last_error = error
        slot.session = None
        slot.outbox.clear()
        if self.closed or self.draining:
            slot.state = SlotState.CLOSED
            return
        slot.state = SlotState.DOWN
        delay = self.options.backoff.delay(slot.failures, self.rng)
        slot.retry_at = now + delay
        log.warning("%s: %s; retrying in %.2g s", slot.address, describe_error(error), delay)
        if self.timers.push(slot.retry_at, (_T_RETRY, slot)):
            self.driver.timer_changed()

    def connection_lost(
        self, session: Session, error: BaseException | None, now: float, *, close: bool = False
    ) -> None:
        if not session.alive:
            return
        assert isinstance(session, _WorkerSession)
        slot = session.slot
        if session.replied:
            slot.failures = 0
        self.grabs -= session.grabs
        session.grabs = 0
        # Jobs from this connection keep running (they hold their slots) but can no
        # longer report: the server has already given them to another worker.
        self._mark_down(slot, error or ConnectionResetError("connection closed"), now)
        if close:
            self.driver.close(slot, session)
        self._pump()
        self._check_drained()

    def data_received(self, session: Session, data: bytes | None, now: float) -> None:
        if not session.alive:
            return
        assert isinstance(session, _WorkerSession)
        try:
            events = session.events(data)
        except RemoteProtocolError as exc:
            self.connection_lost(session, exc, now, close=True)
            return
        for event, owner in events:
            cls = type(event)
            if owner is _PROBE:
                self._probed(session, event, now)
            elif owner is _GRAB:
                session.grabs -= 1
                self.grabs -= 1
                if cls is NoJob or cls is Error:
                    session.awake = False
                else:
                    session.awake = True
                    self._assigned(session, event, now)
            elif cls is Noop:
                session.sleeping = False
                session.awake = True
            # Other replies: ERROR JOB_NOT_FOUND for a job the server took back, or
            # answers to fire-and-forget packets; nothing to do.
        if data is None:
            self.connection_lost(session, ConnectionResetError("server closed the connection"), now)
            return
        self._pump()
        if self.draining:
            # A grab answered while draining may have been the last thing to wait for.
            self._check_drained()
        elif session.ready and not session.awake and session.grabs == 0 and not session.sleeping:
            session.sleeping = True
            session.send(PreSleep())

    def _assigned(self, session: _WorkerSession, event: Any, now: float) -> None:
        cls = type(event)
        if cls is JobAssign:
            unique, reducer = b"", None
        elif cls is JobAssignAll:
            unique, reducer = event.unique, event.reducer
        else:
            unique, reducer = event.unique, None
        spec = self.functions.get(event.function)
        job = self.job_class(
            self, session, spec, event.handle, event.function, unique, event.data, reducer
        )
        session.jobs[job.handle] = job
        self.running += 1
        if spec is None:
            # Unregistered while the grab was in flight.
            self.job_finished(job, _Ending.FAIL, b"")
            return
        if spec.timeout is not None:
            job.deadline = now + spec.timeout
            if self.timers.push(job.deadline, (_T_JOB, job)):
                self.driver.timer_changed()
        self.driver.start_job(job)

    def _pump(self) -> None:
        """Send grabs on awake connections while there are free slots."""
        if self.draining or self.closed:
            return
        free = self.options.concurrency - self.running - self.grabs
        if free <= 0:
            return
        slots = self.slots
        count = len(slots)
        idle_passes = 0
        while free > 0 and idle_passes < count:
            slot = slots[self._next % count]
            self._next += 1
            session = slot.session
            if (
                isinstance(session, _WorkerSession)
                and session.ready
                and session.awake
                and self.functions
            ):
                session.send(session.grab(), _GRAB)
                session.grabs += 1
                session.sleeping = False
                self.grabs += 1
                free -= 1
                idle_passes = 0
            else:
                idle_passes += 1

    # ------------------------------------------------------------------- jobs

    def job_send(self, job: WorkerJob, event: Any) -> bool:
        if job.cancelled:
            return False
        job._session.send(event)
        return True

    def job_returned(self, job: WorkerJob, value: Any) -> None:
        """The job function returned ``value``."""
        try:
            data = result_bytes(value)
        except TypeError as exc:
            self.job_finished(job, _Ending.EXCEPTION, exception_bytes(exc))
            return
        self.job_finished(job, _Ending.COMPLETE, data)

    def job_raised(self, job: WorkerJob, exc: BaseException) -> None:
        """The job function raised ``exc`` (or was cancelled after its timeout)."""
        if isinstance(exc, JobFail):
            self.job_finished(job, _Ending.FAIL, b"")
        else:
            self.job_finished(job, _Ending.EXCEPTION, exception_bytes(exc))

    def job_finished(self, job: WorkerJob, ending: _Ending, data: bytes) -> None:
        if job.finished:
            return
        reportable = not job.cancelled
        job.finished = True
        self.running -= 1
        self.jobs_done += 1
        session = job._session
        if isinstance(session, _WorkerSession):
            session.jobs.pop(job.handle, None)
        if reportable:
            if ending is _Ending.COMPLETE:
                session.send(WorkComplete(job.handle, data))
            elif ending is _Ending.FAIL:
                session.send(WorkFail(job.handle))
            else:
                session.send(WorkExceptionEvent(job.handle, data))
        self._pump()
        self._check_drained()

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        return self.timers.next()

    def handle_timers(self, now: float) -> None:
        for kind, item in self.timers.pop_due(now):
            if kind == _T_JOB:
                job: WorkerJob = item
                if job.finished or job.expired:
                    continue
                # Report the failure now; the job keeps its slot until it really stops.
                if not job.cancelled:
                    assert job.spec is not None
                    assert job.spec.timeout is not None
                    job._session.send(
                        WorkExceptionEvent(
                            job.handle,
                            b"TimeoutError: the job ran longer than %g s" % job.spec.timeout,
                        )
                    )
                job.expired = True
                self.driver.cancel_job(job)
            else:
                slot: Slot = item
                if slot.state is SlotState.DOWN and slot.retry_at <= now and not self.closed:
                    slot.state = SlotState.CONNECTING
                    self.driver.connect(slot)

    # ------------------------------------------------------------------- drain

    def drain(self) -> None:
        """Stop grabbing; finish outstanding grabs and running jobs, then be drained."""
        if self.draining:
            return
        self.draining = True
        for slot in self.slots:
            if slot.state in (SlotState.DOWN, SlotState.IDLE):
                slot.state = SlotState.CLOSED
        self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and not self.drained and self.running == 0 and self.grabs == 0:
            self.drained = True
            self.driver.drained()

    def close(self, now: float) -> None:
        """Close every connection now (running jobs can no longer report)."""
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            session = slot.session
            if session is not None:
                self.connection_lost(
                    session, ConnectionAbortedError("worker closed"), now, close=True
                )
            slot.state = SlotState.CLOSED

    def statistics(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "grabs": self.grabs,
            "jobs_done": self.jobs_done,
            "draining": self.draining,
            "servers": {str(s.address): s.state.value for s in self.slots},
        }
