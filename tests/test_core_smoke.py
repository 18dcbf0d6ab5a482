"""First end-to-end checks of the core: a client and a server view talking."""

from __future__ import annotations

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)

from gearproto import NEED_DATA, Connection, LocalProtocolError, RemoteProtocolError, Side
from gearproto.events import (
    ConnectionClosed,
    Error,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    SubmitJob,
    WorkComplete,
    WorkData,
)

pytestmark = pytest.mark.usefixtures("core_impl")


def relay(src: Connection, dst: Connection, event: object) -> object:
    dst.receive_data(src.send(event))  # type: ignore[arg-type]
    return dst.next_event()


def test_submit_assign_complete_round_trip() -> None:
    client, server_view = Connection(Side.CLIENT), Connection(Side.SERVER)
    worker, worker_view = Connection(Side.CLIENT), Connection(Side.SERVER)
    submit = SubmitJob(b"reverse", b"u1", b"hello")
    assert relay(client, server_view, submit) == submit
    assert relay(server_view, client, JobCreated(b"H:1")) == JobCreated(b"H:1")
    assert client.answered == submit
    assert relay(worker, worker_view, GrabJobUniq()) == GrabJobUniq()
    assign = JobAssignUniq(b"H:1", b"reverse", b"u1", b"hello")
    assert relay(worker_view, worker, assign) == assign
    assert relay(worker, worker_view, WorkData(b"H:1", b"ol")) == WorkData(b"H:1", b"ol")
    assert relay(worker, worker_view, WorkComplete(b"H:1", b"olleh")) == WorkComplete(
        b"H:1", b"olleh"
    )
    assert relay(server_view, client, WorkComplete(b"H:1", b"olleh")) == WorkComplete(
        b"H:1", b"olleh"
    )
    assert client.next_event() is NEED_DATA
    client.receive_eof()
    assert client.next_event() == ConnectionClosed()


def test_worker_cannot_complete_a_job_it_does_not_hold() -> None:
    worker = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError):
        worker.send(WorkComplete(b"H:9", b""))


def test_server_refuses_work_for_unassigned_handle_with_gearmands_error() -> None:
    worker, view = Connection(Side.CLIENT), Connection(Side.SERVER)
    from gearproto import raw_packet

    view.receive_data(raw_packet(b"\0REQ", 13, [b"H:nope", b"x"]))
    with pytest.raises(RemoteProtocolError) as info:
        view.next_event()
    assert not info.value.fatal
    assert info.value.hint == Error(b"JOB_NOT_FOUND", b"Job given in work result not found")
    # The server may now send the hinted ERROR: it is what the peer is owed.
    assert (
        view.send(info.value.hint)
        == b"\0RES\0\0\0\x13\0\0\0\x30JOB_NOT_FOUND\0Job given in work result not found"
    )
    assert worker.pending_replies == 0
