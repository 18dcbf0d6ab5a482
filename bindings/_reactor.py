"""A small selector loop that runs an engine over blocking-API sockets.

The blocking binding keeps every socket non-blocking inside one loop thread (the
client's background thread, or the thread calling ``Worker.work()``), so a slow or
silent server never blocks a caller holding the engine lock, and a client writing
many submissions never deadlocks against a server writing replies.  Callers in other
threads change the engine under :attr:`Reactor.lock` and wake the loop through a
socket pair; the loop does all socket I/O.

Connecting (name resolution included) runs in a short-lived thread per attempt, because
``getaddrinfo`` cannot be made non-blocking; the loop enforces the connect timeout.  With
TLS the handshake is done in that thread too, and the loop then reads and writes the
TLS socket without blocking (a read may find a whole record already decrypted, and a
write may have to wait for a read).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any

from ._session import Session, Slot

__all__ = ["Reactor"]

_RECV_SIZE = 256 * 1024


def _read_pending(sock: ssl.SSLSocket, first: bytes) -> bytes:
    """``first`` and the TLS records already decrypted behind it.

    TLS hands out one record per recv(); the rest sit in the TLS buffer, where
    select() does not see them.  An error here surfaces at the next read.
    """
    chunks = [first]
    while sock.pending():
        try:
            more = sock.recv(_RECV_SIZE)
        except OSError:
            break
        if not more:
            break
        chunks.append(more)
    return b"".join(chunks)


def _tls_alert(sock: socket.socket) -> ssl.SSLError | None:
    """The TLS alert a server sent before closing, if a failed write hid it.

    A server that refuses the session after the handshake (a client certificate it
    requires, say) sends an alert and closes; a write then fails with a bare EOF, and
    only a read shows the alert that says why.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        sock.recv(1)
    except (ssl.SSLWantReadError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return None
    except ssl.SSLError as alert:
        return alert
    except OSError:
        return None
    return None


class _Conn:
    __slots__ = ("out", "registered_write", "session", "slot", "sock", "write_needs_read")

    def __init__(self, slot: Slot, sock: socket.socket) -> None:
        self.slot = slot
        self.sock = sock
        self.session: Session | None = None
        self.out = bytearray()
        self.registered_write = False
        #: A TLS write could not go on before the socket is read (renegotiation).
        self.write_needs_read = False


class Reactor:
    """Runs ``engine`` (client or worker) over sockets; see the module docstring."""

    def __init__(
        self, connect_timeout: float | None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.engine: Any = None
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_pending = False
        self.thread_id: int | None = None
        self.stopping = False
        #: Set by shutdown(): every socket is closed and no new one may be kept.
        self.closed = False
        self._dirty: list[Slot] = []
        self._to_connect: list[Slot] = []
        self._connects: dict[Slot, tuple[int, float | None]] = {}
        self._connected: deque[tuple[Slot, int, socket.socket | None, BaseException | None]] = (
            deque()
        )
        self._attempt = 0
        self._to_close: list[_Conn] = []
        self._conns: dict[Slot, _Conn] = {}
        #: Called in the loop thread after each iteration (under the lock).
        self.after_iteration: Any = None

    # -------------------------------------------------------- Driver interface

    def connect(self, slot: Slot) -> None:
        self._to_connect.append(slot)
        self.wake()

    def close(self, slot: Slot, session: Session) -> None:
        conn = self._conns.get(slot)
        if conn is not None and conn.session is session:
            conn.session = None
            self._to_close.append(conn)
            self.wake()

    def flush(self, slot: Slot) -> None:
        self._dirty.append(slot)
        self.wake()

    def backlog(self, slot: Slot) -> None:
        """The loop thread writes as soon as it gets the lock (flush() woke it)."""

    def timer_changed(self) -> None:
        self.wake()

    # -------------------------------------------------------------------- wake

    def wake(self, *, force: bool = False) -> None:
        """Make the loop run an iteration soon (no-op from the loop thread itself).

        ``force`` (for signal handlers, which run in the loop thread between its
        bytecodes, possibly while it is about to sleep) always writes the wake byte.
        """
        if not force and (self._wake_pending or threading.get_ident() == self.thread_id):
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -------------------------------------------------------------------- loop

    def run(self, until: Any = None) -> None:
        """Run the loop in this thread until ``stop()`` (or ``until()`` is true)."""
        self.thread_id = threading.get_ident()
        lock = self.lock
        try:
            while True:
                with lock:
                    if self.stopping:
                        return
                    if until is not None and until():
                        self._housekeeping(time.monotonic())  # write what is queued
                        return
                    timeout = self._timeout()
                ready = self.selector.select(timeout)
                with lock:
                    now = time.monotonic()
                    for key, mask in ready:
                        conn = key.data
                        if conn is None:
                            self._drain_wake()
                            continue
                        if mask & selectors.EVENT_READ:
                            self._read(conn, now)
                        if mask & selectors.EVENT_WRITE and conn.session is not None:
                            self._write(conn)
                    self._housekeeping(now)
                    if self.after_iteration is not None:
                        self.after_iteration()
        finally:
            with lock:
                self.thread_id = None

    def _timeout(self) -> float | None:
        deadlines = [d for _, d in self._connects.values() if d is not None]
        next_timer = self.engine.next_timer()
        if next_timer is not None:
            deadlines.append(next_timer)
        if self._dirty or self._to_connect or self._to_close or self._connected:
            return 0.0
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _drain_wake(self) -> None:
        self._wake_pending = False
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _housekeeping(self, now: float) -> None:
        engine = self.engine
        while self._connected:
            self._finish_connect(*self._connected.popleft(), now)
        for slot, (_attempt, deadline) in list(self._connects.items()):
            if deadline is not None and deadline <= now:
                del self._connects[slot]
                engine.connect_failed(
                    slot, TimeoutError(f"connect timed out after {self.connect_timeout:g} s"), now
                )
        next_timer = engine.next_timer()
        if next_timer is not None and next_timer <= now:
            engine.handle_timers(now)
        while self._to_connect:
            self._start_connect(self._to_connect.pop(0), now)
        while self._to_close:
            self._drop(self._to_close.pop())
        # Writes last: everything the iteration produced goes out in one send per socket.
        dirty, self._dirty = self._dirty, []
        for slot in dirty:
            conn = self._conns.get(slot)
            data = slot.take_output()
            if conn is None or conn.session is None or conn.session is not slot.session:
                continue
            if data:
                conn.out += data
            self._write(conn)

    # --------------------------------------------------------------- connect

    def _start_connect(self, slot: Slot, now: float) -> None:
        self._attempt += 1
        attempt = self._attempt
        timeout = self.connect_timeout
        self._connects[slot] = (attempt, None if timeout is None else now + timeout)
        thread = threading.Thread(
            target=self._connect_thread,
            args=(slot, attempt, timeout),
            name=f"gearproto-connect-{slot.address}",
            daemon=True,
        )
        thread.start()

    def _connect_thread(self, slot: Slot, attempt: int, timeout: float | None) -> None:
        sock: socket.socket | None = None
        error: BaseException | None = None
        host = slot.address.host
        try:
            sock = socket.create_connection((host, slot.address.port), timeout=timeout)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
                except BaseException:
                    sock.close()
                    raise
        except OSError as exc:  # ssl.SSLError and certificate errors are OSErrors
            sock = None
            error = exc
        with self.lock:
            if self.closed:
                # The loop is gone (the client closed while we were connecting): nobody
                # would ever take this socket, so close it here instead of leaking it.
                if sock is not None:
                    sock.close()
                return
            self._connected.append((slot, attempt, sock, error))
            self.wake()

    def _finish_connect(
        self,
        slot: Slot,
        attempt: int,
        sock: socket.socket | None,
        error: BaseException | None,
        now: float,
    ) -> None:
        current = self._connects.get(slot)
        if current is None or current[0] != attempt or self.stopping:
            if sock is not None:
                sock.close()
            return
        del self._connects[slot]
        if sock is None:
            assert error is not None
            self.engine.connect_failed(slot, error, now)
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(slot, sock)
        old = self._conns.get(slot)
        if old is not None:
            self._drop(old)
        self._conns[slot] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)
        session = self.engine.connected(slot, now)
        if session is None:
            self._drop(conn)
            return
        conn.session = session

    # ------------------------------------------------------------------ I/O

    def _read(self, conn: _Conn, now: float) -> None:
        session = conn.session
        if session is None:
            return
        sock = conn.sock
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLZeroReturnError:
            data = b""  # the server closed the TLS session
        except OSError as exc:
            self._drop(conn)
            self.engine.connection_lost(session, exc, now)
            return
        if data and isinstance(sock, ssl.SSLSocket) and sock.pending():
            data = _read_pending(sock, data)
        self.engine.data_received(session, data or None, now)
        if not data:
            self._drop(conn)
        elif conn.write_needs_read and conn.session is not None:
            conn.write_needs_read = False
            self._write(conn)

    def _write(self, conn: _Conn) -> None:
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                sent = 0
            except ssl.SSLWantReadError:
                # Retried after the next read, not on writability (it would spin).
                conn.write_needs_read = True
                sent = 0
            except OSError as exc:
                session = conn.session
                cause = _tls_alert(conn.sock) or exc
                self._drop(conn)
                if session is not None:
                    self.engine.connection_lost(session, cause, time.monotonic())
                return
            del out[:sent]
        want = bool(out) and not conn.write_needs_read
        if want != conn.registered_write:
            conn.registered_write = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.selector.modify(conn.sock, events, conn)

    def _drop(self, conn: _Conn) -> None:
        if self._conns.get(conn.slot) is conn:
            del self._conns[conn.slot]
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.session = None

    # ---------------------------------------------------------------- stop

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.wake()

    def shutdown(self) -> None:
        """Close every socket (after the loop stopped)."""
        with self.lock:
            for conn in list(self._conns.values()):
                # Best effort: what is still queued (final WORK_* packets) goes out.
                if conn.out:
                    with contextlib.suppress(OSError):
                        conn.sock.setblocking(True)
                        conn.sock.settimeout(1.0)
                        conn.sock.sendall(conn.out)
                self._drop(conn)
            # Connections that completed after the loop's last iteration.
            while self._connected:
                sock = self._connected.popleft()[2]
                if sock is not None:
                    sock.close()
            self.closed = True
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()
