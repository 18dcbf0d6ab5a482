"""kill -9 of the real server process on a real SQLite file: nothing acknowledged is lost.

``scripts/kill9_campaign.py`` submits background jobs as fast as pipelining clients
can (sometimes while a worker runs jobs), kills the server with SIGKILL at random
points, restarts it on the same file and drains it with a worker, tracing every
delivery back to its submission.  The suite runs 20 cycles; long campaigns run the
script directly.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.procs import GEARMAND, ServerProcess, start_process

from gearproto import NEED_DATA, Connection, Priority, Side
from gearproto.events import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    SubmitJob,
    WorkComplete,
)

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = ROOT / "scripts" / "kill9_campaign.py"
OUR_SERVER = [sys.executable, "-m", "gearproto.server", "--port", "{port}", "-l", "none"]


def run_campaign(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(CAMPAIGN), "--json", "--dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.stdout, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == (0 if report["ok"] else 1), result.stderr
    return report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill9_loses_no_acknowledged_job(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, "--cycles", "20", "--seed", "424242")
    assert report["cycles"] == 20
    assert report["lost"] == 0, report["examples"]
    assert report["unexpected"] == 0, report["examples"]
    assert report["duplicates_without_cause"] == 0, report["examples"]
    assert report["protocol_errors"] == 0, report["examples"]
    assert report["ok"] is True
    # The campaign did real work: thousands of acknowledged jobs, all delivered.
    assert report["acked"] > 1000
    assert report["delivered"] >= report["acked"]


@pytest.mark.skipif(GEARMAND is None, reason="gearmand is not installed")
@pytest.mark.timeout(120)
def test_the_campaign_detects_loss(tmp_path: Path) -> None:
    # gearmand's memory queue loses everything at kill -9: the checker must say so.
    assert GEARMAND is not None
    server = f"{GEARMAND} -L 127.0.0.1 -p {{port}} -l none"
    report = run_campaign(tmp_path, "--cycles", "2", "--seed", "7", "--server", server)
    assert report["ok"] is False
    assert report["lost"] > 0


# ---------------------------------------------------------- worker loss


class Peer:
    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(server.address, timeout=10)
        self.conn = Connection(Side.CLIENT)

    def call(self, event: Any) -> Any:
        self.sock.sendall(self.conn.send(event))
        return self.next()

    def send(self, event: Any) -> None:
        self.sock.sendall(self.conn.send(event))

    def next(self) -> Any:
        while (event := self.conn.next_event()) is NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
        return event

    def close(self) -> None:
        self.sock.close()


def grab(peer: Peer) -> Any:
    for _ in range(200):
        event = peer.call(GrabJobUniq())
        if not isinstance(event, NoJob):
            return event
        time.sleep(0.01)
    raise AssertionError("no job was handed out")


@pytest.mark.timeout(120)
def test_a_job_held_by_a_dead_worker_is_delivered_again(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    argv = [*OUR_SERVER, "-q", "libsqlite3", "--libsqlite3-db", str(db)]
    with contextlib.ExitStack() as stack:
        server = start_process(argv, log=tmp_path / "server.log")
        stack.callback(server.stop, signal.SIGKILL)
        client = stack.enter_context(contextlib.closing(Peer(server)))
        created = client.call(SubmitJob(b"f", b"job-1", b"payload", Priority.NORMAL, True))
        assert isinstance(created, JobCreated)
        doomed = Peer(server)
        doomed.send(CanDo(b"f"))
        first = grab(doomed)
        assert isinstance(first, JobAssignUniq)
        assert first.unique == b"job-1"
        doomed.close()  # the worker dies holding the job
        survivor = stack.enter_context(contextlib.closing(Peer(server)))
        survivor.send(CanDo(b"f"))
        second = grab(survivor)
        assert isinstance(second, JobAssignUniq)
        assert (second.unique, second.data) == (b"job-1", b"payload")
        # The server dies while the job is running: it comes back after a restart.
        server.stop(signal.SIGKILL)
    with contextlib.ExitStack() as stack:
        server = start_process(argv, log=tmp_path / "server2.log")
        stack.callback(server.stop)
        worker = stack.enter_context(contextlib.closing(Peer(server)))
        worker.send(CanDo(b"f"))
        third = grab(worker)
        assert isinstance(third, JobAssignUniq)
        assert (third.unique, third.data) == (b"job-1", b"payload")
        worker.send(WorkComplete(third.handle, b"done"))
        assert isinstance(worker.call(GrabJobUniq()), NoJob)
