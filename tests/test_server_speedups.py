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


def test_the_wire_module_uses_the_c_primitives_unless_told_not_to() -> None:
    pure = os.environ.get("GEARPROTO_PURE_PYTHON", "0") not in ("", "0")
    expected = _wire._res_packet if pure else speedups.res_packet
    assert _wire.res_packet is expected
