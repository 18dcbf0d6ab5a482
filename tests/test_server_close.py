"""A refused connection is closed gracefully: the peer reads the whole refusal.

When the server refuses input (an over-long admin line, an oversize packet) it
answers ERR / ERROR and closes while the peer may still be sending.  Closing a socket
with unread input makes the kernel send a reset, which can cost the peer the reply
(and fails the peer's pending writes).  The server shuts its write side down after
the reply, discards what keeps arriving for a bounded time, then closes; these tests
check that on both runners with real sockets.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.procs import ServerProcess, start_process

pytestmark = pytest.mark.timeout(60)

LOOPS = ["asyncio", "uvloop", "trio"]
MAX_LINE = 8192  # Limits().max_line
TRAILER = 2 << 20  # bytes the peer keeps sending after the refused input


@pytest.fixture(params=LOOPS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    loop = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    argv = [sys.executable, "-m", "gearproto.server", "-L", "{host}", "-p", "{port}"]
    argv += ["-q", "builtin", "--loop", loop]
    proc = start_process(argv, log=tmp_path / "server.log")
    try:
        yield proc
    finally:
        proc.stop()


def _refused(address: tuple[str, int], refused: bytes, trailer: int) -> bytes:
    """Send ``refused`` then ``trailer`` more bytes, half-close, and read to EOF.

    Raises ``ConnectionResetError`` / ``BrokenPipeError`` if the server resets.
    """
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(refused)
        chunk = b"y" * 65536
        sent = 0
        while sent < trailer:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            more = sock.recv(65536)
            if not more:
                return data
            data += more
        raise AssertionError(f"no EOF within 10 s (read {data[:80]!r})")


def _reply_alone(address: tuple[str, int], refused: bytes) -> bytes:
    """The server's whole answer to ``refused`` when nothing follows it."""
    return _refused(address, refused, 0)


def test_overlong_admin_line_then_more_bytes(server: ServerProcess) -> None:
    line = b"x" * (MAX_LINE + 100)
    expected = _reply_alone(server.address, line)
    assert expected.startswith(b"ERR ")
    assert expected.endswith(b"\r\n")
    for _ in range(3):
        assert _refused(server.address, line, TRAILER) == expected


def test_oversize_packet_then_more_bytes(server: ServerProcess) -> None:
    header = struct.pack(">4sII", b"\0REQ", 7, 0xFFFFFFF0)  # a body far over the limit
    expected = _reply_alone(server.address, header)
    assert expected.startswith(b"\0RES\0\0\0\x13")  # ERROR
    (size,) = struct.unpack(">I", expected[8:12])
    assert len(expected) == 12 + size
    for _ in range(3):
        assert _refused(server.address, header, TRAILER) == expected


def test_server_keeps_serving_after_graceful_closes(server: ServerProcess) -> None:
    for _ in range(3):
        _refused(server.address, b"x" * (MAX_LINE + 1), 1 << 18)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"version\r\n")
        reply = b""
        while not reply.endswith(b"\n"):
            more = sock.recv(4096)
            assert more, "closed before answering"
            reply += more
    assert reply.startswith(b"OK ")


def test_a_peer_that_never_stops_sending_is_closed(server: ServerProcess) -> None:
    """Discarding is bounded in time: a peer that keeps sending is closed anyway."""
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"x" * (MAX_LINE + 1))
        chunk = b"z" * 65536
        deadline = time.monotonic() + 30
        ended = False
        while time.monotonic() < deadline:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                ended = True
                break
        assert ended, "the server kept reading a refused connection for 30 s"
