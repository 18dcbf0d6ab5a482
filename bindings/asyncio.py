"""Gearman client, worker and admin for asyncio.

Connections are :class:`asyncio.Protocol` objects that feed the sans-IO core directly;
writes made in one loop iteration are coalesced into one ``transport.write``.
Cancellation is plain asyncio: cancelling a task that awaits a job, a request or
``Worker.work()`` raises :class:`asyncio.CancelledError` there and leaves the client
consistent (see docs/timeouts.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

from gearproto import Limits

from . import _api
from . import _async_api as _aa
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
)
from ._routing import Backoff, ServerSpec
from ._session import Session, Slot
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


# --------------------------------------------------------------------------- driver


class _Protocol(asyncio.Protocol):
    """One TCP connection: bytes in go to the engine; EOF and errors end the session."""

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = driver.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            driver = self.driver
            driver.engine.data_received(session, data, driver.loop.time())

    def eof_received(self) -> bool:
        session = self.session
        if session is not None:
            self.driver.engine.data_received(session, None, self.driver.loop.time())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if session is not None:
            self.driver.engine.connection_lost(
                session, exc or ConnectionResetError("connection closed"), self.driver.loop.time()
            )
        if not self.lost.done():
            self.lost.set_result(None)


class _Driver:
    """The engine's view of asyncio: connect, write (coalesced), close, one timer."""

    def __init__(
        self, engine: Any, connect_timeout: float | None, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.engine = engine
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.loop = asyncio.get_running_loop()
        self._dirty: list[Slot] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocols: set[_Protocol] = set()
        #: Close connections after writing what is buffered (a worker's final results).
        self.graceful = False

    # Driver interface
    def connect(self, slot: Slot) -> None:
        task = self.loop.create_task(self._connect(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self, slot: Slot, session: Session) -> None:
        proto = slot.io
        if isinstance(proto, _Protocol) and proto.session is session and proto.transport:
            proto.session = None
            if self.graceful:
                proto.transport.close()  # what is buffered still goes out
            else:
                proto.transport.abort()  # a broken connection: drop what is queued

    def flush(self, slot: Slot) -> None:
        if not self._dirty:
            self.loop.call_soon(self._flush)
        self._dirty.append(slot)

    def backlog(self, slot: Slot) -> None:
        # A burst of submissions: hand them to the transport now (it writes at once
        # when its buffer is empty) so the server works while the caller submits.
        proto = slot.io
        if isinstance(proto, _Protocol) and proto.transport is not None:
            proto.transport.write(slot.take_output())

    def timer_changed(self) -> None:
        when = self.engine.next_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    # Internals
    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for slot in dirty:
            proto = slot.io
            data = slot.take_output()
            if data and isinstance(proto, _Protocol) and proto.transport is not None:
                proto.transport.write(data)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timers(self.loop.time())
        self.timer_changed()

    async def _connect(self, slot: Slot) -> None:
        host, port = slot.address
        try:
            async with asyncio.timeout(self.connect_timeout):
                # With TLS, the handshake (certificate and host name checks against
                # ``host``) is part of the connection, and of the connect timeout.
                transport, proto = await self.loop.create_connection(
                    lambda: _Protocol(self), host, port, ssl=self.ssl_context
                )
        except TimeoutError:
            self.engine.connect_failed(
                slot,
                TimeoutError(f"connect timed out after {self.connect_timeout:g} s"),
                self.loop.time(),
            )
            return
        except OSError as exc:
            self.engine.connect_failed(slot, exc, self.loop.time())
            return
        slot.io = proto
        self._protocols.add(proto)
        proto.lost.add_done_callback(lambda _: self._protocols.discard(proto))
        session = self.engine.connected(slot, self.loop.time())
        if session is None:
            transport.close()
            return
        proto.session = session

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()
        for task in list(self._tasks):
            task.cancel()
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.close()
        waiters = [p.lost for p in self._protocols]
        if waiters:
            await asyncio.wait(waiters, timeout=5.0)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Job(_aa.AsyncJob):
    """A submitted job.  ``await job.wait()`` for its outcome, ``async for`` its updates."""

    __slots__ = ()
    _event_class = asyncio.Event


class _Request(_aa.AsyncRequest):
    __slots__ = ()
    _event_class = asyncio.Event


class _AsyncioMixin:
    _options: Any
    _driver: Any

    def _now(self) -> float:
        driver = self._driver
        if driver is not None:
            now: float = driver.loop.time()
            return now
        return asyncio.get_running_loop().time()

    def _open_driver(self) -> _Driver:
        return _Driver(None, self._options.connect_timeout, self._options.ssl_context)

    async def _close_driver(self) -> None:
        await self._driver.aclose()


class Client(_AsyncioMixin, _aa.AsyncClient):
    """A Gearman client over one or several servers, for asyncio.

    Use it as ``async with Client("127.0.0.1:4730") as client:``.  Durations are in
    seconds; docs/timeouts.md explains how they compose with cancellation.
    """

    _job_class = Job
    _request_class = _Request


class Admin(_AsyncioMixin, _aa.AsyncAdmin):
    """The admin text protocol of one server, for asyncio (``async with Admin(...)``)."""

    _request_class = _Request


# --------------------------------------------------------------------------- worker


class WorkerJob(_we.WorkerJob):
    """A job being run: ``data``, ``unique``, ``handle``, and ``send_data`` & co.

    The ``send_*`` methods may be called from the loop or from the thread running a
    synchronous job function.
    """

    __slots__ = ("_task",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Future[Any] | None = None

    def _send(self, event: Any) -> bool:
        driver = self._engine.driver
        if threading.get_ident() == driver.thread_id:
            return super()._send(event)
        if self.cancelled:
            return False
        driver.loop.call_soon_threadsafe(_we.WorkerJob._send, self, event)
        return True


class _WorkerDriver(_Driver):
    def __init__(
        self,
        engine: Any,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None,
        concurrency: int,
    ) -> None:
        super().__init__(engine, connect_timeout, ssl_context)
        self.thread_id = threading.get_ident()
        self.drained_event = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="gearproto-job"
        )
        self.jobs: set[WorkerJob] = set()

    def start_job(self, job: _we.WorkerJob) -> None:
        assert isinstance(job, WorkerJob)
        assert job.spec is not None
        self.jobs.add(job)
        if job.spec.is_async:
            job._task = self.loop.create_task(self._run_async(job))
        else:
            future = self.loop.run_in_executor(self.executor, _call_sync, job)
            job._task = future
            future.add_done_callback(lambda f: self._sync_done(job, f))

    async def _run_async(self, job: WorkerJob) -> None:
        assert job.spec is not None
        try:
            value = await job.spec.func(job)
        except asyncio.CancelledError:
            self.jobs.discard(job)
            self.engine.job_raised(job, TimeoutError("cancelled"))
            if not job.expired:
                raise
            return
        except Exception as exc:
            self.jobs.discard(job)
            self.engine.job_raised(job, exc)
            return
        self.jobs.discard(job)
        self.engine.job_returned(job, value)

    def _sync_done(self, job: WorkerJob, future: asyncio.Future[Any]) -> None:
        self.jobs.discard(job)
        if future.cancelled():
            self.engine.job_raised(job, TimeoutError("cancelled"))
            return
        exc = future.exception()
        if exc is not None:
            self.engine.job_raised(job, exc)
        else:
            self.engine.job_returned(job, future.result())

    def cancel_job(self, job: _we.WorkerJob) -> None:
        assert isinstance(job, WorkerJob)
        # A job running in a thread cannot be stopped: it keeps its slot until it returns
        # (it can poll ``job.cancelled``).
        if job._task is not None and job.spec is not None and job.spec.is_async:
            job._task.cancel()

    def drained(self) -> None:
        self.drained_event.set()


def _call_sync(job: WorkerJob) -> Any:
    assert job.spec is not None
    return job.spec.func(job)


class Worker:
    """A Gearman worker: register functions, then ``await worker.work()``.

    ``concurrency`` jobs run at once over all servers (async functions as tasks,
    plain functions in a thread pool of that size); the worker never grabs a job it
    cannot start.  ``drain()`` (or SIGTERM with ``handle_signals=True``) stops grabbing,
    lets running jobs finish and makes ``work()`` return.
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
        self._functions: dict[bytes, _we.FunctionSpec] = {}
        self._engine: _we.WorkerEngine | None = None
        self._driver: _WorkerDriver | None = None
        self._seed = seed
        self._drain_requested = False

    def register(
        self,
        function: bytes | str,
        func: Callable[[WorkerJob], Any] | None = None,
        *,
        timeout: float | None = None,
        server_timeout: float | None = None,
    ) -> Any:
        """Register ``func`` for ``function`` (or use as a decorator without ``func``).

        ``timeout`` is a local limit in seconds (the job is reported failed with a
        WORK_EXCEPTION and, if async, cancelled); ``server_timeout`` is sent as
        CAN_DO_TIMEOUT so the server takes the job back after that many seconds.
        """
        name = function.encode() if isinstance(function, str) else bytes(function)

        def add(f: Callable[[WorkerJob], Any]) -> Callable[[WorkerJob], Any]:
            spec = _we.FunctionSpec(name, f, timeout, server_timeout)
            self._functions[name] = spec
            if self._engine is not None:
                self._engine.register(spec)
            return f

        return add if func is None else add(func)

    def unregister(self, function: bytes | str) -> None:
        name = function.encode() if isinstance(function, str) else bytes(function)
        del self._functions[name]
        if self._engine is not None:
            self._engine.unregister(name)

    def drain(self) -> None:
        """Finish running jobs, grab no more, then make ``work()`` return."""
        self._drain_requested = True
        if self._engine is not None:
            self._engine.drain()

    async def work(self, *, handle_signals: bool = False) -> None:
        """Connect, run jobs until drained; cancelling it closes at once."""
        if self._engine is not None:
            raise RuntimeError("this worker is already working")
        loop = asyncio.get_running_loop()
        options = self._options
        driver = _WorkerDriver(
            None, options.connect_timeout, options.ssl_context, options.concurrency
        )
        engine = _we.WorkerEngine(
            self._servers, driver, self._options, WorkerJob, _api.make_rng(self._seed)
        )
        driver.engine = engine
        self._driver, self._engine = driver, engine
        for spec in self._functions.values():
            engine.functions[spec.name] = spec
        signals: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.drain)
                    signals.append(sig)
        try:
            engine.start()
            if self._drain_requested:
                engine.drain()
            await driver.drained_event.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            driver._flush()  # the last WORK_* packets go out before the sockets close
            driver.graceful = True
            engine.close(loop.time())
            for job in list(driver.jobs):
                if job._task is not None:
                    job._task.cancel()
            await driver.aclose()
            driver.executor.shutdown(wait=False, cancel_futures=True)
            self._engine = None
            self._driver = None

    def statistics(self) -> dict[str, Any]:
        if self._engine is None:
            return {"running": 0, "grabs": 0, "jobs_done": 0, "draining": False, "servers": {}}
        return self._engine.statistics()
