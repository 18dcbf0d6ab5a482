"""The asyncio runner: a raw ``asyncio.Protocol`` per connection (uvloop-friendly).

The protocol objects do nothing but hand bytes to the core and write what it returns,
so the per-packet cost is the core's.  Timers use one ``loop.call_at`` handle, re-armed
from :meth:`ServerCore.next_deadline`; store batches are applied inline for a
:class:`MemoryStore` and by the store writer thread otherwise (one batch at a time,
gathering everything that arrived meanwhile: group commit).

Output limits: a transport whose unsent output passes ``ServerConfig.output_pause``
calls ``pause_writing``, and the connection's reading is paused until it drains; a
connection whose unsent output passes the hard cap (``ServerConfig.output_limit``)
is aborted.
"""

from __future__ import annotations

import asyncio
import asyncio.protocols  # named for mypyc, which compiles this module
import contextlib
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from . import _wire
from ._compiled import mypyc_attr
from ._runner import RunnerBase, log
from ._state import PeerInfo
from .core import ServerCore
from .storage import JobStore, StoreBatch

__all__ = ["AsyncioRunner", "MemoryStream"]

_write_nonblocking: Final = _wire.write_nonblocking
# Bound once: compiled, a call through a static skips the module attribute lookup.
_clock: Final = time.time

# How long a connection the server closed keeps having its input read and discarded
# (after its write side is shut down), so that closing it does not reset it while the
# peer is still sending: a reset can cost the peer the reply it has not read yet.
DISCARD_SECONDS: Final = 2.0


# Ordinary Python classes even when compiled (asyncio subclasses, duck-typed sinks).
@mypyc_attr(native_class=False)
class _ServerProtocol(asyncio.Protocol):
    """Hands each read to the core as it comes (one bytes object per read: the
    cheapest way for the loop to deliver small packets).  While a big packet is
    arriving, the transport is switched to a :class:`_FrameProtocol` that reads
    straight into that packet's own buffer (no copy of big payloads)."""

    __slots__ = ("conn_id", "discarding", "frame_protocol", "runner", "transport")

    def __init__(self, runner: AsyncioRunner) -> None:
        self.runner = runner
        self.conn_id = 0
        self.transport: asyncio.Transport | None = None
        self.frame_protocol: _FrameProtocol | None = None
        #: Set once the server closed the connection: input is read and dropped.
        self.discarding = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        runner = self.runner
        self.transport = transport  # type: ignore[assignment]
        if runner.closing:
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        fd = -1
        if sock is not None:
            fd = sock.fileno()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                runner.apply_keepalive(sock)
        host, port = ("memory", 0)
        if isinstance(peer, tuple) and len(peer) >= 2:
            host, port = str(peer[0]), int(peer[1])
        self.conn_id = conn_id = runner.new_conn_id()
        runner.sinks[conn_id] = transport  # type: ignore[assignment]
        peercert = transport.get_extra_info("peercert")
        if fd >= 0 and transport.get_extra_info("ssl_object") is None and peercert is None:
            # A plain socket: replies may be written to it directly (see write_to).
            runner.direct_fds[conn_id] = fd
        pause = runner.output_pause
        transport.set_write_buffer_limits(high=pause, low=pause // 4)  # type: ignore[attr-defined]
        if not runner.core.connect(conn_id, PeerInfo(host, port, fd, peercert), time.time()):
            runner.flush()  # one over the connection limit: answered and closed
            return
        if runner.armed_for is None:
            runner.after_timers_changed()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        runner = self.runner
        core = runner.core
        if core.receive(self.conn_id, data, _clock()):
            large = core.take_large_frame(self.conn_id)
            if large is not None:
                frame = self.frame_protocol
                if frame is None:
                    frame = self.frame_protocol = _FrameProtocol(self)
                frame.view, frame.filled = large
                self.use_protocol(frame)
        if not runner.flush_scheduled:
            runner.schedule_flush()

    def use_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Make ``protocol`` the one the transport delivers reads to.

        uvloop picks its read callbacks when reading starts, so reading is stopped
        and restarted around the switch (asyncio's own transports switch at once).
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        reading = transport.is_reading()
        if reading:
            transport.pause_reading()
        transport.set_protocol(protocol)
        if reading:
            transport.resume_reading()

    def frame_done(self, view: memoryview) -> None:
        """The big packet being read into ``view`` is complete."""
        self.use_protocol(self)
        runner = self.runner
        runner.core.receive_frame(self.conn_id, view, time.time())
        if not runner.flush_scheduled:
            runner.schedule_flush()

    def stop_frame(self) -> None:
        """Drop a big packet in progress (the connection is being closed)."""
        frame = self.frame_protocol
        if frame is not None and frame.view is not None:
            frame.view = None
            self.use_protocol(self)

    def eof_received(self) -> bool:
        if self.discarding:
            return False  # the peer read to our EOF and closed: close now
        runner = self.runner
        runner.core.receive(self.conn_id, b"", time.time())
        runner.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        runner = self.runner
        runner.sinks.pop(self.conn_id, None)
        runner.direct_fds.pop(self.conn_id, None)
        runner.backlogged.pop(self.conn_id, None)
        runner.paused.pop(self.conn_id, None)
        runner.core.disconnect(self.conn_id, time.time())
        runner.flush()
        runner.after_timers_changed()
        runner.connection_gone()

    def pause_writing(self) -> None:
        # A peer that does not read its replies gets no more requests served; if its
        # output keeps growing past the hard cap, flush() drops it.
        transport = self.transport
        if transport is not None:
            self.runner.paused[self.conn_id] = transport
            if not transport.is_closing():
                transport.pause_reading()

    def resume_writing(self) -> None:
        self.runner.paused.pop(self.conn_id, None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


@mypyc_attr(native_class=False)
class _FrameProtocol(asyncio.BufferedProtocol):
    """Receives the rest of one big packet into its own buffer, then hands the
    connection back to its :class:`_ServerProtocol` (every other event goes there)."""

    __slots__ = ("filled", "main", "view")

    def __init__(self, main: _ServerProtocol) -> None:
        self.main = main
        self.view: memoryview | None = None
        self.filled = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self.view
        if view is None:  # pragma: no cover - switched back before another read
            raise RuntimeError("no big packet is being received")
        return view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        view = self.view
        if view is None:  # pragma: no cover - see get_buffer
            return
        self.filled += nbytes
        if self.filled >= len(view):
            self.view = None
            self.main.frame_done(view)

    def eof_received(self) -> bool:
        return self.main.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.view = None
        self.main.connection_lost(exc)

    def pause_writing(self) -> None:
        self.main.pause_writing()

    def resume_writing(self) -> None:
        self.main.resume_writing()


class AsyncioRunner(RunnerBase):
    """Runs a :class:`ServerCore` on the running asyncio loop."""

    def __init__(
        self,
        core: ServerCore,
        store: JobStore | None = None,
        *,
        keepalive: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(core, store)
        self.loop = asyncio.get_running_loop()
        self.servers: list[asyncio.Server] = []
        self.closing = False
        self.keepalive = keepalive
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self._stopped = asyncio.Event()
        self._idle_check = False
        self.flush_scheduled = False
        # Bound once: the per-iteration flush is scheduled for nearly every read.
        self._call_soon: Callable[..., Any] = self.loop.call_soon
        self._deferred_flush: Callable[[], None] = self.deferred_flush
        #: Plain-socket connections' file descriptors, for writes that bypass the
        #: transport while it holds no unsent output.
        self.direct_fds: dict[Any, int] = {}
        #: Direct-write connections whose transport may hold unsent output.
        self.backlogged: dict[Any, None] = {}
        self.output_pause = core.config.output_pause
        # A TLS handshake is a partial packet too: it gets the same time limit.
        self.handshake_timeout = core.config.partial_timeout or None

    @property
    def armed_for(self) -> float | None:
        """The deadline the loop's timer is armed for, if any."""
        return self._armed

    # ----------------------------------------------------------------- listening

    async def listen(
        self,
        host: str | Sequence[str],
        port: int,
        backlog: int = 32,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """Listen on ``host``:``port``; with ``ssl``, every connection is TLS."""
        server = await self.loop.create_server(
            lambda: _ServerProtocol(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=self.handshake_timeout if ssl is not None else None,
        )
        self.servers.append(server)

    async def listen_socket(self, sock: socket.socket, backlog: int = 32) -> None:
        server = await self.loop.create_server(
            lambda: _ServerProtocol(self), sock=sock, backlog=backlog
        )
        self.servers.append(server)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        result = []
        for server in self.servers:
            sockets: Any = getattr(server, "sockets")  # noqa: B009 - a list under uvloop
            for sock in sockets:
                name = sock.getsockname()
                result.append((str(name[0]), int(name[1])))
        return result

    def apply_keepalive(self, sock: socket.socket) -> None:
        if self.keepalive is None:
            return
        idle, interval, count = self.keepalive
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if idle > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            if interval > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            if count > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)

    # ---------------------------------------------------------------- in-memory

    def open_memory(self) -> MemoryStream:
        """A new connection to the server with no socket at all."""
        if self.closing:
            raise RuntimeError("the server is stopping")
        conn_id = self.new_conn_id()
        stream = MemoryStream(self, conn_id)
        self.sinks[conn_id] = stream._sink
        if not self.core.connect(conn_id, PeerInfo("memory", 0, -1), time.time()):
            self.flush()
        self.after_timers_changed()
        return stream

    def schedule_flush(self) -> None:
        """Flush once this loop iteration's reads are handled: the replies produced by
        every connection readable in the iteration go out in one write per peer."""
        self.flush_scheduled = True
        self._call_soon(self._deferred_flush)

    def deferred_flush(self) -> None:
        self.flush_scheduled = False
        self.flush()
        core = self.core
        if core.timers_changed:
            core.timers_changed = False
            self.after_timers_changed()

    # --------------------------------------------------------------------- timers

    def after_timers_changed(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        armed = self._armed
        if armed is not None and armed <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed = deadline
        delay = max(deadline - time.time(), 0.0)
        self._timer = self.loop.call_at(self.loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed = None
        self.core.handle_timer(time.time())
        self.flush()
        self.after_timers_changed()
        self.connection_gone()

    # ----------------------------------------------------------------- the store

    def schedule_store(self) -> None:
        self.loop.call_soon(self.run_store)

    def deliver_from_writer(self, batch: StoreBatch, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            self.loop.call_soon_threadsafe(self.writer_done, batch, error)

    # ------------------------------------------------------------ output limits

    def write_to(self, conn_id: Any, sink: Any, data: Any) -> None:
        # While the transport holds no unsent output, a write to the socket itself
        # keeps the order of the bytes and skips the transport's per-write work; what
        # the kernel does not take (and every error) is left to the transport.  Only
        # a connection whose output went through the transport (``backlogged``) has
        # the transport asked whether it is still writing.
        fd = self.direct_fds.get(conn_id, -1)
        if fd < 0:
            sink.write(data)
            return
        backlogged = self.backlogged
        if backlogged and conn_id in backlogged:
            if sink.get_write_buffer_size():
                sink.write(data)
                return
            del backlogged[conn_id]
        try:
            sent = _write_nonblocking(fd, data)
        except OSError:
            backlogged[conn_id] = None
            sink.write(data)  # the transport reports the broken connection
            return
        if sent < len(data):
            backlogged[conn_id] = None
            sink.write(memoryview(data)[sent:])

    def write_chunks_to(self, conn_id: Any, sink: Any, chunks: list[Any]) -> None:
        if conn_id in self.direct_fds:
            self.backlogged[conn_id] = None
        sink.writelines(chunks)

    def close_sink(self, sink: Any) -> None:
        protocol = getattr(sink, "get_protocol", lambda: None)()
        if isinstance(protocol, _FrameProtocol):
            protocol = protocol.main
        if isinstance(protocol, _ServerProtocol) and sink.can_write_eof():
            if sink.is_closing():
                return
            # Graceful close: FIN after the output is written, then input is read and
            # dropped until the peer's EOF or DISCARD_SECONDS, and only then the socket
            # is closed (closing it with unread input would reset the connection).
            protocol.discarding = True
            protocol.stop_frame()
            sink.write_eof()
            if not sink.is_closing():
                sink.resume_reading()
            self.loop.call_later(DISCARD_SECONDS, self._end_discard, sink)
            return
        sink.close()
        unsent = getattr(sink, "get_write_buffer_size", None)
        if unsent is not None and unsent():
            self.loop.call_later(self.linger, _abort, sink)

    def _end_discard(self, sink: Any) -> None:
        """The discard window of a gracefully closed connection is over."""
        if sink.is_closing():
            return  # the peer closed first
        unsent = sink.get_write_buffer_size()
        sink.close()
        if unsent:
            # A peer that does not read its last output is not waited for forever.
            self.loop.call_later(max(self.linger - DISCARD_SECONDS, 0.0), _abort, sink)

    def check_output(self, conn_id: Any, sink: Any) -> None:
        unsent = sink.get_write_buffer_size()
        if unsent > self.output_limit:
            self.drop_unread(conn_id, unsent)
            sink.abort()

    # ---------------------------------------------------------------- stopping

    def flush(self) -> None:
        super().flush()
        if self.core.stop_requested is not None and not self._stopped.is_set():
            self.loop.call_soon(self._stop_requested)
        if self._idle_check:
            self.connection_gone()

    def _stop_requested(self) -> None:
        if self.core.stop_requested == "graceful":
            self.begin_graceful()
        elif self.core.stop_requested == "now":
            self._stopped.set()

    def begin_graceful(self) -> None:
        """Stop accepting connections; stop for good once no job is left."""
        for server in self.servers:
            server.close()
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
        """Close listeners and every connection; wait for the store to settle."""
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for server in self.servers:
            server.close()
        for sink in list(self.sinks.values()):
            with contextlib.suppress(Exception):
                sink.close()
        self.sinks.clear()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        # Let the store finish what it holds (committed replies are already out).
        for _ in range(1000):
            if not self.store_busy:
                break
            await asyncio.sleep(0.005)
        if self.writer is not None:
            await self.loop.run_in_executor(None, self.stop_writer)
        if self.store is not None and not self.store_busy:
            batch = self.core.take_store_batch()
            if batch is not None:
                try:
                    await self.loop.run_in_executor(None, self.apply_batch, batch)
                except Exception as exc:  # pragma: no cover - logged, nothing to answer
                    log.error("job store failed at shutdown: %s", exc)


def _abort(transport: Any) -> None:
    with contextlib.suppress(Exception):
        transport.abort()


@mypyc_attr(native_class=False)
class _MemorySink:
    __slots__ = ("stream",)

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream._feed(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.stream._feed(chunk)

    def close(self) -> None:
        self.stream._feed_eof()


@mypyc_attr(native_class=False)
class MemoryStream:
    """One in-memory connection to a server running on asyncio.

    The stream API follows trio's: :meth:`send_all`, :meth:`receive_some` (``b""``
    at end of stream) and :meth:`aclose`.
    """

    def __init__(self, runner: AsyncioRunner, conn_id: int) -> None:
        self._runner = runner
        self._conn_id = conn_id
        self._chunks: list[bytes] = []
        self._eof = False
        self._closed = False
        self._readable = asyncio.Event()
        self._sink = _MemorySink(self)

    def _feed(self, data: bytes) -> None:
        if data:
            self._chunks.append(bytes(data))
            self._readable.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Deliver ``data`` to the server (processed before this returns)."""
        if self._closed:
            raise BrokenPipeError("the memory stream is closed")
        if self._eof:
            raise BrokenPipeError("the server closed the connection")
        runner = self._runner
        runner.core.receive(self._conn_id, bytes(data), time.time())
        runner.flush()
        runner.after_timers_changed()
        await asyncio.sleep(0)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Bytes from the server; ``b""`` once the server closed the connection."""
        while not self._chunks:
            if self._eof or self._closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = b"".join(self._chunks)
        if len(data) > max_bytes:
            self._chunks = [data[max_bytes:]]
            return data[:max_bytes]
        self._chunks = []
        return data

    async def aclose(self) -> None:
        """Close the connection (the server sees the peer go away)."""
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        runner = self._runner
        runner.sinks.pop(self._conn_id, None)
        runner.core.disconnect(self._conn_id, time.time())
        runner.flush()
        runner.after_timers_changed()
        runner.connection_gone()

    async def __aenter__(self) -> MemoryStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
