"""The server core on a real SQLiteStore: group commit, held acknowledgements, replay.

The sans-IO core is driven the way a runner drives it (bytes in, transmits out, store
batches applied between), with a real SQLite file, so that what the store promises
is checked through the server's own bookkeeping.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from gearproto import NEED_DATA, Connection, Priority, Side
from gearproto.events import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
)
from gearproto.server._state import PeerInfo
from gearproto.server.core import ServerConfig, ServerCore
from gearproto.server.sqlite_store import SQLiteStore


class Harness:
    """One core, its store, and client-side connections keyed by connection id."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path)
        self.core = ServerCore(ServerConfig(durable=True))
        self.loaded = self.core.load(self.store.load(), time.time())
        self.conns: dict[int, Connection] = {}

    def connect(self, conn_id: int) -> None:
        self.conns[conn_id] = Connection(Side.CLIENT)
        self.core.connect(conn_id, PeerInfo("127.0.0.1", 40000 + conn_id, conn_id))

    def send(self, conn_id: int, *events: Any) -> None:
        data = b"".join(self.conns[conn_id].send(event) for event in events)
        self.core.receive(conn_id, data, time.time())

    def deliver(self) -> dict[int, list[Any]]:
        """Route the core's output to the client connections; their new events."""
        received: dict[int, list[Any]] = {}
        for transmit in self.core.drain():
            conn = self.conns[transmit.conn_id]
            conn.receive_data(b"".join(transmit.chunks))
            events = received.setdefault(transmit.conn_id, [])
            while (event := conn.next_event()) is not NEED_DATA:
                events.append(event)
        return received

    def commit(self) -> int:
        """Apply every pending store batch, as the runner's writer thread does."""
        commits = 0
        while (batch := self.core.take_store_batch()) is not None:
            self.store.apply(batch)
            self.core.store_committed(batch.batch_id, time.time())
            commits += 1
        return commits

    def close(self) -> None:
        self.store.close()


def test_acknowledgements_wait_for_the_commit_and_share_it(tmp_path: Path) -> None:
    h = Harness(tmp_path / "q.db")
    for conn_id in (1, 2, 3):
        h.connect(conn_id)
        h.send(
            conn_id,
            *[
                SubmitJob(b"f", b"", b"%d-%d" % (conn_id, n), Priority.NORMAL, background=True)
                for n in range(10)
            ],
        )
    assert h.deliver() == {}  # nothing acknowledged before the commit
    commits_before = h.store.commits
    assert h.commit() == 1  # thirty submissions from three clients, one commit
    assert h.store.commits == commits_before + 1
    acks = h.deliver()
    assert sorted(acks) == [1, 2, 3]
    assert all(len(events) == 10 for events in acks.values())
    assert all(isinstance(e, JobCreated) for events in acks.values() for e in events)
    assert len(h.store.load()) == 30  # empty uniques: thirty jobs, none merged
    h.close()


def test_replay_after_restart_keeps_priority_fifo_and_epoch(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    h = Harness(path)
    h.connect(1)
    future = int(time.time()) + 3600
    h.send(
        1,
        SubmitJob(b"f", b"", b"low-1", Priority.LOW, background=True),
        SubmitJob(b"f", b"", b"normal-1", Priority.NORMAL, background=True),
        SubmitJob(b"f", b"", b"high-1", Priority.HIGH, background=True),
        SubmitJob(b"f", b"", b"normal-2", Priority.NORMAL, background=True),
        SubmitJobEpoch(b"f", b"later", future, b"epoch"),
        SubmitJob(b"f", b"", b"high-2", Priority.HIGH, background=True),
    )
    h.commit()
    assert len(h.deliver()[1]) == 6
    h.close()  # a restart (a crash is tested with real processes elsewhere)

    h = Harness(path)
    assert h.loaded == 6
    stored = {job.data: job for job in h.store.load()}
    assert stored[b"epoch"].when == future
    h.connect(2)
    h.send(2, CanDo(b"f"))
    order = []
    for _ in range(6):
        h.send(2, GrabJobUniq())
        (event,) = h.deliver()[2]
        if isinstance(event, NoJob):
            break
        assert isinstance(event, JobAssignUniq)
        order.append(event.data)
        h.send(2, WorkComplete(event.handle, b"done"))
    assert order == [b"high-1", b"high-2", b"normal-1", b"normal-2", b"low-1"]
    h.commit()
    assert [job.data for job in h.store.load()] == [b"epoch"]  # not due yet, still stored
    h.close()


def test_a_gearmand_queue_file_replays_and_every_job_runs(tmp_path: Path) -> None:
    path = tmp_path / "gearmand.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE gearman_queue ( unique_key TEXT, function_name TEXT, priority INTEGER, "
        "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))"
    )
    rows = [(f"u{n}", "resize", n % 3, b"payload %d" % n, 0) for n in range(30)]
    conn.executemany("INSERT INTO gearman_queue VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()

    h = Harness(path)
    assert h.loaded == 30
    h.connect(1)
    h.send(1, CanDo(b"resize"))
    ran = []
    for _ in range(31):
        h.send(1, GrabJobUniq())
        (event,) = h.deliver()[1]
        if isinstance(event, NoJob):
            break
        ran.append((event.unique, event.data))
        h.send(1, WorkComplete(event.handle, b""))
    expected = sorted(((u.encode(), d) for u, _, p, d, _ in rows), key=lambda r: int(r[0][1:]) % 3)
    assert ran == expected  # HIGH (0) first, FIFO inside each priority
    h.commit()
    assert h.store.load() == []
    h.close()
