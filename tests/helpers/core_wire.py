"""A minimal blocking driver of a client-side ``gearproto.Connection`` over a socket.

For tests that talk to a real server with nothing but the core: every request goes
through :meth:`Connection.send`, every reply comes out of :meth:`Connection.next_event`,
and the raw bytes each reply arrived as are kept so that tests can compare them with
what the core would format.
"""

from __future__ import annotations

import socket
from typing import Any

from gearproto import NEED_DATA, Connection, Side


class CoreWire:
    """One TCP connection driven by a client-side :class:`Connection`."""

    def __init__(self, address: tuple[str, int], *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.conn = Connection(Side.CLIENT)
        #: Bytes received since the last call to :meth:`take_raw`.
        self.raw = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CoreWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *events: Any) -> None:
        """Send events (packets or admin commands) in one write."""
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> Any:
        """The next event, reading from the socket as needed (bounded by the timeout)."""
        for _ in range(100_000):
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            data = self.sock.recv(65536)
            if not data:
                self.conn.receive_eof()
            else:
                self.raw += data
                self.conn.receive_data(data)
        raise AssertionError("no event after 100000 reads")

    def take_raw(self) -> bytes:
        raw, self.raw = self.raw, b""
        return raw

    def request(self, event: Any) -> tuple[Any, bytes]:
        """Send one request and return its reply with the exact bytes it came as."""
        self.take_raw()
        self.send(event)
        reply = self.next()
        assert self.conn.answered is event, (reply, self.conn.answered)
        return reply, self.take_raw()

    def closed_by_peer(self) -> bool:
        """True if the server closes the connection without sending anything."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
