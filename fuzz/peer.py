"""A well-behaved client/worker connection whose every reply is checked by the core.

:class:`Peer` sends events through a :class:`gearproto.Connection` (``Side.CLIENT``)
and reads the target's replies back through the same object, so any reply the core
refuses — unparseable, out of turn, for a job this client never submitted — surfaces
as :class:`PeerError` with the core's message.  Used by the stateful engine and to
learn about a target before a campaign.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import time
from collections import deque
from typing import Any

from gearproto import NEED_DATA, Connection, RemoteProtocolError, Side, admin, events

from .target import Target

__all__ = ["Peer", "PeerClosed", "PeerError", "PeerTimeout", "learn_target"]


class PeerError(Exception):
    """The target sent something the core refuses (a protocol violation)."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


class PeerTimeout(Exception):
    """No reply within the time limit."""


class PeerClosed(Exception):
    """The target closed the connection."""


class Peer:
    """One connection to the target, driven through a client-side ``Connection``."""

    def __init__(self, target: Target, name: str, *, timeout: float = 2.0) -> None:
        self.name = name
        self.timeout = timeout
        self.sock = target.connect(timeout)
        self.sock.setblocking(False)
        self.conn = Connection(Side.CLIENT)
        #: Events received and not yet taken, with the request they answer.
        self.inbox: deque[tuple[Any, Any]] = deque()
        self.closed = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        self.write(data)

    def write(self, data: bytes) -> None:
        """Write raw bytes (the caller keeps the core's view consistent)."""
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PeerTimeout(f"{self.name}: write blocked") from None
                self._sel.select(0.01)
            except OSError as exc:
                self.closed = True
                raise PeerClosed(f"{self.name}: write failed ({exc})") from None

    def wait_readable(self, timeout: float) -> bool:
        """Wait until bytes (or EOF) can be read, at most ``timeout`` seconds."""
        return bool(self._sel.select(timeout))

    def poll(self, timeout: float = 0.0) -> None:
        """Read what has arrived (waiting up to ``timeout`` for the first bytes)."""
        if self.closed:
            return
        if not self._sel.select(timeout):
            return
        while True:
            try:
                data = self.sock.recv(262144)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                self.conn.receive_eof()
                break
            self.conn.receive_data(data)
        self._drain_events()

    def _drain_events(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                raise PeerError(f"{self.name}: {exc}", fatal=exc.fatal) from None
            if event is NEED_DATA or isinstance(event, events.ConnectionClosed):
                return
            self.inbox.append((event, self.conn.answered))

    def take(self, want: type[Any] | tuple[type[Any], ...], timeout: float | None = None) -> Any:
        """The first received event of type ``want`` (others stay in the inbox)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for index, (event, _) in enumerate(self.inbox):
                if isinstance(event, want):
                    del self.inbox[index]
                    return event
            if self.closed:
                raise PeerClosed(f"{self.name}: connection closed by the server")
            left = deadline - time.monotonic()
            if left <= 0:
                names = (
                    want.__name__ if isinstance(want, type) else "/".join(w.__name__ for w in want)
                )
                raise PeerTimeout(f"{self.name}: no {names} within {self.timeout:.1f}s")
            self.poll(left)

    def request(self, event: Any, reply: type[Any] | tuple[type[Any], ...]) -> Any:
        """Send a request and return its reply (or an ERROR / admin error)."""
        self.send(event)
        if isinstance(reply, type):
            reply = (reply,)
        return self.take((*reply, events.Error, admin.AdminError))

    def sync(self, token: bytes) -> None:
        """Round trip: everything sent before was processed by the server."""
        self.request(events.GetStatus(token), events.StatusRes)

    def close(self, how: str = "fin") -> None:
        if self.closed and how != "force":
            self._sel.close()
            with contextlib.suppress(OSError):
                self.sock.close()
            return
        self.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self.sock)
        self._sel.close()
        if how in ("rst", "force"):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.sock.close()


def learn_target(target: Target, prefix: bytes, timeout: float = 3.0) -> dict[str, Any]:
    """Ask the target its version and the shape of its job handles."""
    info: dict[str, Any] = {"version": None, "handle_prefix": None}
    fn = prefix + b"probe"
    with contextlib.suppress(PeerError, PeerTimeout, PeerClosed, OSError):
        peer = Peer(target, "learn", timeout=timeout)
        try:
            reply = peer.request(admin.Version(), admin.AdminOk)
            if isinstance(reply, admin.AdminOk) and reply.value:
                info["version"] = reply.value.decode("utf-8", "replace")
            peer.send(events.CanDo(fn))
            created = peer.request(
                events.SubmitJob(fn, b"", b"learn", background=True), events.JobCreated
            )
            if isinstance(created, events.JobCreated):
                handle = created.handle
                cut = handle.rfind(b":")
                info["handle_prefix"] = (
                    handle[: cut + 1] if cut >= 0 else handle.rstrip(b"0123456789")
                ).decode("latin-1")
                assign = peer.request(events.GrabJob(), (events.JobAssign, events.NoJob))
                if isinstance(assign, events.JobAssign):
                    peer.send(events.WorkComplete(assign.handle, b""))
                peer.send(events.CantDo(fn))
                peer.sync(target.next_token("learn"))
        finally:
            peer.close()
    return info
