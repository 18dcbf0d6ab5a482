"""Gearman client, worker and admin for trio.

Each connection is a task in the client's (or worker's) nursery: one reader and one
writer per socket, and a timer task for the engine's deadlines.  Waiting is trio-native:
every ``await`` here is a checkpoint, and a cancel scope around a wait (``with
trio.move_on_after(...)``) cancels only that wait (``call()`` then abandons its job);
the connection stays usable.  See docs/timeouts.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import trio

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

_RECV_SIZE = 256 * 1024


class _Conn:
    __slots__ = ("scope", "sending", "session", "socket", "stream", "wake")

    def __init__(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        self.stream = stream
        self.scope = scope
        self.session: Session | None = None
        self.wake = trio.Event()
        self.sending = False
        #: The plain TCP socket, for writes made outside the writer task (None: TLS).
        self.socket = stream.socket if isinstance(stream, trio.SocketStream) else None


class _Driver:
    """The engine's view of trio: connection tasks, a writer per socket, one timer task."""

    def __init__(
        self,
        engine: Any,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None,
        nursery: trio.Nursery,
    ) -> None:
        self.engine = engine
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.nursery = nursery
        self.token = trio.lowlevel.current_trio_token()
        self.thread_id = threading.get_ident()
        self._timer_changed = trio.Event()
        nursery.start_soon(self._timer_task)

    # Driver interface
    def connect(self, slot: Slot) -> None:
        self.nursery.start_soon(self._connection, slot)

    def close(self, slot: Slot, session: Session) -> None:
        conn = slot.io
        if isinstance(conn, _Conn) and conn.session is session:
            conn.session = None
            conn.scope.cancel()

    def flush(self, slot: Slot) -> None:
        conn = slot.io
        if isinstance(conn, _Conn):
            conn.wake.set()

    def backlog(self, slot: Slot) -> None:
        """Write a burst of submissions now, without waiting for the next checkpoint.

        Code that submits many jobs without an ``await`` in between gives the writer
        task no chance to run, so the server would get nothing until the burst ends.
        Trio sockets never block, so the bytes are written to the socket here, as far
        as it takes them; the rest goes back to the front of the outbox for the writer.
        Only when the writer is idle (bytes stay in order), on plain TCP (TLS state
        belongs to the stream) and while the socket is open (its descriptor could
        otherwise be another socket's by now).
        """
        conn = slot.io
        if not isinstance(conn, _Conn) or conn.sending or conn.socket is None:
            return
        session = conn.session
        fd = conn.socket.fileno()
        if session is None or not session.alive or fd < 0:
            return
        data = slot.take_output()
        try:
            sent = os.write(fd, data)
        except OSError:
            sent = 0  # full (or broken: the writer meets the error and reports it)
        if sent < len(data):
            slot.outbox.insert(0, data[sent:])
            conn.wake.set()

    def timer_changed(self) -> None:
        self._timer_changed.set()

    # Tasks
    async def _timer_task(self) -> None:
        engine = self.engine
        while True:
            deadline = engine.next_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()
            now = trio.current_time()
            next_timer = engine.next_timer()
            if next_timer is not None and next_timer <= now:
                engine.handle_timers(now)

    async def _connection(self, slot: Slot) -> None:
        engine = self.engine
        host, port = slot.address
        stream: trio.abc.Stream | None = None
        error: BaseException | None = None
        with trio.move_on_after(
            math.inf if self.connect_timeout is None else self.connect_timeout
        ) as connect_scope:
            try:
                stream = await self._open(host, port)
            except OSError as exc:
                error = _root_os_error(exc)
            except trio.BrokenResourceError as exc:  # the TLS handshake failed
                error = _root_cause(exc)
        if stream is None:
            if connect_scope.cancelled_caught:
                error = TimeoutError(f"connect timed out after {self.connect_timeout:g} s")
            assert error is not None
            engine.connect_failed(slot, error, trio.current_time())
            return
        with trio.CancelScope() as scope:
            conn = _Conn(stream, scope)
            slot.io = conn
            session = engine.connected(slot, trio.current_time())
            if session is None:
                await stream.aclose()
                return
            conn.session = session
            lost: list[BaseException] = []
            try:
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._guard, self._writer(slot, conn), lost, inner)
                    await self._guard(self._reader(conn, session), lost, inner)
                    inner.cancel_scope.cancel()
            finally:
                engine.connection_lost(
                    session,
                    lost[0] if lost else ConnectionResetError("connection closed"),
                    trio.current_time(),
                )
                # Shielded so the socket is always closed; bounded because a TLS
                # close_notify can wait on a server that reads nothing.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
                    await stream.aclose()

    async def _open(self, host: str, port: int) -> trio.abc.Stream:
        """A TCP connection, with the TLS handshake (certificate, host name) if asked."""
        tcp = await trio.open_tcp_stream(host, port)
        if self.ssl_context is None:
            return tcp
        tls = trio.SSLStream(tcp, self.ssl_context, server_hostname=host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return tls

    @staticmethod
    async def _guard(coro: Any, lost: list[BaseException], inner: trio.Nursery) -> None:
        """Run the reader or writer; a broken socket ends both, recorded in ``lost``."""
        try:
            await coro
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            lost.append(_root_cause(exc))
        inner.cancel_scope.cancel()

    async def _reader(self, conn: _Conn, session: Session) -> None:
        engine = self.engine
        stream = conn.stream
        while session.alive:
            data = await stream.receive_some(_RECV_SIZE)
            engine.data_received(session, data or None, trio.current_time())
            if not data:
                return

    async def _writer(self, slot: Slot, conn: _Conn) -> None:
        stream = conn.stream
        while True:
            await conn.wake.wait()
            conn.wake = trio.Event()
            data = slot.take_output()
            if data:
                conn.sending = True
                await stream.send_all(data)
                conn.sending = False


def _root_cause(exc: BaseException) -> BaseException:
    """The TLS or socket error behind trio's BrokenResourceError, if there is one."""
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, OSError):
        return cause  # ssl.SSLError (certificate, alert) or the socket's error
    return exc


def _root_os_error(exc: OSError) -> OSError:
    """The first address's own error (refused, unreachable) for "all attempts failed"."""
    cause = exc.__cause__
    if isinstance(cause, OSError):
        return cause
    for leaf in getattr(cause, "exceptions", ()):
        if isinstance(leaf, OSError):
            return leaf
    return exc


class Job(_aa.AsyncJob):
    """A submitted job.  ``await job.wait()`` for its outcome, ``async for`` its updates."""

    __slots__ = ()
    _event_class = trio.Event


class _Request(_aa.AsyncRequest):
    __slots__ = ()
    _event_class = trio.Event


class _TrioMixin:
    _options: Any
    _driver: Any
    _stack: contextlib.AsyncExitStack | None = None

    def _now(self) -> float:
        now: float = trio.current_time()
        return now

    async def _enter_nursery(self) -> trio.Nursery:
        self._stack = contextlib.AsyncExitStack()
        nursery: trio.Nursery = await self._stack.enter_async_context(trio.open_nursery())
        return nursery

    async def _close_driver(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._driver.nursery.cancel_scope.cancel()
            await stack.aclose()


class Client(_TrioMixin, _aa.AsyncClient):
    """A Gearman client over one or several servers, for trio.

    Use it as ``async with Client("127.0.0.1:4730") as client:`` (the client's
    connections live in a nursery opened there).  Durations are in seconds.
    """

    _job_class = Job
    _request_class = _Request

    async def start(self) -> None:
        if self._driver is not None:
            return
        nursery = await self._enter_nursery()
        self._pending_nursery = nursery
        await super().start()

    def _open_driver(self) -> _Driver:
        options = self._options
        return _Driver(None, options.connect_timeout, options.ssl_context, self._pending_nursery)


class Admin(_TrioMixin, _aa.AsyncAdmin):
    """The admin text protocol of one server, for trio (``async with Admin(...)``)."""

    _request_class = _Request

    async def start(self) -> None:
        if self._driver is not None:
            return
        self._pending_nursery = await self._enter_nursery()
        await super().start()

    def _open_driver(self) -> _Driver:
        options = self._options
        return _Driver(None, options.connect_timeout, options.ssl_context, self._pending_nursery)


# --------------------------------------------------------------------------- worker


class WorkerJob(_we.WorkerJob):
    """A job being run: ``data``, ``unique``, ``handle``, and ``send_data`` & co.

    The ``send_*`` methods may be called from trio or from the thread running a
    synchronous job function.
    """

    __slots__ = ("_scope",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scope: trio.CancelScope | None = None

    def _send(self, event: Any) -> bool:
        driver = self._engine.driver
        if threading.get_ident() == driver.thread_id:
            return super()._send(event)
        if self.cancelled:
            return False
        driver.token.run_sync_soon(_we.WorkerJob._send, self, event)
        return True


class _WorkerDriver(_Driver):
    async def flush_all(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait (at most ``timeout`` s) until every connection wrote what is queued."""
        with trio.move_on_after(timeout):
            for slot in self.engine.slots:
                conn = slot.io
                while (  # noqa: ASYNC110
                    isinstance(conn, _Conn)
                    and conn.session is not None
                    and (slot.outbox or conn.sending)
                ):
                    await trio.sleep(0.001)

    def __init__(
        self,
        engine: Any,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None,
        nursery: trio.Nursery,
        concurrency: int,
    ) -> None:
        super().__init__(engine, connect_timeout, ssl_context, nursery)
        self.drained_event = trio.Event()
        self.limiter = trio.CapacityLimiter(concurrency)

    def start_job(self, job: _we.WorkerJob) -> None:
        assert isinstance(job, WorkerJob)
        self.nursery.start_soon(self._run, job)

    async def _run(self, job: WorkerJob) -> None:
        spec = job.spec
        assert spec is not None
        engine = self.engine
        try:
            with trio.CancelScope() as scope:
                job._scope = scope
                if spec.is_async:
                    value = await spec.func(job)
                else:
                    # A thread cannot be interrupted: it keeps its slot until it returns.
                    value = await trio.to_thread.run_sync(spec.func, job, limiter=self.limiter)
        except Exception as exc:
            engine.job_raised(job, exc)
            return
        if scope.cancelled_caught:
            engine.job_raised(job, TimeoutError("cancelled"))
            return
        engine.job_returned(job, value)

    def cancel_job(self, job: _we.WorkerJob) -> None:
        assert isinstance(job, WorkerJob)
        if job._scope is not None and job.spec is not None and job.spec.is_async:
            job._scope.cancel()

    def drained(self) -> None:
        self.drained_event.set()


class Worker:
    """A Gearman worker for trio: register functions, then ``await worker.work()``.

    ``concurrency`` jobs run at once over all servers (async functions as tasks, plain
    ones in threads); the worker never grabs a job it cannot start.  ``drain()`` (or
    SIGTERM/SIGINT with ``handle_signals=True``) stops grabbing, lets running jobs
    finish and makes ``work()`` return.  Cancelling ``work()`` closes at once.
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

        ``timeout``: local limit in seconds (WORK_EXCEPTION, and cancellation if async);
        ``server_timeout``: sent as CAN_DO_TIMEOUT (seconds; the server takes the job back).
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
        """Connect and run jobs until drained."""
        if self._engine is not None:
            raise RuntimeError("this worker is already working")
        async with trio.open_nursery() as nursery:
            options = self._options
            driver = _WorkerDriver(
                None, options.connect_timeout, options.ssl_context, nursery, options.concurrency
            )
            engine = _we.WorkerEngine(
                self._servers, driver, self._options, WorkerJob, _api.make_rng(self._seed)
            )
            driver.engine = engine
            engine.functions.update(self._functions)
            self._engine = engine
            try:
                if handle_signals:
                    nursery.start_soon(self._signals)
                engine.start()
                if self._drain_requested:
                    engine.drain()
                await driver.drained_event.wait()
                await driver.flush_all(timeout=2.0)
            finally:
                engine.close(trio.current_time())
                self._engine = None
                nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for _ in received:
                self.drain()

    def statistics(self) -> dict[str, Any]:
        if self._engine is None:
            return {"running": 0, "grabs": 0, "jobs_done": 0, "draining": False, "servers": {}}
        return self._engine.statistics()
