"""Every input and resource limit of ``gearproto server``, through the real process.

Each limit is set small on the command line, triggered by one connection, and must
be answered (an ERROR packet or ERR line, before any close) while another client on
the same server keeps getting its jobs done.  Timeouts are a second or two; no test
asserts a timing.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.procs import ServerProcess, start_process

from gearproto import NEED_DATA, REQ, Connection, Side, raw_packet
from gearproto.events import (
    CanDo,
    EchoReq,
    EchoRes,
    Error,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Noop,
    PreSleep,
    SetClientId,
    SubmitJob,
    WorkComplete,
    WorkData,
)

pytestmark = pytest.mark.timeout(120)

HEADER = struct.Struct(">4sII")
LOOPS = ["asyncio", "trio"]


@contextlib.contextmanager
def server(tmp_path: Path, *args: str, loop: str = "asyncio") -> Iterator[ServerProcess]:
    argv = [sys.executable, "-m", "gearproto.server", "-p", "{port}", "-q", "builtin",
            "--loop", loop, *args]  # fmt: skip
    log = tmp_path / f"server-{loop}.log"
    proc = start_process(argv, log=log)
    try:
        yield proc
    finally:
        assert proc.stop() == 0
        assert "Traceback" not in log.read_text()


class Peer:
    """A blocking client connection that parses replies with the protocol core."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.conn = Connection(Side.CLIENT)

    def send(self, event: Any) -> None:
        self.sock.sendall(self.conn.send(event))

    def next(self) -> Any:
        while (event := self.conn.next_event()) is NEED_DATA:
            data = self.sock.recv(65536)
            if not data:
                self.conn.receive_eof()
            else:
                self.conn.receive_data(data)
        return event

    def call(self, event: Any) -> Any:
        self.send(event)
        return self.next()

    def close(self) -> None:
        self.sock.close()


def raw_reply(sock: socket.socket, seconds: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends within ``seconds``, and whether it then closed."""
    sock.settimeout(0.3)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def error_of(data: bytes) -> tuple[bytes, bytes]:
    """(code, text) of the ERROR packet ``data`` starts with."""
    magic, ptype, size = HEADER.unpack_from(data)
    assert (magic, ptype) == (b"\0RES", 19), data[:40]
    code, _, text = data[12 : 12 + size].partition(b"\0")
    return code, text


def echo_works(address: tuple[str, int]) -> None:
    peer = Peer(address)
    try:
        assert peer.call(EchoReq(b"still fine")) == EchoRes(b"still fine")
    finally:
        peer.close()


def job_round_trip(address: tuple[str, int], payload: bytes = b"work") -> None:
    """A foreground job through a worker: the server still does its job."""
    client, worker = Peer(address), Peer(address)
    try:
        worker.send(CanDo(b"limits-check"))
        created = client.call(SubmitJob(b"limits-check", b"", payload))
        assert isinstance(created, JobCreated)
        job = worker.call(GrabJobUniq())
        assert isinstance(job, JobAssignUniq)
        worker.send(WorkComplete(job.handle, job.data[::-1]))
        assert client.next() == WorkComplete(created.handle, payload[::-1])
    finally:
        client.close()
        worker.close()


# ---------------------------------------------------------------- size limits

SMALL = ["--max-packet-size", "4K", "--max-argument-size", "100", "--max-function-size", "16",
         "--max-unique-size", "8", "--max-handle-size", "40", "--max-line-size", "128"]  # fmt: skip

# (name, bytes sent, ERROR code or "ERR", whether the server then closes)
FIELD_CASES = [
    ("packet body (declared only)", HEADER.pack(REQ, 7, 4097), b"ARGUMENT_TOO_LARGE", True),
    ("packet body", raw_packet(REQ, 7, [b"f", b"", b"x" * 4095]), b"ARGUMENT_TOO_LARGE", True),
    ("argument", raw_packet(REQ, 22, [b"c" * 101]), b"ARGUMENT_TOO_LARGE", False),
    ("function name", raw_packet(REQ, 1, [b"f" * 17]), b"ARGUMENT_TOO_LARGE", False),
    ("function of a job", raw_packet(REQ, 7, [b"f" * 17, b"", b"x"]), b"ARGUMENT_TOO_LARGE", False),
    ("unique", raw_packet(REQ, 18, [b"f", b"u" * 9, b"x"]), b"ARGUMENT_TOO_LARGE", False),
    ("handle", raw_packet(REQ, 13, [b"H:" + b"h" * 39, b"x"]), b"ARGUMENT_TOO_LARGE", False),
    ("admin line", b"status " + b"x" * 200, b"ERR", True),
]  # fmt: skip


@pytest.mark.parametrize("loop", LOOPS)
def test_size_limits_are_answered_and_other_clients_are_unaffected(
    tmp_path: Path, loop: str
) -> None:
    with server(tmp_path, *SMALL, loop=loop) as proc:
        for name, data, code, closes in FIELD_CASES:
            with socket.create_connection(proc.address, timeout=10) as sock:
                sock.sendall(data)
                if not closes:  # the connection stays usable: an ECHO comes back after it
                    sock.sendall(raw_packet(REQ, 16, [b"after"]))
                reply, closed = raw_reply(sock, 10 if closes else 1.5)
            if code == b"ERR":
                assert reply.startswith(b"ERR INVALID_ARGUMENTS Line+too+long"), (name, reply)
            else:
                assert error_of(reply)[0] == code, (name, reply)
            assert closed == closes, name
            if not closes:
                assert reply.endswith(raw_packet(b"\0RES", 17, [b"after"])), (name, reply)
            job_round_trip(proc.address)
        # Within the limits, everything works.
        peer = Peer(proc.address)
        peer.send(SetClientId(b"c" * 100))
        created = peer.call(SubmitJob(b"f" * 16, b"u" * 8, b"x" * 3000, background=True))
        assert isinstance(created, JobCreated)
        peer.close()


def test_limits_may_also_be_raised(tmp_path: Path) -> None:
    with (
        server(tmp_path, "--max-unique-size", "200", "--max-function-size", "2K") as proc,
        socket.create_connection(proc.address, timeout=10) as sock,
    ):
        sock.sendall(raw_packet(REQ, 18, [b"f" * 2048, b"u" * 200, b"x"]))
        reply, _ = raw_reply(sock, 1)
        assert HEADER.unpack_from(reply)[1] == 8  # JOB_CREATED
        sock.sendall(raw_packet(REQ, 18, [b"f", b"u" * 201, b"x"]))
        reply, _ = raw_reply(sock, 1)
        assert error_of(reply)[0] == b"ARGUMENT_TOO_LARGE"


# ------------------------------------------------------------------ timeouts


@pytest.mark.parametrize("loop", LOOPS)
def test_partial_packets_and_lines_time_out(tmp_path: Path, loop: str) -> None:
    with server(tmp_path, "--partial-packet-timeout", "1", loop=loop) as proc:
        half_header = socket.create_connection(proc.address, timeout=10)
        half_header.sendall(HEADER.pack(REQ, 7, 100)[:7])
        half_body = socket.create_connection(proc.address, timeout=10)
        half_body.sendall(HEADER.pack(REQ, 16, 100) + b"x" * 50)
        half_line = socket.create_connection(proc.address, timeout=10)
        half_line.sendall(b"stat")
        # A big packet (the large-frame path) that stops arriving.
        big = socket.create_connection(proc.address, timeout=10)
        big.sendall(HEADER.pack(REQ, 16, 1 << 20) + b"y" * 200_000)
        job_round_trip(proc.address)  # meanwhile, business as usual
        for sock in (half_header, half_body, big):
            reply, closed = raw_reply(sock)
            assert error_of(reply) == (b"TIMEOUT", b"Packet not completed within 1 seconds")
            assert closed
            sock.close()
        reply, closed = raw_reply(half_line)
        assert reply == b"ERR TIMEOUT Line+not+completed+within+1+seconds\r\n"
        assert closed
        half_line.close()
        # A packet that arrives slowly but completes in time is fine.
        slow = Peer(proc.address)
        packet = slow.conn.send(EchoReq(b"slow but steady"))
        for i in range(0, len(packet), 8):
            slow.sock.sendall(packet[i : i + 8])
            time.sleep(0.05)
        assert slow.next() == EchoRes(b"slow but steady")
        slow.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_connections_without_work_are_closed(tmp_path: Path, loop: str) -> None:
    with server(tmp_path, "--idle-timeout", "1", loop=loop) as proc:
        idle = socket.create_connection(proc.address, timeout=10)
        admin = socket.create_connection(proc.address, timeout=10)
        admin.sendall(b"version\r\n")
        assert admin.recv(100).startswith(b"OK ")
        # Connections that hold work are never idle: a sleeping worker, and a client
        # waiting for its foreground job.
        worker = Peer(proc.address)
        worker.send(CanDo(b"slow"))
        worker.send(PreSleep())
        client = Peer(proc.address)
        created = client.call(SubmitJob(b"slow", b"", b"data"))
        assert isinstance(created, JobCreated)
        reply, closed = raw_reply(idle)
        assert error_of(reply) == (b"TIMEOUT", b"Idle for 1 seconds")
        assert closed
        reply, closed = raw_reply(admin)
        assert reply == b"ERR TIMEOUT Idle+for+1+seconds\r\n"
        assert closed
        time.sleep(1.5)
        # The worker was woken for the job; it runs it and the client gets the result.
        assert worker.next() == Noop()
        job = worker.call(GrabJobUniq())
        assert isinstance(job, JobAssignUniq)
        worker.send(WorkComplete(job.handle, b"done"))
        assert client.next() == WorkComplete(created.handle, b"done")
        for sock in (idle, admin):
            sock.close()
        # A connection that keeps talking is not idle.
        chatty = Peer(proc.address)
        for _ in range(6):
            time.sleep(0.4)
            assert chatty.call(EchoReq(b"here")) == EchoRes(b"here")
        chatty.close()
        worker.close()
        client.close()


# ---------------------------------------------------------------- connections


def wait_for_connections(address: tuple[str, int], others: int) -> None:
    """Wait until the server has ``others`` connections besides the one asking."""
    for _ in range(100):
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"workers\n")
            listing = b""
            while not listing.endswith(b".\n"):
                chunk = sock.recv(65536)
                assert chunk, listing
                listing += chunk
        if listing.count(b"\n") - 1 == others + 1:
            time.sleep(0.05)  # the asking connection's own close, too
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not settle at {others} connections: {listing!r}")


@pytest.mark.parametrize("loop", LOOPS)
def test_connection_limit(tmp_path: Path, loop: str) -> None:
    with server(tmp_path, "--max-connections", "4", loop=loop) as proc:
        wait_for_connections(proc.address, 0)  # the start-up probe has gone
        peers = [Peer(proc.address) for _ in range(4)]
        for peer in peers:
            assert peer.call(EchoReq(b"in")) == EchoRes(b"in")
        with socket.create_connection(proc.address, timeout=10) as extra:
            reply, closed = raw_reply(extra)
        code, text = error_of(reply)
        assert code == b"TOO_MANY_CONNECTIONS"
        assert b"4 connections" in text
        assert closed
        # The connected ones are unaffected; a freed slot is taken again.
        for peer in peers:
            assert peer.call(EchoReq(b"still")) == EchoRes(b"still")
        peers.pop().close()
        wait_for_connections(proc.address, 3)
        again = Peer(proc.address)
        assert again.call(EchoReq(b"back")) == EchoRes(b"back")
        again.close()
        for peer in peers:
            peer.close()


# -------------------------------------------------------------- output caps


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_does_not_read_is_paused_then_served(tmp_path: Path, loop: str) -> None:
    """Over --output-pause-size the server stops reading from the connection; once the
    client reads again, every reply arrives, intact and in order."""
    with server(tmp_path, "--output-pause-size", "64K", loop=loop) as proc:
        sock = socket.create_connection(proc.address, timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn = Connection(Side.CLIENT)
        payload = b"z" * 60_000
        sent = 0
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):  # our sends block: the server stopped reading
            for _ in range(400):
                sock.sendall(conn.send(EchoReq(payload)))
                sent += 1
        assert sent < 400
        job_round_trip(proc.address)  # others are served meanwhile
        sock.settimeout(10)
        received = 0
        while received < sent:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(sock.recv(1 << 20))
                continue
            assert event == EchoRes(payload)
            received += 1
        sock.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_never_reads_is_dropped_over_the_hard_cap(tmp_path: Path, loop: str) -> None:
    args = ["--max-packet-size", "1M", "--output-pause-size", "64K", "--max-output-size", "3M"]
    with server(tmp_path, *args, loop=loop) as proc:
        client = socket.create_connection(proc.address, timeout=10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        cconn = Connection(Side.CLIENT)
        client.sendall(cconn.send(SubmitJob(b"stream", b"", b"go")))
        worker = Peer(proc.address)
        worker.send(CanDo(b"stream"))
        job = worker.call(GrabJobUniq())
        assert isinstance(job, JobAssignUniq)
        chunk = b"d" * 500_000
        # The worker streams 20 MB of WORK_DATA to a client that reads nothing.
        for _ in range(40):
            worker.send(WorkData(job.handle, chunk))
        assert worker.call(EchoReq(b"worker ok")) == EchoRes(b"worker ok")
        # The client was dropped: what it can still read ends well short of 20 MB.
        client.settimeout(10)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while data := client.recv(1 << 20):
                received += len(data)
        assert received < 10_000_000
        client.close()
        # The job lost its only client; the worker is unaffected.
        worker.send(WorkComplete(job.handle, b"end"))
        assert worker.call(EchoReq(b"after")) == EchoRes(b"after")
        worker.close()
        job_round_trip(proc.address)


# --------------------------------------------------------------- queue caps


def test_queued_jobs_cap(tmp_path: Path) -> None:
    with server(tmp_path, "--max-queued-jobs", "3") as proc:
        client = Peer(proc.address)
        handles = []
        for n in range(3):
            created = client.call(SubmitJob(b"q", b"u%d" % n, b"%d" % n, background=True))
            assert isinstance(created, JobCreated)
            handles.append(created.handle)
        refused = client.call(SubmitJob(b"q", b"", b"4th", background=True))
        assert refused == Error(b"QUEUE_ERROR", b"Server job limit reached (3 jobs)")
        echo_works(proc.address)
        # A submission coalesced onto a held job adds no job, so it is accepted.
        other = Peer(proc.address)
        assert other.call(SubmitJob(b"q", b"u0", b"0", background=True)) == JobCreated(handles[0])
        worker = Peer(proc.address)
        worker.send(CanDo(b"q"))
        job = worker.call(GrabJobUniq())
        assert isinstance(job, JobAssignUniq)
        worker.send(WorkComplete(job.handle, b""))
        assert worker.call(EchoReq(b"x")) == EchoRes(b"x")  # the completion is processed
        created = client.call(SubmitJob(b"q", b"", b"room again", background=True))
        assert isinstance(created, JobCreated)
        for peer in (client, other, worker):
            peer.close()


def test_queued_bytes_cap(tmp_path: Path) -> None:
    with server(tmp_path, "--max-queued-bytes", "1000") as proc:
        client = Peer(proc.address)
        for unique in (b"u1", b"u2"):
            created = client.call(SubmitJob(b"q", unique, b"x" * 400, background=True))
            assert isinstance(created, JobCreated)
        refused = client.call(SubmitJob(b"q", b"u3", b"x" * 400, background=True))
        assert refused == Error(b"QUEUE_ERROR", b"Server queued-bytes limit reached (1000 bytes)")
        created = client.call(SubmitJob(b"q", b"u4", b"x" * 190, background=True))
        assert isinstance(created, JobCreated)
        echo_works(proc.address)
        job_round_trip(proc.address, b"")  # an empty job fits in the last 6 bytes
        client.close()


def test_defaults_are_on(tmp_path: Path) -> None:
    """With no options, the documented defaults apply (checked on one of them)."""
    with server(tmp_path) as proc:
        with socket.create_connection(proc.address, timeout=10) as sock:
            sock.sendall(HEADER.pack(REQ, 7, 64 * 1024 * 1024 + 1))
            reply, closed = raw_reply(sock)
        assert error_of(reply) == (b"ARGUMENT_TOO_LARGE", b"Packet too large")
        assert closed


def test_many_limit_breakers_at_once_while_jobs_flow(tmp_path: Path) -> None:
    """Several connections break limits concurrently; normal jobs keep completing."""
    with server(tmp_path, *SMALL, "--partial-packet-timeout", "1") as proc:
        problems: list[str] = []

        def breaker(index: int) -> None:
            name, data, _code, closes = FIELD_CASES[index % len(FIELD_CASES)]
            for _ in range(5):
                try:
                    with socket.create_connection(proc.address, timeout=10) as sock:
                        sock.sendall(data)
                        reply, _closed = raw_reply(sock, 10 if closes else 0.5)
                except OSError as error:
                    problems.append(f"{name}: {error}")
                    return
                if not reply.startswith((b"\0RES\0\0\0\x13", b"ERR ")):
                    problems.append(f"{name}: not answered ({reply[:40]!r})")

        threads = [threading.Thread(target=breaker, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for n in range(30):
            job_round_trip(proc.address, b"job %d" % n)
        for thread in threads:
            thread.join(60)
        assert not problems
