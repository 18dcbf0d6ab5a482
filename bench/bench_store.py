"""Durable-queue benchmark: the job store alone, and job servers with a durable queue.

Part 1 (``store``): durable commits per second of ``SQLiteStore.apply()`` with batch
sizes 1, 10 and 100 (WAL, synchronous=FULL: each commit is fsynced), with the raw
fdatasync latency of the same disk for context.  This is the ceiling of the group
commit path: a server that gathers B submissions per commit can acknowledge up to
B times the commit rate.

Part 3 (``recovery``): with 100,000 jobs queued in a gearmand-format file, the time
from starting each server to the first JOB_ASSIGN a worker receives.

Part 2 (``servers``): durable background submissions per second against real job
servers, with 1 and 10 clients, each keeping ``--window`` SUBMIT_JOB_BG requests in
flight (window 1: a client waits for each JOB_CREATED).  Every server gets a fresh
queue file; after the run the server is killed with SIGKILL and the rows left in
its file are counted (acknowledged jobs must all be there).

Servers are command templates, ``NAME=COMMAND`` (repeatable ``--server``), with
``{port}``, ``{db}`` (a fresh queue file), ``{tmpdir}`` and ``{python}`` filled in.
Runs are interleaved (repetition, then configuration, then server) and medians over
``--reps`` are reported, so that machine noise hits every server alike.  The default
servers are gearmand's SQLite queue and the project's server with its (default)
SQLite queue, on the same disk::

    gearmand-sqlite=/usr/sbin/gearmand -L 127.0.0.1 -p {port} -q libsqlite3
        --libsqlite3-db {db} -l {tmpdir}/gearmand.log -P {tmpdir}/gearmand.pid
    gearproto={python} -m gearproto.server --port {port} --libsqlite3-db {db} -l none

Ratios are taken against the first server, within this run.  Run from a directory on
the disk you want to measure (``--dir``).  Both servers commit with the same
durability (an fsync before JOB_CREATED); a lone client that waits for each
acknowledgement (window 1) is bounded by one fsync per job on any server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gearproto import Priority
from gearproto.server.sqlite_store import SQLiteStore
from gearproto.server.storage import StoreBatch, StoredJob

GEARMAND = "/usr/sbin/gearmand"
DEFAULT_SERVERS = [
    f"gearmand-sqlite={GEARMAND} -L 127.0.0.1 -p {{port}} -q libsqlite3 "
    "--libsqlite3-db {db} -l {tmpdir}/gearmand.log --verbose ERROR -P {tmpdir}/gearmand.pid",
    "gearproto={python} -m gearproto.server --port {port} --libsqlite3-db {db} -l none",
]
SUBMIT_JOB_BG = 18
JOB_CREATED = 8
ERROR = 19
HEADER = struct.Struct(">4sII")
FUNCTION = b"bench_store"
T = TypeVar("T")


# ------------------------------------------------------------------ part 1: store


def fdatasync_latency(directory: Path, rounds: int = 200) -> float:
    """Median seconds of write(4 KiB) + fdatasync on a file in ``directory``."""
    path = directory / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(rounds):
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            start = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


@dataclass
class StoreResult:
    batch: int
    mode: str
    commits: int
    seconds: float
    p50: float
    p99: float

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds

    @property
    def jobs_per_s(self) -> float:
        return self.commits * self.batch / self.seconds


def bench_apply(
    directory: Path, batch: int, mode: str, seconds: float, payload: int
) -> StoreResult:
    """Commit batches of ``batch`` new jobs (``mode`` "add+remove": and remove the
    previous batch's jobs, the steady state of a busy server) for ``seconds``."""
    path = directory / f"store-{batch}-{mode}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    data = os.urandom(payload)
    latencies: list[float] = []
    next_id = 1
    previous: list[int] = []
    with SQLiteStore(path) as store:
        start = time.perf_counter()
        deadline = start + seconds
        batch_id = 0
        while True:
            added = [
                StoredJob(i, FUNCTION, b"%032x" % i, data, Priority.NORMAL)
                for i in range(next_id, next_id + batch)
            ]
            next_id += batch
            batch_id += 1
            removed = previous if mode == "add+remove" else ()
            t0 = time.perf_counter()
            store.apply(StoreBatch(batch_id, added=added, removed=removed))
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            previous = [job.job_id for job in added]
            if t1 >= deadline:
                break
        elapsed = time.perf_counter() - start
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    latencies.sort()
    return StoreResult(
        batch,
        mode,
        len(latencies),
        elapsed,
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


def run_store_part(directory: Path, seconds: float, payload: int, reps: int) -> None:
    flush = fdatasync_latency(directory)
    print(f"## SQLiteStore.apply() durable commits ({directory}, payload {payload} B)\n")
    print(f"raw write+fdatasync on this disk: median {flush * 1e6:.0f} µs; ", end="")
    print(f"median of {reps} interleaved runs of {seconds:g} s\n")
    print("| batch | mode | commits/s | jobs/s | apply p50 µs | apply p99 µs |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    configs = [(mode, batch) for mode in ("add", "add+remove") for batch in (1, 10, 100)]
    results: dict[tuple[str, int], list[StoreResult]] = {c: [] for c in configs}
    for _ in range(reps):
        for mode, batch in configs:
            results[mode, batch].append(bench_apply(directory, batch, mode, seconds, payload))
    for mode, batch in configs:
        r = median_by(results[mode, batch], lambda x: x.commits_per_s)
        print(
            f"| {batch} | {mode} | {r.commits_per_s:,.0f} | {r.jobs_per_s:,.0f} "
            f"| {r.p50 * 1e6:,.0f} | {r.p99 * 1e6:,.0f} |"
        )
    print()


def median_by(items: list[T], key: Callable[[T], float]) -> T:
    """The item with the median ``key`` (the lower one for an even count)."""
    ordered = sorted(items, key=key)
    return ordered[(len(ordered) - 1) // 2]


# ---------------------------------------------------------------- part 2: servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    db: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def started(name: str, template: str, workdir: Path) -> Iterator[Server]:
    """Start ``template`` on a free port with a fresh queue file; SIGKILL it after."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    db = tmpdir / "queue.db"
    for _attempt in range(5):
        port = free_port()
        argv = shlex.split(template.format(port=port, db=db, tmpdir=tmpdir, python=sys.executable))
        log = open(tmpdir / "server.out", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait_listening(port, proc):
            server = Server(name, proc, port, db)
            try:
                yield server
            finally:
                server.kill()
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    output = (tmpdir / "server.out").read_text(errors="replace")[-1000:]
    raise RuntimeError(f"{name}: the server did not start: {output}")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def submit_packet(unique: bytes, data: bytes) -> bytes:
    body = FUNCTION + b"\0" + unique + b"\0" + data
    return HEADER.pack(b"\0REQ", SUBMIT_JOB_BG, len(body)) + body


class Client(threading.Thread):
    """Submits background jobs with ``window`` in flight until ``deadline``."""

    def __init__(self, port: int, index: int, window: int, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.index = index
        self.window = window
        self.payload = payload
        self.acked = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.deadline = 0.0
        self.failure: BaseException | None = None
        self.ready = threading.Event()
        self.go = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the driver
            self.failure = error
            self.ready.set()

    def _run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ready.set()
        self.go.wait()
        buffer = b""
        sent_at: list[float] = []
        n = 0
        in_flight = 0
        prefix = b"c%d-" % self.index

        def send_one() -> None:
            nonlocal n, in_flight
            n += 1
            sock.sendall(submit_packet(prefix + b"%d" % n, self.payload))
            sent_at.append(time.perf_counter())
            in_flight += 1

        for _ in range(self.window):
            send_one()
        head = 0
        while in_flight:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
            while len(buffer) >= 12:
                _magic, ptype, size = HEADER.unpack_from(buffer)
                if len(buffer) < 12 + size:
                    break
                buffer = buffer[12 + size :]
                in_flight -= 1
                now = time.perf_counter()
                self.latencies.append(now - sent_at[head])
                head += 1
                if ptype == JOB_CREATED:
                    self.acked += 1
                else:
                    self.errors += 1
                if now < self.deadline:
                    send_one()
        sock.close()


@dataclass
class ServerResult:
    name: str
    clients: int
    window: int
    acked: int
    errors: int
    seconds: float
    p50: float
    p99: float
    rows_after_kill: int | None

    @property
    def per_s(self) -> float:
        return self.acked / self.seconds


def count_rows(db: Path) -> int | None:
    """Jobs left in a queue file (gearmand's table or the project's), or None."""
    if not db.exists():
        return None
    conn = sqlite3.connect(db, timeout=5)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        for table in ("gearproto_jobs", "gearman_queue"):
            if table in tables:
                count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                return count
        return None
    finally:
        conn.close()


def bench_server(
    name: str,
    template: str,
    workdir: Path,
    clients: int,
    window: int,
    seconds: float,
    payload: int,
) -> ServerResult:
    with started(name, template, workdir) as server:
        data = os.urandom(payload)
        threads = [Client(server.port, i, window, data) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.ready.wait(10)
        start = time.perf_counter()
        for thread in threads:
            thread.deadline = start + seconds
            thread.go.set()
        for thread in threads:
            thread.join(seconds + 60)
        elapsed = time.perf_counter() - start
        failures = [t.failure for t in threads if t.failure is not None]
        if failures:
            raise RuntimeError(f"{name}: a client failed: {failures[0]!r}")
        server.kill()  # SIGKILL: what is in the file now is what a crash leaves
        rows = count_rows(server.db)
    latencies = sorted(x for t in threads for x in t.latencies)
    return ServerResult(
        name,
        clients,
        window,
        sum(t.acked for t in threads),
        sum(t.errors for t in threads),
        elapsed,
        latencies[len(latencies) // 2] if latencies else 0.0,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
        rows,
    )


def run_server_part(
    servers: list[tuple[str, str]],
    workdir: Path,
    clients_list: list[int],
    windows: list[int],
    seconds: float,
    payload: int,
    reps: int,
) -> None:
    print("## Durable background submits per second (SUBMIT_JOB_BG -> JOB_CREATED)\n")
    print(
        f"payload {payload} B, {seconds:g} s per run, fresh queue file per run, median of "
        f"{reps} interleaved runs; ratios against {servers[0][0]}\n"
    )
    configs = [(c, w) for c in clients_list for w in windows]
    results: dict[tuple[str, int, int], list[ServerResult]] = {}
    missing = 0
    for _ in range(reps):  # interleaved, so that machine noise hits every server alike
        for clients, window in configs:
            for name, template in servers:
                r = bench_server(name, template, workdir, clients, window, seconds, payload)
                results.setdefault((name, clients, window), []).append(r)
                if r.rows_after_kill is not None and r.rows_after_kill < r.acked:
                    missing += r.acked - r.rows_after_kill
    print(
        "| server | clients | window | acked jobs/s | ratio | errors | ack p50 ms "
        "| ack p99 ms | rows in file after kill -9 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for clients, window in configs:
        baseline: float | None = None
        for name, _ in servers:
            r = median_by(results[name, clients, window], lambda x: x.per_s)
            baseline = baseline or r.per_s
            rows = "?" if r.rows_after_kill is None else f"{r.rows_after_kill:,}"
            print(
                f"| {name} | {clients} | {window} | {r.per_s:,.0f} | "
                f"{r.per_s / baseline:.2f}x | {r.errors} | {r.p50 * 1e3:.2f} | "
                f"{r.p99 * 1e3:.2f} | {rows} of {r.acked:,} acked |"
            )
    verdict = "none" if not missing else f"**{missing}**"
    print(f"\nacknowledged jobs missing from a queue file after kill -9, all runs: {verdict}\n")


# --------------------------------------------------------------- part 3: recovery

GEARMAND_SCHEMA = (
    "CREATE TABLE gearman_queue ( unique_key TEXT, function_name TEXT, priority INTEGER, "
    "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))"
)
CAN_DO = 1
NO_JOB = 10
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31


def write_gearmand_file(path: Path, jobs: int, payload: int) -> None:
    """A queue file in gearmand's own schema, as gearmand -q libsqlite3 writes it."""
    data = os.urandom(payload)
    conn = sqlite3.connect(path)
    conn.execute(GEARMAND_SCHEMA)
    conn.executemany(
        "INSERT INTO gearman_queue (unique_key, function_name, priority, data, when_to_run)"
        " VALUES (?, ?, ?, ?, 0)",
        ((f"r{n}", FUNCTION.decode(), n % 3, data) for n in range(jobs)),
    )
    conn.commit()
    conn.close()


def packet(ptype: int, body: bytes = b"") -> bytes:
    return HEADER.pack(b"\0REQ", ptype, len(body)) + body


def first_assign_seconds(template: str, db: Path, tmpdir: Path, timeout: float) -> float:
    """Seconds from starting the server to the first JOB_ASSIGN_UNIQ a worker gets."""
    port = free_port()
    argv = shlex.split(template.format(port=port, db=db, tmpdir=tmpdir, python=sys.executable))
    start = time.perf_counter()
    with open(tmpdir / "recovery.out", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_listening(port, proc, timeout):
            raise RuntimeError(f"the server did not start within {timeout:g} s: {argv[0]}")
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(packet(CAN_DO, FUNCTION))
            while time.perf_counter() - start < timeout:
                sock.sendall(packet(GRAB_JOB_UNIQ))
                header = b""
                while len(header) < 12:
                    chunk = sock.recv(12 - len(header))
                    if not chunk:
                        raise RuntimeError("the server closed the worker's connection")
                    header += chunk
                _magic, ptype, size = HEADER.unpack(header)
                remaining = size
                while remaining:
                    remaining -= len(sock.recv(min(remaining, 65536)))
                if ptype == JOB_ASSIGN_UNIQ:
                    return time.perf_counter() - start
                time.sleep(0.01)  # NO_JOB: not loaded yet
        raise RuntimeError("no job was assigned in time")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def run_recovery_part(
    servers: list[tuple[str, str]], workdir: Path, jobs: int, payload: int
) -> None:
    print(f"## Recovery: {jobs:,} queued jobs in the file, time to the first JOB_ASSIGN\n")
    print("Each server starts twice on a copy of the same gearmand-format file (the first")
    print("start of gearproto imports gearmand's table; the restart reads its own).\n")
    source = workdir / "recovery-source.db"
    write_gearmand_file(source, jobs, payload)
    path = workdir / "recovery-store.db"
    shutil.copy(source, path)
    started_at = time.perf_counter()
    SQLiteStore(path).close()  # import into the store format
    imported = time.perf_counter() - started_at
    started_at = time.perf_counter()
    with SQLiteStore(path) as store:
        loaded = len(store.load())
    reopen = time.perf_counter() - started_at
    print(f"SQLiteStore in process: import {imported:.2f} s; open + validate + load of "
          f"{loaded:,} jobs {reopen:.2f} s\n")  # fmt: skip
    print("| server | first start s | restart s |")
    print("| --- | ---: | ---: |")
    for name, template in servers:
        tmpdir = Path(tempfile.mkdtemp(prefix=f"recovery-{name}-", dir=workdir))
        db = tmpdir / "queue.db"
        shutil.copy(source, db)
        first = first_assign_seconds(template, db, tmpdir, 300)
        again = first_assign_seconds(template, db, tmpdir, 300)
        print(f"| {name} | {first:.2f} | {again:.2f} |", flush=True)
    print()


def parse_server(spec: str) -> tuple[str, str]:
    name, sep, command = spec.partition("=")
    if not sep or not name or " " in name:
        return (shlex.split(spec)[0].rsplit("/", 1)[-1], spec)
    return (name, command)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("gearproto").setLevel(logging.ERROR)  # no import notices in tables
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=("all", "store", "servers", "recovery"),
        default="all",
        help="what to run (default all)",
    )
    parser.add_argument("--server", action="append", help="NAME=COMMAND template (repeatable)")
    parser.add_argument("--clients", default="1,10", help="comma list (default 1,10)")
    parser.add_argument("--windows", default="1,100", help="comma list (default 1,100)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run (default 3)")
    parser.add_argument("--payload", type=int, default=100, help="job bytes (default 100)")
    parser.add_argument(
        "--recovery-jobs", type=int, default=100_000, help="jobs in the file (default 100000)"
    )
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (disk)")
    args = parser.parse_args(argv)
    servers = [parse_server(s) for s in (args.server or DEFAULT_SERVERS)]
    base = args.dir or Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=base) as scratch:
        workdir = Path(scratch)
        if args.part in ("all", "store"):
            run_store_part(workdir, args.seconds, args.payload, args.reps)
        if args.part in ("all", "servers"):
            run_server_part(
                servers,
                workdir,
                [int(x) for x in args.clients.split(",")],
                [int(x) for x in args.windows.split(",")],
                args.seconds,
                args.payload,
                args.reps,
            )
        if args.part in ("all", "recovery"):
            run_recovery_part(servers, workdir, args.recovery_jobs, args.payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
