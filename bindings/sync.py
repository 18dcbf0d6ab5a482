"""Gearman client, worker and admin with a blocking API (threads, no event loop).

Every call that waits takes a ``timeout`` in seconds and raises :class:`TimeoutError`
(or the typed error named in its docstring) when it runs out; a client's I/O runs in
one background thread per client, a worker's in the thread that calls ``work()``.  All
objects are thread-safe.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from gearproto import Limits, Priority, admin
from gearproto.events import StatusRes, StatusResUnique

from . import _api
from . import _client_engine as _ce
from . import _worker_engine as _we
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
    GearmanError,
    JobAbandoned,
    JobDisconnected,
    JobError,
    JobException,
    JobFailed,
    JobRejected,
    JobTimedOut,
    Outcome,
    Rejected,
    RequestTimeout,
    ServerError,
    TimedOut,
    raise_for,
)
from ._reactor import Reactor
from ._routing import Backoff, ServerAddress, ServerSpec
from ._session import Slot
from ._tls import SSLOption, TLSConfigError, tls_context
from ._worker_engine import JobFail, WorkException

__all__ = [
    "Abandoned",
    "Accepted",
    "Admin",
    "AdminCommandError",
    "Client",
    "Completed",
    "ConnectError",
    "ConnectionLost",
    "Disconnected",
    "ExceptionRaised",
    "Failed",
    "GearmanError",
    "Job",
    "JobAbandoned",
    "JobDisconnected",
    "JobError",
    "JobException",
    "JobFail",
    "JobFailed",
    "JobRejected",
    "JobTimedOut",
    "Outcome",
    "Rejected",
    "RequestTimeout",
    "ServerError",
    "TLSConfigError",
    "TimedOut",
    "WorkException",
    "Worker",
    "WorkerJob",
    "tls_context",
]


def _wait_for(
    cond: threading.Condition, predicate: Callable[[], bool], timeout: float | None
) -> None:
    if not cond.wait_for(predicate, timeout):
        raise TimeoutError(f"nothing happened within {timeout:g} s")


# --------------------------------------------------------------------------- client


class Job(_ce.Job):
    """A submitted job: ``wait()`` for its outcome, iterate for its updates."""

    __slots__ = ("_cond",)

    def __init__(self, engine: _ce.ClientEngine, request: Any, cond: threading.Condition) -> None:
        super().__init__(engine, request)
        self._cond = cond

    def _wake(self) -> None:
        self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> Outcome:
        """Block until the job has an outcome.

        ``timeout`` only bounds this wait (:class:`TimeoutError`; the job goes on);
        the job's own time limits were set by ``submit()``.
        """
        with self._cond:
            _wait_for(self._cond, lambda: self.outcome is not None, timeout)
            assert self.outcome is not None
            return self.outcome

    def result(self, timeout: float | None = None) -> bytes:
        """The result data, or raise the :class:`JobError` of the outcome."""
        return raise_for(self.wait(timeout))

    def wait_created(self, timeout: float | None = None) -> bytes:
        """The job handle, once JOB_CREATED arrived; raises if the job ended first."""
        with self._cond:
            _wait_for(
                self._cond, lambda: self.handle is not None or self.outcome is not None, timeout
            )
            if self.handle is None:
                assert self.outcome is not None
                raise_for(self.outcome)
            assert self.handle is not None
            return self.handle

    def updates(self, timeout: float | None = None) -> Iterator[_ce.Update]:
        """WORK_DATA / WORK_WARNING / WORK_STATUS events until the job ends.

        ``timeout`` bounds the wait for each next update.
        """
        while True:
            with self._cond:
                _wait_for(
                    self._cond, lambda: bool(self._updates) or self.outcome is not None, timeout
                )
                update = self._next_update()
                if update is None:
                    return
            yield update

    def __iter__(self) -> Iterator[_ce.Update]:
        return self.updates()

    def abandon(self) -> None:
        """Stop following the job (outcome :class:`Abandoned`); the server keeps it."""
        with self._cond:
            self._engine.abandon(self)


class _Request(_ce.Request):
    __slots__ = ("_cond",)

    def __init__(self, event: Any, cond: threading.Condition) -> None:
        super().__init__(event)
        self._cond = cond

    def _wake(self) -> None:
        self._cond.notify_all()


class _Base:
    _reactor: Reactor
    _engine: Any
    _thread: threading.Thread | None

    def _start_thread(self, name: str) -> None:
        reactor = self._reactor
        self._thread = threading.Thread(target=reactor.run, name=name, daemon=True)
        self._thread.start()
        with reactor.lock:
            self._engine.start()

    def _request(
        self,
        event: Any,
        *,
        slot: Slot | None = None,
        key: bytes | None = None,
        timeout: float | None = None,
    ) -> Any:
        cond = self._reactor.cond
        req = _Request(event, cond)
        with cond:
            self._engine.request(req, time.monotonic(), slot=slot, key=key, timeout=timeout)
            try:
                cond.wait_for(lambda: req.done)
            except BaseException:
                self._engine.abandon_request(req)
                raise
        return req.result()

    def _shutdown(self) -> None:
        reactor = self._reactor
        with reactor.lock:
            if reactor.stopping:
                return
            self._engine.close(time.monotonic())
        reactor.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10.0)
        reactor.shutdown()


class Client(_Base):
    """A Gearman client over one or several servers (thread-safe).

    Connections open in a background thread as soon as the client is made; use it as
    a context manager (or call :meth:`close`).  Durations are in seconds.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec],
        *,
        connect_timeout: float | None = 5.0,
        created_timeout: float | None = 10.0,
        timeout: float | None = None,
        max_attempts: int = 3,
        exceptions: bool = True,
        client_id: bytes | str | None = None,
        backoff: Backoff | None = None,
        limits: Limits | None = None,
        seed: int | None = None,
        ssl: SSLOption = None,
    ) -> None:
        options = _api.client_options(
            connect_timeout=connect_timeout,
            created_timeout=created_timeout,
            timeout=timeout,
            max_attempts=max_attempts,
            exceptions=exceptions,
            client_id=client_id,
            backoff=backoff,
            limits=limits,
            ssl=ssl,
        )
        self._servers = _api.servers_list(servers)
        self._reactor = Reactor(connect_timeout, options.ssl_context)
        self._engine = _ce.ClientEngine(self._servers, self._reactor, options, _api.make_rng(seed))
        self._reactor.engine = self._engine
        self._start_thread("gearproto-client")

    @property
    def servers(self) -> list[ServerAddress]:
        return list(self._servers)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; jobs still running end :class:`Disconnected`."""
        self._shutdown()

    def submit(
        self,
        function: bytes | str,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        unique: bytes | str | None = None,
        priority: Priority | str = Priority.NORMAL,
        background: bool = False,
        epoch: float | None = None,
        reducer: bytes | str | None = None,
        timeout: float | None = None,
        created_timeout: float | None = None,
    ) -> Job:
        """Submit a job and return at once (never blocks; submissions pipeline)."""
        request = self._engine.make_request(
            function,
            data,
            unique=unique,
            priority=priority,
            background=background or epoch is not None,
            epoch=epoch,
            reducer=reducer,
        )
        cond = self._reactor.cond
        job = Job(self._engine, request, cond)
        with cond:
            self._engine.submit(
                job, time.monotonic(), timeout=timeout, created_timeout=created_timeout
            )
        return job

    def call(
        self,
        function: bytes | str,
        data: bytes | bytearray | memoryview | str = b"",
        **options: Any,
    ) -> bytes:
        """Submit a foreground job, wait, return its data (raises :class:`JobError`).

        If the wait is interrupted (KeyboardInterrupt), the job is abandoned.
        """
        job = self.submit(function, data, **options)
        try:
            outcome = job.wait()
        except BaseException:
            job.abandon()
            raise
        return raise_for(outcome)

    def echo(
        self,
        data: bytes | str = b"",
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """ECHO_REQ round trip to ``server`` (default: any connected one)."""
        slot = self._engine.slot_for_server(_api.server_address(server))
        reply = self._request(_api.echo_event(data), slot=slot, timeout=timeout)
        return bytes(reply.data)

    def get_status(
        self,
        job_or_handle: Job | bytes | str,
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,
    ) -> StatusRes:
        """GET_STATUS for a job (or a handle on ``server``)."""
        if isinstance(job_or_handle, Job):
            handle = job_or_handle.wait_created(timeout)
            address: ServerAddress | None = job_or_handle.server
        else:
            handle = job_or_handle if isinstance(job_or_handle, bytes) else job_or_handle.encode()
            address = _api.server_address(server)
        slot = self._engine.slot_for_server(address)
        if slot is None and len(self._servers) > 1:
            raise ValueError("a bare handle needs server= when the client has several servers")
        reply: StatusRes = self._request(_api.status_event(handle), slot=slot, timeout=timeout)
        return reply

    def get_status_unique(
        self, unique: bytes | str, *, server: ServerSpec | None = None, timeout: float | None = None
    ) -> StatusResUnique:
        """GET_STATUS_UNIQUE, sent to the server the unique id hashes to."""
        event = _api.status_unique_event(unique)
        slot = self._engine.slot_for_server(_api.server_address(server))
        reply: StatusResUnique = self._request(event, slot=slot, key=event.unique, timeout=timeout)
        return reply

    def statistics(self) -> dict[str, Any]:
        """Jobs in flight, replies owed, server states (for monitoring and tests)."""
        with self._reactor.lock:
            stats: dict[str, Any] = self._engine.statistics()
            return stats


# ---------------------------------------------------------------------------- admin


class Admin(_Base):
    """The admin text protocol of one server; every command returns the core's reply.

    An ``ERR`` answer raises :class:`AdminCommandError`; no answer within ``timeout``
    raises :class:`RequestTimeout`.
    """

    def __init__(
        self,
        server: ServerSpec,
        *,
        timeout: float | None = 10.0,
        connect_timeout: float | None = 5.0,
        ssl: SSLOption = None,
    ) -> None:
        options = _api.client_options(
            connect_timeout=connect_timeout,
            created_timeout=None,
            timeout=None,
            max_attempts=1,
            exceptions=False,
            client_id=None,
            backoff=None,
            limits=None,
            ssl=ssl,
        )
        self._timeout = timeout
        self._reactor = Reactor(connect_timeout, options.ssl_context)
        self._engine = _ce.ClientEngine(_api.servers_list([server]), self._reactor, options)
        self._reactor.engine = self._engine
        self._start_thread("gearproto-admin")

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._shutdown()

    def command(self, command: admin.AdminCommand) -> Any:
        """Send any admin command and return its typed reply."""
        return self._request(command, slot=self._engine.slots[0], timeout=self._timeout)

    def status(self) -> admin.StatusReply:
        reply: admin.StatusReply = self.command(admin.Status())
        return reply

    def priority_status(self) -> admin.PriorityStatusReply:
        reply: admin.PriorityStatusReply = self.command(admin.PriorityStatus())
        return reply

    def workers(self) -> admin.WorkersReply:
        reply: admin.WorkersReply = self.command(admin.Workers())
        return reply

    def show_jobs(self) -> admin.ShowJobsReply:
        reply: admin.ShowJobsReply = self.command(admin.ShowJobs())
        return reply

    def show_unique_jobs(self) -> admin.ShowUniqueJobsReply:
        reply: admin.ShowUniqueJobsReply = self.command(admin.ShowUniqueJobs())
        return reply

    def cancel_job(self, handle: bytes | str) -> admin.AdminOk:
        reply: admin.AdminOk = self.command(_api.cancel_job_command(handle))
        return reply

    def create_function(self, function: bytes | str) -> admin.AdminOk:
        reply: admin.AdminOk = self.command(_api.create_function_command(function))
        return reply

    def drop_function(self, function: bytes | str) -> admin.AdminOk:
        reply: admin.AdminOk = self.command(_api.drop_function_command(function))
        return reply

    def max_queue(self, function: bytes | str, *limits: int) -> admin.AdminOk:
        reply: admin.AdminOk = self.command(_api.max_queue_command(function, *limits))
        return reply

    def getpid(self) -> int:
        reply: admin.AdminOk = self.command(admin.GetPid())
        return int(reply.value or b"0")

    def verbose(self) -> bytes:
        reply: admin.AdminOk = self.command(admin.Verbose())
        return reply.value or b""

    def version(self) -> bytes:
        reply: admin.AdminOk = self.command(admin.Version())
        return reply.value or b""

    def shutdown(self, graceful: bool = False) -> admin.AdminOk:
        reply: admin.AdminOk = self.command(admin.Shutdown(graceful))
        return reply


# --------------------------------------------------------------------------- worker


class WorkerJob(_we.WorkerJob):
    """A job being run (in a pool thread): ``data``, ``unique``, ``send_data`` & co."""

    __slots__ = ()

    def _send(self, event: Any) -> bool:
        reactor: Reactor = self._engine.driver.reactor
        with reactor.lock:
            return self._engine.job_send(self, event)


class _WorkerDriver:
    """Adds job execution (a thread pool) to the reactor's driver interface."""

    def __init__(self, reactor: Reactor, concurrency: int) -> None:
        self.reactor = reactor
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="gearproto-job"
        )
        self.is_drained = False
        self.engine: _we.WorkerEngine | None = None

    def connect(self, slot: Slot) -> None:
        self.reactor.connect(slot)

    def close(self, slot: Slot, session: Any) -> None:
        self.reactor.close(slot, session)

    def flush(self, slot: Slot) -> None:
        self.reactor.flush(slot)

    def backlog(self, slot: Slot) -> None:
        self.reactor.backlog(slot)

    def timer_changed(self) -> None:
        self.reactor.timer_changed()

    def start_job(self, job: _we.WorkerJob) -> None:
        self.pool.submit(self._run, job)

    def _run(self, job: _we.WorkerJob) -> None:
        assert job.spec is not None
        assert self.engine is not None
        try:
            value = job.spec.func(job)
        except BaseException as exc:
            with self.reactor.lock:
                self.engine.job_raised(job, exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self.reactor.lock:
            self.engine.job_returned(job, value)

    def cancel_job(self, job: _we.WorkerJob) -> None:
        """A thread cannot be stopped: the job sees ``job.cancelled`` and keeps its slot."""

    def drained(self) -> None:
        self.is_drained = True
        self.reactor.wake()


class Worker:
    """A Gearman worker: register functions, then ``work()`` (blocks until drained).

    Job functions run in a pool of ``concurrency`` threads; the worker never grabs a job
    it cannot start.  ``drain()`` (from any thread), or SIGTERM/SIGINT when ``work()``
    runs in the main thread with ``handle_signals=True``, stops grabbing, lets the
    running jobs finish and makes ``work()`` return.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec],
        *,
        concurrency: int = 1,
        client_id: bytes | str | None = None,
        connect_timeout: float | None = 5.0,
        backoff: Backoff | None = None,
        limits: Limits | None = None,
        seed: int | None = None,
        ssl: SSLOption = None,
    ) -> None:
        self._servers = _api.servers_list(servers)
        self._options = _api.worker_options(
            concurrency=concurrency,
            client_id=client_id,
            connect_timeout=connect_timeout,
            backoff=backoff,
            limits=limits,
            ssl=ssl,
        )
        self._seed = seed
        self._functions: dict[bytes, _we.FunctionSpec] = {}
        self._lock = threading.RLock()
        self._engine: _we.WorkerEngine | None = None
        self._reactor: Reactor | None = None
        self._drain_requested = False

    def register(
        self,
        function: bytes | str,
        func: Callable[[WorkerJob], Any] | None = None,
        *,
        timeout: float | None = None,
        server_timeout: float | None = None,
    ) -> Any:
        """Register ``func`` for ``function`` (or decorate).  See the asyncio binding."""
        name = function.encode() if isinstance(function, str) else bytes(function)

        def add(f: Callable[[WorkerJob], Any]) -> Callable[[WorkerJob], Any]:
            if inspect.iscoroutinefunction(f):
                raise TypeError("the blocking worker runs plain functions, not coroutines")
            spec = _we.FunctionSpec(name, f, timeout, server_timeout)
            with self._lock:
                self._functions[name] = spec
                if self._engine is not None and self._reactor is not None:
                    with self._reactor.lock:
                        self._engine.register(spec)
            return f

        return add if func is None else add(func)

    def unregister(self, function: bytes | str) -> None:
        name = function.encode() if isinstance(function, str) else bytes(function)
        with self._lock:
            del self._functions[name]
            if self._engine is not None and self._reactor is not None:
                with self._reactor.lock:
                    self._engine.unregister(name)

    def drain(self) -> None:
        """Finish running jobs, grab no more, then make ``work()`` return (thread-safe)."""
        with self._lock:
            self._drain_requested = True
            if self._reactor is not None:
                self._reactor.wake()

    def work(self, *, handle_signals: bool = False) -> None:
        """Connect and run jobs in this thread until drained."""
        with self._lock:
            if self._engine is not None:
                raise RuntimeError("this worker is already working")
            reactor = Reactor(self._options.connect_timeout, self._options.ssl_context)
            driver = _WorkerDriver(reactor, self._options.concurrency)
            engine = _we.WorkerEngine(
                self._servers, driver, self._options, WorkerJob, _api.make_rng(self._seed)
            )
            driver.engine = engine
            reactor.engine = engine
            engine.functions.update(self._functions)
            self._engine, self._reactor = engine, reactor
        previous: dict[signal.Signals, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self._signal_drain())

        def check() -> bool:
            if self._drain_requested and not engine.draining:
                engine.drain()
            return driver.is_drained

        try:
            with reactor.lock:
                engine.start()
            reactor.run(until=check)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with reactor.lock:
                engine.close(time.monotonic())
                reactor.stopping = True
            reactor.shutdown()
            driver.pool.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                self._engine = None
                self._reactor = None

    def _signal_drain(self) -> None:
        # Runs in a signal handler: only set a flag and wake the loop.
        self._drain_requested = True
        reactor = self._reactor
        if reactor is not None:
            reactor.wake(force=True)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            if self._engine is None or self._reactor is None:
                return {"running": 0, "grabs": 0, "jobs_done": 0, "draining": False, "servers": {}}
            with self._reactor.lock:
                return self._engine.statistics()
