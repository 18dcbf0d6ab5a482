"""The job store through the real server command: gearmand's file replayed, clear refusals."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.procs import GEARMAND, gearmand, start_process

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
from gearproto.server.sqlite_store import SQLiteStore
from gearproto.server.storage import StoreBatch, StoredJob

SERVER = [sys.executable, "-m", "gearproto.server", "--port", "{port}", "-l", "none"]


class Peer:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.conn = Connection(Side.CLIENT)

    def send(self, event: Any) -> None:
        self.sock.sendall(self.conn.send(event))

    def call(self, event: Any) -> Any:
        self.send(event)
        while (reply := self.conn.next_event()) is NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
        return reply

    def close(self) -> None:
        self.sock.close()


@pytest.mark.skipif(GEARMAND is None, reason="gearmand is not installed")
@pytest.mark.timeout(120)
def test_a_gearmand_queue_file_runs_every_job_on_our_server(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    past = int(time.time()) - 60  # an epoch job that is due: it must run too
    submitted = [
        SubmitJob(b"resize", b"n1", b"normal 1", Priority.NORMAL, background=True),
        SubmitJob(b"resize", b"l1", b"low 1", Priority.LOW, background=True),
        SubmitJob(b"resize", b"h1", b"high 1", Priority.HIGH, background=True),
        SubmitJobEpoch(b"resize", b"e1", past, b"epoch 1"),
        SubmitJob(b"resize", b"n2", b"normal 2", Priority.NORMAL, background=True),
        SubmitJob(b"resize", b"empty", b"", Priority.NORMAL, background=True),
        SubmitJob(b"resize", b"h2", b"high 2", Priority.HIGH, background=True),
    ]
    with gearmand(tmp_path, "-q", "libsqlite3", "--libsqlite3-db", str(db)) as old:
        client = Peer(old.address)
        for submission in submitted:
            assert isinstance(client.call(submission), JobCreated)
        client.close()
        old.kill()  # a crash: what is in the file is what gearmand had acknowledged

    server = start_process([*SERVER, "-q", "libsqlite3", "--libsqlite3-db", str(db)],
                           log=tmp_path / "server.log")  # fmt: skip
    ran: list[tuple[bytes, bytes]] = []
    try:
        worker = Peer(server.address)
        worker.send(CanDo(b"resize"))
        for _ in range(len(submitted) + 1):
            event = worker.call(GrabJobUniq())
            if isinstance(event, NoJob):
                break
            assert isinstance(event, JobAssignUniq)
            ran.append((event.unique, event.data))
            worker.send(WorkComplete(event.handle, b"ok"))
        assert isinstance(worker.call(GrabJobUniq()), NoJob)
        worker.close()
    finally:
        server.stop()
    # Every job ran once, HIGH first, FIFO within each priority (epoch jobs are NORMAL).
    assert ran == [
        (b"h1", b"high 1"),
        (b"h2", b"high 2"),
        (b"n1", b"normal 1"),
        (b"e1", b"epoch 1"),
        (b"n2", b"normal 2"),
        (b"empty", b""),
        (b"l1", b"low 1"),
    ]
    with SQLiteStore(db) as store:  # all finished: nothing left to replay
        assert store.load() == []


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [a.replace("{port}", "0") for a in SERVER]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


def test_a_store_in_use_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with SQLiteStore(db):
        result = run_server("-q", "libsqlite3", "--libsqlite3-db", str(db))
    assert result.returncode != 0
    assert "in use by another process" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_rows_stop_the_server_with_every_row_named(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with SQLiteStore(db) as store:
        store.apply(
            StoreBatch(1, added=[StoredJob(n, b"f", b"", b"x", Priority.NORMAL) for n in (1, 2, 3)])
        )
    conn = sqlite3.connect(db)
    conn.execute("UPDATE gearproto_jobs SET priority = 9 WHERE job_id IN (1, 3)")
    conn.commit()
    conn.close()
    result = run_server("-q", "libsqlite3", "--libsqlite3-db", str(db))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for job_id in (1, 3):
        assert f"job_id={job_id}: priority must be in 0..2, not 9" in result.stderr
    conn = sqlite3.connect(db)  # the rows are still there, untouched
    assert conn.execute("SELECT count(*) FROM gearproto_jobs").fetchone()[0] == 3
    conn.close()
