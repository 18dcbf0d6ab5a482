"""The async API shared by the asyncio and trio bindings (same methods, same meaning).

Each binding subclasses these classes with its own event class, clock and driver; the
logic (engines) is in the I/O-free modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Self

from gearproto import Limits, Priority, admin
from gearproto.events import StatusRes, StatusResUnique

from . import _api
from . import _client_engine as _ce
from ._outcomes import Outcome, raise_for
from ._routing import Backoff, ServerAddress, ServerSpec
from ._session import Slot
from ._tls import SSLOption

__all__ = ["AsyncAdmin", "AsyncClient", "AsyncJob", "AsyncRequest"]

# Request methods take ``timeout=`` (ASYNC109) on purpose: the deadline is kept by the
# engine, which also drops the reply still owed when it comes, and the three bindings
# share one signature.  Loop-level timeouts compose with it (docs/timeouts.md).


class _Waitable:
    """Mixin: one event per round of changes, shared by every waiter.

    Subclasses name the event class of their library in ``_event_class``.
    """

    _event: Any
    _event_class: Any

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def _changed(self) -> None:
        event = self._event
        if event is None:
            event = self._event = self._event_class()
        await event.wait()


# --------------------------------------------------------------------------- client


class AsyncJob(_Waitable, _ce.Job):
    """A submitted job.  ``await job.wait()`` for its outcome, ``async for`` its updates."""

    __slots__ = ("_event",)

    def __init__(self, engine: _ce.ClientEngine, request: Any) -> None:
        super().__init__(engine, request)
        self._event = None

    async def wait(self) -> Outcome:
        """The job's outcome, once it has one (cancelling this wait leaves the job alone)."""
        while self.outcome is None:
            await self._changed()
        return self.outcome

    async def result(self) -> bytes:
        """The result data; raises a :class:`JobError` if the job did not complete.

        For a background job: its handle once the server accepted it.
        """
        return raise_for(await self.wait())

    async def wait_created(self) -> bytes:
        """The job handle, once JOB_CREATED arrived; raises if the job ended first."""
        while self.handle is None:
            if self.outcome is not None:
                raise_for(self.outcome)
            await self._changed()
        return self.handle

    def __aiter__(self) -> AsyncIterator[_ce.Update]:
        return self._updates_iter()

    async def _updates_iter(self) -> AsyncIterator[_ce.Update]:
        while True:
            update = self._next_update()
            if update is not None:
                yield update
                continue
            if self.outcome is not None:
                return
            await self._changed()

    def abandon(self) -> None:
        """Stop following the job (outcome :class:`Abandoned`); the server keeps it."""
        self._engine.abandon(self)


class AsyncRequest(_Waitable, _ce.Request):
    __slots__ = ("_event",)

    def __init__(self, event: Any) -> None:
        super().__init__(event)
        self._event = None


class _Base:
    _engine: Any
    _driver: Any
    _request_class: Any
    _job_class: Any

    def _now(self) -> float:
        raise NotImplementedError

    def _open_driver(self) -> Any:
        """Make the binding's driver (connections, writes, timer)."""
        raise NotImplementedError

    async def _close_driver(self) -> None:
        raise NotImplementedError

    async def _request(
        self,
        event: Any,
        *,
        slot: Slot | None = None,
        key: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        self._require_started()
        req = self._request_class(event)
        self._engine.request(req, self._now(), slot=slot, key=key, timeout=timeout)
        try:
            while not req.done:
                await req._changed()
        except BaseException:
            self._engine.abandon_request(req)
            raise
        return req.result()

    def _require_started(self) -> None:
        if self._driver is None:
            raise RuntimeError("use 'async with' (or await start()) before using this object")


class AsyncClient(_Base):
    """A Gearman client over one or several servers.

    Use it as ``async with Client("127.0.0.1:4730") as client:``.  Every duration is in
    seconds; see :class:`~gearproto.bindings._client_engine.ClientOptions` for their
    meaning and docs/timeouts.md for how they compose with cancellation.
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
        self._options = _api.client_options(
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
        self._seed = seed
        self._driver = None

    @property
    def servers(self) -> list[ServerAddress]:
        return list(self._servers)

    async def start(self) -> None:
        """Start connecting to every server (``async with`` does this)."""
        if self._driver is not None:
            return
        self._driver = self._open_driver()
        self._engine = _ce.ClientEngine(
            self._servers, self._driver, self._options, _api.make_rng(self._seed)
        )
        self._driver.engine = self._engine
        self._engine.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; jobs still running end :class:`Disconnected`."""
        if self._driver is None:
            return
        self._engine.close(self._now())
        await self._close_driver()

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
    ) -> Any:
        """Submit a job and return at once (submissions pipeline on the connection).

        ``epoch`` (Unix time) makes a background job that does not run before then;
        ``reducer`` makes a map/reduce job.  ``timeout`` bounds the whole job (default:
        the client's), ``created_timeout`` the wait for JOB_CREATED.
        """
        self._require_started()
        request = self._engine.make_request(
            function,
            data,
            unique=unique,
            priority=priority,
            background=background or epoch is not None,
            epoch=epoch,
            reducer=reducer,
        )
        job = self._job_class(self._engine, request)
        self._engine.submit(job, self._now(), timeout=timeout, created_timeout=created_timeout)
        return job

    async def call(
        self,
        function: bytes | str,
        data: bytes | bytearray | memoryview | str = b"",
        **options: Any,
    ) -> bytes:
        """Submit a foreground job and return its result (raises :class:`JobError`).

        Cancelling the call abandons the job.
        """
        job = self.submit(function, data, **options)
        try:
            outcome = await job.wait()
        except BaseException:
            job.abandon()
            raise
        return raise_for(outcome)

    async def echo(
        self,
        data: bytes | str = b"",
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes:
        """ECHO_REQ round trip to ``server`` (default: any connected one)."""
        slot = self._engine.slot_for_server(_api.server_address(server))
        reply = await self._request(_api.echo_event(data), slot=slot, timeout=timeout)
        return bytes(reply.data)

    async def get_status(
        self,
        job_or_handle: AsyncJob | bytes | str,
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> StatusRes:
        """GET_STATUS for a job (or a handle on ``server``)."""
        if isinstance(job_or_handle, AsyncJob):
            handle = await job_or_handle.wait_created()
            address: ServerAddress | None = job_or_handle.server
        else:
            handle = job_or_handle if isinstance(job_or_handle, bytes) else job_or_handle.encode()
            address = _api.server_address(server)
        slot = self._engine.slot_for_server(address)
        if slot is None and len(self._servers) > 1:
            raise ValueError("a bare handle needs server= when the client has several servers")
        reply: StatusRes = await self._request(
            _api.status_event(handle), slot=slot, timeout=timeout
        )
        return reply

    async def get_status_unique(
        self,
        unique: bytes | str,
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> StatusResUnique:
        """GET_STATUS_UNIQUE, sent to the server the unique id hashes to."""
        event = _api.status_unique_event(unique)
        slot = self._engine.slot_for_server(_api.server_address(server))
        reply: StatusResUnique = await self._request(
            event, slot=slot, key=event.unique, timeout=timeout
        )
        return reply

    def statistics(self) -> dict[str, Any]:
        """Jobs in flight, replies owed, server states (for monitoring and tests)."""
        self._require_started()
        stats: dict[str, Any] = self._engine.statistics()
        return stats


# ---------------------------------------------------------------------------- admin


class AsyncAdmin(_Base):
    """The admin text protocol of one server; every command returns the core's reply.

    An ``ERR`` answer raises :class:`AdminCommandError`.
    """

    def __init__(
        self,
        server: ServerSpec,
        *,
        timeout: float | None = 10.0,
        connect_timeout: float | None = 5.0,
        ssl: SSLOption = None,
    ) -> None:
        self._address = _api.servers_list([server])
        self._timeout = timeout
        self._options = _api.client_options(
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
        self._driver = None

    async def start(self) -> None:
        if self._driver is not None:
            return
        self._driver = self._open_driver()
        self._engine = _ce.ClientEngine(self._address, self._driver, self._options)
        self._driver.engine = self._engine
        self._engine.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._driver is None:
            return
        self._engine.close(self._now())
        await self._close_driver()

    async def command(self, command: admin.AdminCommand) -> Any:
        """Send any admin command and return its typed reply."""
        return await self._request(command, slot=self._engine.slots[0], timeout=self._timeout)

    async def status(self) -> admin.StatusReply:
        reply: admin.StatusReply = await self.command(admin.Status())
        return reply

    async def priority_status(self) -> admin.PriorityStatusReply:
        reply: admin.PriorityStatusReply = await self.command(admin.PriorityStatus())
        return reply

    async def workers(self) -> admin.WorkersReply:
        reply: admin.WorkersReply = await self.command(admin.Workers())
        return reply

    async def show_jobs(self) -> admin.ShowJobsReply:
        reply: admin.ShowJobsReply = await self.command(admin.ShowJobs())
        return reply

    async def show_unique_jobs(self) -> admin.ShowUniqueJobsReply:
        reply: admin.ShowUniqueJobsReply = await self.command(admin.ShowUniqueJobs())
        return reply

    async def cancel_job(self, handle: bytes | str) -> admin.AdminOk:
        reply: admin.AdminOk = await self.command(_api.cancel_job_command(handle))
        return reply

    async def create_function(self, function: bytes | str) -> admin.AdminOk:
        reply: admin.AdminOk = await self.command(_api.create_function_command(function))
        return reply

    async def drop_function(self, function: bytes | str) -> admin.AdminOk:
        reply: admin.AdminOk = await self.command(_api.drop_function_command(function))
        return reply

    async def max_queue(self, function: bytes | str, *limits: int) -> admin.AdminOk:
        reply: admin.AdminOk = await self.command(_api.max_queue_command(function, *limits))
        return reply

    async def getpid(self) -> int:
        reply: admin.AdminOk = await self.command(admin.GetPid())
        return int(reply.value or b"0")

    async def verbose(self) -> bytes:
        reply: admin.AdminOk = await self.command(admin.Verbose())
        return reply.value or b""

    async def version(self) -> bytes:
        reply: admin.AdminOk = await self.command(admin.Version())
        return reply.value or b""

    async def shutdown(self, graceful: bool = False) -> admin.AdminOk:
        reply: admin.AdminOk = await self.command(admin.Shutdown(graceful))
        return reply
