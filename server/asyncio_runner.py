"""The asyncio runner: a raw ``asyncio.Protocol`` per connection (uvloop-friendly).

The protocol objects do nothing but hand bytes to the core and write what it returns,
so the per-packet cost is the core's.  On Linux, after a plain socket's first read the
runner reads it itself, with all the others, in one epoll callback per loop iteration
(see :meth:`AsyncioRunner.poll`).  Timers use one ``loop.call_at`` handle, re-armed
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
import os
import select
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from . import _wire
from ._compiled import mypyc_attr
from ._runner import RunnerBase, log
from ._state import Peer, PeerInfo
from .core import ServerCore
from .storage import JobStore, StoreBatch

__all__ = ["AsyncioRunner", "MemoryStream"]

_write_nonblocking: Final = _wire.write_nonblocking
_poll_read: Final = _wire.poll_read
# Linux only: elsewhere every connection's transport reads it.
_epoll: Final[Any] = getattr(select, "epoll", None)
_EPOLLIN: Final = int(getattr(select, "EPOLLIN", 1))
# Bound once: compiled, a call through a static skips the module attribute lookup.
_clock: Final = time.time
# The runner's own waits (own_waits): at most this many rounds of waiting on the
# poller before the loop runs again, each at most this long.
_OWN_ROUNDS: Final = 64
_OWN_WAIT_MS: Final = 1

# How long a connection the server closed keeps having its input read and discarded
# (after its write side is shut down), so that closing it does not reset it while the
# peer is still sending: a reset can cost the peer the reply it has not read yet.
DISCARD_SECONDS: Final = 2.0


class _ServerProtocol:
    """Hands each read to the core as it comes (one bytes object per read: the
    cheapest way for the loop to deliver small packets).  While a big packet is
    arriving, the transport is switched to a :class:`_FrameProtocol` that reads
    straight into that packet's own buffer (no copy of big payloads).

    A plain socket's reads are taken over by the runner after the first one (see
    :meth:`AsyncioRunner.poll`): its transport's reading is paused, and the
    runner reads all its polled sockets in one callback per loop iteration.

    It implements ``asyncio.Protocol`` without subclassing it: loops and transports
    only look its methods up, and a class with no Python base is compiled to a native
    one, whose attributes each read reaches without a dictionary lookup."""

    def __init__(self, runner: AsyncioRunner) -> None:
        self.runner = runner
        self.conn_id = 0
        self.transport: asyncio.Transport | None = None
        self.frame_protocol: _FrameProtocol | None = None
        #: Set once the server closed the connection: input is read and dropped.
        self.discarding = False
        #: The plain socket's file descriptor (-1: TLS or not a socket).
        self.fd = -1
        #: True while the runner's poller reads this connection (the transport's
        #: reading is paused meanwhile).
        self.polled = False

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
            # A plain socket: replies may be written to it directly (see write_to),
            # and the runner may read it itself (see AsyncioRunner.poll).
            runner.direct_fds[conn_id] = fd
            self.fd = fd
        pause = runner.output_pause
        transport.set_write_buffer_limits(high=pause, low=pause // 4)  # type: ignore[attr-defined]
        core = runner.core
        if not core.connect(conn_id, PeerInfo(host, port, fd, peercert), time.time()):
            runner.flush()  # one over the connection limit: answered and closed
            return
        if self.fd >= 0:
            peer = core.peer(conn_id)
            if peer is not None:
                peer.direct_fd = fd  # flush writes its replies to the socket itself
        if runner.armed_for is None:
            runner.after_timers_changed()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        runner = self.runner
        if self.received(data, _clock()) and self.fd >= 0 and runner.polling:
            runner.poll(self)
        if not runner.flush_scheduled:
            runner.schedule_flush()

    def received(self, data: bytes, now: float) -> bool:
        """Hand ``data`` to the core; False if a big packet began arriving (the
        transport now reads it into the packet's buffer)."""
        core = self.runner.core
        conn_id = self.conn_id
        if core.receive(conn_id, data, now):
            large = core.take_large_frame(conn_id)
            if large is not None:
                frame = self.frame_protocol
                if frame is None:
                    frame = self.frame_protocol = _FrameProtocol(self)
                frame.view, frame.filled = large
                self.use_protocol(frame)
                return False
        return True

    def use_protocol(self, protocol: Any) -> None:
        """Make ``protocol`` the one the transport delivers reads to.

        uvloop picks its read callbacks when reading starts, so reading is stopped
        and restarted around the switch (asyncio's own transports switch at once).
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        reading = transport.is_reading()
        if self.polled:
            self.runner.unpoll(self)
            reading = True  # the transport reads again, for ``protocol``
        elif reading:
            transport.pause_reading()
        transport.set_protocol(protocol)
        if reading:
            transport.resume_reading()

    def frame_done(self, view: memoryview) -> None:
        """The big packet being read into ``view`` is complete."""
        self.use_protocol(self)
        runner = self.runner
        if self.fd >= 0 and runner.polling:
            # Read by the runner again at once: the transport would read the next
            # packet's start into a new bytes object of up to its whole read size,
            # to be copied again if that packet is big too.
            runner.poll(self)
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
        if self.polled:
            runner.unpoll(self)
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
            if self.polled:
                self.runner.unpoll(self)  # the transport stays paused
            elif not transport.is_closing():
                transport.pause_reading()

    def resume_writing(self) -> None:
        self.runner.paused.pop(self.conn_id, None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


# Ordinary Python classes even when compiled (asyncio subclasses, duck-typed sinks).
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
        own_waits: bool = False,
    ) -> None:
        super().__init__(core, store)
        #: Wait for the polled sockets in poll_ready itself (see wait_budget): for a
        #: loop that runs nothing but this server (the ``gearproto server`` daemon).
        self.own_waits = own_waits and _epoll is not None
        #: Set when the loop has work the runner's own wait would hold up.
        self.loop_wanted = False
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
        #: The runner's own reads (see poll): an epoll set of plain sockets whose
        #: transports are paused, watched by the loop as one file descriptor.
        self.polling = _epoll is not None
        self.poller: Any = None
        #: What poll_read is given: the C version takes the poller's file descriptor
        #: (no fileno() call per iteration), the Python one the poller itself.
        self.poll_target: Any = None
        #: Polled sockets' protocols by file descriptor.
        self.polled: dict[int, _ServerProtocol] = {}
        self.output_pause = core.config.output_pause
        # A TLS handshake is a partial packet too: it gets the same time limit.
        self.handshake_timeout = core.config.partial_timeout or None

    @property
    def armed_for(self) -> float | None:
        """The deadline the loop's timer is armed for, if any."""
        return self._armed

    # ----------------------------------------------------------------- listening

    def new_protocol(self) -> asyncio.BaseProtocol:
        """A protocol for a new connection (typed as what the loop expects: it has
        every method of ``asyncio.Protocol`` without being a subclass of it)."""
        return cast("asyncio.BaseProtocol", _ServerProtocol(self))

    async def listen(
        self,
        host: str | Sequence[str],
        port: int,
        backlog: int = 32,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """Listen on ``host``:``port``; with ``ssl``, every connection is TLS."""
        server = await self.loop.create_server(
            self.new_protocol,
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=self.handshake_timeout if ssl is not None else None,
        )
        self.servers.append(server)

    async def listen_socket(self, sock: socket.socket, backlog: int = 32) -> None:
        server = await self.loop.create_server(self.new_protocol, sock=sock, backlog=backlog)
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

    # ------------------------------------------------------------ the runner's reads
    #
    # The loop delivers each read through its own machinery: a callback per read,
    # a bytes object, a context switch into the protocol, and a scheduled callback
    # to flush the replies once the iteration's reads are handled.  For plain
    # sockets that is most of the server's cost per job, so after a connection's
    # first read the runner takes its reads over: the transport's reading is paused,
    # the socket joins an epoll set that the loop watches as one file descriptor,
    # and one callback per iteration reads every ready socket (in C, see
    # _wire.poll_read), hands the bytes to the core and flushes the replies.
    # Writing stays as it was, and anything unusual (EOF, a read error, a big
    # packet, a peer that does not read its replies, a close) hands the reading
    # back to the transport, which then reports it as usual.

    def poll(self, protocol: _ServerProtocol) -> None:
        """Read ``protocol``'s socket here from now on (its transport stops reading)."""
        transport = protocol.transport
        if transport is None or transport.is_closing() or not transport.is_reading():
            return
        poller = self.poller
        if poller is None:
            try:
                poller = self.poller = _epoll()
                self.poll_target = poller if _poll_read is _wire._poll_read else poller.fileno()
                self.loop.add_reader(poller.fileno(), self.poll_ready)
                self.watch_wakeup(poller)
                if self.own_waits:
                    self.watch_listeners(poller)
            except (OSError, NotImplementedError, RuntimeError):
                self.polling = False  # this loop cannot watch it: transports read
                if poller is not None:
                    poller.close()
                self.poller = None
                return
        fd = protocol.fd
        try:
            poller.register(fd, _EPOLLIN)
        except OSError:
            return  # left to the transport
        transport.pause_reading()
        self.polled[fd] = protocol
        protocol.polled = True

    def watch_wakeup(self, poller: Any) -> None:
        """An eventfd in the poller's set: held-back output (see write_direct) is
        sure to be written at the next iteration even when no socket is readable."""
        try:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (AttributeError, OSError):
            return  # output is then never held back
        try:
            poller.register(fd, _EPOLLIN)
        except OSError:
            os.close(fd)
            return
        self.wake_fd = fd
        self.may_hold = True

    def watch_listeners(self, poller: Any) -> None:
        """The listening sockets in the poller's set: a new connection cuts the
        runner's own wait short (the loop accepts it)."""
        for server in self.servers:
            # Read untyped: uvloop's servers give a list, asyncio's a tuple.
            sockets: Any = cast(Any, server).sockets
            for sock in sockets:
                with contextlib.suppress(OSError):
                    poller.register(sock.fileno(), _EPOLLIN)

    def unpoll(self, protocol: _ServerProtocol) -> None:
        """Stop reading ``protocol``'s socket here (its transport stays paused)."""
        protocol.polled = False
        fd = protocol.fd
        polled = self.polled
        if polled.get(fd) is protocol:
            # The number may be a new connection's already (the old socket was
            # closed, which took it out of the set): only this one's entry goes.
            del polled[fd]
            with contextlib.suppress(OSError, ValueError):
                self.poller.unregister(fd)

    def poll_ready(self) -> None:
        """Some polled sockets are readable: read each once, then flush.

        With ``own_waits``, the runner then waits for its sockets' next reads itself
        (see :meth:`wait_budget`), for a bounded number of rounds, before it hands
        control back to the loop."""
        items = _poll_read(self.poll_target, 64)
        rounds = 0
        while items:
            polled = self.polled
            now = _clock()
            count = len(items)
            index = 0
            while index < count:
                fd: Any = items[index]
                data: Any = items[index + 1]
                index += 2
                protocol = polled.get(fd)
                if protocol is None:
                    if fd == self.wake_fd:
                        self.wake_armed = False  # (the read reset it)
                    else:
                        # A listening socket (own_waits) or a connection handed back
                        # meanwhile: the loop has work.
                        self.loop_wanted = True
                    continue
                if data:
                    protocol.received(data, now)
                else:
                    # EOF or an error: the transport reads it again and reports it.
                    self.unpoll(protocol)
                    transport = protocol.transport
                    if transport is not None and not transport.is_closing():
                        transport.resume_reading()
            self.deferred_flush()
            if not self.own_waits:
                return
            timeout = self.wait_budget(rounds, now)
            if not timeout:
                return
            rounds += 1
            items = _poll_read(self.poll_target, 64, timeout)

    def wait_budget(self, rounds: int, now: float) -> int:
        """How long (ms) :meth:`poll_ready` may wait for its sockets itself, or 0 to
        return to the loop.

        Waiting here skips the loop's own poll and callback per iteration.  It is
        only done while the loop has nothing else to do that the runner would not
        notice: every connection is polled, no transport holds unsent output, no
        callback of the runner's is scheduled, the store's writer has not reported
        back (it wakes the poller when it does), no timer is due, and a listening
        socket would cut the wait short.  The rounds and each wait are bounded so
        that anything else on the loop waits little."""
        if (
            rounds >= _OWN_ROUNDS
            or self.loop_wanted
            or self.backlogged
            or self.flush_scheduled
            or self.store_scheduled
            or self.closing
            or self._idle_check
            or len(self.polled) != len(self.sinks)
            or self.core.stop_requested is not None
        ):
            self.loop_wanted = False
            return 0
        armed = self._armed
        if armed is not None:
            left = int((armed - now) * 1000.0)
            if left <= 0:
                return 0
            if left < _OWN_WAIT_MS:
                return left
        return _OWN_WAIT_MS

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
        if self.own_waits:
            # The runner may be waiting on its poller, not the loop: wake it.
            self.loop_wanted = True
            self.wake_poller()

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
            peer = self.core.peer(conn_id)
            if peer is not None and not peer.closing:
                peer.direct_fd = fd  # the transport is empty: flush writes directly again
        try:
            sent = _write_nonblocking(fd, data)
        except OSError:
            self.backlog(conn_id)
            sink.write(data)  # the transport reports the broken connection
            return
        if sent < len(data):
            self.backlog(conn_id)
            sink.write(memoryview(data)[sent:])

    def write_chunks_to(self, conn_id: Any, sink: Any, chunks: list[Any]) -> None:
        if conn_id in self.direct_fds:
            self.backlog(conn_id)
        sink.writelines(chunks)

    def write_rest(self, peer: Peer, out: list[Any], left: int) -> None:
        conn_id = peer.conn_id
        self.backlog(conn_id)
        sink: Any = self.sinks.get(conn_id)
        if sink is None:
            return
        rest = out
        if left > 0:
            # Skip what the kernel took: whole chunks, then part of one.
            skip = -left
            for chunk in out:
                skip += len(chunk)
            rest = []
            for chunk in out:
                size = len(chunk)
                if skip >= size:
                    skip -= size
                    continue
                rest.append(memoryview(chunk)[skip:] if skip else chunk)
                skip = 0
        # The transport writes it when the socket can take it (or reports the
        # broken connection, when the write failed).
        sink.writelines(rest)
        if self.paused and conn_id in self.paused:
            self.check_output(conn_id, sink)

    def backlog(self, conn_id: Any) -> None:
        """``conn_id``'s transport may hold unsent output: later writes go through
        it (keeping the bytes in order) until it is empty."""
        self.backlogged[conn_id] = None
        peer = self.core.peer(conn_id)
        if peer is not None:
            peer.direct_fd = -1

    def close_sink(self, sink: Any) -> None:
        protocol = getattr(sink, "get_protocol", lambda: None)()
        if isinstance(protocol, _FrameProtocol):
            protocol = protocol.main
        if isinstance(protocol, _ServerProtocol) and protocol.polled:
            self.unpoll(protocol)
            if not sink.is_closing():
                sink.resume_reading()  # the transport reports what the peer does
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
        # From now on nothing is held back (the poller that ends a wait is closed).
        self.may_hold = False
        if self.held_back:
            self.flush_held()
        if self.poller is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.poller.fileno())
            self.poller.close()
            self.poller = None
            self.poll_target = None
            self.polling = False
            self.polled.clear()
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
        if self.wake_fd >= 0:
            # Only now: the writer thread, which may wake the poller, has stopped.
            os.close(self.wake_fd)
            self.wake_fd = -1


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
