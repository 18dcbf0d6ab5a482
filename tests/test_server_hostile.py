"""Hostile input: several connections feed malformed bytes at once while normal
clients keep getting results.  The server must answer every error (ERROR packet or
ERR line, or close), never crash, hang or desynchronise another connection."""

from __future__ import annotations

import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.procs import ServerProcess, start_process

from gearproto import NEED_DATA, REQ, Connection, Side, raw_packet
from gearproto.events import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    SubmitJob,
    WorkComplete,
)
from gearproto.server import PeerInfo, ServerConfig, ServerCore

pytestmark = pytest.mark.timeout(120)

HEADER = struct.Struct(">4sII")

# (name, bytes, how the server must answer: "error" packet, "err" line, or "close")
HOSTILE: list[tuple[str, bytes, str]] = [
    ("bad magic", b"\0XYZ" + b"\0" * 8, "close"),
    ("type zero", HEADER.pack(REQ, 0, 0), "close"),
    ("type 43", HEADER.pack(REQ, 43, 0), "close"),
    ("type 2**32-1", HEADER.pack(REQ, 0xFFFFFFFF, 0), "close"),
    ("4 GiB body", HEADER.pack(REQ, 7, 0xFFFFFFFF), "close"),
    ("response magic", HEADER.pack(b"\0RES", 16, 2) + b"hi", "error"),
    ("response type", raw_packet(REQ, 8, [b"H:x:1"]), "error"),
    ("submit without NULs", raw_packet(REQ, 7, [b"fn-no-nul"]), "error"),
    ("reduce missing a field", raw_packet(REQ, 37, [b"f", b"u", b"data"]), "error"),
    ("unique too long", raw_packet(REQ, 7, [b"f", b"u" * 65, b"d"]), "error"),
    ("function too long", raw_packet(REQ, 1, [b"f" * 600]), "error"),
    ("complete unknown job", raw_packet(REQ, 13, [b"H:nope:1", b"x"]), "error"),
    ("status for unknown job", raw_packet(REQ, 12, [b"H:nope:1", b"1", b"2"]), "error"),
    ("huge can_do_timeout", raw_packet(REQ, 23, [b"f", b"9" * 19]), "error"),
    ("admin line too long", b"x" * 9000, "close"),
    ("six admin tokens", b"a b c d e f\r\n", "err"),
    ("unknown admin", b"\xff\xfe\x00 weird\r\n", "err"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    argv = [sys.executable, "-m", "gearproto.server", "-L", "{host}", "-p", "{port}"]
    argv += ["--libsqlite3-db", str(tmp_path / "queue.sqlite")]  # the durable default
    proc = start_process(argv, log=tmp_path / "server.log")
    try:
        yield proc
    finally:
        proc.stop()


def _read_all(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Bytes received within ``seconds``, and whether the server closed."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if data:
                return data, False
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _hostile(address: tuple[str, int], name: str, payload: bytes, expect: str) -> str | None:
    """Send one hostile input; a description of what went wrong, or None."""
    with socket.create_connection(address, timeout=10) as sock:
        try:
            for i in range(0, len(payload), 7):  # dribbled, to exercise reassembly
                sock.sendall(payload[i : i + 7])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused part way, and said so below
        data, closed = _read_all(sock, 5)
        if expect == "close":
            if not closed:
                return f"{name}: connection not closed (got {data[:60]!r})"
            if not (data.startswith((b"\x00RES\x00\x00\x00\x13", b"ERR "))):
                return f"{name}: closed without an ERROR first ({data[:60]!r})"
            return None
        if expect == "err":
            return None if data.startswith(b"ERR ") else f"{name}: no ERR line ({data!r})"
        if not data.startswith(b"\0RES\0\0\0\x13"):
            return f"{name}: no ERROR packet ({data[:60]!r})"
        # The connection is still in sync: an echo comes back intact.
        sock.sendall(raw_packet(REQ, 16, [b"after " + name.encode()]))
        more, _ = _read_all(sock, 5)
        if raw_packet(b"\0RES", 17, [b"after " + name.encode()]) not in data + more:
            return f"{name}: desynchronised after the error ({(data + more)[:80]!r})"
        return None


def _garbage(address: tuple[str, int], seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=5) as sock:
                for _ in range(20):
                    blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                    if rng.random() < 0.5:
                        blob = b"\0REQ" + blob
                    sock.sendall(blob)
        except OSError:
            pass  # closed on us: that is an allowed answer


def _read_event(sock: socket.socket, conn: Connection) -> object:
    while (event := conn.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        assert data, "server closed a well-behaved connection"
        conn.receive_data(data)
    return event


def test_malformed_input_from_many_connections_while_jobs_keep_flowing(
    server: ServerProcess,
) -> None:
    address = server.address
    stop = threading.Event()
    noise = [threading.Thread(target=_garbage, args=(address, s, stop)) for s in range(3)]
    for thread in noise:
        thread.start()
    problems: list[str] = []
    lock = threading.Lock()

    def hostile_all() -> None:
        for name, payload, expect in HOSTILE:
            problem = _hostile(address, name, payload, expect)
            if problem:
                with lock:
                    problems.append(problem)

    hostiles = [threading.Thread(target=hostile_all) for _ in range(2)]
    for thread in hostiles:
        thread.start()
    try:
        worker = socket.create_connection(address, timeout=10)
        client = socket.create_connection(address, timeout=10)
        wconn, cconn = Connection(Side.CLIENT), Connection(Side.CLIENT)
        worker.sendall(wconn.send(CanDo(b"upper")))
        for i in range(200):
            payload = b"job %d" % i
            client.sendall(cconn.send(SubmitJob(b"upper", b"", payload)))
            created = _read_event(client, cconn)
            assert isinstance(created, JobCreated)
            worker.sendall(wconn.send(GrabJobUniq()))
            job = _read_event(worker, wconn)
            assert isinstance(job, JobAssignUniq), job
            worker.sendall(wconn.send(WorkComplete(job.handle, job.data.upper())))
            assert _read_event(client, cconn) == WorkComplete(created.handle, payload.upper())
        worker.close()
        client.close()
    finally:
        for thread in hostiles:
            thread.join(60)
        stop.set()
        for thread in noise:
            thread.join(30)
    assert not problems
    # Still alive and well.
    assert server.proc.poll() is None
    with socket.create_connection(address, timeout=5) as sock:
        conn = Connection(Side.CLIENT)
        sock.sendall(conn.send(EchoReq(b"alive")))
        assert _read_event(sock, conn) == EchoRes(b"alive")


def test_random_bytes_never_break_the_core() -> None:
    """Seeded random packets (well-formed and not) from several connections at once."""
    rng = random.Random(1234)
    core = ServerCore(ServerConfig(job_handle_prefix=b"H:f"))
    for cid in range(6):
        core.connect(cid, PeerInfo())
    names = [b"f", b"g", b"", b"-"]
    for step in range(3000):
        cid = rng.randrange(6)
        ptype = rng.randrange(0, 45)
        fields = [rng.choice([*names, b"H:f:%d" % rng.randrange(1, 40)]) for _ in range(4)]
        packet = raw_packet(REQ if rng.random() < 0.95 else b"\0RES", ptype, fields)
        if rng.random() < 0.1:
            packet = packet[: rng.randrange(len(packet) + 1)]
        if rng.random() < 0.05:
            packet = rng.choice(
                [b"status\n", b"workers\r\n", b"show jobs\n", b"cancel job H:f:3\n"]
            )
        core.receive(cid, packet, 1000.0 + step)
        for conn_id, _chunks, close in core.drain():
            if close:
                core.connect(conn_id, PeerInfo())  # reconnect a closed one
        if rng.random() < 0.01:
            core.disconnect(cid, 1000.0 + step)
            core.connect(cid, PeerInfo())
        core.handle_timer(1000.0 + step)
    # The tables agree with themselves.
    for function in core.functions():
        jobs = [j for j in core.jobs() if j.function is function]
        assert function.total == len(jobs)
        assert function.running == sum(1 for j in jobs if j.worker is not None)
        assert function.ready >= 0
        assert min(function.queued) >= 0
    for cid in range(6):
        peer = core.peer(cid)
        assert peer is not None
        for job in peer.working:
            assert job.worker is peer
