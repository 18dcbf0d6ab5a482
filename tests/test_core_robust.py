"""Robustness: any bytes, either side -> events or RemoteProtocolError, bounded buffers."""

from __future__ import annotations

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

from gearproto import NEED_DATA, Connection, Limits, RemoteProtocolError, Side, raw_packet
from gearproto.fuzz.selftest_core import SMALL, drive, primed

pytestmark = pytest.mark.usefixtures("core_impl")

_LIMITS = st.sampled_from([SMALL, Limits()])
_SIDES = st.sampled_from([Side.CLIENT, Side.SERVER])


@settings(max_examples=400, deadline=None)
@given(side=_SIDES, limits=_LIMITS, data=st.binary(max_size=600), cuts=st.integers(1, 64))
def test_arbitrary_bytes_give_events_or_remote_errors(
    side: Side, limits: Limits, data: bytes, cuts: int
) -> None:
    conn, sent = primed(side, limits)
    chunks = [data[i : i + cuts] for i in range(0, len(data), cuts)]
    # drive() lets any exception but RemoteProtocolError through and asserts that the
    # buffer never holds more than one header plus declared body, or one line.
    outcome = drive(conn, sent, chunks)
    assert outcome  # at least ConnectionClosed or an error


@settings(max_examples=200, deadline=None)
@given(
    side=_SIDES,
    packets=st.lists(
        st.tuples(
            st.sampled_from([b"\0REQ", b"\0RES"]),
            st.integers(0, 44),
            st.lists(st.binary(max_size=20), max_size=6),
        ),
        max_size=12,
    ),
)
def test_framed_garbage_of_every_type(
    side: Side, packets: list[tuple[bytes, int, list[bytes]]]
) -> None:
    conn, sent = primed(side, SMALL)
    data = b"".join(raw_packet(magic, ptype, fields) for magic, ptype, fields in packets)
    drive(conn, sent, [data])


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
def test_endless_line_is_cut_off(side: Side) -> None:
    conn = Connection(side, limits=Limits(max_line=1024, max_packet_size=4096))
    limit = 1024 if side is Side.SERVER else 4096
    fed = 0
    while fed + 100 < limit:
        conn.receive_data(b"x" * 100)
        fed += 100
        assert conn.next_event() is NEED_DATA
        assert conn.buffered == fed
    conn.receive_data(b"x" * 100)
    with pytest.raises(RemoteProtocolError, match=f"longer than {limit} bytes"):
        conn.next_event()
    conn.receive_data(b"x" * 100_000)
    assert conn.buffered == 0


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
def test_huge_declared_size_is_refused_before_the_body(side: Side) -> None:
    conn = Connection(side)
    magic = b"\0RES" if side is Side.CLIENT else b"\0REQ"
    conn.receive_data(magic + b"\0\0\0\x10\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError, match="4294967295-byte body"):
        conn.next_event()
    assert conn.buffered == 0
