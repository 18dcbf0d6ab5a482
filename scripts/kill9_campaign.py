#!/usr/bin/env python3
"""kill -9 campaign against a job server with a durable queue: is anything acknowledged lost?

Each cycle starts the server on the same queue file, drains what the previous
(killed) run left (a worker grabs and completes every job), then submits background
jobs as fast as a pipelining client can, sometimes while a worker is running jobs,
and kills the server with SIGKILL at a random moment.  A final run drains the rest.

Every job has its own unique id, so each delivery is traced back to its submission.
The report has the shape of Jepsen's total-queue checker:

* ``lost``: acknowledged (JOB_CREATED received) but never delivered.  Must be 0.
* ``unexpected``: delivered but never submitted.  Must be 0.
* ``duplicates_without_cause``: delivered twice by the same server run, or again after
  a restart although the first delivery was not cut short by a kill.  Must be 0.
* ``redelivered_after_kill``: delivered again after a restart because the server was
  killed while the job was running, or after its WORK_COMPLETE was sent but before the
  removal was committed (documented at-least-once behaviour).
* ``in_doubt`` / ``recovered``: submitted without an acknowledgement before the kill;
  how many of those were delivered anyway (either outcome is correct).

Usage::

    scripts/kill9_campaign.py --cycles 200
    scripts/kill9_campaign.py --server '/usr/sbin/gearmand -L 127.0.0.1 -p {port}
        -q libsqlite3 --libsqlite3-db {db} -l none' --cycles 20

Exit status 0 when lost, unexpected and duplicates_without_cause are all 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gearproto import NEED_DATA, Connection, Priority, ProtocolError, Side
from gearproto.events import (
    CanDo,
    ConnectionClosed,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    SubmitJob,
    WorkComplete,
)

DEFAULT_SERVER = (
    "{python} -m gearproto.server --port {port} -q libsqlite3 --libsqlite3-db {db} -l none"
)
FUNCTION = b"kill9"


@dataclass
class Report:
    cycles: int = 0
    submitted: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    unexpected: int = 0
    duplicates_without_cause: int = 0
    redelivered_after_kill: int = 0
    protocol_errors: int = 0
    in_doubt: int = 0
    recovered: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unexpected == 0
            and self.duplicates_without_cause == 0
            and self.protocol_errors == 0
        )


@dataclass
class History:
    """Everything the clients saw, across all runs."""

    submitted: set[bytes] = field(default_factory=set)
    acked: set[bytes] = field(default_factory=set)
    #: (unique, run number, was the run killed after this delivery)
    deliveries: list[tuple[bytes, int]] = field(default_factory=list)
    killed_runs: set[int] = field(default_factory=set)
    #: Replies no correct server sends (reported, and they fail the campaign).
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(template: str, db: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    for _ in range(5):
        port = free_port()
        argv = shlex.split(template.format(port=port, db=db, python=sys.executable))
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc, port
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    raise RuntimeError(f"the server did not start: {log.read_text(errors='replace')[-2000:]}")


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
    proc.wait(30)


# ------------------------------------------------------------------- clients


class Peer:
    """A blocking gearproto client connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        # Small request/reply exchanges: without this, Nagle + delayed ACK add 40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Connection(Side.CLIENT)

    def send(self, *events: Any) -> None:
        self.sock.sendall(b"".join(self.conn.send(event) for event in events))

    def next(self) -> Any:
        while (event := self.conn.next_event()) is NEED_DATA:
            data = self.sock.recv(65536)
            if not data:
                self.conn.receive_eof()
            else:
                self.conn.receive_data(data)
        return event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def submitter(
    port: int, prefix: bytes, window: int, history: History, stop: threading.Event
) -> None:
    """Pipeline SUBMIT_JOB_BG with ``window`` in flight until the server dies."""
    try:
        peer = Peer(port)
    except OSError:
        return
    pending: list[bytes] = []
    n = 0
    try:
        while not stop.is_set():
            while len(pending) < window:
                n += 1
                unique = prefix + b"%d" % n
                with history.lock:
                    history.submitted.add(unique)
                pending.append(unique)
                peer.send(SubmitJob(FUNCTION, unique, unique, Priority(n % 3), background=True))
            event = peer.next()
            if isinstance(event, JobCreated):
                with history.lock:
                    history.acked.add(pending.pop(0))
            elif isinstance(event, ConnectionClosed):
                return
            else:
                with history.lock:
                    history.errors.append(f"reply to a submission: {event!r}")
                return
    except (OSError, ProtocolError):
        return  # the kill: whatever is pending stays in doubt
    finally:
        peer.close()


def worker(port: int, run: int, history: History, stop: threading.Event, drain: bool) -> int:
    """Grab and complete jobs; with ``drain``, until NO_JOB.  Returns jobs done."""
    peer = Peer(port)
    done = 0
    try:
        peer.send(CanDo(FUNCTION))
        while drain or not stop.is_set():
            peer.send(GrabJobUniq())
            event = peer.next()
            if isinstance(event, NoJob):
                if drain:
                    break
                time.sleep(0.005)
                continue
            if isinstance(event, ConnectionClosed):
                if drain:
                    raise RuntimeError("the server closed the draining worker's connection")
                break
            if not isinstance(event, JobAssignUniq):
                with history.lock:
                    history.errors.append(f"reply to GRAB_JOB_UNIQ: {event!r}")
                break
            with history.lock:
                history.deliveries.append((event.unique, run))
            peer.send(WorkComplete(event.handle, b""))
            done += 1
    except (OSError, ProtocolError):
        if drain:
            raise
    finally:
        peer.close()
    return done


# ------------------------------------------------------------------ campaign


def campaign(
    template: str, workdir: Path, cycles: int, seed: int, window: int, log: Path
) -> Report:
    rng = random.Random(seed)
    db = workdir / "queue.db"
    history = History()
    for run in range(cycles + 1):
        proc, port = start_server(template, db, log)
        try:
            worker(port, run, history, threading.Event(), drain=True)
            if run == cycles:
                break
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=submitter, args=(port, b"r%d-c%d-" % (run, c), window, history, stop)
                )
                for c in range(rng.choice((1, 1, 2, 4)))
            ]
            if rng.random() < 0.5:  # jobs running and completing at the kill
                threads.append(
                    threading.Thread(target=worker, args=(port, run, history, stop, False))
                )
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.02, 0.4))
            kill(proc)
            history.killed_runs.add(run)
            stop.set()
            for thread in threads:
                thread.join(60)
        finally:
            kill(proc)
    return check(history, cycles)


def check(history: History, cycles: int) -> Report:
    report = Report(cycles=cycles)
    report.submitted = len(history.submitted)
    report.acked = len(history.acked)
    report.delivered = len(history.deliveries)
    delivered = {unique for unique, _ in history.deliveries}
    lost = history.acked - delivered
    unexpected = delivered - history.submitted
    runs_of: dict[bytes, list[int]] = {}
    for unique, run in history.deliveries:
        runs_of.setdefault(unique, []).append(run)
    without_cause: list[bytes] = []
    redelivered = 0
    for unique, runs in runs_of.items():
        if len(runs) < 2:
            continue
        counts = Counter(runs)
        first_runs = sorted(counts)
        # Every delivery but the last must have happened in a run that was killed
        # (the job was running, or its completion was not committed yet), once per run.
        if any(counts[r] > 1 for r in first_runs) or any(
            r not in history.killed_runs for r in first_runs[:-1]
        ):
            without_cause.append(unique)
        else:
            redelivered += len(runs) - 1
    in_doubt = history.submitted - history.acked
    report.lost = len(lost)
    report.unexpected = len(unexpected)
    report.duplicates_without_cause = len(without_cause)
    report.redelivered_after_kill = redelivered
    report.in_doubt = len(in_doubt)
    report.protocol_errors = len(history.errors)
    if history.errors:
        report.examples["protocol"] = history.errors[:10]
    report.recovered = len(in_doubt & delivered)
    for name, items in (("lost", lost), ("unexpected", unexpected), ("dup", without_cause)):
        if items:
            report.examples[name] = [u.decode(errors="replace") for u in sorted(items)[:10]]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default=DEFAULT_SERVER, help="command with {port}, {db}")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--window", type=int, default=50, help="submissions in flight")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="kill9-", dir=args.dir) as scratch:
        log = Path(scratch) / "server.log"
        report = campaign(args.server, Path(scratch), args.cycles, seed, args.window, log)
    if args.json:
        print(json.dumps({**asdict(report), "seed": seed, "ok": report.ok}))
    else:
        print(f"seed {seed}")
        for key, value in asdict(report).items():
            print(f"{key:>26}: {value}")
        print("OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
