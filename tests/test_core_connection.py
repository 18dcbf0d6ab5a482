"""Connection behaviour: reply matching, handles, worker states, errors, limits, EOF."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)

from gearproto import (
    NEED_DATA,
    REQ,
    RES,
    Connection,
    ConnectionState,
    Limits,
    LocalProtocolError,
    Priority,
    ProtocolError,
    RemoteProtocolError,
    Side,
    WorkerState,
    admin,
    parse_int,
    raw_packet,
)
from gearproto import events as ev

pytestmark = pytest.mark.usefixtures("core_impl")


def client_and_server() -> tuple[Connection, Connection]:
    return Connection(Side.CLIENT), Connection(Side.SERVER)


def relay(src: Connection, dst: Connection, *events: Any) -> list[Any]:
    """Send ``events`` from ``src``; return what ``dst`` reads (errors as exceptions)."""
    dst.receive_data(b"".join(src.send(e) for e in events))
    return list(dst.events())


def deliver(src: Connection, dst: Connection, event: Any) -> Any:
    """Send one event from ``src``; return the one event ``dst`` reads (answered set)."""
    dst.receive_data(src.send(event))
    return dst.next_event()


def remote_error(conn: Connection) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    return info.value


def answered(conn: Connection) -> Any:
    return conn.answered


# ------------------------------------------------------------ replies, client side


def test_replies_are_matched_in_order() -> None:
    client, server = client_and_server()
    requests = [ev.SubmitJob(b"f", b"a", b""), ev.EchoReq(b"x"), ev.GetStatus(b"H:1")]
    assert relay(client, server, *requests) == requests
    assert client.pending_replies == server.pending_replies == 3
    replies: list[Any] = [
        ev.JobCreated(b"H:1"),
        ev.EchoRes(b"x"),
        ev.StatusRes(b"H:1", True, False, 1, 2),
    ]
    client.receive_data(b"".join(server.send(r) for r in replies))
    for request, reply in zip(requests, replies, strict=True):
        assert client.next_event() == reply
        assert answered(client) is request
    assert client.next_event() is NEED_DATA
    assert answered(client) is None
    assert client.pending_replies == server.pending_replies == 0


@pytest.mark.parametrize(
    ("requests", "reply", "message"),
    [
        (
            [],
            ev.JobCreated(b"H:1"),
            "JOB_CREATED received from the server, but no request is waiting",
        ),
        (
            [ev.SubmitJob(b"f", b"", b"")],
            ev.EchoRes(b""),
            "the reply due first is the one to SUBMIT_JOB (JOB_CREATED)",
        ),
        ([admin.Version()], ev.NoJob(), "reply to admin command Version is due first"),
    ],
)
def test_a_reply_out_of_turn_is_fatal(requests: list[Any], reply: Any, message: str) -> None:
    client = Connection(Side.CLIENT)
    for request in requests:
        client.send(request)
    client.receive_data(raw_packet(RES, int(ev.packet_type(reply)), list(reply)))
    error = remote_error(client)
    assert error.fatal
    assert message in str(error)
    assert client.state is ConnectionState.ERROR
    with pytest.raises(RemoteProtocolError, match="already failed"):
        client.next_event()
    client.receive_data(b"anything")
    assert client.buffered == 0
    with pytest.raises(LocalProtocolError, match="connection that is error"):
        client.send(ev.EchoReq(b""))


def test_errors_for_runs_without_reply() -> None:
    worker, server = client_and_server()
    relay(worker, server, ev.GrabJob(), ev.GrabJob())
    relay(server, worker, ev.JobAssign(b"H:1", b"f", b""), ev.JobAssign(b"H:2", b"f", b""))
    sent = [
        ev.CanDo(b"g"),
        ev.WorkData(b"H:1", b"a"),
        ev.WorkData(b"H:2", b"b"),
        ev.PreSleep(),
        ev.EchoReq(b"e"),
    ]
    relay(worker, server, *sent)
    # The server refuses the second WORK_DATA, then answers the echo.
    not_found = ev.Error(b"JOB_NOT_FOUND", b"Job does not exist on server")
    assert deliver(server, worker, not_found) == not_found
    assert answered(worker) is sent[2]  # the latest WORK_* of the run
    assert worker.assigned_handles == {b"H:1", b"H:2"}  # two WORK_* sent: not sure which
    assert deliver(server, worker, ev.EchoRes(b"e")) == ev.EchoRes(b"e")
    assert answered(worker) is sent[4]
    assert worker.pending_replies == 0


def test_an_error_code_no_silent_request_draws_answers_the_next_request() -> None:
    client, server = client_and_server()
    submit = ev.SubmitJob(b"f", b"", b"", background=True)
    relay(client, server, ev.CanDo(b"f"), submit)
    got = deliver(server, client, ev.Error(b"QUEUE_ERROR", b"Job queue is full"))
    assert got == ev.Error(b"QUEUE_ERROR", b"Job queue is full")
    assert answered(client) is submit
    assert client.pending_replies == server.pending_replies == 0


def test_one_failed_work_request_drops_its_handle() -> None:
    worker, server = client_and_server()
    relay(worker, server, ev.GrabJobUniq())
    relay(server, worker, ev.JobAssignUniq(b"H:1", b"f", b"u", b""))
    assert state_of(worker) is WorkerState.WORKING
    relay(worker, server, ev.WorkStatus(b"H:1", 1, 2))
    relay(server, worker, ev.Error(b"JOB_NOT_FOUND", b"Job given in work result not found"))
    assert worker.assigned_handles == frozenset()
    assert worker.worker_state is WorkerState.IDLE
    with pytest.raises(LocalProtocolError, match="not assigned to this worker"):
        worker.send(ev.WorkComplete(b"H:1", b""))


def test_unsolicited_error_is_an_event() -> None:
    client, server = client_and_server()
    relay(client, server, ev.CanDo(b"f"))
    got = deliver(server, client, ev.Error(b"SERVER_BUSY", b"going away"))
    assert got == ev.Error(b"SERVER_BUSY", b"going away")
    assert answered(client) is None
    assert client.state is ConnectionState.OPEN


def test_other_silent_errors_report_the_latest_other_request() -> None:
    client, server = client_and_server()
    relay(client, server, ev.GrabJob())
    relay(server, client, ev.JobAssign(b"H:1", b"f", b""))
    sent = [ev.AllYours(), ev.WorkData(b"H:1", b""), ev.SetClientId(b"me")]
    relay(client, server, *sent)
    deliver(server, client, ev.Error(b"INVALID_COMMAND", b"Command not expected"))
    assert answered(client) is sent[2]
    deliver(server, client, ev.Error(b"INVALID_ARGUMENT", b"bad"))
    assert answered(client) is sent[2]  # the latest of its group, as documented
    deliver(server, client, ev.Error(b"JOB_NOT_FOUND", b""))
    assert answered(client) is sent[1]
    assert server.pending_replies == client.pending_replies == 0


# ------------------------------------------------------------------ admin lines


def test_admin_replies_interleave_with_packets() -> None:
    client, server = client_and_server()
    requests: list[Any] = [admin.Status(), ev.EchoReq(b"1"), admin.Version(), admin.Workers()]
    relay(client, server, *requests)
    replies: list[Any] = [
        admin.StatusReply((admin.StatusRow(b"f\tg", 1, 0, 2),)),
        ev.EchoRes(b"1"),
        admin.AdminOk(b"1.1.20+ds"),
        admin.WorkersReply((admin.WorkerRow(9, b"127.0.0.1", b"a b", (b"f",)),)),
    ]
    client.receive_data(b"".join(server.send(r) for r in replies))
    for request, reply in zip(requests, replies, strict=True):
        assert client.next_event() == reply
        assert answered(client) is request


def test_listing_errors_and_empty_listings() -> None:
    client = Connection(Side.CLIENT)
    commands = (
        admin.Status(),
        admin.Workers(),
        admin.ShowUniqueJobs(),
        admin.ShowUniqueJobs(),
        admin.ShowJobs(),
    )
    for command in commands:
        client.send(command)
    client.receive_data(b"ERR UNKNOWN_ERROR\r\n.\nERR NOPE\r\nERR X\r\nH:1\t0\t0\t1\r\n.\r\n")
    assert client.next_event() == admin.AdminError(b"UNKNOWN_ERROR")
    assert client.next_event() == admin.WorkersReply(())
    assert client.next_event() == admin.AdminError(b"NOPE")
    # A unique reading like "ERR X" is taken for an error (documented ambiguity);
    # the rest of this stream then answers ShowJobs, with CRLF tolerated.
    assert client.next_event() == admin.AdminError(b"X")
    assert client.next_event() == admin.ShowJobsReply((admin.JobRow(b"H:1", 0, False, True),))


def test_unique_rows_keep_their_bytes() -> None:
    client = Connection(Side.CLIENT)
    client.send(admin.ShowUniqueJobs())
    client.receive_data(b"ERR with spaces\r\n-\n\nu\r\n.\n")
    assert client.next_event() == admin.ShowUniqueJobsReply(
        (b"ERR with spaces\r", b"-", b"", b"u\r")
    )


@pytest.mark.parametrize(
    ("command", "data", "message"),
    [
        (None, b"OK\r\n", "while waiting for nothing"),
        (ev.EchoReq(b""), b"OK\r\n", "while waiting for ECHO_REQ"),
        (admin.Version(), b"HELLO\r\n", "expected an OK or ERR line"),
        (admin.Status(), b"f\t1\t2\n.\n", "status row needs 4 tab-separated columns"),
        (admin.Workers(), b"x y z :\n.\n", "must start with a file descriptor"),
        (admin.Workers(), b"1 y z\n.\n", "without ' :'"),
        (admin.ShowJobs(), b"H\tx\t0\t0\n.\n", "retries must be a number"),
        (admin.PriorityStatus(), b"f\t1\n.\n", "5 tab-separated columns"),
    ],
)
def test_malformed_admin_replies_are_fatal(command: Any, data: bytes, message: str) -> None:
    client = Connection(Side.CLIENT)
    if command is not None:
        client.send(command)
    client.receive_data(data)
    error = remote_error(client)
    assert error.fatal
    assert message in str(error)


def test_listing_size_is_bounded() -> None:
    client = Connection(Side.CLIENT, limits=Limits(max_packet_size=100))
    client.send(admin.ShowUniqueJobs())
    client.receive_data(b"u" * 40 + b"\n")
    client.receive_data(b"u" * 40 + b"\n")
    assert client.next_event() is NEED_DATA
    client.receive_data(b"u" * 40 + b"\n")
    assert "admin listing longer than max_packet_size" in str(remote_error(client))


def test_server_reads_commands_and_must_answer_in_turn() -> None:
    client, server = client_and_server()
    got = relay(client, server, ev.SubmitJob(b"f", b"", b""), admin.Status())
    assert got == [ev.SubmitJob(b"f", b"", b""), admin.Status()]
    with pytest.raises(LocalProtocolError, match="reply to SUBMIT_JOB is due first"):
        server.send(admin.StatusReply(()))
    server.send(ev.JobCreated(b"H:1"))
    with pytest.raises(LocalProtocolError, match=r"WorkersReply does not answer Status"):
        server.send(admin.WorkersReply(()))
    with pytest.raises(LocalProtocolError, match="AdminOk does not answer Status"):
        server.send(admin.AdminOk())
    with pytest.raises(LocalProtocolError, match="the reply to admin command Status is due"):
        server.send(ev.NoJob())
    assert server.send(admin.StatusReply(())) == b".\n"
    with pytest.raises(LocalProtocolError, match="no admin command is waiting"):
        server.send(admin.AdminOk())
    with pytest.raises(LocalProtocolError, match="not Status"):
        server.send(admin.Status())


def test_bad_admin_lines_are_answered_with_their_hint() -> None:
    server = Connection(Side.SERVER)
    server.receive_data(b"frobnicate\r\nversion\n")
    bad = server.next_event()
    assert type(bad) is admin.AdminBadCommand
    with pytest.raises(LocalProtocolError, match="AdminOk does not answer AdminBadCommand"):
        server.send(admin.AdminOk())
    assert server.send(bad.reply) == b"ERR UNKNOWN_COMMAND Unknown+server+commandfrobnicate\r\n"
    assert server.next_event() == admin.Version()
    assert server.send(admin.AdminOk(b"1")) == b"OK 1\n"


def test_client_sends_only_commands() -> None:
    client = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError, match="not AdminOk"):
        client.send(admin.AdminOk())
    with pytest.raises(LocalProtocolError, match="not AdminBadCommand"):
        client.send(admin.AdminBadCommand((b"x",), admin.AdminError(b"X")))
    with pytest.raises(LocalProtocolError, match="admin line of 8205 bytes; the limit is 8192"):
        client.send(admin.CancelJob(b"h" * 8192))
    assert client.send(admin.Shutdown(graceful=True)) == b"shutdown graceful\r\n"


def test_too_long_command_line_is_fatal_with_a_hint() -> None:
    server = Connection(Side.SERVER, limits=Limits(max_line=16))
    server.receive_data(b"status\n" + b"s" * 10)
    assert server.next_event() == admin.Status()
    assert server.next_event() is NEED_DATA
    server.receive_data(b"s" * 6)
    error = remote_error(server)
    assert error.fatal
    assert error.hint == admin.AdminError(b"INVALID_ARGUMENTS", b"Line+too+long")
    assert server.send(error.hint) == b"ERR INVALID_ARGUMENTS Line+too+long\r\n"
    with pytest.raises(LocalProtocolError, match="connection that is error"):
        server.send(admin.AdminOk())


# ------------------------------------------------------------------- handles


def test_a_job_coalesced_twice_ends_twice_then_late_results_pass() -> None:
    client, server = client_and_server()
    submit = ev.SubmitJob(b"f", b"same", b"")
    relay(client, server, submit, submit)
    relay(server, client, ev.JobCreated(b"H:1"), ev.JobCreated(b"H:1"))
    assert client.client_handles == {b"H:1"}
    done = ev.WorkComplete(b"H:1", b"r")
    assert relay(server, client, done, done) == [done, done]
    assert client.client_handles == frozenset()
    with pytest.raises(LocalProtocolError, match="not waiting for that job"):
        server.send(done)
    # gearmand forwards results of a cancelled job after its WORK_FAIL.
    client.receive_data(raw_packet(RES, 13, [b"H:1", b"late"]))
    assert client.next_event() == ev.WorkComplete(b"H:1", b"late")


def test_work_for_a_job_the_client_did_not_submit_is_refused_but_not_fatal() -> None:
    client = Connection(Side.CLIENT)
    client.receive_data(raw_packet(RES, 28, [b"H:9", b"x"]) + raw_packet(RES, 6, []))
    error = remote_error(client)
    assert not error.fatal
    assert error.hint is None
    assert "did not submit in the foreground" in str(error)
    assert client.next_event() == ev.Noop()


def test_background_jobs_get_no_work_packets() -> None:
    client, server = client_and_server()
    relay(client, server, ev.SubmitJob(b"f", b"", b"", background=True))
    relay(client, server, ev.SubmitJobEpoch(b"f", b"", 0, b""))
    relay(server, client, ev.JobCreated(b"H:1"), ev.JobCreated(b"H:2"))
    assert client.client_handles == server.client_handles == frozenset()
    with pytest.raises(LocalProtocolError):
        server.send(ev.WorkData(b"H:1", b""))


def test_server_side_handle_tracking() -> None:
    worker, server = client_and_server()
    relay(worker, server, ev.GrabJobAll())
    assert server.worker_state is WorkerState.GRABBING
    relay(server, worker, ev.JobAssignAll(b"H:1", b"f", b"u", b"r", b""))
    assert server.assigned_handles == worker.assigned_handles == {b"H:1"}
    assert relay(worker, server, ev.WorkWarning(b"H:1", b"w")) == [ev.WorkWarning(b"H:1", b"w")]
    server.forget_assignment(b"H:1")
    server.receive_data(worker.send(ev.WorkException(b"H:1", b"boom")))
    error = remote_error(server)
    assert error.hint == ev.Error(
        b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist"
    )
    with pytest.raises(LocalProtocolError, match="an error is owed first"):
        server.send(admin.AdminOk())
    with pytest.raises(LocalProtocolError, match="an ERROR is owed first"):
        server.send(ev.NoJob())
    server.send(error.hint)
    assert server.pending_replies == 0


@pytest.mark.parametrize(
    ("ptype", "text"),
    [
        (12, b"Job given in work result not found"),
        (13, b"Job given in work result not found"),
        (14, b"Job given in work result not found"),
        (25, b"An exception was received for a job that does not exist"),
        (28, b"Job does not exist on server"),
        (29, b"Job does not exist on server"),
    ],
)
def test_gearmands_texts_for_unknown_jobs(ptype: int, text: bytes) -> None:
    server = Connection(Side.SERVER)
    fields = [b"H:x", b"1", b"2"] if ptype == 12 else [b"H:x"] if ptype == 14 else [b"H:x", b""]
    server.receive_data(raw_packet(REQ, ptype, fields))
    assert remote_error(server).hint == ev.Error(b"JOB_NOT_FOUND", text)


def test_forget_client_job() -> None:
    client, server = client_and_server()
    relay(client, server, ev.SubmitJob(b"f", b"", b""))
    relay(server, client, ev.JobCreated(b"H:1"))
    server.forget_client_job(b"H:1")
    with pytest.raises(LocalProtocolError):
        server.send(ev.WorkFail(b"H:1"))


# ------------------------------------------------------------- worker states


def state_of(conn: Connection) -> WorkerState:
    return conn.worker_state


def test_worker_states() -> None:
    worker, server = client_and_server()
    assert worker.worker_state is WorkerState.IDLE
    relay(worker, server, ev.PreSleep())
    assert worker.worker_state is server.worker_state is WorkerState.SLEEPING
    relay(server, worker, ev.Noop())
    assert worker.worker_state is server.worker_state is WorkerState.IDLE
    relay(worker, server, ev.PreSleep(), ev.GrabJob())
    assert worker.worker_state is server.worker_state is WorkerState.GRABBING
    relay(server, worker, ev.JobAssign(b"H:1", b"f", b""))
    assert worker.worker_state is server.worker_state is WorkerState.WORKING
    relay(worker, server, ev.GrabJob())
    relay(server, worker, ev.NoJob())
    assert state_of(worker) is WorkerState.WORKING
    relay(worker, server, ev.WorkFail(b"H:1"))
    assert worker.worker_state is server.worker_state is WorkerState.IDLE
    relay(worker, server, ev.GrabJob())
    relay(server, worker, ev.Error(b"SERVER_BUSY", b""))
    assert worker.worker_state is server.worker_state is WorkerState.IDLE


# --------------------------------------------------------- errors, server side


_TOO = b"ARGUMENT_TOO_LARGE"
_CMD = b"INVALID_COMMAND"
SERVER_ERRORS = [
    (raw_packet(RES, 16, [b""]), ev.Error(b"INVALID_MAGIC", b"Request magic expected"), False),
    (raw_packet(REQ, 8, [b"H"]), ev.Error(_CMD, b"Command not expected"), False),
    (raw_packet(REQ, 5, []), ev.Error(_CMD, b"Command not expected"), False),
    (
        raw_packet(REQ, 7, [b"f", b"u"]),
        ev.Error(b"INVALID_PACKET", b"SUBMIT_JOB needs 2 NUL-terminated field(s)"),
        False,
    ),
    (raw_packet(REQ, 7, [b"f", b"u" * 65, b""]), ev.Error(_TOO, b"Unique value too large"), False),
    (raw_packet(REQ, 1, [b"f" * 513]), ev.Error(_TOO, b"Function name too large"), False),
    (raw_packet(REQ, 15, [b"h" * 65]), ev.Error(_TOO, b"Job handle too large"), False),
    (raw_packet(REQ, 23, [b"f", b"9" * 21]), ev.Error(_TOO, b"Number too large"), False),
    (raw_packet(REQ, 22, [b"c" * 8193]), ev.Error(_TOO, b"Argument too large"), False),
    (raw_packet(REQ, 0, []), ev.Error(_CMD, b"Invalid command expected"), True),
    (raw_packet(REQ, 43, []), ev.Error(_CMD, b"Invalid command expected"), True),
    (raw_packet(REQ, 0x7FFFFFFF, []), ev.Error(_CMD, b"Invalid command expected"), True),
    (raw_packet(b"\0GET", 1, []), ev.Error(b"INVALID_MAGIC", b"Invalid magic value"), True),
]


@pytest.mark.parametrize(("data", "hint", "fatal"), SERVER_ERRORS)
def test_server_side_errors_carry_gearmands_reply(data: bytes, hint: Any, fatal: bool) -> None:
    server = Connection(Side.SERVER)
    server.receive_data(data + raw_packet(REQ, 16, [b"next"]))
    error = remote_error(server)
    assert error.hint == hint
    assert error.code == hint.code
    assert error.fatal is fatal
    if fatal:
        assert server.state is ConnectionState.ERROR
        assert server.send(hint) == raw_packet(RES, 19, list(hint))  # a farewell
        with pytest.raises(LocalProtocolError):
            server.send(ev.Noop())
    else:
        assert server.next_event() == ev.EchoReq(b"next")
        assert server.pending_replies == 2
        server.send(hint)
        server.send(ev.EchoRes(b"next"))


def test_oversize_packet_is_refused_at_header_time() -> None:
    server = Connection(Side.SERVER, limits=Limits(max_packet_size=1000))
    server.receive_data(b"\0REQ\0\0\0\x10\0\0\x03\xe9")  # ECHO_REQ of 1001 bytes: no body yet
    error = remote_error(server)
    assert error.fatal
    assert error.hint == ev.Error(b"ARGUMENT_TOO_LARGE", b"Packet too large")
    assert "declares a 1001-byte body; the limit is 1000 bytes" in str(error)


def test_client_side_errors_are_fatal_and_have_no_hint() -> None:
    for data, message in [
        (raw_packet(REQ, 8, [b"H:1"]), "sent with the request magic"),
        (raw_packet(RES, 7, [b"f", b"", b""]), "SUBMIT_JOB is a request"),
        (raw_packet(RES, 8, [b"h" * 65]), "JOB_CREATED.handle is 65 bytes"),
        (raw_packet(RES, 20, [b"H", b"1"]), "malformed STATUS_RES"),
    ]:
        client = Connection(Side.CLIENT)
        client.send(ev.SubmitJob(b"f", b"", b""))
        client.receive_data(data)
        error = remote_error(client)
        assert error.fatal
        assert error.hint is None
        assert error.code is None
        assert message in str(error)


# -------------------------------------------------------------------- EOF


@pytest.mark.parametrize(
    ("side", "data", "message"),
    [
        (Side.SERVER, b"\0REQ\0\0", "after 6 of the 12 bytes of a packet header"),
        (Side.SERVER, b"\0REQ\0\0\0\x10\0\0\0\x05ab", "after 2 of 5 body bytes"),
        (Side.SERVER, b"statu", "in the middle of a text line"),
        (Side.CLIENT, b"f\t1\t0\t0\n", "after 1 row(s) of an admin listing"),
    ],
)
def test_eof_in_the_middle_is_an_error(side: Side, data: bytes, message: str) -> None:
    conn = Connection(side)
    if side is Side.CLIENT:
        conn.send(admin.Status())
    conn.receive_data(data)
    assert conn.next_event() is NEED_DATA
    conn.receive_eof()
    error = remote_error(conn)
    assert error.fatal
    assert message in str(error)
    assert conn.state is ConnectionState.ERROR


def test_clean_eof() -> None:
    client, server = client_and_server()
    server.receive_data(client.send(ev.EchoReq(b"")))
    server.receive_eof()
    with pytest.raises(LocalProtocolError, match="after receive_eof"):
        server.receive_data(b"x")
    assert server.next_event() == ev.EchoReq(b"")
    assert server.next_event() == ev.ConnectionClosed()
    assert server.state is ConnectionState.CLOSED
    assert server.next_event() == ev.ConnectionClosed()
    with pytest.raises(LocalProtocolError, match="connection that is closed"):
        server.send(ev.EchoRes(b""))


def test_send_failed() -> None:
    client = Connection(Side.CLIENT)
    client.send_failed()
    assert client.state is ConnectionState.ERROR
    with pytest.raises(RemoteProtocolError, match="a write to the peer failed"):
        client.next_event()
    with pytest.raises(LocalProtocolError):
        client.send_parts(ev.EchoReq(b""))


# ------------------------------------------------------------- API surface


def test_next_events_and_events() -> None:
    client, server = client_and_server()
    server.receive_data(b"".join(client.send(e) for e in (ev.EchoReq(b"1"), ev.EchoReq(b"2"))))
    assert server.next_events() == [ev.EchoReq(b"1"), ev.EchoReq(b"2")]
    assert server.next_events() == []
    server.receive_data(raw_packet(REQ, 16, [b"3"]) + raw_packet(REQ, 8, [b""]))
    assert server.next_event() == ev.EchoReq(b"3")
    with pytest.raises(RemoteProtocolError):
        server.next_events()
    client.receive_data(server.send(ev.EchoRes(b"1")) + server.send(ev.EchoRes(b"2")))
    seen = [(e, answered(client)) for e in client.events()]
    assert [a.data for _, a in seen] == [b"1", b"2"]
    server.receive_eof()
    assert server.next_events() == []
    assert server.next_event() == ev.ConnectionClosed()


def test_send_parts_keeps_the_payload_apart() -> None:
    client = Connection(Side.CLIENT)
    payload = b"p" * 100_000
    parts = client.send_parts(ev.SubmitJob(b"f", b"u", payload))
    assert parts[-1] is payload
    assert b"".join(parts) == raw_packet(REQ, 7, [b"f", b"u", payload])
    assert client.send_parts(admin.Version()) == [b"version\r\n"]
    assert client.send_parts(ev.GrabJob()) == [raw_packet(REQ, 9, [])]


def test_large_payloads_are_parsed_with_one_copy() -> None:
    client, server = client_and_server()
    payload = bytes(range(256)) * 1024
    server.receive_data(client.send(ev.SubmitJob(b"f", b"u", payload, background=True)))
    assert server.next_event() == ev.SubmitJob(b"f", b"u", payload, background=True)


def test_reprs() -> None:
    client = Connection(Side.CLIENT)
    client.send(ev.GrabJob())
    assert repr(client) == ("<Connection client open pending_replies=1 worker=grabbing buffered=0>")
    assert repr(NEED_DATA) == "NEED_DATA"
    event = ev.SubmitJob(b"f", b"u", b"x" * 100, Priority.HIGH)
    assert repr(event) == (
        "SubmitJob(function=b'f', unique=b'u', data=b'"
        + "x" * 64
        + "'...<100 bytes>, priority=Priority.HIGH, background=False)"
    )


def test_constructor_checks() -> None:
    with pytest.raises(TypeError, match=r"side must be Side\.CLIENT or Side\.SERVER"):
        Connection("client")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limits must be a Limits"):
        Connection(Side.CLIENT, limits={"max_unique": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Limits\.max_unique must be a positive int"):
        Limits(max_unique=0)
    with pytest.raises(ValueError, match="cannot exceed 2\\*\\*32 - 1"):
        Limits(max_packet_size=1 << 32)
    with pytest.raises(TypeError, match="raise LocalProtocolError or RemoteProtocolError"):
        ProtocolError("abstract")


def test_events_compare_by_class() -> None:
    echo_req: Any = ev.EchoReq(b"x")
    assert echo_req != ev.EchoRes(b"x")
    assert ev.EchoReq(b"x") == ev.EchoReq(b"x")
    assert len({ev.EchoReq(b"x"), ev.EchoRes(b"x"), ev.EchoReq(b"x")}) == 2
    assert ev.CanDo(b"f") != (b"f",)


def test_queue_entries_read_well_in_a_debugger() -> None:
    client, server = client_and_server()
    relay(client, server, ev.CanDo(b"f"), ev.PreSleep())
    server.receive_data(raw_packet(REQ, 6, []))
    remote_error(server)
    assert [repr(e) for e in server._pending] == [
        # [count, work, last, last WORK_*, last other] of a run without reply
        "[2, 0, PreSleep(), None, PreSleep()]",
        "<refused request; Error(code=b'INVALID_COMMAND', text=b'Command not expected') is owed>",
    ]


def test_finished_handles_are_remembered_boundedly() -> None:
    client, server = client_and_server()
    for i in range(2100):
        handle = b"H:%d" % i
        relay(client, server, ev.SubmitJob(b"f", b"", b""))
        relay(server, client, ev.JobCreated(handle))
        relay(server, client, ev.WorkComplete(handle, b""))
    client.receive_data(raw_packet(RES, 28, [b"H:2099", b"late"]))
    assert client.next_event() == ev.WorkData(b"H:2099", b"late")
    client.receive_data(raw_packet(RES, 28, [b"H:0", b"too late"]))
    assert not remote_error(client).fatal


def test_connection_closed_is_not_sendable() -> None:
    for side in (Side.CLIENT, Side.SERVER):
        with pytest.raises(LocalProtocolError, match="not ConnectionClosed"):
            Connection(side).send(ev.ConnectionClosed())


def test_many_distinct_limits_are_fine() -> None:
    for size in range(100, 180):
        conn = Connection(Side.SERVER, limits=Limits(max_packet_size=size))
        conn.receive_data(raw_packet(REQ, 16, [b"x" * (size + 1)]))
        assert remote_error(conn).fatal


@pytest.mark.parametrize("digits", [20, 30, 31, 35, 4400])
def test_long_work_status_numbers_read_like_parse_int(digits: int) -> None:
    # A server configured for long numbers reads every WORK_STATUS number the way
    # gearmand does (atoi-like, at most 31 characters), never failing on the length.
    worker = Connection(Side.CLIENT)
    server = Connection(Side.SERVER, limits=Limits(max_number=6000))
    relay(worker, server, ev.GrabJob())
    relay(server, worker, ev.JobAssign(b"H:1", b"f", b""))
    number = b"7" * digits
    server.receive_data(raw_packet(REQ, 12, [b"H:1", number, number]))
    assert server.next_event() == ev.WorkStatus(b"H:1", parse_int(number), parse_int(number))
    assert server.next_event() is NEED_DATA


def test_large_packets_take_the_same_path_through_the_state() -> None:
    big = b"b" * (1 << 17)
    worker, server = client_and_server()
    relay(worker, server, ev.GrabJob())
    relay(server, worker, ev.JobAssign(b"H:1", b"f", big))
    assert relay(worker, server, ev.WorkComplete(b"H:1", big)) == [ev.WorkComplete(b"H:1", big)]
    assert server.assigned_handles == frozenset()
    client, view = client_and_server()
    relay(client, view, ev.SubmitJob(b"f", b"u", big), ev.SubmitJob(b"f", b"u", b""))
    relay(view, client, ev.JobCreated(b"H:1"), ev.JobCreated(b"H:1"))
    done = ev.WorkComplete(b"H:1", big)
    assert relay(view, client, done, done) == [done, done]
    assert client.client_handles == frozenset()


def test_work_fail_for_a_job_submitted_twice() -> None:
    client, server = client_and_server()
    relay(client, server, ev.SubmitJob(b"f", b"u", b""), ev.SubmitJob(b"f", b"u", b""))
    relay(server, client, ev.JobCreated(b"H:1"), ev.JobCreated(b"H:1"))
    assert relay(server, client, ev.WorkFail(b"H:1")) == [ev.WorkFail(b"H:1")]
    assert client.client_handles == {b"H:1"}
    assert relay(server, client, ev.WorkFail(b"H:1")) == [ev.WorkFail(b"H:1")]
    assert client.client_handles == frozenset()


@pytest.mark.parametrize("payload", [None, b"small", b"x" * 70000])
def test_ended_jobs_are_forgotten_in_halves(payload: bytes | None) -> None:
    """WORK_FAIL, and WORK_COMPLETE small (inline path) and large (generic path)."""
    client = Connection(Side.CLIENT)
    for _ in range(2100):
        client.send(ev.SubmitJob(b"f", b"", b""))

    def end(i: int) -> bytes:
        if payload is None:
            return raw_packet(RES, 14, [b"H:%d" % i])
        # Only the jobs around the trimming point carry the large payload.
        data = payload if i > 2040 else b"small"
        return raw_packet(RES, 13, [b"H:%d" % i, data])

    wire = b"".join(raw_packet(RES, 8, [b"H:%d" % i]) + end(i) for i in range(2100))
    client.receive_data(wire)
    assert len(client.next_events()) == 4200
    assert len(client._finished) <= 2048
    client.receive_data(raw_packet(RES, 28, [b"H:2099", b"late"]))
    assert client.next_event() == ev.WorkData(b"H:2099", b"late")


def test_a_job_ended_right_after_a_trim_on_the_generic_path_is_remembered() -> None:
    # The generic path trims the ended jobs into a new dict; a job ended on the inline
    # path later in the same read must land in that new dict, so its late WORK_* pass.
    client = Connection(Side.CLIENT)
    count = 2050
    for _ in range(count):
        client.send(ev.SubmitJob(b"f", b"", b""))
    client.receive_data(b"".join(raw_packet(RES, 8, [b"H:%d" % i]) for i in range(count)))
    assert len(client.next_events()) == count
    # gearmand's WORK_FAIL "handle\0" takes the generic path.
    wire = b"".join(raw_packet(RES, 14, [b"H:%d\0" % i]) for i in range(count - 1))
    wire += raw_packet(RES, 13, [b"H:%d" % (count - 1), b"done"])
    client.receive_data(wire)
    assert len(client.next_events()) == count
    assert client.client_handles == frozenset()
    client.receive_data(raw_packet(RES, 28, [b"H:%d" % (count - 1), b"late"]))
    assert client.next_event() == ev.WorkData(b"H:%d" % (count - 1), b"late")


def test_packet_type_of_a_bad_submission() -> None:
    with pytest.raises(ValueError, match="needs a Priority and a bool background"):
        ev.packet_type(ev.SubmitJob(b"f", b"", b"", 9))  # type: ignore[arg-type]
