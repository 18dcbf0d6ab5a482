"""The job server's C primitives (gearproto.server._speedups) against their Python
reference versions in gearproto.server._wire."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gearproto.server import _wire

speedups = pytest.importorskip("gearproto.server._speedups")

PACKERS: list[Callable[..., bytes]] = [_wire._res_packet, speedups.res_packet]
WRITERS: list[Callable[[int, Any], int]] = [_wire._write_nonblocking, speedups.write_nonblocking]
POLL_READERS: list[Callable[[Any, int], list[Any]]] = [_wire._poll_read, speedups.poll_read]

parts_strategy = st.lists(st.binary(max_size=300), max_size=8)


@settings(max_examples=300, deadline=None)
@given(ptype=st.integers(0, 2**32 - 1), parts=parts_strategy, as_view=st.booleans())
def test_res_packet_matches_the_python_version(
    ptype: int, parts: list[bytes], as_view: bool
) -> None:
    given_parts: list[Any] = [memoryview(p) if as_view else p for p in parts]
    expected = _wire._res_packet(ptype, *parts)
    assert speedups.res_packet(ptype, *given_parts) == expected
    assert expected[:4] == b"\0RES"
    assert int.from_bytes(expected[8:12], "big") == sum(len(p) for p in parts)


def test_res_packet_takes_bytearray_and_views_of_big_buffers() -> None:
    payload = bytearray(os.urandom(100_000))
    packet = speedups.res_packet(13, b"H:1", b"\0", memoryview(payload)[10:])
    assert packet == _wire._res_packet(13, b"H:1", b"\0", bytes(payload[10:]))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), TypeError),
        (("7",), TypeError),
        ((7, "text"), TypeError),
        ((7, 12), TypeError),
        ((-1, b"x"), ValueError),
        ((2**32, b"x"), ValueError),
        ((2**80, b"x"), OverflowError),
        ((7, *([b"x"] * 9)), TypeError),
    ],
)
def test_res_packet_refuses_bad_arguments_with_a_clear_error(
    args: tuple[Any, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        speedups.res_packet(*args)


@pytest.mark.parametrize("write", WRITERS, ids=["python", "c"])
def test_write_nonblocking_writes_then_reports_a_full_socket_as_zero(
    write: Callable[[int, Any], int],
) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        assert write(left.fileno(), b"hello") == 5
        assert right.recv(16) == b"hello"
        chunk = b"x" * 65536
        total = 0
        for _ in range(10_000):  # bounded: a socket buffer fills long before this
            sent = write(left.fileno(), memoryview(chunk))
            if sent == 0:
                break
            total += sent
        else:
            pytest.fail("the socket never filled up")
        assert total > 0
        received = 0
        right.setblocking(False)
        while received < total:
            received += len(right.recv(1 << 20))
        assert received == total


@pytest.mark.parametrize("write", WRITERS, ids=["python", "c"])
def test_write_nonblocking_raises_oserror_for_a_broken_connection(
    write: Callable[[int, Any], int],
) -> None:
    left, right = socket.socketpair()
    with left:
        left.setblocking(False)
        right.close()
        with pytest.raises(OSError):
            write(left.fileno(), b"data")
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError):
        write(fd, b"data")  # a closed descriptor


def test_write_nonblocking_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        speedups.write_nonblocking(-1, b"x")
    with pytest.raises(TypeError):
        speedups.write_nonblocking("3", b"x")
    with pytest.raises(TypeError):
        speedups.write_nonblocking(1, "text")
    with pytest.raises(TypeError):
        speedups.write_nonblocking(1)


CHUNK_WRITERS: list[Callable[[int, list[Any]], int]] = [
    _wire._write_chunks,
    speedups.write_chunks,
]


@pytest.mark.parametrize("write_chunks", CHUNK_WRITERS, ids=["python", "c"])
def test_write_chunks_writes_every_chunk_in_order_and_returns_what_is_left(
    write_chunks: Callable[[int, list[Any]], int],
) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        chunks: list[Any] = [b"one ", bytearray(b"two "), memoryview(b"--three ")[2:], b""]
        assert write_chunks(left.fileno(), chunks) == 0
        assert right.recv(64) == b"one two three "
        assert write_chunks(left.fileno(), []) == 0
        # More chunks than fit in the C version's stack arrays.
        many = [b"%03d," % i for i in range(300)]
        assert write_chunks(left.fileno(), many) == 0
        expected = b"".join(many)
        got = b""
        for _ in range(100):
            if len(got) == len(expected):
                break
            got += right.recv(1 << 16)
        assert got == expected
        # A full socket: what the kernel did not take is reported, in bytes.
        big = b"y" * (1 << 20)
        for _ in range(1000):  # bounded: the buffer fills within a few megabytes
            unsent = write_chunks(left.fileno(), [big, b"tail"])
            if unsent:
                break
        else:
            pytest.fail("the socket never filled up")
        assert 0 < unsent <= len(big) + 4
        for _ in range(1000):
            if write_chunks(left.fileno(), [b"z" * 1000]) == 1000:
                break  # nothing taken now: all of it is left
        else:
            pytest.fail("the socket never refused a write")


@pytest.mark.parametrize("write_chunks", CHUNK_WRITERS, ids=["python", "c"])
def test_write_chunks_counts_chunks_past_the_iovec_limit_as_unsent(
    write_chunks: Callable[[int, list[Any]], int],
) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        chunks = [b"ab"] * (_wire.WRITE_CHUNKS_MAX + 10)
        assert write_chunks(left.fileno(), chunks) == 20
        assert right.recv(1 << 16) == b"ab" * _wire.WRITE_CHUNKS_MAX


@pytest.mark.parametrize("write_chunks", CHUNK_WRITERS, ids=["python", "c"])
def test_write_chunks_raises_oserror_for_a_broken_connection(
    write_chunks: Callable[[int, list[Any]], int],
) -> None:
    left, right = socket.socketpair()
    with left:
        left.setblocking(False)
        right.close()
        with pytest.raises(OSError):
            write_chunks(left.fileno(), [b"data", b"more"])


@pytest.mark.parametrize("write_chunks", CHUNK_WRITERS, ids=["python", "c"])
def test_write_chunks_refuses_bad_arguments(
    write_chunks: Callable[[int, list[Any]], int],
) -> None:
    not_a_list: Any = (b"a tuple",)
    with pytest.raises(TypeError):
        write_chunks(1, not_a_list)
    with pytest.raises(TypeError):
        write_chunks(1, [b"ok", "text"])
    with pytest.raises((ValueError, OSError)):
        write_chunks(-1, [b"x"])
    with pytest.raises(TypeError):
        speedups.write_chunks(1)
    with pytest.raises(TypeError):
        speedups.write_chunks("3", [b"x"])


def test_the_wire_module_uses_the_c_primitives_unless_told_not_to() -> None:
    pure = os.environ.get("GEARPROTO_PURE_PYTHON", "0") not in ("", "0")
    expected = _wire._res_packet if pure else speedups.res_packet
    assert _wire.res_packet is expected
    assert _wire.poll_read is (_wire._poll_read if pure else speedups.poll_read)
    assert _wire.write_chunks is (_wire._write_chunks if pure else speedups.write_chunks)


def _pairs(items: list[Any]) -> dict[int, bytes]:
    assert len(items) % 2 == 0
    result = dict(zip(items[::2], items[1::2], strict=True))
    assert len(result) == len(items) // 2  # each socket at most once
    return result


@pytest.mark.parametrize("poll_read", POLL_READERS, ids=["python", "c"])
def test_poll_read_reads_each_ready_socket_once(
    poll_read: Callable[[Any, int], list[Any]],
) -> None:
    import select

    poller = select.epoll()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for mine, _theirs in pairs:
            mine.setblocking(False)
            poller.register(mine.fileno(), select.EPOLLIN)
        assert poll_read(poller, 64) == []  # nothing ready: nothing read, no wait
        pairs[0][1].sendall(b"first")
        pairs[2][1].sendall(b"x" * 100_000)  # more than one read takes
        assert _pairs(poll_read(poller, 64)) == {
            pairs[0][0].fileno(): b"first",
            pairs[2][0].fileno(): b"x" * _wire.POLL_READ_SIZE,
        }
        # What is left is reported again; the poller's fd number works as well.
        rest = _pairs(poll_read(poller.fileno(), 64))
        assert rest == {pairs[2][0].fileno(): b"x" * (100_000 - _wire.POLL_READ_SIZE)}
        # EOF and a reset both read as b"" (the transport then finds out which).
        pairs[1][1].close()
        pairs[0][1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        pairs[0][1].close()
        ended = _pairs(poll_read(poller, 64))
        assert ended == {pairs[0][0].fileno(): b"", pairs[1][0].fileno(): b""}
        # At most maxevents sockets per call.
        assert len(poll_read(poller, 1)) == 2
    finally:
        poller.close()
        for mine, theirs in pairs:
            mine.close()
            theirs.close()


@pytest.mark.parametrize("poll_read", POLL_READERS, ids=["python", "c"])
def test_poll_read_refuses_bad_arguments(poll_read: Callable[[Any, int], list[Any]]) -> None:
    import select

    with select.epoll() as poller:
        with pytest.raises(ValueError):
            poll_read(poller, 0)
        with pytest.raises(TypeError):
            poll_read(poller, "64")  # type: ignore[arg-type]
        waiting: Callable[..., list[Any]] = poll_read
        with pytest.raises(ValueError):
            waiting(poller, 64, -1)
        with pytest.raises(ValueError):
            waiting(poller, 64, 1 << 31)
        with pytest.raises(TypeError):
            waiting(poller, 64, 0.5)
        assert waiting(poller, 64, 1) == []  # nothing registered: the wait times out
    with pytest.raises(TypeError):
        speedups.poll_read(0, 64, 1, "extra")
    with pytest.raises((ValueError, OSError)):
        poll_read(poller, 64)  # closed
    with pytest.raises(TypeError):
        poll_read("not a poller", 64)
