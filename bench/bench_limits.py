"""What the server's limits cost and protect: slow dribblers, idle connections, huge headers.

Runs ``gearproto server`` as a separate process (``--loop`` picks the runner) and
measures, in one run:

1. **Dribblers**: the latency of normal foreground jobs (submit -> worker ->
   WORK_COMPLETE, one at a time) without and then with ``--dribblers`` connections
   that each send a packet one byte at a time and never finish it.  Prints p50/p99
   and the ratios, and checks that every dribbler was answered ``ERROR TIMEOUT`` and
   closed by the partial-packet timeout.
2. **Idle connections**: the server's resident memory before and after opening
   ``--idle`` connections (each has done one ECHO), as MiB per 1,000 connections.
3. **Declared sizes**: resident memory after connections send headers that declare
   a 4 GiB body (refused at once) and headers that declare a body just under the
   packet limit followed by a little data (held open): memory follows what is sent,
   not what is declared.

Usage::

    python bench/bench_limits.py [--loop asyncio|trio] [--dribblers 1000] [--idle 2000]

The functions are also used by ``tests/test_server_limits_load.py``, which asserts
the behaviour (never the timings).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    Noop,
    PreSleep,
    SubmitJob,
    WorkComplete,
)

HEADER = struct.Struct(">4sII")
ERROR = 19
SUBMIT_JOB = 7


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-files limit to ``wanted`` if allowed; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)


@contextlib.contextmanager
def server(*args: str, loop: str = "asyncio", log: Path | None = None) -> Iterator[Server]:
    """``gearproto server`` (memory queue) on a free port, with ``args``; SIGTERM after."""
    for _attempt in range(5):
        port = free_port()
        argv = [sys.executable, "-m", "gearproto.server", "-p", str(port), "-q", "builtin",
                "-b", "4096", "--loop", loop, "-l", str(log) if log else "none", *args]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            try:
                yield Server(proc, port)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            return
    raise RuntimeError("the server did not start")


def read_event(sock: socket.socket, conn: Connection) -> object:
    while (event := conn.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        conn.receive_data(data)
    return event


class Worker(threading.Thread):
    """Completes every ``echo`` job with its payload, sleeping when there is none."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Connection(Side.CLIENT)
        self.stopping = False
        self.done = 0

    def run(self) -> None:
        sock, conn = self.sock, self.conn
        with contextlib.suppress(OSError, ConnectionError):
            sock.sendall(conn.send(CanDo(b"echo")))
            while not self.stopping:
                sock.sendall(conn.send(GrabJobUniq()))
                event = read_event(sock, conn)
                if isinstance(event, JobAssignUniq):
                    sock.sendall(conn.send(WorkComplete(event.handle, event.data)))
                    self.done += 1
                elif isinstance(event, NoJob):
                    sock.sendall(conn.send(PreSleep()))
                    while not isinstance(read_event(sock, conn), Noop):
                        pass

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(10)


def job_latencies(address: tuple[str, int], jobs: int) -> list[float]:
    """Seconds per foreground job (submit to WORK_COMPLETE), one job at a time."""
    times = []
    with socket.create_connection(address, timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(Side.CLIENT)
        for n in range(jobs):
            payload = b"job %d" % n
            start = time.perf_counter()
            sock.sendall(conn.send(SubmitJob(b"echo", b"", payload)))
            created = read_event(sock, conn)
            assert isinstance(created, JobCreated), created
            done = read_event(sock, conn)
            times.append(time.perf_counter() - start)
            assert done == WorkComplete(created.handle, payload), done
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def open_many(address: tuple[str, int], count: int, timeout: float = 60.0) -> list[socket.socket]:
    """``count`` connected sockets (non-blocking connects, so a flood is fast)."""
    selector = selectors.DefaultSelector()
    pending = 0
    done: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, 115):  # EINPROGRESS
            sock.close()
            raise OSError(err, os.strerror(err))
        selector.register(sock, selectors.EVENT_WRITE)
        pending += 1
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            sock = key.fileobj  # type: ignore[assignment]
            assert isinstance(sock, socket.socket)
            selector.unregister(sock)
            pending -= 1
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sock.close()
                raise OSError(err, os.strerror(err))
            done.append(sock)
    selector.close()
    if pending:
        raise TimeoutError(f"{pending} of {count} connections did not complete")
    return done


@dataclass
class Dribblers:
    """Connections sending one packet a byte at a time; what the server answered."""

    socks: list[socket.socket]
    interval: float
    packet: bytes = HEADER.pack(b"\0REQ", SUBMIT_JOB, 100) + b"echo\0\0" + b"x" * 94
    replies: dict[int, bytes] = field(default_factory=dict)
    closed_at: dict[int, float] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)
    started: float = 0.0
    _stop: bool = False
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.socks:
            selector.register(sock, selectors.EVENT_READ)
            self.sent[sock.fileno()] = 0
            self.replies[sock.fileno()] = b""
        next_round = time.monotonic()
        while not self._stop and len(self.closed_at) < len(self.socks):
            now = time.monotonic()
            if now >= next_round:
                for sock in self.socks:
                    fd = sock.fileno()
                    if fd in self.closed_at or fd < 0:
                        continue
                    at = self.sent[fd]
                    if at < len(self.packet) - 1:  # never the last byte
                        with contextlib.suppress(OSError):
                            self.sent[fd] += sock.send(self.packet[at : at + 1])
                next_round = now + self.interval
            for key, _ in selector.select(max(0.0, next_round - time.monotonic())):
                sock = key.fileobj  # type: ignore[assignment]
                assert isinstance(sock, socket.socket)
                fd = sock.fileno()
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    self.replies[fd] += data
                else:
                    self.closed_at[fd] = time.monotonic() - self.started
                    selector.unregister(sock)
        selector.close()

    def wait_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.closed_at) < len(self.socks) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(10)
        for sock in self.socks:
            sock.close()

    def timed_out(self) -> int:
        """Dribblers answered ERROR TIMEOUT and then closed by the server."""
        count = 0
        for fd, data in self.replies.items():
            if fd in self.closed_at and len(data) >= 12:
                _magic, ptype, size = HEADER.unpack_from(data)
                if ptype == ERROR and data[12 : 12 + size].startswith(b"TIMEOUT\0"):
                    count += 1
        return count


@dataclass
class DribbleResult:
    dribblers: int
    timeout: float
    quiet: list[float]
    busy: list[float]
    timed_out: int
    closed: int
    worker_done: int

    def lines(self) -> list[str]:
        q50, q99 = percentile(self.quiet, 0.5), percentile(self.quiet, 0.99)
        b50, b99 = percentile(self.busy, 0.5), percentile(self.busy, 0.99)
        return [
            f"normal jobs: {len(self.quiet)} without and {len(self.busy)} with "
            f"{self.dribblers} dribblers (partial-packet timeout {self.timeout:g} s)",
            "| | p50 ms | p99 ms | mean ms |",
            "| --- | ---: | ---: | ---: |",
            f"| without dribblers | {q50 * 1e3:.3f} | {q99 * 1e3:.3f} "
            f"| {statistics.mean(self.quiet) * 1e3:.3f} |",
            f"| with {self.dribblers} dribblers | {b50 * 1e3:.3f} | {b99 * 1e3:.3f} "
            f"| {statistics.mean(self.busy) * 1e3:.3f} |",
            f"| ratio | {b50 / q50:.2f}x | {b99 / q99:.2f}x | |",
            f"dribblers answered ERROR TIMEOUT and closed: {self.timed_out} of "
            f"{self.dribblers} (closed: {self.closed})",
        ]


def run_dribblers(
    address: tuple[str, int], dribblers: int, timeout: float, jobs: int, interval: float
) -> DribbleResult:
    """Latency of normal jobs without, then with, ``dribblers`` slow connections."""
    worker = Worker(address)
    worker.start()
    try:
        job_latencies(address, 50)  # warm-up
        quiet = job_latencies(address, jobs)
        drib = Dribblers(open_many(address, dribblers), interval)
        drib.start()
        try:
            busy = job_latencies(address, jobs)
            drib.wait_closed(timeout + 30)
        finally:
            drib.stop()
        return DribbleResult(
            dribblers, timeout, quiet, busy, drib.timed_out(), len(drib.closed_at), worker.done
        )
    finally:
        worker.stop()


def echo_all(socks: list[socket.socket], timeout: float = 60.0) -> int:
    """Send an ECHO on every socket and read each reply; how many came back."""
    packet = Connection(Side.CLIENT).send(EchoReq(b"hi"))
    expected = b"\0RES" + struct.pack(">II", 17, 2) + b"hi"
    selector = selectors.DefaultSelector()
    got: dict[int, bytes] = {}
    for sock in socks:
        sock.setblocking(True)
        sock.sendall(packet)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        got[sock.fileno()] = b""
    answered = 0
    deadline = time.monotonic() + timeout
    while answered < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            sock = key.fileobj  # type: ignore[assignment]
            assert isinstance(sock, socket.socket)
            got[sock.fileno()] += sock.recv(4096)
            if len(got[sock.fileno()]) >= len(expected):
                assert got[sock.fileno()] == expected
                selector.unregister(sock)
                answered += 1
    selector.close()
    return answered


@dataclass
class IdleResult:
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    answered: int

    @property
    def mib_per_1000(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / 1024 / self.connections * 1000

    def lines(self) -> list[str]:
        return [
            f"idle connections: {self.connections} (each answered one ECHO: {self.answered})",
            f"server RSS {self.rss_before_kib / 1024:.1f} MiB -> "
            f"{self.rss_after_kib / 1024:.1f} MiB: {self.mib_per_1000:.2f} MiB per 1,000 "
            "connections",
        ]


def run_idle(srv: Server, connections: int) -> IdleResult:
    warm = open_many(srv.address, 10)  # the server has served connections before
    echo_all(warm)
    for sock in warm:
        sock.close()
    time.sleep(0.3)
    before = srv.rss_kib
    socks = open_many(srv.address, connections)
    try:
        answered = echo_all(socks)
        time.sleep(0.3)
        after = srv.rss_kib
    finally:
        for sock in socks:
            sock.close()
    return IdleResult(connections, before, after, answered)


@dataclass
class DeclaredResult:
    huge_headers: int
    huge_refused: int
    near_cap: int
    near_cap_size: int
    sent_each: int
    rss_start_kib: int
    rss_after_huge_kib: int
    rss_after_near_kib: int

    def lines(self) -> list[str]:
        near_mib = self.near_cap * self.near_cap_size / 2**20
        return [
            f"{self.huge_headers} headers declaring a 4 GiB body: {self.huge_refused} answered "
            f"ERROR ARGUMENT_TOO_LARGE and closed; server RSS {self.rss_start_kib / 1024:.1f}"
            f" -> {self.rss_after_huge_kib / 1024:.1f} MiB",
            f"{self.near_cap} connections declaring {self.near_cap_size:,}-byte bodies "
            f"({near_mib:,.0f} MiB declared), {self.sent_each:,} bytes sent each, held open: "
            f"server RSS {self.rss_after_near_kib / 1024:.1f} MiB",
        ]


def run_declared(srv: Server, max_packet: int, huge: int = 20, near: int = 16) -> DeclaredResult:
    start = srv.rss_kib
    refused = 0
    for _ in range(huge):
        with socket.create_connection(srv.address, timeout=10) as sock:
            sock.sendall(HEADER.pack(b"\0REQ", SUBMIT_JOB, 0xFFFFFFFF) + b"echo\0\0")
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    data += chunk
            if data[4:8] == struct.pack(">I", ERROR) and b"ARGUMENT_TOO_LARGE" in data:
                refused += 1
    after_huge = srv.rss_kib
    body = 64 * 1024
    socks = []
    try:
        for _ in range(near):
            sock = socket.create_connection(srv.address, timeout=10)
            sock.sendall(HEADER.pack(b"\0REQ", SUBMIT_JOB, max_packet) + b"echo\0\0")
            sock.sendall(b"x" * body)
            socks.append(sock)
        time.sleep(0.5)
        after_near = srv.rss_kib
        # The server is still fine.
        with socket.create_connection(srv.address, timeout=10) as sock:
            conn = Connection(Side.CLIENT)
            sock.sendall(conn.send(EchoReq(b"alive")))
            assert read_event(sock, conn) == EchoRes(b"alive")
    finally:
        for sock in socks:
            sock.close()
    return DeclaredResult(huge, refused, near, max_packet, body + 6, start, after_huge, after_near)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument("--dribblers", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=500, help="normal jobs per phase")
    parser.add_argument("--timeout", type=float, default=5.0, help="partial-packet timeout")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between bytes")
    args = parser.parse_args(argv)
    raise_fd_limit(max(args.dribblers, args.idle) + 256)
    print(f"# gearproto server limits ({args.loop} runner)\n")
    with server("--partial-packet-timeout", str(args.timeout), loop=args.loop) as srv:
        result = run_dribblers(srv.address, args.dribblers, args.timeout, args.jobs, args.interval)
        print("\n".join(result.lines()), "\n")
    with server(loop=args.loop) as srv:
        print("\n".join(run_idle(srv, args.idle).lines()), "\n")
    with server(loop=args.loop) as srv:
        print("\n".join(run_declared(srv, 64 * 2**20 - 1).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
