"""The client, without I/O: jobs, requests, routing, failover, timeouts.

:class:`ClientEngine` owns every :class:`~._session.Slot` of a client.  The binding calls
it when something happens (connected, bytes received, connection lost, a timer is due,
the user submits) and does what it asks through :class:`~._session.Driver` (connect,
write, close, re-arm the timer).  Jobs and requests are plain objects whose ``_wake``
method the binding overrides to wake its waiters.

Delivery semantics (documented in docs/bindings.md):

* A submission is written to one server: the owner of its unique id on the hash ring,
  or the next server on the ring if that one is down; jobs without a unique id go
  round-robin over the connected servers.
* A job is *acknowledged* when JOB_CREATED arrives.  A background job is then done
  (:class:`Accepted`): keeping it is the server's business.
* If a connection is lost, every foreground job on it that has not ended, and every
  submission not yet acknowledged, is submitted again to the next server, up to
  ``max_attempts`` submissions in all (at-least-once: a worker may have started it).
  Past that, or when no server is up, it ends :class:`Disconnected`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gearproto import NEED_DATA, Limits, LocalProtocolError, Priority, RemoteProtocolError
from gearproto.admin import AdminError
from gearproto.events import (
    ConnectionClosed,
    Error,
    JobCreated,
    OptionReq,
    OptionRes,
    SetClientId,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)

from ._outcomes import (
    Abandoned,
    Accepted,
    AdminCommandError,
    Completed,
    ConnectError,
    ConnectionLost,
    Disconnected,
    ExceptionRaised,
    Failed,
    Outcome,
    Rejected,
    RequestTimeout,
    ServerError,
    TimedOut,
)
from ._routing import Backoff, HashRing, ServerAddress
from ._session import Driver, Session, Slot, SlotState, Timers, describe_error

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = ["ClientEngine", "ClientOptions", "Job", "Request", "Update", "coerce_priority"]

#: The updates a job streams before its outcome.
Update = WorkData | WorkWarning | WorkStatus

_PRIORITY_NAMES = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}


def coerce_priority(priority: Priority | str | int) -> Priority:
    if isinstance(priority, str):
        try:
            return _PRIORITY_NAMES[priority.lower()]
        except KeyError:
            raise ValueError(f"priority must be high, normal or low, not {priority!r}") from None
    return Priority(priority)


def _as_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


@dataclass(frozen=True)
class ClientOptions:
    """Client settings; every duration is in seconds (floats), ``None`` = no limit."""

    #: Time allowed to open one TCP connection (name resolution included).
    connect_timeout: float | None = 5.0
    #: Time from writing a submission to its JOB_CREATED; when it runs out the job ends
    #: ``TimedOut("created")`` and the connection is treated as dead (closed, failover).
    created_timeout: float | None = 10.0
    #: Default time limit of a whole job, from ``submit()`` to its outcome.
    timeout: float | None = None
    #: Submissions allowed per job when connections are lost (1 = never resubmit).
    max_attempts: int = 3
    #: Ask servers for WORK_EXCEPTION (OPTION_REQ "exceptions") on every connection.
    exceptions: bool = True
    #: Sent as SET_CLIENT_ID on every connection (shown by the admin ``workers`` list).
    client_id: bytes | None = None
    backoff: Backoff = field(default_factory=Backoff)
    limits: Limits | None = None
    #: TLS for every connection (the binding wraps its sockets); None: plaintext.
    ssl_context: SSLContext | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "created_timeout", "timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds or None")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


class Job:
    """A submitted job: its request, its streamed updates and, in the end, its outcome.

    Bindings subclass it to add waiting (``wait()``, ``result()``, iteration).
    """

    __slots__ = (
        "_armed",
        "_background",
        "_chunks",
        "_created_deadline",
        "_created_timeout",
        "_deadline",
        "_engine",
        "_queued",
        "_request",
        "_sent_on",
        "_timeout",
        "_updates",
        "_watched",
        "attempts",
        "handle",
        "outcome",
        "server",
        "status",
        "submitted_at",
    )

    def __init__(self, engine: ClientEngine, request: SubmitJob | SubmitJobEpoch | SubmitReduceJob):
        self._engine = engine
        self._request = request
        self._background = (
            True if isinstance(request, SubmitJobEpoch) else request.background is True
        )
        # Most jobs stream nothing: the containers are made by the first update.
        self._chunks: list[bytes] | None = None
        self._updates: deque[Update] | None = None
        self._sent_on: Session | None = None
        self._queued: Slot | None = None
        self._deadline: float | None = None
        self._created_deadline: float | None = None
        self._timeout: float | None = None
        self._created_timeout: float | None = None
        #: The deadline of this job's entry in the timer heap (None: it has none).
        self._armed: float | None = None
        #: Its JOB_CREATED deadline is kept by its session's ``unacked`` queue.
        self._watched = False
        #: The job handle, once JOB_CREATED arrived.
        self.handle: bytes | None = None
        #: The server that acknowledged the job.
        self.server: ServerAddress | None = None
        #: How the job ended; ``None`` while it runs.
        self.outcome: Outcome | None = None
        #: The last WORK_STATUS as (numerator, denominator).
        self.status: tuple[int, int] | None = None
        #: How many times the job was written to a server.
        self.attempts = 0
        self.submitted_at = 0.0

    def __repr__(self) -> str:
        state = self.outcome if self.outcome is not None else ("created" if self.handle else "sent")
        return f"<Job {self.function!r} handle={self.handle!r} {state}>"

    # The request, as submitted.
    @property
    def function(self) -> bytes:
        return self._request.function

    @property
    def unique(self) -> bytes:
        return self._request.unique

    @property
    def data(self) -> bytes:
        return self._request.data

    @property
    def background(self) -> bool:
        return self._background

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def acknowledged(self) -> bool:
        return self.handle is not None

    def _next_update(self) -> Update | None:
        updates = self._updates
        return updates.popleft() if updates else None

    def _wake(self) -> None:
        """Called whenever the job changed (update, handle, outcome); bindings override."""


class Request:
    """An echo, status or admin request: one reply, or an error."""

    __slots__ = ("_deadline", "_sent_on", "_timeout", "error", "event", "reply")

    def __init__(self, event: Any) -> None:
        self.event = event
        self.reply: Any = None
        self.error: BaseException | None = None
        self._deadline: float | None = None
        self._timeout: float | None = None
        self._sent_on: Session | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply

    def _wake(self) -> None:
        """Called once, when the reply or the error is set; bindings override."""


class _Shared:
    """Several submissions of this connection got the same handle (coalesced).

    The server then sends every WORK_* packet once per submission, back to back; the
    copies are dealt out round-robin so that each job sees each update once.
    """

    __slots__ = ("jobs", "next")

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.next = 0


class _ClientSession(Session):
    __slots__ = ("created_armed", "created_last", "exceptions", "jobs", "unacked")

    def __init__(self, slot: Slot, driver: Driver, limits: Limits | None) -> None:
        super().__init__(slot, driver, limits)
        #: Acknowledged foreground jobs by handle.
        self.jobs: dict[bytes, Job | _Shared] = {}
        self.exceptions = False
        #: Jobs written here and waiting for JOB_CREATED whose created deadlines come in
        #: the order they were written (the usual case: one created_timeout for all).
        #: The server acknowledges in that order too, so one timer entry for the
        #: oldest covers them all, instead of one per job (see ClientEngine._watch).
        self.unacked: deque[Job] = deque()
        self.created_last = -math.inf
        self.created_armed = False


# Timer entries.
_T_JOB = 0
_T_REQUEST = 1
_T_RETRY = 2
_T_CREATED = 3


class ClientEngine:
    """Every server of one client, and every job and request in flight."""

    def __init__(
        self,
        servers: Sequence[ServerAddress],
        driver: Driver,
        options: ClientOptions,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.driver = driver
        self.rng = rng or random.Random()
        self.slots = [Slot(i, address) for i, address in enumerate(servers)]
        self.ring = HashRing(servers)
        self.timers = Timers()
        self.closed = False
        self._rr = itertools.count()
        self._live_jobs = 0
        #: The slot, when there is only one server (the fast path of submit()).
        self._only = self.slots[0] if len(self.slots) == 1 else None
        self._limits = options.limits or _DEFAULT_LIMITS
        self._max_data = self._limits.max_packet_size - 200
        self._names: dict[bytes | str, bytes] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect to every server (connections are kept and re-opened)."""
        for slot in self.slots:
            if slot.state is SlotState.IDLE:
                self._connect(slot)

    def _connect(self, slot: Slot) -> None:
        slot.state = SlotState.CONNECTING
        self.driver.connect(slot)

    def connected(self, slot: Slot, now: float) -> Session | None:
        """The binding opened a connection for ``slot``; returns its session.

        Returns ``None`` if the engine no longer wants it (closed meanwhile): the binding
        then closes the connection.
        """
        if slot.state is not SlotState.CONNECTING or self.closed:
            return None
        session = _ClientSession(slot, self.driver, self.options.limits)
        slot.session = session
        slot.state = SlotState.UP
        slot.outbox.clear()
        if self.options.client_id:
            session.send(SetClientId(self.options.client_id))
        if self.options.exceptions:
            session.send(OptionReq(b"exceptions"), _OPTION)
        queued, slot.queue = slot.queue, []
        for item in queued:
            if isinstance(item, Job):
                item._queued = None
                if item.outcome is None:
                    self._send_job(session, item, now)
            elif not item.done:
                self._send_request(session, item, now)
        return session

    def connect_failed(self, slot: Slot, error: BaseException, now: float) -> None:
        """The connection attempt for ``slot`` failed (refused, DNS, timeout, ...)."""
        if slot.state is not SlotState.CONNECTING:
            return
        self._mark_down(slot, error, now)
        queued, slot.queue = slot.queue, []
        for item in queued:
            if isinstance(item, Job):
                item._queued = None
                if item.outcome is None:
                    self._route(item, now)
            elif not item.done:
                self._fail_request(item, _connect_error([slot]))

    def _mark_down(self, slot: Slot, error: BaseException, now: float) -> None:
        slot.failures += 1
        slot.last_error = error
        slot.session = None
        slot.outbox.clear()
        if self.closed:
            slot.state = SlotState.CLOSED
            return
        slot.state = SlotState.DOWN
        slot.retry_at = now + self.options.backoff.delay(slot.failures, self.rng)
        if self.timers.push(slot.retry_at, (_T_RETRY, slot)):
            self.driver.timer_changed()

    def data_received(self, session: Session, data: bytes | None, now: float) -> None:
        """Bytes (or EOF, ``data=None``) arrived on ``session``."""
        if not session.alive:
            return
        assert isinstance(session, _ClientSession)
        conn = session.conn
        if data is None:
            conn.receive_eof()
        else:
            conn.receive_data(data)
        # The hot loop of the client: one iteration per reply, no allocation of its own.
        # A reply is matched to its request by identity with the core's ``answered``
        # (see _session.Session.events, which the worker uses).
        fifo = session.fifo
        jobs = session.jobs
        slot = session.slot
        next_event = conn.next_event
        event: Any
        while True:
            try:
                event = next_event()
            except RemoteProtocolError as exc:
                if not exc.fatal:
                    continue  # one refused packet; the connection goes on
                # Events parsed before the error were lost with it; the connection is done.
                self.connection_lost(session, exc, now, close=True)
                return
            if event is NEED_DATA:
                break
            cls = type(event)
            if cls is WorkComplete:
                # The most frequent event, handled inline when it ends a job of its own.
                job = jobs.get(event.handle)
                if job is not None and not isinstance(job, _Shared):
                    del jobs[event.handle]
                    if job.outcome is None:
                        chunks = job._chunks
                        job._sent_on = None  # already removed from the handle map
                        self._finish(job, Completed(event.data, tuple(chunks) if chunks else ()))
                        if slot.session is not session:
                            return
                    continue
            answered = conn.answered
            if answered is not None and fifo and fifo[0][0] is answered:
                owner = fifo.popleft()[1]
                session.replied = True
                if owner is _OPTION:
                    session.exceptions = cls is OptionRes
                elif isinstance(owner, Job):
                    self._job_reply(session, owner, event, now)
                else:
                    self._request_reply(owner, event)
            elif cls is ConnectionClosed:
                break
            else:
                self._unsolicited(session, event, now)
            if slot.session is not session:
                return  # the connection was closed meanwhile
        if data is None:
            self.connection_lost(session, ConnectionResetError("server closed the connection"), now)

    def connection_lost(
        self, session: Session, error: BaseException | None, now: float, *, close: bool = False
    ) -> None:
        """``session``'s connection ended (EOF, reset, protocol error, or we closed it)."""
        if not session.alive:
            return
        assert isinstance(session, _ClientSession)
        slot = session.slot
        cause = error or ConnectionResetError("connection closed")
        if session.replied:
            slot.failures = 0
        self._mark_down(slot, cause, now)
        if close:
            self.driver.close(slot, session)
        reason = f"connection to {slot.address} lost: {_describe(cause)}"
        # Everything still owed a reply, then every acknowledged job still running.
        for _event, owner in session.fifo:
            if isinstance(owner, Job):
                if owner.outcome is None and owner._sent_on is session:
                    self._resubmit(owner, now, reason, cause)
            elif isinstance(owner, Request) and not owner.done:
                self._fail_request(owner, ConnectionLost(reason))
        session.fifo.clear()
        for entry in list(session.jobs.values()):
            jobs = [entry] if isinstance(entry, Job) else entry.jobs
            for job in jobs:
                if job.outcome is None:
                    self._resubmit(job, now, reason, cause)
        session.jobs.clear()

    def close(self, now: float) -> None:
        """Close every connection; jobs and requests still open end Disconnected."""
        if self.closed:
            return
        self.closed = True
        error = ConnectionAbortedError("the client was closed")
        for slot in self.slots:
            session = slot.session
            if session is not None:
                self.connection_lost(session, error, now, close=True)
            else:
                for item in slot.queue:
                    if isinstance(item, Job):
                        item._queued = None
                        if item.outcome is None:
                            self._finish(item, Disconnected("the client was closed", False, error))
                    elif not item.done:
                        self._fail_request(item, ConnectionLost("the client was closed"))
                slot.queue.clear()
            slot.state = SlotState.CLOSED

    # -------------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        return self.timers.next()

    def handle_timers(self, now: float) -> None:
        """Run everything due at ``now``: job and request timeouts, reconnects."""
        for kind, item in self.timers.pop_due(now):
            if kind == _T_JOB:
                self._job_timer(item, now)
            elif kind == _T_CREATED:
                self._created_timer(item, now)
            elif kind == _T_REQUEST:
                if not item.done and item._deadline is not None and item._deadline <= now:
                    self._fail_request(
                        item,
                        RequestTimeout(f"no reply within {item._timeout:g} s"),
                    )
            elif item.state is SlotState.DOWN and item.retry_at <= now and not self.closed:
                self._connect(item)

    def _arm(self, deadline: float | None, entry: tuple[int, Any]) -> None:
        if deadline is not None and self.timers.push(deadline, entry):
            self.driver.timer_changed()

    # Deadlines of jobs.  Timer entries are never removed: an entry that comes due
    # checks what is still true of its job (ended, acknowledged, deadline moved) and
    # does nothing, or re-arms, if its reason is gone.  Two ways to be watched:
    #
    # * the common case -- written to a server, only the JOB_CREATED deadline to keep,
    #   deadlines in writing order -- is the session's ``unacked`` queue with one timer
    #   entry for its oldest job (``_created_timer``): no timer work per job;
    # * everything else (a completion ``timeout``, a job queued while a server
    #   connects, a created deadline earlier than one written before it) has its own
    #   heap entry (``_arm_job``, ``_job_timer``).

    def _watch(self, session: _ClientSession, job: Job) -> None:
        """Keep the deadlines of ``job``, just written on ``session``."""
        deadline = job._created_deadline
        if job._deadline is None and deadline is not None and deadline >= session.created_last:
            session.created_last = deadline
            session.unacked.append(job)
            job._watched = True
            if not session.created_armed:
                session.created_armed = True
                self._arm(deadline, (_T_CREATED, session))
            return
        job._watched = False
        self._arm_job(job)

    def _arm_job(self, job: Job) -> None:
        """Give ``job`` a heap entry for its earliest deadline, unless one comes sooner."""
        when = job._deadline
        created = job._created_deadline
        if job.handle is None and created is not None and (when is None or created < when):
            when = created
        if when is None:
            return
        armed = job._armed
        if armed is not None and armed <= when:
            return
        job._armed = when
        self._arm(when, (_T_JOB, job))

    def _created_timer(self, session: _ClientSession, now: float) -> None:
        """The oldest job of ``session.unacked`` may have waited too long for JOB_CREATED."""
        session.created_armed = False
        if not session.alive:
            return
        unacked = session.unacked
        while unacked:
            job = unacked[0]
            if job.handle is not None or job.outcome is not None or job._sent_on is not session:
                unacked.popleft()  # acknowledged, ended or resubmitted elsewhere
                continue
            deadline = job._created_deadline
            assert deadline is not None
            if deadline > now:
                session.created_armed = True
                self._arm(deadline, (_T_CREATED, session))
                return
            unacked.popleft()
            self._created_expired(session, job, now)
            return

    def _created_expired(self, session: Session, job: Job, now: float) -> None:
        # The server did not acknowledge in time: consider the connection dead.
        self._finish(job, TimedOut("created", job._created_timeout or 0.0))
        if session.alive:
            self.connection_lost(
                session,
                TimeoutError(f"no JOB_CREATED within {job._created_timeout:g} s"),
                now,
                close=True,
            )

    def _job_timer(self, job: Job, now: float) -> None:
        if job._armed is not None and job._armed <= now:
            job._armed = None
        if job.outcome is not None:
            return
        created = job._created_deadline
        session = job._sent_on
        if job.handle is None and created is not None and created <= now:
            if session is None:
                self._finish(job, TimedOut("connect", job._created_timeout or 0.0))
            else:
                self._created_expired(session, job, now)
            return
        if job._deadline is not None and job._deadline <= now:
            if job.handle is not None:
                phase = "complete"
            elif session is not None:
                phase = "created"
            else:
                phase = "connect"
            self._finish(job, TimedOut(phase, job._timeout or 0.0))  # type: ignore[arg-type]
            return
        # A deadline moved (the job was written, or written again, since this entry
        # was made): wait for it, unless the session's queue already does.
        if job._deadline is not None or session is None or not job._watched:
            self._arm_job(job)

    # ------------------------------------------------------------------- submit

    def make_request(
        self,
        function: bytes | str,
        data: bytes | bytearray | memoryview | str,
        *,
        unique: bytes | str | None,
        priority: Priority | str | int,
        background: bool,
        epoch: float | None,
        reducer: bytes | str | None,
    ) -> SubmitJob | SubmitJobEpoch | SubmitReduceJob:
        """The submission packet for these arguments (validated before any I/O).

        Raises:
            ValueError, TypeError: invalid arguments.
            LocalProtocolError: a field breaks the protocol's limits.
        """
        fn = function if type(function) is bytes else self._function_name(function)
        payload = data if type(data) is bytes else _as_bytes(data, "data")
        uniq = b"" if unique is None else _as_bytes(unique, "unique")
        prio = priority if priority is Priority.NORMAL else coerce_priority(priority)
        if epoch is not None:
            if reducer is not None:
                raise ValueError("a reduce job cannot have an epoch")
            if prio is not Priority.NORMAL:
                raise ValueError("epoch jobs always run at normal priority")
            if epoch < 0:
                raise ValueError("epoch must be a Unix time (seconds since 1970)")
            request: SubmitJob | SubmitJobEpoch | SubmitReduceJob = SubmitJobEpoch(
                fn, uniq, int(epoch), payload
            )
        elif reducer is not None:
            if prio is not Priority.NORMAL:
                raise ValueError("reduce jobs always run at normal priority")
            request = SubmitReduceJob(
                fn, uniq, _as_bytes(reducer, "reducer"), b"", payload, bool(background)
            )
            _check_fields(request, self._limits)
            return request
        else:
            request = SubmitJob(fn, uniq, payload, prio, bool(background))
        # The common case in a few comparisons; _check_fields explains what is wrong.
        limits = self._limits
        if (
            not fn
            or len(fn) > limits.max_function
            or b"\0" in fn
            or len(uniq) > limits.max_unique
            or (uniq and b"\0" in uniq)
            or len(payload) > self._max_data
        ):
            _check_fields(request, limits)
        return request

    def _function_name(self, function: bytes | str) -> bytes:
        """``function`` as bytes; the text names a program uses are encoded once."""
        names = self._names
        name = names.get(function)
        if name is None:
            name = _as_bytes(function, "function")
            if len(names) < 1024 and type(function) is str:
                names[function] = name
        return name

    def submit(
        self,
        job: Job,
        now: float,
        *,
        timeout: float | None = None,
        created_timeout: float | None = None,
    ) -> None:
        """Send ``job`` (made with :meth:`make_request`) to its server, or queue it."""
        self._live_jobs += 1
        if self.closed:
            self._finish(job, Disconnected("the client is closed", False))
            return
        options = self.options
        if timeout is None:
            timeout = options.timeout
        if created_timeout is None:
            created_timeout = options.created_timeout
        job.submitted_at = now
        job._timeout = timeout
        job._created_timeout = created_timeout
        if timeout is not None:
            job._deadline = now + timeout
        slot = self._only
        if slot is not None and slot.state is SlotState.UP and not job._request.unique:
            # One server, connected: nothing to choose.
            session = slot.session
            assert isinstance(session, _ClientSession)
            self._send_job(session, job, now)
        else:
            self._route(job, now)

    def _candidates(self, key: bytes | None) -> list[Slot]:
        slots = self.slots
        if key is None:
            start = next(self._rr) % len(slots)
            return slots[start:] + slots[:start]
        return [slots[i] for i in self.ring.order(key)]

    def _route(
        self, job: Job, now: float, resubmit: tuple[str, bool, BaseException] | None = None
    ) -> None:
        """Send ``job`` on the best slot, queue it on a connecting one, or end it."""
        request = job._request
        unique = request.unique
        key: bytes | None = request.data if unique == b"-" else unique or None
        candidates = self._candidates(key)
        if key is None:
            # No affinity: prefer a connected server.
            candidates.sort(key=_not_up)
        for slot in candidates:
            state = slot.state
            if state is SlotState.UP:
                session = slot.session
                assert isinstance(session, _ClientSession)
                self._send_job(session, job, now)
                return
            if state is SlotState.CONNECTING or state is SlotState.IDLE:
                job._queued = slot
                slot.queue.append(job)
                if job._created_timeout is not None:
                    job._created_deadline = now + job._created_timeout
                self._arm_job(job)
                if state is SlotState.IDLE:
                    self._connect(slot)
                return
        error = _connect_error(self.slots)
        if resubmit is None:
            self._finish(job, Disconnected(str(error), False, error))
        else:
            reason, acknowledged, cause = resubmit
            self._finish(
                job, Disconnected(f"{reason}; no other server is reachable", acknowledged, cause)
            )

    def _send_job(self, session: _ClientSession, job: Job, now: float) -> None:
        """Write ``job`` on ``session``; its JOB_CREATED deadline counts from now."""
        job._sent_on = session
        job.attempts += 1
        session.send(job._request, job)
        if job._created_timeout is not None:
            job._created_deadline = now + job._created_timeout
        self._watch(session, job)

    def _resubmit(self, job: Job, now: float, reason: str, cause: BaseException) -> None:
        acknowledged = job.handle is not None
        job._sent_on = None
        if job.attempts >= self.options.max_attempts or self.closed:
            self._finish(job, Disconnected(reason, acknowledged, cause))
            return
        job.handle = None
        job.server = None
        self._route(job, now, (reason, acknowledged, cause))

    def abandon(self, job: Job) -> None:
        """Stop following ``job`` (its outcome becomes :class:`Abandoned`).

        The server keeps the job (the protocol cannot cancel it); replies still owed for
        it are read and dropped, so the connection stays in step.
        """
        if job.outcome is None:
            self._finish(job, Abandoned())

    def _finish(self, job: Job, outcome: Outcome) -> None:
        job.outcome = outcome
        self._live_jobs -= 1
        if job._queued is not None:
            with contextlib.suppress(ValueError):
                job._queued.queue.remove(job)
            job._queued = None
        handle = job.handle
        session = job._sent_on
        if handle is not None and session is not None and session.alive:
            assert isinstance(session, _ClientSession)
            self._untrack(session, handle, job)
        job._wake()

    def _untrack(self, session: _ClientSession, handle: bytes, job: Job) -> None:
        """Remove a job that ended early (timeout, abandon) from its handle map."""
        entry = session.jobs.get(handle)
        if entry is None:
            return
        if entry is job:
            del session.jobs[handle]
            session.conn.forget_client_job(handle)
        elif type(entry) is _Shared and all(j.outcome is not None for j in entry.jobs):
            # Only placeholders are left: stop following the handle altogether.
            del session.jobs[handle]
            session.conn.forget_client_job(handle)

    # ------------------------------------------------------------------- replies

    def _job_reply(self, session: _ClientSession, job: Job, event: Any, now: float) -> None:
        unacked = session.unacked
        if unacked and unacked[0] is job:
            unacked.popleft()  # replies come in writing order: the oldest is answered
        cls = type(event)
        if cls is JobCreated:
            handle = event.handle
            if job.outcome is not None:
                # Abandoned or timed out before the server answered.
                if not job._background and handle not in session.jobs:
                    session.conn.forget_client_job(handle)
                return
            job.handle = handle
            job.server = session.slot.address
            if job._background:
                self._finish(job, Accepted(handle))
                return
            jobs = session.jobs
            entry = jobs.get(handle)
            if entry is None:
                jobs[handle] = job
            elif isinstance(entry, _Shared):
                entry.jobs.append(job)
            else:
                jobs[handle] = _Shared([entry, job])
            if job._deadline is not None:
                self._arm_job(job)
            job._wake()
        elif cls is Error:
            if job.outcome is None:
                self._finish(job, Rejected(event.code, event.text))
        elif job.outcome is None:  # pragma: no cover - the core only lets replies through
            self._finish(job, Rejected(b"UNEXPECTED_REPLY", type(event).__name__.encode()))

    def _unsolicited(self, session: _ClientSession, event: Any, now: float) -> None:
        cls = type(event)
        if cls is WorkData or cls is WorkWarning or cls is WorkStatus:
            job = self._job_for(session, event.handle, terminal=False)
            if job is None or job.outcome is not None:
                return
            if cls is WorkData:
                if job._chunks is None:
                    job._chunks = []
                job._chunks.append(event.data)
            elif cls is WorkStatus:
                job.status = (event.numerator, event.denominator)
            if job._updates is None:
                job._updates = deque()
            job._updates.append(event)
            job._wake()
        elif cls is WorkComplete or cls is WorkFail or cls is WorkException:
            job = self._job_for(session, event.handle, terminal=True)
            if job is None or job.outcome is not None:
                return
            if cls is WorkComplete:
                chunks = job._chunks
                outcome: Outcome = Completed(event.data, tuple(chunks) if chunks else ())
            elif cls is WorkFail:
                outcome = Failed()
            else:
                outcome = ExceptionRaised(event.data)
            job._sent_on = None  # already removed from the handle map
            self._finish(job, outcome)
        # ERRORs for fire-and-forget packets (SET_CLIENT_ID, ...) need no action.

    def _job_for(self, session: _ClientSession, handle: bytes, *, terminal: bool) -> Job | None:
        entry = session.jobs.get(handle)
        if entry is None or not isinstance(entry, _Shared):
            if terminal and entry is not None:
                del session.jobs[handle]
            return entry
        jobs = entry.jobs
        index = entry.next % len(jobs)
        job = jobs[index]
        if terminal:
            del jobs[index]
            if not jobs or all(j.outcome is not None for j in jobs):
                del session.jobs[handle]
                if jobs:
                    session.conn.forget_client_job(handle)
        else:
            entry.next = index + 1
        return job

    # ------------------------------------------------------------------ requests

    def request(
        self,
        req: Request,
        now: float,
        *,
        slot: Slot | None = None,
        key: bytes | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send an echo, status or admin request to ``slot`` (or the owner of ``key``)."""
        if self.closed:
            self._fail_request(req, ConnectionLost("the client is closed"))
            return
        req._timeout = timeout
        if timeout is not None:
            req._deadline = now + timeout
            self._arm(req._deadline, (_T_REQUEST, req))
        candidates = [slot] if slot is not None else self._candidates(key)
        if slot is None and key is None:
            candidates.sort(key=lambda s: s.state is not SlotState.UP)
        for candidate in candidates:
            if candidate.state is SlotState.UP:
                assert candidate.session is not None
                self._send_request(candidate.session, req, now)
                return
            if candidate.state in (SlotState.CONNECTING, SlotState.IDLE):
                candidate.queue.append(req)
                if candidate.state is SlotState.IDLE:
                    self._connect(candidate)
                return
            if slot is None and key is not None:
                continue
        self._fail_request(req, _connect_error(candidates))

    def _send_request(self, session: Session, req: Request, now: float) -> None:
        req._sent_on = session
        try:
            session.send(req.event, req)
        except LocalProtocolError as exc:
            self._fail_request(req, exc)

    def _request_reply(self, req: Request, event: Any) -> None:
        if req.done:
            return  # timed out or abandoned earlier: the reply only kept the FIFO in step
        if type(event) is Error:
            req.error = ServerError(event.code, event.text)
        elif type(event) is AdminError:
            req.error = AdminCommandError(event.code, event.text)
        else:
            req.reply = event
        req._wake()

    def _fail_request(self, req: Request, error: BaseException) -> None:
        if req.done:
            return
        req.error = error
        req._wake()

    def abandon_request(self, req: Request) -> None:
        """The caller stopped waiting for ``req``; its reply will be dropped."""
        if not req.done:
            req.error = RequestTimeout("abandoned")
            for slot in self.slots:
                if req in slot.queue:
                    slot.queue.remove(req)

    # --------------------------------------------------------------- inspection

    def slot_for_server(self, server: ServerAddress | None) -> Slot | None:
        if server is None:
            return None
        for slot in self.slots:
            if slot.address == server:
                return slot
        raise ValueError(f"{server} is not one of this client's servers")

    def statistics(self) -> dict[str, Any]:
        """Counts for monitoring and tests: jobs in flight, replies owed, slot states."""
        owed = 0
        followed = 0
        core_handles = 0
        for slot in self.slots:
            session = slot.session
            if isinstance(session, _ClientSession):
                owed += len(session.fifo)
                followed += len(session.jobs)
                core_handles += len(session.conn.client_handles)
        return {
            "jobs": self._live_jobs,
            "replies_owed": owed,
            "handles_followed": followed,
            "core_handles": core_handles,
            "queued": sum(len(s.queue) for s in self.slots),
            # Entries in the timer heap (lazily deleted): jobs with only the default
            # JOB_CREATED deadline share one per connection.
            "timers": len(self.timers),
            "servers": {str(s.address): s.state.value for s in self.slots},
        }


_OPTION = object()  # owner of the OPTION_REQ "exceptions" request


def _not_up(slot: Slot) -> bool:
    return slot.state is not SlotState.UP


_describe = describe_error


def _connect_error(slots: Sequence[Slot]) -> ConnectError:
    causes = {str(s.address): s.last_error or ConnectionError("not connected") for s in slots}
    detail = "; ".join(f"{a}: {_describe(e)}" for a, e in causes.items())
    return ConnectError(f"no server reachable ({detail})", causes)


def _check_fields(request: Any, lim: Limits) -> None:
    """Validate a submission up front, so a bad one fails in submit(), not later.

    Raises:
        LocalProtocolError: a field is too long or holds a NUL byte.
        ValueError: the function name is empty.
    """
    fields = [("function", request.function, lim.max_function)]
    fields.append(("unique", request.unique, lim.max_unique))
    if isinstance(request, SubmitReduceJob):
        fields.append(("reducer", request.reducer, lim.max_unique))
    for name, value, limit in fields:
        if len(value) > limit:
            raise LocalProtocolError(f"{name} is {len(value)} bytes; the limit is {limit}")
        if b"\0" in value:
            raise LocalProtocolError(f"{name} must not contain NUL bytes")
    if not request.function:
        raise ValueError("the function name must not be empty")
    if len(request.data) > lim.max_packet_size - 200:
        raise LocalProtocolError(f"data is {len(request.data)} bytes; too large for one packet")


_DEFAULT_LIMITS = Limits()
