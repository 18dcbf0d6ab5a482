"""Drive a ServerCore with client-side Connections and a fake clock (no I/O at all)."""

from __future__ import annotations

from typing import Any

from gearproto import Connection, Side
from gearproto.server import PeerInfo, ServerConfig, ServerCore, StoreBatch


class Harness:
    """A core, a fake clock, and one client ``Connection`` per connection id.

    Every byte the core writes is parsed by the client-side Connection, so the
    server's output is checked against the protocol core's rules as well.
    """

    def __init__(self, config: ServerConfig | None = None, now: float = 1_000_000.0) -> None:
        self.core = ServerCore(config or ServerConfig(job_handle_prefix=b"H:t"))
        self.now = now
        self.clients: dict[int, Connection] = {}
        self.raw: dict[int, bytes] = {}
        self.closed: set[int] = set()
        self.batches: list[StoreBatch] = []

    def connect(self, cid: int, host: str = "127.0.0.1") -> int:
        self.clients[cid] = Connection(Side.CLIENT)
        self.raw[cid] = b""
        self.core.connect(cid, PeerInfo(host, 40000 + cid, 100 + cid), self.now)
        return cid

    def send(self, cid: int, *events: Any) -> None:
        data = b"".join(self.clients[cid].send(e) for e in events)
        self.core.receive(cid, data, self.now)
        self._pump()

    def send_raw(self, cid: int, data: bytes) -> None:
        self.core.receive(cid, data, self.now)
        self._pump()

    def disconnect(self, cid: int) -> None:
        self.core.disconnect(cid, self.now)
        self._pump()

    def advance(self, seconds: float) -> None:
        """Move the fake clock, running every timer that falls due on the way."""
        target = self.now + seconds
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self._pump()
        self.now = target
        self.core.handle_timer(self.now)
        self._pump()

    def _pump(self) -> None:
        for conn_id, chunks, close in self.core.drain():
            data = b"".join(chunks)
            self.raw[conn_id] += data
            if data:
                self.clients[conn_id].receive_data(data)
            if close:
                self.closed.add(conn_id)

    def commit_store(self) -> StoreBatch | None:
        batch = self.core.take_store_batch()
        if batch is not None:
            self.batches.append(batch)
            self.core.store_committed(batch.batch_id, self.now)
            self._pump()
        return batch

    def events(self, cid: int) -> list[Any]:
        """Every event the client of ``cid`` has received since the last call."""
        return list(self.clients[cid].events())

    def take_raw(self, cid: int) -> bytes:
        data, self.raw[cid] = self.raw[cid], b""
        return data

    def admin(self, cid: int, line: bytes) -> bytes:
        """Send an admin line on a connection used for nothing else; the raw reply."""
        self.core.receive(cid, line, self.now)
        out = b""
        for conn_id, chunks, _close in self.core.drain():
            if conn_id == cid:
                out += b"".join(chunks)
            else:
                data = b"".join(chunks)
                self.raw[conn_id] += data
                self.clients[conn_id].receive_data(data)
        return out
