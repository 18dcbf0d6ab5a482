"""Split invariance: the same events for every way a stream is cut into chunks.

Binary, admin and mixed streams, both sides: exhaustive over every partition for
small streams, every one- and two-cut split for medium ones, and hypothesis-drawn
partitions for large generated conversations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

from gearproto import RES, Connection, Side, _codec, _connection, admin, raw_packet
from gearproto import events as ev
from gearproto.fuzz.selftest_core import drive

pytestmark = pytest.mark.usefixtures("core_impl")


def outcomes(side: Side, requests: Sequence[Any], chunks: Sequence[bytes]) -> list[Any]:
    conn = Connection(side)
    if side is Side.CLIENT:
        for request in requests:
            conn.send(request)
    return drive(conn, requests, chunks)


def partitions(data: bytes) -> Iterator[list[bytes]]:
    """Every way to cut ``data`` into non-empty chunks."""
    n = len(data)
    for mask in range(1 << max(n - 1, 0)):
        cuts = [i + 1 for i in range(n - 1) if mask >> i & 1]
        bounds = [0, *cuts, n]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def few_cuts(data: bytes) -> Iterator[list[bytes]]:
    """Every split into two chunks, many into three, and byte by byte."""
    n = len(data)
    stride = max(1, n // 12)
    for i in range(1, n):
        yield [data[:i], data[i:]]
        for j in range(i + 1, n, stride):
            yield [data[:i], data[i:j], data[j:]]
    yield [data[i : i + 1] for i in range(n)]


def assert_invariant(side: Side, requests: Sequence[Any], data: bytes, exhaustive: bool) -> None:
    expected = outcomes(side, requests, [data])
    assert expected, "the stream must produce something"
    splits = partitions(data) if exhaustive else few_cuts(data)
    for chunks in splits:
        assert outcomes(side, requests, chunks) == expected, chunks


# ------------------------------------------------------------- small, exhaustive

GRAB = b"\0REQ\0\0\0\x09\0\0\0\0"
NO_JOB = b"\0RES\0\0\0\x0a\0\0\0\0"

SMALL_SERVER_STREAMS = [
    GRAB,
    b"status\n",
    b"version\r\n",
    b"\0REQ\0\0\0\x10\0\0\0\x01x",  # ECHO_REQ "x"
    b"\0RES\0\0\0\x10\0\0\0\0",  # \0RES to a server: refused, not fatal
    b"\0REQ\0\0\0\xff\0\0\0\0",  # bad type: fatal
    b"x\n\0REQ\0\0\0\x04\0\0\0\0",  # a line, then PRE_SLEEP
]
SMALL_CLIENT_STREAMS: list[tuple[list[Any], bytes]] = [
    ([ev.GrabJob()], NO_JOB),
    ([admin.Version()], b"OK 1.2\n"),
    ([admin.Status()], b"f\t1\t0\t1\n.\n"),
    ([admin.Status()], b"ERR X\r\n"),
    ([ev.EchoReq(b"")], b"\0RES\0\0\0\x11\0\0\0\0"),
    ([], b"\0RES\0\0\0\x06\0\0\0\0"),  # NOOP
]


@pytest.mark.parametrize("data", SMALL_SERVER_STREAMS)
def test_every_partition_server_side(data: bytes) -> None:
    assert_invariant(Side.SERVER, [], data, exhaustive=len(data) <= 12)


@pytest.mark.parametrize(("requests", "data"), SMALL_CLIENT_STREAMS)
def test_every_partition_client_side(requests: list[Any], data: bytes) -> None:
    assert_invariant(Side.CLIENT, requests, data, exhaustive=len(data) <= 12)


# ------------------------------------------------------------ medium, few cuts

MIXED_REQUESTS: list[Any] = [
    ev.SubmitJob(b"rev", b"u1", b"hello"),
    admin.Status(),
    ev.GrabJobUniq(),
    admin.Version(),
    ev.EchoReq(b"e\0cho"),
    admin.Workers(),
    ev.CanDo(b"rev"),
    admin.ShowUniqueJobs(),
]
MIXED_REPLIES = (
    raw_packet(RES, 8, [b"H:1"])
    + b"rev\t1\t0\t1\nother\t0\t0\t0\n.\n"
    + raw_packet(RES, 31, [b"H:1", b"rev", b"u1", b"hello"])
    + raw_packet(RES, 13, [b"H:1", b"ol!"])  # WORK_COMPLETE (unsolicited)
    + b"OK 1.1.20\n"
    + raw_packet(RES, 17, [b"e\0cho"])
    + b"5 127.0.0.1 - : rev\n.\n"
    + b"u1\n\n.\n"
)


def test_mixed_server_side_few_cuts() -> None:
    client = Connection(Side.CLIENT)
    data = b"".join(client.send(r) for r in MIXED_REQUESTS)
    assert_invariant(Side.SERVER, [], data, exhaustive=False)


def test_mixed_client_side_few_cuts() -> None:
    result = outcomes(Side.CLIENT, MIXED_REQUESTS, [MIXED_REPLIES])
    assert [type(e) for e, _ in result] == [
        ev.JobCreated,
        admin.StatusReply,
        ev.JobAssignUniq,
        ev.WorkComplete,
        admin.AdminOk,
        ev.EchoRes,
        admin.WorkersReply,
        admin.ShowUniqueJobsReply,
        ev.ConnectionClosed,
    ]
    assert_invariant(Side.CLIENT, MIXED_REQUESTS, MIXED_REPLIES, exhaustive=False)


# --------------------------------------------------------- large, hypothesis

_REQUESTS = st.sampled_from(
    [
        ev.SubmitJob(b"f", b"", b"payload"),
        ev.SubmitJob(b"f", b"u", b"x" * 300, background=True),
        ev.GrabJob(),
        ev.GrabJobUniq(),
        ev.EchoReq(b"\0" * 20),
        ev.GetStatus(b"H:1"),
        ev.CanDo(b"f"),
        ev.PreSleep(),
        ev.OptionReq(b"exceptions"),
        admin.Status(),
        admin.Workers(),
        admin.ShowJobs(),
        admin.Version(),
        admin.MaxQueue(b"f", (3,)),
    ]
)


def _serve(requests: Sequence[Any]) -> bytes:
    """What a server answers to ``requests``, through a server-side Connection."""
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    for request in requests:
        server.receive_data(client.send(request))
    out = []
    handle = 0
    for event in server.next_events():
        reply: Any = None
        match event:
            case ev.SubmitJob(background=background):
                handle += 1
                out.append(server.send(ev.JobCreated(b"H:%d" % handle)))
                if not background:
                    out.append(server.send(ev.WorkData(b"H:%d" % handle, b"part")))
                    out.append(server.send(ev.WorkComplete(b"H:%d" % handle, b"done")))
                continue
            case ev.GrabJob():
                reply = ev.NoJob()
            case ev.GrabJobUniq():
                handle += 1
                reply = ev.JobAssignUniq(b"H:%d" % handle, b"f", b"", b"work")
            case ev.EchoReq(data=data):
                reply = ev.EchoRes(data)
            case ev.GetStatus(handle=h):
                reply = ev.StatusRes(h, False, False, 0, 0)
            case ev.OptionReq(option=o):
                reply = ev.OptionRes(o)
            case ev.PreSleep():
                reply = ev.Noop()
            case admin.Status():
                reply = admin.StatusReply((admin.StatusRow(b"f", 2, 1, 1),))
            case admin.Workers():
                reply = admin.WorkersReply((admin.WorkerRow(7, b"::1", b"-", (b"f", b"g")),))
            case admin.ShowJobs():
                reply = admin.ShowJobsReply((admin.JobRow(b"H:1", 0, False, True),))
            case admin.Version():
                reply = admin.AdminOk(b"1.0")
            case admin.MaxQueue():
                reply = admin.AdminOk()
        if reply is not None:
            out.append(server.send(reply))
    return b"".join(out)


@settings(max_examples=60, deadline=None)
@given(requests=st.lists(_REQUESTS, min_size=1, max_size=25), data=st.data())
def test_generated_conversations_split_anywhere(requests: list[Any], data: st.DataObject) -> None:
    client = Connection(Side.CLIENT)
    request_bytes = b"".join(client.send(r) for r in requests)
    reply_bytes = _serve(requests)
    for side, stream, sent in (
        (Side.SERVER, request_bytes, []),
        (Side.CLIENT, reply_bytes, requests),
    ):
        expected = outcomes(side, sent, [stream])
        assert not any(item[0] == "error" for item in expected), expected
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=50).map(sorted))
        bounds = [0, *cuts, len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
        assert outcomes(side, sent, chunks) == expected


@settings(max_examples=40, deadline=None)
@given(noise=st.binary(max_size=200), data=st.data())
def test_noise_splits_anywhere(noise: bytes, data: st.DataObject) -> None:
    """Whatever the bytes (errors included), the outcome does not depend on chunking."""
    for side in (Side.SERVER, Side.CLIENT):
        sent = MIXED_REQUESTS if side is Side.CLIENT else []
        expected = outcomes(side, sent, [noise])
        cuts = data.draw(st.lists(st.integers(0, len(noise)), max_size=30).map(sorted))
        bounds = [0, *cuts, len(noise)]
        assert outcomes(side, sent, [noise[a:b] for a, b in itertools.pairwise(bounds)]) == expected


def test_big_packet_in_small_pieces_is_joined_once() -> None:
    """Buffering is amortised: a 1 MiB payload in 1 KiB pieces is parsed once, at the end."""
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    data = client.send(ev.EchoReq(b"z" * (1 << 20)))
    pieces = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    for count, piece in enumerate(pieces[:-1], start=1):
        server.receive_data(piece)
        assert server.next_events() == []
        # One chunk per piece: nothing was joined (copied) while waiting.
        assert len(server._chunks) == count
        assert server.buffered == 1024 * count
    server.receive_data(pieces[-1])
    assert server.next_events() == [ev.EchoReq(b"z" * (1 << 20))]
    assert server.buffered == 0


@settings(max_examples=40, deadline=None)
@given(requests=st.lists(_REQUESTS, min_size=1, max_size=25))
def test_inline_and_generic_decoders_agree(
    requests: list[Any], monkeypatch_module: pytest.MonkeyPatch
) -> None:
    """The inline fast paths give exactly what the table-driven slow path gives."""
    client = Connection(Side.CLIENT)
    request_bytes = b"".join(client.send(r) for r in requests)
    reply_bytes = _serve(requests)
    runs = []
    for large_body in (_codec.LARGE_BODY, 0):  # 0: every packet takes the slow path
        monkeypatch_module.setattr(_connection, "LARGE_BODY", large_body)
        runs.append(
            (
                outcomes(Side.SERVER, [], [request_bytes]),
                outcomes(Side.CLIENT, requests, [reply_bytes]),
            )
        )
    monkeypatch_module.undo()
    assert runs[0] == runs[1]


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch
