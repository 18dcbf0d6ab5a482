"""The packet table, the codec and every packet type's round trip, plus golden vectors."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)
from helpers.core_strategies import event_for, handles
from hypothesis import given, settings
from hypothesis import strategies as st

import gearproto
from gearproto import (
    NEED_DATA,
    PACKETS,
    REQ,
    RES,
    Connection,
    Direction,
    FieldKind,
    LocalProtocolError,
    PacketType,
    Priority,
    RemoteProtocolError,
    Side,
    packet_type,
    parse_int,
    raw_packet,
)
from gearproto import events as ev
from gearproto._codec import decode_body, decode_slice, encode, encode_parts
from gearproto.events import EVENT_CLASSES, SUBMIT_VARIANTS

pytestmark = pytest.mark.usefixtures("core_impl")

HEADER = struct.Struct(">4sII")


def frame(magic: bytes, ptype: int, body: bytes) -> bytes:
    return HEADER.pack(magic, ptype, len(body)) + body


# ------------------------------------------------------------------------ the table


def test_table_lists_every_type_1_to_42_in_order() -> None:
    assert [int(t) for t in PACKETS] == list(range(1, 43))
    assert PACKETS[PacketType.UNUSED].fields == ()
    assert int(PacketType.ALL_YOURS) == 24
    assert int(PacketType.SUBMIT_JOB_SCHED) == 35


def test_event_classes_have_the_tables_fields() -> None:
    for ptype, spec in PACKETS.items():
        cls = EVENT_CLASSES[ptype]
        names = tuple(f.name for f in spec.fields)
        assert cls._fields[: len(names)] == names, ptype
        extra = cls._fields[len(names) :]
        if ptype in SUBMIT_VARIANTS:
            assert extra == ("priority", "background")
        elif cls is ev.SubmitReduceJob:
            assert extra == ("background",)
        else:
            assert extra == (), ptype


def test_reduce_jobs_carry_four_nul_terminated_fields() -> None:
    for ptype in (PacketType.SUBMIT_REDUCE_JOB, PacketType.SUBMIT_REDUCE_JOB_BACKGROUND):
        assert PACKETS[ptype].nul_terminated == 4
    event = ev.SubmitReduceJob(b"map", b"u", b"reduce", b"", b"data")
    assert encode(event, REQ) == frame(REQ, 37, b"map\0u\0reduce\0\0data")
    # Three NUL-terminated fields (what the PROTOCOL text shows) is malformed.
    view = Connection(Side.SERVER)
    view.receive_data(frame(REQ, 37, b"map\0u\0reduce\0data"))
    with pytest.raises(RemoteProtocolError) as info:
        view.next_event()
    assert info.value.code == b"INVALID_PACKET"
    assert not info.value.fatal


def test_directions_follow_the_reference() -> None:
    responses = {6, 8, 10, 11, 17, 19, 20, 27, 31, 40, 42}
    both = {12, 13, 14, 25, 28, 29}
    for ptype, spec in PACKETS.items():
        if ptype in responses:
            assert spec.direction is Direction.RESPONSE, ptype
        elif ptype in both:
            assert spec.direction is Direction.BOTH, ptype
        else:
            assert spec.direction is Direction.REQUEST, ptype


def test_packet_type_of_every_submit_variant() -> None:
    for ptype, (priority, background) in SUBMIT_VARIANTS.items():
        assert packet_type(ev.SubmitJob(b"f", b"u", b"", priority, background)) is ptype
    assert packet_type(ev.SubmitReduceJob(b"f", b"u", b"r", b"", b"", True)) == 38
    with pytest.raises(TypeError, match="not a packet event"):
        packet_type(ev.ConnectionClosed())  # type: ignore[arg-type]


# ------------------------------------------------------------------- parse_int


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"10", 10),
        (b"-1", -1),
        (b"12abc", 12),
        (b" 5", 5),
        (b"+6", 6),
        (b"", 0),
        (b"abc", 0),
        (b"\t\n 7x", 7),
        (b"9" * 40, int(b"9" * 31)),
    ],
)
def test_parse_int_reads_numbers_like_atoi(raw: bytes, value: int) -> None:
    assert parse_int(raw) == value


# --------------------------------------------------------------- round trips


def _decode(data: bytes) -> tuple[bytes, Any]:
    magic, ptype, size = HEADER.unpack_from(data)
    assert len(data) == 12 + size
    return magic, decode_body(ptype, data[12:])


@pytest.mark.parametrize("ptype", list(PacketType), ids=lambda t: t.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_type_round_trips_through_the_codec(ptype: PacketType, data: st.DataObject) -> None:
    event = data.draw(event_for(ptype))
    for magic in (REQ, RES):
        wire = encode(event, magic)
        assert b"".join(encode_parts(event, magic)) == wire
        assert _decode(wire) == (magic, event)
        assert decode_slice(ptype, b"xx" + wire[12:] + b"yy", 2, len(wire) - 10) == event


class Peers(NamedTuple):
    client: Connection
    server: Connection


def _relay(src: Connection, dst: Connection, event: Any) -> Any:
    dst.receive_data(src.send(event))
    got = dst.next_event()
    assert dst.next_event() is NEED_DATA
    return got


def _prepare(peers: Peers, event: Any, towards_server: bool) -> None:
    """Bring the pair into a state where ``event`` may be sent."""
    client, server = peers
    ptype = packet_type(event)
    handle = event[0] if ptype in _WORK else None
    if towards_server and handle is not None:
        _relay(client, server, ev.GrabJob())
        _relay(server, client, ev.JobAssign(handle, b"f", b""))
    elif not towards_server and handle is not None:
        _relay(client, server, ev.SubmitJob(b"f", b"", b""))
        _relay(server, client, ev.JobCreated(handle))
    elif not towards_server and ptype not in (PacketType.NOOP,):
        request = _REQUEST_FOR.get(ptype, ev.EchoReq(b"any"))
        _relay(client, server, request)


_WORK = {
    PacketType.WORK_STATUS,
    PacketType.WORK_COMPLETE,
    PacketType.WORK_FAIL,
    PacketType.WORK_EXCEPTION,
    PacketType.WORK_DATA,
    PacketType.WORK_WARNING,
}
_REQUEST_FOR: dict[PacketType, Any] = {
    PacketType.JOB_CREATED: ev.SubmitJob(b"f", b"", b""),
    PacketType.NO_JOB: ev.GrabJob(),
    PacketType.JOB_ASSIGN: ev.GrabJob(),
    PacketType.JOB_ASSIGN_UNIQ: ev.GrabJobUniq(),
    PacketType.JOB_ASSIGN_ALL: ev.GrabJobAll(),
    PacketType.ECHO_RES: ev.EchoReq(b""),
    PacketType.STATUS_RES: ev.GetStatus(b"H:1"),
    PacketType.STATUS_RES_UNIQUE: ev.GetStatusUnique(b"u"),
    PacketType.OPTION_RES: ev.OptionReq(b"exceptions"),
}


@pytest.mark.parametrize(
    "ptype", [t for t in PacketType if t is not PacketType.UNUSED], ids=lambda t: t.name
)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_type_round_trips_between_two_connections(
    ptype: PacketType, data: st.DataObject
) -> None:
    spec = PACKETS[ptype]
    directions = []
    if spec.direction is not Direction.RESPONSE:
        directions.append(True)
    if spec.direction is not Direction.REQUEST:
        directions.append(False)
    for towards_server in directions:
        event = data.draw(event_for(ptype, nul_free=ptype in _WORK))
        if ptype in _WORK:
            event = event._replace(handle=data.draw(handles()))
        peers = Peers(Connection(Side.CLIENT), Connection(Side.SERVER))
        _prepare(peers, event, towards_server)
        src, dst = peers if towards_server else (peers.server, peers.client)
        assert _relay(src, dst, event) == event


def test_type_5_is_framed_but_refused_by_a_server() -> None:
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    wire = client.send(ev.Unused())
    assert wire == frame(REQ, 5, b"")
    assert _decode(wire) == (REQ, ev.Unused())
    server.receive_data(wire)
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.hint == ev.Error(b"INVALID_COMMAND", b"Command not expected")
    assert not info.value.fatal
    client.receive_data(server.send(info.value.hint))
    assert client.next_event() == info.value.hint
    assert client.answered == ev.Unused()


# ------------------------------------------------------------- golden vectors
# The exact bytes of the examples in section 2 of the protocol reference (captured
# from gearmand 1.1.20; tests/test_core_gearmand.py replays them against it).

GOLDEN: list[tuple[bytes, Any]] = [
    (frame(REQ, 16, b"hello\0world"), ev.EchoReq(b"hello\0world")),
    (frame(RES, 17, b"hello\0world"), ev.EchoRes(b"hello\0world")),
    (
        frame(REQ, 18, b"fn1\0u1\0payload"),
        ev.SubmitJob(b"fn1", b"u1", b"payload", Priority.NORMAL, True),
    ),
    (frame(RES, 8, b"H:test:1"), ev.JobCreated(b"H:test:1")),
    (frame(REQ, 15, b"H:test:1"), ev.GetStatus(b"H:test:1")),
    (frame(RES, 20, b"H:test:1\x001\x000\x000\x000"), ev.StatusRes(b"H:test:1", True, False, 0, 0)),
    (frame(REQ, 30, b""), ev.GrabJobUniq()),
    (
        frame(RES, 31, b"H:test:5\0rev\0uA\0hello"),
        ev.JobAssignUniq(b"H:test:5", b"rev", b"uA", b"hello"),
    ),
    (frame(REQ, 12, b"H:test:5\x003\x0010"), ev.WorkStatus(b"H:test:5", 3, 10)),
    (frame(RES, 12, b"H:test:5\x003\x0010"), ev.WorkStatus(b"H:test:5", 3, 10)),
    (frame(REQ, 25, b"H:test:5\0boom"), ev.WorkException(b"H:test:5", b"boom")),
    (frame(RES, 25, b"H:test:5\0boom"), ev.WorkException(b"H:test:5", b"boom")),
    (frame(REQ, 26, b"foo"), ev.OptionReq(b"foo")),
    (
        frame(RES, 19, b"UNKNOWN_OPTION\0Server does not recognize given option"),
        ev.Error(b"UNKNOWN_OPTION", b"Server does not recognize given option"),
    ),
]


@pytest.mark.parametrize(("wire", "event"), GOLDEN, ids=lambda x: x.__class__.__name__)
def test_golden_vector(wire: bytes, event: Any) -> None:
    assert encode(event, wire[:4]) == wire
    assert _decode(wire) == (wire[:4], event)


def test_golden_work_fail_with_trailing_nul_reaches_the_client_as_the_handle() -> None:
    """gearmand turns WORK_EXCEPTION into WORK_FAIL "handle\\0" for clients without
    the exceptions option; the client gets the job's handle back."""
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    _relay(client, server, ev.SubmitJob(b"rev", b"uA", b"hello"))
    _relay(server, client, ev.JobCreated(b"H:test:5"))
    client.receive_data(frame(RES, 14, b"H:test:5\0"))
    assert client.next_event() == ev.WorkFail(b"H:test:5")
    assert client.client_handles == frozenset()


# -------------------------------------------------------------- send checks


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (ev.SubmitJob(b"f\0x", b"", b""), "SUBMIT_JOB.function contains a NUL"),
        (ev.SubmitJob(b"f", b"u" * 65, b""), "SUBMIT_JOB.unique is 65 bytes; the limit is 64"),
        (ev.SubmitJob(b"f" * 513, b"", b""), "function is 513 bytes; the limit is 512"),
        (ev.SubmitJob("f", b"", b""), "SUBMIT_JOB.function must be bytes, not str"),  # type: ignore[arg-type]
        (ev.SubmitJob(b"f", b"", b"", priority=7), "priority must be a Priority"),  # type: ignore[arg-type]
        (ev.SubmitJob(b"f", b"", b"", priority=True), "priority must be a Priority"),  # type: ignore[arg-type]
        (ev.SubmitJob(b"f", b"", b"", background=1), "background must be a bool"),  # type: ignore[arg-type]
        (ev.CanDoTimeout(b"f", "1"), "timeout must be an int, not str"),  # type: ignore[arg-type]
        (ev.CanDoTimeout(b"f", 10**21), "timeout has 22 characters; the limit is 20"),
        (ev.JobCreated(b"H:1"), "JOB_CREATED is sent by servers, not by clients"),
        (ev.WorkComplete(b"H:1", b""), "not assigned to this worker"),
    ],
)
def test_client_refuses_to_send(event: Any, message: str) -> None:
    client = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError, match=message):
        client.send(event)
    assert client.pending_replies == 0


def test_server_refuses_bad_fields() -> None:
    server = Connection(Side.SERVER)
    server.receive_data(frame(REQ, 15, b"H:1"))
    assert server.next_event() == ev.GetStatus(b"H:1")
    with pytest.raises(LocalProtocolError, match="known must be a bool, not int"):
        server.send(ev.StatusRes(b"H:1", 1, False, 0, 0))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="GET_STATUS is sent to servers"):
        server.send(ev.GetStatus(b"H:1"))
    # A server may relay numbers longer than a client may send (gearmand forwards
    # WORK_STATUS verbatim), up to what parse_int() can produce.
    assert server.send(ev.StatusRes(b"H:1", True, True, 10**25, -(10**25))).endswith(
        b"\0" + b"%d" % -(10**25)
    )


def test_packet_size_limit_applies_on_send() -> None:
    client = Connection(Side.CLIENT, limits=gearproto.Limits(max_packet_size=100))
    client.send(ev.EchoReq(b"x" * 100))
    with pytest.raises(LocalProtocolError, match=r"ECHO_REQ\.data is 101 bytes; the limit is 100"):
        client.send(ev.EchoReq(b"x" * 101))
    with pytest.raises(LocalProtocolError, match="SUBMIT_JOB body is 103 bytes; the limit is 100"):
        client.send(ev.SubmitJob(b"f" * 50, b"u", b"x" * 50))


def test_raw_packet_frames_anything() -> None:
    assert raw_packet(b"ABCD", 99, [b"a", b"b\0"]) == HEADER.pack(b"ABCD", 99, 4) + b"a\0b\0"


def test_field_kinds_cover_every_field() -> None:
    kinds = {f.kind for spec in PACKETS.values() for f in spec.fields}
    assert kinds == set(FieldKind)


def test_packet_spec_properties() -> None:
    spec = PACKETS[PacketType.JOB_ASSIGN_UNIQ]
    assert spec.name == "JOB_ASSIGN_UNIQ"
    assert spec.tail == gearproto.FieldSpec("data", FieldKind.DATA)
    assert spec.nul_terminated == 3
    assert not spec.may_send_request
    assert spec.may_send_response
    assert PACKETS[PacketType.NOOP].tail is None
    assert PACKETS[PacketType.WORK_DATA].may_send_request


def test_decode_body_errors() -> None:
    with pytest.raises(gearproto._codec.ParseError, match="JOB_ASSIGN needs 2 NUL"):
        decode_body(11, b"H:1\0f")
    with pytest.raises(gearproto._codec.ParseError, match="Invalid command expected"):
        decode_body(43, b"")
    with pytest.raises(gearproto._codec.ParseError, match="SUBMIT_JOB needs 2 NUL"):
        decode_slice(7, b"f\0u", 0, 3)
