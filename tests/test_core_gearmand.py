"""The core against the real gearmand: admin replies byte-exact, golden vectors live.

A fresh gearmand is started per test; every request is sent through a client-side
``Connection`` and every reply read through it, so these tests check at once that the
core's reply matching follows gearmand and that what it parses re-formats to the very
bytes gearmand sent.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)
from helpers.core_wire import CoreWire
from helpers.procs import ServerProcess

from gearproto import Connection, ConnectionState, Priority, Side, admin
from gearproto import events as ev
from gearproto.admin import AdminBadCommand, AdminError, AdminOk, format_reply, parse_command

pytestmark = [pytest.mark.usefixtures("core_impl"), pytest.mark.gearmand, pytest.mark.timeout(60)]

HEADER = struct.Struct(">4sII")


def frame(magic: bytes, ptype: int, body: bytes) -> bytes:
    return HEADER.pack(magic, ptype, len(body)) + body


@pytest.fixture
def wires(gearmand_server: ServerProcess) -> Iterator[list[CoreWire]]:
    opened: list[CoreWire] = []
    yield opened
    for wire in opened:
        wire.close()


def connect(server: ServerProcess, wires: list[CoreWire]) -> CoreWire:
    wire = CoreWire(server.address)
    wires.append(wire)
    return wire


def answered(wire: CoreWire) -> Any:
    return wire.conn.answered


def sync(wire: CoreWire) -> None:
    """Wait until gearmand has processed everything sent on ``wire`` so far."""
    reply, _ = wire.request(ev.EchoReq(b"sync"))
    assert reply == ev.EchoRes(b"sync")


# ------------------------------------------------------------ admin, byte-exact


def _populate(server: ServerProcess, wires: list[CoreWire]) -> bytes:
    """Give gearmand workers, queued, running and unique jobs; returns a running handle."""
    worker = connect(server, wires)
    worker.send(
        ev.SetClientId(b"worker one"),
        ev.CanDo(b"rev"),
        ev.CanDo(b"rev"),
        ev.CanDo(b"with space"),
    )
    sync(worker)
    busy = connect(server, wires)
    busy.send(ev.CanDo(b"busy"))
    sync(busy)
    client = connect(server, wires)
    for event in (
        ev.SubmitJob(b"busy", b"running-one", b"x", background=True),
        ev.SubmitJob(b"rev", b"u1", b"a", background=True),
        ev.SubmitJob(b"rev", b"", b"no unique", background=True),
        ev.SubmitJob(b"rev", b"-", b"by payload", background=True),
        ev.SubmitJob(b"other", b"u2", b"b", Priority.HIGH, background=True),
        ev.SubmitJob(b"other", b"u3", b"c", Priority.LOW, background=True),
    ):
        reply, _ = client.request(event)
        assert type(reply) is ev.JobCreated
    assign, _ = busy.request(ev.GrabJobUniq())
    assert type(assign) is ev.JobAssignUniq
    return bytes(assign.handle)


ADMIN_COMMANDS: list[Any] = [
    admin.Workers(),
    admin.Status(),
    admin.PriorityStatus(),
    admin.ShowJobs(),
    admin.ShowUniqueJobs(),
    admin.Version(),
    admin.Verbose(),
    admin.GetPid(),
    admin.MaxQueue(b"rev"),
    admin.MaxQueue(b"rev", (5,)),
    admin.MaxQueue(b"rev", (5, 6)),
    admin.MaxQueue(b"rev", (5, 6, 7)),
    admin.MaxQueue(b"no-such-function", (1,)),
    admin.CreateFunction(b"made"),
    admin.DropFunction(b"made"),
    admin.DropFunction(b"never-made"),
    admin.DropFunction(b"rev"),
    admin.CancelJob(b"H:test:nope"),
    admin.Shutdown(),
    admin.Shutdown(graceful=True),
]


def test_every_admin_reply_reformats_byte_exactly(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    running = _populate(gearmand_server, wires)
    operator = connect(gearmand_server, wires)
    seen: dict[type[Any], int] = {}
    for command in [*ADMIN_COMMANDS, admin.CancelJob(running), admin.ShowJobs()]:
        reply, raw = operator.request(command)
        assert format_reply(reply) == raw, (command, raw)
        seen[type(reply)] = seen.get(type(reply), 0) + 1
    # Every reply class and both OK forms, and the listings were not empty.
    assert set(seen) == {
        admin.WorkersReply,
        admin.StatusReply,
        admin.PriorityStatusReply,
        admin.ShowJobsReply,
        admin.ShowUniqueJobsReply,
        AdminOk,
        AdminError,
    }


def test_listings_parse_into_the_rows_gearmand_meant(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    running = _populate(gearmand_server, wires)
    operator = connect(gearmand_server, wires)
    status, _ = operator.request(admin.Status())
    rows = {row.function: row[1:] for row in status.rows}
    assert rows[b"rev"] == (3, 0, 2)  # three jobs, none running, CAN_DO twice
    assert rows[b"busy"] == (1, 1, 1)
    assert rows[b"with space"] == (0, 0, 1)
    prio, _ = operator.request(admin.PriorityStatus())
    assert {r.function: r[1:] for r in prio.rows}[b"other"] == (1, 0, 1, 0)
    jobs, _ = operator.request(admin.ShowJobs())
    assert running in {row.handle for row in jobs.rows}
    assert all(row.queued for row in jobs.rows)
    uniques, raw = operator.request(admin.ShowUniqueJobs())
    assert sorted(uniques.uniques) == [b"", b"-", b"running-one", b"u1", b"u2", b"u3"]
    assert b"\t" not in raw  # 1.1.20 prints the unique alone
    workers, _ = operator.request(admin.Workers())
    named = [row for row in workers.rows if row.client_id == b"worker one"]
    assert len(named) == 1
    # Function names are split on spaces: "with space" comes back as two words.
    assert named[0].functions.count(b"rev") == 2
    assert b"with" in named[0].functions
    assert named[0].address == b"127.0.0.1"


# Lines gearmand refuses, and what parse_command() makes of them: the same reply.
BAD_LINES = [
    b"bogus",
    b"",
    b" ",
    b"  status",
    b"show",
    b"show foo",
    b"show jobs extra",
    b"show unique",
    b"cancel",
    b"cancel job",
    b"cancel foo bar",
    b"cancel job h extra",
    b"create",
    b"create function",
    b"create thing x",
    b"drop",
    b"drop function",
    b"drop it now",
    b"maxqueue",
    b"MAXQUEUE",
    b"ver\0sion",
    b"status\ttab",
    b"fo\ro",
    b"caf\xc3\xa9",
]


def test_refused_lines_get_gearmands_exact_reply(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    wire = connect(gearmand_server, wires)
    for line in BAD_LINES:
        command = parse_command(line)
        assert type(command) is AdminBadCommand, line
        wire.take_raw()
        wire.send_raw(line + b"\r\n")
        # Read exactly one reply line (the client core has no command pending).
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = wire.sock.recv(4096)
            assert chunk, line
            raw += chunk
        assert format_reply(command.reply) == raw, (line, raw)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"STATUS", admin.Status()),
        (b"workers now", admin.Workers()),
        (b"Show Unique Jobs", admin.ShowUniqueJobs()),
        (b"cancel job ", admin.CancelJob(b"")),
        (b"maxqueue f 1 2 3", admin.MaxQueue(b"f", (1, 2, 3))),
        (b"maxqueue f 99999999999", admin.MaxQueue(b"f", (1215752191,))),
        (b"maxqueue f -3 x", admin.MaxQueue(b"f", (-3, 0))),
        (b"drop function ", admin.DropFunction(b"")),
    ],
)
def test_accepted_lines(line: bytes, expected: Any) -> None:
    assert parse_command(line) == expected


def test_too_many_tokens(gearmand_server: ServerProcess, wires: list[CoreWire]) -> None:
    """gearmand closes the connection on a 6th token; the core answers instead."""
    wire = connect(gearmand_server, wires)
    wire.send_raw(b"status a b c d e\r\n")
    assert wire.closed_by_peer()
    command = parse_command(b"status a b c d e")
    assert type(command) is AdminBadCommand
    assert command.reply.code == b"INVALID_ARGUMENTS"


def test_maxqueue_limits_mean_what_gearmand_does(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    wire = connect(gearmand_server, wires)
    client = connect(gearmand_server, wires)
    _, _ = wire.request(admin.CreateFunction(b"q"))
    command = admin.MaxQueue(b"q", (1, 2))  # HIGH 1, NORMAL 2, LOW unlimited
    assert (command.high, command.normal, command.low) == (1, 2, 0)
    reply, _ = wire.request(command)
    assert reply == AdminOk()
    codes = []
    for priority in [Priority.HIGH, Priority.HIGH, Priority.LOW, Priority.LOW]:
        got, _ = client.request(ev.SubmitJob(b"q", b"", b"", priority, background=True))
        codes.append(got.code if type(got) is ev.Error else b"ok")
    # job_total counts every priority: the 2nd HIGH finds 1 job >= 1.
    assert codes == [b"ok", b"QUEUE_ERROR", b"ok", b"ok"]


# --------------------------------------------------------- binary, live golden


def test_golden_vectors_live(gearmand_server: ServerProcess, wires: list[CoreWire]) -> None:
    client = connect(gearmand_server, wires)
    reply, raw = client.request(ev.EchoReq(b"hello\0world"))
    assert raw == frame(b"\0RES", 17, b"hello\0world")
    reply, raw = client.request(ev.SubmitJob(b"fn1", b"u1", b"payload", background=True))
    assert raw == frame(b"\0RES", 8, b"H:test:1")
    reply, raw = client.request(ev.GetStatus(b"H:test:1"))
    assert raw == frame(b"\0RES", 20, b"H:test:1\x001\x000\x000\x000")
    assert reply == ev.StatusRes(b"H:test:1", True, False, 0, 0)
    reply, raw = client.request(ev.OptionReq(b"foo"))
    assert raw == frame(b"\0RES", 19, b"UNKNOWN_OPTION\0Server does not recognize given option")
    assert type(reply) is ev.Error

    opted = connect(gearmand_server, wires)
    reply, raw = opted.request(ev.OptionReq(b"exceptions"))
    assert reply == ev.OptionRes(b"exceptions")
    submit = ev.SubmitJob(b"rev", b"uA", b"hello")
    created, _ = client.request(submit)
    again, _ = opted.request(submit)
    assert again == created  # coalesced onto the same job
    worker = connect(gearmand_server, wires)
    worker.send(ev.CanDo(b"rev"))
    assign, raw = worker.request(ev.GrabJobUniq())
    handle = created.handle
    assert raw == frame(b"\0RES", 31, handle + b"\0rev\0uA\0hello")
    assert assign == ev.JobAssignUniq(handle, b"rev", b"uA", b"hello")

    worker.send(ev.WorkStatus(handle, 3, 10), ev.WorkException(handle, b"boom"))
    sync(worker)
    client.take_raw()
    assert client.next() == ev.WorkStatus(handle, 3, 10)
    assert client.next() == ev.WorkFail(handle)  # arrived as "handle\0"
    assert client.take_raw() == frame(b"\0RES", 12, handle + b"\x003\x0010") + frame(
        b"\0RES", 14, handle + b"\0"
    )
    assert opted.next() == ev.WorkStatus(handle, 3, 10)
    assert opted.next() == ev.WorkException(handle, b"boom")
    assert client.conn.client_handles == opted.conn.client_handles == frozenset()


def test_errors_for_requests_without_reply_are_matched_in_order(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    client = connect(gearmand_server, wires)
    client.request(ev.SubmitJob(b"rev", b"", b"x", background=True))
    worker = connect(gearmand_server, wires)
    worker.send(ev.CanDo(b"rev"))
    assign, _ = worker.request(ev.GrabJob())
    handle = assign.handle
    # CANT_DO gives the job back to the queue; the WORK_DATA that follows is then
    # refused, and the ECHO after them is answered: one ERROR, then ECHO_RES.
    work = ev.WorkData(handle, b"late")
    echo = ev.EchoReq(b"after")
    worker.send(ev.CantDo(b"rev"), work, echo)
    error = worker.next()
    assert error == ev.Error(b"JOB_NOT_FOUND", b"Job does not exist on server")
    assert answered(worker) is work
    assert worker.next() == ev.EchoRes(b"after")
    assert answered(worker) is echo
    assert worker.conn.assigned_handles == frozenset()  # the job is not ours any more
    assert worker.conn.pending_replies == 0

    # Requests gearmand does not implement are answered with ERROR, in their turn.
    worker.send(ev.AllYours(), ev.SubmitJobSched(b"rev", b"", b"*", b"*", b"*", b"*", b"*", b""))
    assert worker.next() == ev.Error(b"INVALID_COMMAND", b"Command not expected")
    assert type(answered(worker)) is ev.AllYours
    assert worker.next() == ev.Error(b"INVALID_COMMAND", b"Command not expected")
    assert type(answered(worker)) is ev.SubmitJobSched
    reply, _ = worker.request(ev.Unused())
    assert reply == ev.Error(b"INVALID_COMMAND", b"Command not expected")


def test_admin_and_binary_replies_interleave(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    wire = connect(gearmand_server, wires)
    requests: list[Any] = [
        admin.Version(),
        ev.EchoReq(b"one"),
        admin.Status(),
        ev.SubmitJob(b"f", b"", b"", background=True),
        admin.ShowUniqueJobs(),
        ev.EchoReq(b"two"),
    ]
    wire.send(*requests)
    answered = []
    for _ in requests:
        reply = wire.next()
        answered.append(wire.conn.answered)
        assert reply is not None
    assert answered == requests
    assert wire.conn.pending_replies == 0


def test_cancelled_job_results_still_reach_the_client(
    gearmand_server: ServerProcess, wires: list[CoreWire]
) -> None:
    client = connect(gearmand_server, wires)
    created, _ = client.request(ev.SubmitJob(b"slow", b"c1", b"x"))
    worker = connect(gearmand_server, wires)
    worker.send(ev.CanDo(b"slow"))
    worker.request(ev.GrabJob())
    operator = connect(gearmand_server, wires)
    assert operator.request(admin.CancelJob(created.handle))[0] == AdminOk()
    assert client.next() == ev.WorkFail(created.handle)
    worker.send(ev.WorkComplete(created.handle, b"done anyway"))
    # gearmand forwards the late result; the core delivers it as an event.
    assert client.next() == ev.WorkComplete(created.handle, b"done anyway")
    assert client.conn.state is ConnectionState.OPEN


def test_server_view_answers_like_gearmand() -> None:
    """The hints of a server-side Connection are gearmand's replies (listed above)."""
    view = Connection(Side.SERVER)
    view.receive_data(frame(b"\0RES", 16, b"x") + frame(b"\0REQ", 8, b"H:1"))
    hints = []
    for _ in range(2):
        with pytest.raises(Exception) as info:
            view.next_event()
        hints.append(info.value.hint)  # type: ignore[attr-defined]
    assert hints == [
        ev.Error(b"INVALID_MAGIC", b"Request magic expected"),
        ev.Error(b"INVALID_COMMAND", b"Command not expected"),
    ]
