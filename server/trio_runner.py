"""The trio runner: the same core, driven by trio tasks.

One task per connection reads and feeds the core; each connection's output goes
through a small sender task (trio streams are written with ``await``), so a slow
reader never blocks the others.  One timer task sleeps until
:meth:`ServerCore.next_deadline`; store batches are applied by the store writer
thread.

Output limits: while a connection's unsent output is over ``ServerConfig.output_pause``
its reader task waits (no more requests are read from it); once it is over the hard
cap (``ServerConfig.output_limit``) the connection is dropped.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio
import trio.testing

from ._runner import RunnerBase, log
from ._state import PeerInfo
from .core import ServerCore
from .storage import JobStore, StoreBatch

__all__ = ["TrioMemoryStream", "TrioRunner"]

_READ_SIZE = 256 * 1024

# How long a connection the server closed keeps having its input read and discarded
# (after its write side is shut down), so that closing it does not reset it while the
# peer is still sending: a reset can cost the peer the reply it has not read yet.
DISCARD_SECONDS = 2.0


class _StreamSink:
    """Queues a connection's output for its sender task, counting what is unsent."""

    __slots__ = ("chunks", "closed", "drained", "event", "limit", "overflow", "scope", "unsent")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.event = trio.Event()
        #: Bytes queued or being sent.
        self.unsent = 0
        self.limit = limit
        self.overflow = False
        #: Set when ``unsent`` falls low again (the reader waits on it).
        self.drained = trio.Event()
        #: The connection's cancel scope (dropping it for not reading).
        self.scope: trio.CancelScope | None = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self._grew(len(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.chunks += chunks
        self._grew(sum(map(len, chunks)))

    def _grew(self, size: int) -> None:
        self.unsent += size
        self.event.set()
        if self.unsent > self.limit and not self.overflow:
            self.overflow = True
            if self.scope is not None:
                self.scope.cancel()

    def close(self, linger: float = 60.0) -> None:
        self.closed = True
        self.event.set()
        if self.unsent and self.scope is not None:
            # A peer that does not read its last output is not waited for forever.
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + linger)


class TrioRunner(RunnerBase):
    """Runs a :class:`ServerCore` inside the current trio run."""

    def __init__(
        self,
        core: ServerCore,
        store: JobStore | None = None,
        *,
        keepalive: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(core, store)
        self.keepalive = keepalive
        self.ssl: ssl_module.SSLContext | None = None
        self.listeners: list[trio.SocketListener] = []
        self._nursery: trio.Nursery | None = None
        self._listen_scope = trio.CancelScope()
        self._timer_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._store_wakeup = trio.Event()
        self._idle_check = False
        self.closing = False
        self._token = trio.lowlevel.current_trio_token()
        self.output_pause = core.config.output_pause
        self.handshake_timeout = core.config.partial_timeout or 60.0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TrioRunner]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer_task)
            nursery.start_soon(self._store_task)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    # ----------------------------------------------------------------- listening

    async def listen(
        self,
        host: str | Sequence[str],
        port: int,
        backlog: int = 32,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """Listen on ``host``:``port``; with ``ssl``, every connection is TLS."""
        self.ssl = ssl
        hosts = [host] if isinstance(host, str) else list(host)
        for one in hosts:
            listeners = await trio.open_tcp_listeners(port, host=one, backlog=backlog)
            self.listeners += listeners
        assert self._nursery is not None
        for listener in self.listeners:
            self._nursery.start_soon(self._accept_loop, listener)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        result = []
        for listener in self.listeners:
            name = listener.socket.getsockname()
            result.append((str(name[0]), int(name[1])))
        return result

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        with self._listen_scope:
            while True:
                stream = await listener.accept()
                assert self._nursery is not None
                self._nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        fd = sock.fileno()
        host, port = "memory", 0
        with contextlib.suppress(OSError):
            peer = sock.getpeername()
            host, port = str(peer[0]), int(peer[1])
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        peercert = None
        served: Any = stream
        if self.ssl is not None:
            served = trio.SSLStream(stream, self.ssl, server_side=True)
            try:
                with trio.fail_after(self.handshake_timeout):
                    await served.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, OSError):
                await trio.aclose_forcefully(stream)
                return
            peercert = served.getpeercert()
        await self._run_connection(served, PeerInfo(host, port, fd, peercert))

    async def _run_connection(self, stream: Any, info: PeerInfo) -> None:
        conn_id = self.new_conn_id()
        sink = _StreamSink(self.output_limit)
        self.sinks[conn_id] = sink
        accepted = self.core.connect(conn_id, info, time.time())
        try:
            async with trio.open_nursery() as nursery:
                sink.scope = nursery.cancel_scope
                nursery.start_soon(self._sender, stream, sink, nursery.cancel_scope)
                if not accepted:
                    # One over the connection limit: answered and closed (what it
                    # sends meanwhile is read and dropped, see _sender).
                    self.flush()
                self.after_timers_changed()
                pause = self.output_pause
                while True:
                    if sink.unsent > pause:
                        # The peer does not read its replies: serve it no more requests.
                        sink.drained = trio.Event()
                        await sink.drained.wait()
                    try:
                        data = await stream.receive_some(_READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        data = b""
                    try:
                        self.core.receive(conn_id, data, time.time())
                    except Exception:  # pragma: no cover - a core bug must not stop the server
                        log.exception("internal error on connection %d; closing it", conn_id)
                        break
                    self.flush()
                    self.after_timers_changed()
                    if not data:
                        break
                # Let the sender write what is left, then finish.
                if conn_id in self.sinks:
                    sink.close()
        finally:
            if sink.overflow:
                self.drop_unread(conn_id, sink.unsent)
            self.sinks.pop(conn_id, None)
            self.core.disconnect(conn_id, time.time())
            self.flush()
            self.after_timers_changed()
            self.connection_gone()
            with contextlib.suppress(Exception):
                await trio.aclose_forcefully(stream)

    async def _sender(self, stream: Any, sink: _StreamSink, scope: trio.CancelScope) -> None:
        try:
            while True:
                await sink.event.wait()
                sink.event = trio.Event()
                chunks, sink.chunks = sink.chunks, []
                if chunks:
                    data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                    await stream.send_all(data)
                    sink.unsent -= len(data)
                    if sink.unsent <= self.output_pause // 4:
                        sink.drained.set()
                if sink.closed and not sink.chunks:
                    break
            if isinstance(stream, trio.abc.HalfCloseableStream):
                # Graceful close: FIN now that the output is written; the reader task
                # goes on reading (the core drops what a closed connection sends) until
                # the peer's EOF or DISCARD_SECONDS, and only then the socket is
                # closed (closing it with unread input would reset the connection).
                await stream.send_eof()
                scope.deadline = min(scope.deadline, trio.current_time() + DISCARD_SECONDS)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def close_sink(self, sink: Any) -> None:
        if isinstance(sink, _StreamSink):
            sink.close(self.linger)
        else:  # pragma: no cover - every trio connection has a stream sink
            sink.close()

    # ------------------------------------------------------------------ in-memory

    def open_memory(self) -> TrioMemoryStream:
        if self.closing:
            raise RuntimeError("the server is stopping")
        client, server = trio.testing.memory_stream_pair()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_connection, server, PeerInfo("memory", 0, -1))
        return TrioMemoryStream(client)

    # --------------------------------------------------------------------- timers

    async def _timer_task(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._timer_scope = scope
                self._arm(scope)
                await trio.sleep_forever()
            self._timer_scope = None
            self.core.handle_timer(time.time())
            self.flush()
            self.connection_gone()

    def _arm(self, scope: trio.CancelScope) -> None:
        deadline = self.core.next_deadline()
        if deadline is None:
            scope.deadline = math.inf
        else:
            scope.deadline = trio.current_time() + max(deadline - time.time(), 0.0)

    def after_timers_changed(self) -> None:
        scope = self._timer_scope
        if scope is not None:
            deadline = self.core.next_deadline()
            if deadline is not None:
                at = trio.current_time() + max(deadline - time.time(), 0.0)
                if at < scope.deadline:
                    scope.deadline = at

    # ----------------------------------------------------------------- the store

    def schedule_store(self) -> None:
        self._store_wakeup.set()

    async def _store_task(self) -> None:
        while True:
            await self._store_wakeup.wait()
            self._store_wakeup = trio.Event()
            # After a checkpoint, so that what other tasks have read joins the batch.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.run_store()

    def deliver_from_writer(self, batch: StoreBatch, error: BaseException | None) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.writer_done, batch, error)

    # ----------------------------------------------------------------- stopping

    def flush(self) -> None:
        super().flush()
        if self.core.stop_requested is not None and not self._stopped.is_set():
            if self.core.stop_requested == "graceful":
                self.begin_graceful()
            else:
                self._stopped.set()
        if self._idle_check:
            self.connection_gone()

    def call_soon(self, fn: Any) -> None:
        """Run ``fn`` in the trio run (safe from other threads and signal handlers)."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            self._token.run_sync_soon(fn)
        else:
            fn()

    def begin_graceful(self) -> None:
        self._listen_scope.cancel()
        self._idle_check = True
        self.connection_gone()

    def connection_gone(self) -> None:
        if self._idle_check and self.core.job_count == 0 and not self.store_busy:
            self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        self.closing = True
        self._listen_scope.cancel()
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await listener.aclose()
        for sink in list(self.sinks.values()):
            sink.close()
        with trio.move_on_after(5):
            while self.store_busy:  # noqa: ASYNC110 - shutdown only, bounded
                await trio.sleep(0.005)
        if self.writer is not None:
            await trio.to_thread.run_sync(self.stop_writer)
        if self.store is not None and not self.store_busy:
            batch = self.core.take_store_batch()
            if batch is not None:
                try:
                    await trio.to_thread.run_sync(self.apply_batch, batch)
                except Exception as exc:  # pragma: no cover
                    log.error("job store failed at shutdown: %s", exc)


class TrioMemoryStream:
    """One in-memory connection to a server running on trio (a trio stream)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        data: bytes = await self._stream.receive_some(max_bytes)
        return bytes(data)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> TrioMemoryStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
