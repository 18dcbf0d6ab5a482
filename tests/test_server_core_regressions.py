"""ServerCore defects found by its fuzz target (fuzz/selftest_server.py), one test each.

Every test drives the sans-IO core directly, with a fake clock, and looks at exactly
what :meth:`ServerCore.drain` hands the runner.
"""

from __future__ import annotations

from typing import Any

import pytest

from gearproto import REQ, Connection, RemoteProtocolError, Side, raw_packet
from gearproto import events as ev
from gearproto.server import PeerInfo, ServerConfig, ServerCore, Transmit

T0 = 1_700_000_000.0


def core(**settings: Any) -> ServerCore:
    settings.setdefault("job_handle_prefix", b"H:r")
    return ServerCore(ServerConfig(**settings))


def connect(server: ServerCore, *conn_ids: int) -> None:
    for conn_id in conn_ids:
        assert server.connect(conn_id, PeerInfo("127.0.0.1", 40000 + conn_id, -1), T0)


def send(server: ServerCore, conn_id: int, *events: Any, now: float = T0) -> None:
    server.receive(conn_id, b"".join(_encode(e) for e in events), now)


def _encode(event: Any) -> bytes:
    client = Connection(Side.CLIENT)
    return client.send(event)


def replies(transmits: list[Transmit], conn_id: int) -> list[tuple[int, bytes]]:
    """(type, body) of each packet written to ``conn_id``; all of it must be packets."""
    data = b"".join(b"".join(t.chunks) for t in transmits if t.conn_id == conn_id)
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"\0RES"
        size = int.from_bytes(data[pos + 8 : pos + 12], "big")
        out.append(
            (int.from_bytes(data[pos + 4 : pos + 8], "big"), data[pos + 12 : pos + 12 + size])
        )
        pos += 12 + size
    assert pos == len(data)
    return out


@pytest.mark.parametrize("ptype", [0, 43, 255, 0xFFFFFFFF])
def test_unknown_request_type_is_refused_at_its_header(ptype: int) -> None:
    # The declared body (1 MiB) never comes: the refusal must not wait for it.
    server = core()
    connect(server, 1)
    header = REQ + ptype.to_bytes(4, "big") + (1 << 20).to_bytes(4, "big")
    big = server.receive(1, header, T0)
    out = server.drain()
    assert not big
    assert out == [Transmit(1, out[0].chunks, True)]
    assert replies(out, 1) == [(19, b"INVALID_COMMAND\0Invalid command expected")]
    assert server.peer(1) is None


def test_worker_following_its_own_job_gets_nothing_after_it_disconnects() -> None:
    # One connection submits a foreground job and runs it; with a retry limit, its
    # disconnect fails the job, and the WORK_FAIL has nobody to go to.
    server = core(job_retries=1)
    connect(server, 1)
    send(server, 1, ev.CanDo(b"f"), ev.SubmitJob(b"f", b"", b"x"), ev.GrabJob())
    assert [t.conn_id for t in server.drain()] == [1]
    server.disconnect(1, T0)
    assert server.drain() == []
    assert list(server.jobs()) == []


def test_connection_dropped_by_the_runner_gets_no_output_and_no_close() -> None:
    server = core(job_retries=1)
    connect(server, 1, 2)
    send(server, 2, ev.SubmitJob(b"f", b"", b"x"))
    send(server, 1, ev.CanDo(b"f"), ev.GrabJob())
    server.drain()
    server.disconnect(1, T0)  # the job fails: WORK_FAIL for client 2 is queued
    server.disconnect(2, T0)  # ... and client 2 is gone before the runner drains
    assert server.drain() == []
    assert server.connection_count == 0


def test_reply_released_by_a_store_commit_restarts_the_idle_clock() -> None:
    server = core(durable=True, idle_timeout=30.0)
    connect(server, 1)
    send(server, 1, ev.SubmitJob(b"f", b"", b"x", background=True))
    assert server.drain() == []  # JOB_CREATED waits for the commit
    batch = server.take_store_batch()
    assert batch is not None
    server.store_committed(batch.batch_id, T0 + 100)
    out = server.drain()
    assert [(t.conn_id, t.close) for t in out] == [(1, False)]
    server.handle_timer(T0 + 110)  # 10 s after the reply: not idle yet
    assert server.drain() == []
    assert server.peer(1) is not None
    server.handle_timer(T0 + 131)  # 31 s after it: idle
    out = server.drain()
    assert out
    assert out[-1].close


def test_malformed_submit_job_sched_gets_the_error_the_core_library_gives() -> None:
    fields = [b"f" * 600, b"u", b"1", b"2", b"3", b"4", b"5", b"data"]
    packet = raw_packet(REQ, 35, fields)
    oracle = Connection(Side.SERVER)
    oracle.receive_data(packet)
    with pytest.raises(RemoteProtocolError) as refused:
        oracle.next_event()
    hint = refused.value.hint
    assert isinstance(hint, ev.Error)
    assert hint.code == b"ARGUMENT_TOO_LARGE"
    server = core()
    connect(server, 1)
    server.receive(1, packet, T0)
    assert replies(server.drain(), 1) == [(19, hint.code + b"\0" + hint.text)]


def test_valid_submit_job_sched_is_still_refused_as_unsupported() -> None:
    server = core()
    connect(server, 1)
    send(server, 1, ev.SubmitJobSched(b"f", b"u", b"1", b"2", b"3", b"4", b"5", b"data"))
    [(ptype, body)] = replies(server.drain(), 1)
    assert ptype == 19
    assert body.startswith(b"INVALID_COMMAND\0")
