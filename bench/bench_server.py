#!/usr/bin/env python3
"""Benchmark the gearproto job server with a pure-Python load generator.

No C tools needed: clients and workers are Python processes speaking raw Gearman
packets over loopback.  For each workload it prints jobs per second and the server's
CPU time per job (user + system, read from /proc, so Linux only for that column),
and, with ``--compare gearmand``, the same for gearmand started on the same machine
in the same run, with the ratio.  Compare ratios, not absolute numbers: the load
generator shares the machine with the server.

    python bench/bench_server.py                      # all workloads, gearproto only
    python bench/bench_server.py --compare gearmand   # side by side with gearmand -t 0
    python bench/bench_server.py --workloads a --jobs 20000
    python bench/bench_server.py --core               # the sans-IO core alone, no sockets
    GEARPROTO_PURE_PYTHON=1 python bench/bench_server.py --core   # its Python source

Workloads (as in the project's C benchmark):
  a  foreground echo jobs, 64 B, one client keeping --window in flight, 2 workers
  b  background jobs, 64 B, submitted with no worker, then drained by 2 workers
  c  foreground echo jobs, 64 B, 10 clients each waiting for its result, 2 workers
  d  foreground echo jobs of 1 MiB, one client with 4 in flight, 2 workers
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct(">4sII")
REQ = b"\0REQ"


def packet(ptype: int, *fields: bytes) -> bytes:
    body = b"\0".join(fields)
    return HEADER.pack(REQ, ptype, len(body)) + body


class Reader:
    """Reads whole response packets from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def packets(self) -> list[tuple[int, bytes]]:
        """At least one packet (blocks until one is complete)."""
        out: list[tuple[int, bytes]] = []
        while not out:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            buf = self.buf + data if self.buf else data
            pos = 0
            while len(buf) - pos >= 12:
                _magic, ptype, size = HEADER.unpack_from(buf, pos)
                if len(buf) - pos - 12 < size:
                    break
                out.append((ptype, buf[pos + 12 : pos + 12 + size]))
                pos += 12 + size
            self.buf = buf[pos:]
        return out


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --------------------------------------------------------------------- workers


def worker_main(port: int, ready: Any) -> None:
    sock = connect(port)
    reader = Reader(sock)
    sock.sendall(packet(1, b"echo") + packet(30))
    ready.set()
    try:
        while True:
            for ptype, body in reader.packets():
                if ptype == 31:  # JOB_ASSIGN_UNIQ: handle, function, unique, data
                    handle, _function, _unique, data = body.split(b"\0", 3)
                    sock.sendall(packet(13, handle, data) + packet(30))
                elif ptype == 10:  # NO_JOB
                    sock.sendall(packet(4))
                elif ptype == 6:  # NOOP
                    sock.sendall(packet(30))
    except (ConnectionError, OSError):
        return


# --------------------------------------------------------------------- clients


def client_fg(port: int, jobs: int, window: int, payload: bytes) -> None:
    sock = connect(port)
    reader = Reader(sock)
    submit = packet(7, b"echo", b"", payload)
    sent = min(window, jobs)
    sock.sendall(submit * sent)
    done = 0
    while done < jobs:
        more = 0
        for ptype, body in reader.packets():
            if ptype == 13:
                assert body.endswith(payload[-16:])
                done += 1
                if sent < jobs:
                    sent += 1
                    more += 1
            elif ptype == 19:
                raise RuntimeError(f"server error: {body!r}")
        if more:
            sock.sendall(submit * more)
    sock.close()


def client_bg(port: int, jobs: int, window: int, payload: bytes) -> None:
    sock = connect(port)
    reader = Reader(sock)
    sent = min(window, jobs)
    sock.sendall(b"".join(packet(18, b"echo", b"%d" % i, payload) for i in range(sent)))
    created = 0
    while created < jobs:
        more = []
        for ptype, _body in reader.packets():
            if ptype == 8:
                created += 1
                if sent < jobs:
                    more.append(packet(18, b"echo", b"%d" % sent, payload))
                    sent += 1
        if more:
            sock.sendall(b"".join(more))
    sock.close()


def wait_drained(port: int, timeout: float = 600) -> None:
    sock = connect(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendall(b"status\r\n")
        data = b""
        while not data.endswith(b".\n"):
            data += sock.recv(65536)
        if b"echo\t0\t" in data:  # no job of "echo" left
            break
        time.sleep(0.01)
    sock.close()


# --------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {argv}")


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


_OURS = [sys.executable, "-m", "gearproto.server"]
SERVERS: dict[str, Callable[[int], list[str]]] = {
    # The memory queue, like gearmand's default: this compares the servers' own work.
    "gearproto": lambda port: [*_OURS, "-p", str(port), "-q", "builtin"],
    "gearmand": lambda port: [
        shutil.which("gearmand", path="/usr/sbin:/usr/bin") or "gearmand",
        "-t",
        "0",
        "-L",
        "127.0.0.1",
        "-p",
        str(port),
        "-l",
        "stderr",
        "--verbose",
        "FATAL",
    ],
}


def run_workload(server: str, workload: str, jobs: int, window: int) -> tuple[float, float | None]:
    port = free_port()
    proc = start(SERVERS[server](port), port)
    workers: list[mp.Process] = []
    try:
        payload = b"x" * (1 << 20 if workload == "d" else 64)
        if workload == "d":
            jobs = max(jobs // 200, 20)
        started_workers = 0

        def start_workers() -> None:
            nonlocal started_workers
            for _ in range(2):
                ready = mp.Event()
                process = mp.Process(target=worker_main, args=(port, ready), daemon=True)
                process.start()
                ready.wait(10)
                workers.append(process)
                started_workers += 1

        if workload != "b":
            start_workers()
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        if workload in ("a", "d"):
            client_fg(port, jobs, 4 if workload == "d" else window, payload)
        elif workload == "c":
            clients = [
                mp.Process(target=client_fg, args=(port, jobs // 10, 1, payload)) for _ in range(10)
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            jobs = jobs // 10 * 10
        else:
            client_bg(port, jobs, 1024, payload)
            start_workers()
            wait_drained(port)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_seconds(proc.pid)
        cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / jobs * 1e6
        return jobs / elapsed, cpu
    finally:
        for process in workers:
            process.terminate()
            process.join(5)
        proc.terminate()
        proc.wait(10)


def core_only(jobs: int) -> float:
    """CPU microseconds per job of the sans-IO core alone (workload a, no sockets)."""
    from gearproto.server import ServerCore

    core = ServerCore()
    core.connect(1)
    core.connect(2)
    core.receive(2, packet(1, b"echo"), 0.0)
    submit = packet(7, b"echo", b"", b"x" * 64) * 256
    grab = packet(30) * 256
    t0 = time.process_time()
    done = 0
    while done < jobs:
        core.receive(1, submit, 0.0)
        core.drain()
        core.receive(2, grab, 0.0)
        completes = []
        for transmit in core.drain():
            buf = b"".join(transmit.chunks)
            pos = 0
            while pos < len(buf):
                _m, ptype, size = HEADER.unpack_from(buf, pos)
                if ptype == 31:
                    handle, _f, _u, data = buf[pos + 12 : pos + 12 + size].split(b"\0", 3)
                    completes.append(packet(13, handle, data))
                pos += 12 + size
        core.receive(2, b"".join(completes), 0.0)
        core.drain()
        done += 256
    return (time.process_time() - t0) / done * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="a,b,c,d")
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per workload (d: /200)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--compare", choices=["gearmand"], help="also run gearmand -t 0")
    parser.add_argument("--core", action="store_true", help="measure the core alone")
    args = parser.parse_args()
    from gearproto.server import IMPLEMENTATION

    # The compiled core is skipped under GEARPROTO_PURE_PYTHON=1 or when a checkout's
    # build is older than the source (rebuild with `pip install -e .`): say which ran.
    print(f"server core: {IMPLEMENTATION}")
    if args.core:
        print(f"core only (workload a, no I/O): {core_only(args.jobs):.1f} CPU us/job")
        return 0
    servers = ["gearproto"] + ([args.compare] if args.compare else [])
    print("| workload | server | jobs/s | server CPU us/job | CPU ratio |")
    print("|---|---|---|---|---|")
    for workload in args.workloads.split(","):
        results = {s: run_workload(s, workload, args.jobs, args.window) for s in servers}
        base = results.get("gearmand", results["gearproto"])[1]
        for server, (rate, cpu) in results.items():
            ratio = f"{cpu / base:.2f}" if cpu and base else "-"
            cpu_text = f"{cpu:.1f}" if cpu is not None else "-"
            print(f"| {workload} | {server} | {rate:,.0f} | {cpu_text} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
