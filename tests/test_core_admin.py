"""The admin text protocol: tokenizing, commands, reply formats (units; gearmand parity
is in test_core_gearmand.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gearproto import LocalProtocolError, admin
from gearproto.admin import (
    AdminError,
    AdminOk,
    AdminParseError,
    JobRow,
    MaxQueue,
    PriorityStatusRow,
    StatusRow,
    WorkerRow,
    format_command,
    format_reply,
    parse_command,
    parse_listing,
    parse_reply_line,
    tokenize,
)


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        (b"status", [b"status"]),
        (b"show  unique   jobs", [b"show", b"unique", b"jobs"]),
        (b" status", [b"", b"status"]),
        (b"cancel job ", [b"cancel", b"job", b""]),
        (b"a\tb c", [b"a\tb", b"c"]),
        (b"", [b""]),
    ],
)
def test_tokenize_like_gearmand(line: bytes, tokens: list[bytes]) -> None:
    assert tokenize(line) == tokens


@given(st.lists(st.sampled_from([b"status", b"x", b"", b" ", b"  ", b"a\tb"])).map(b" ".join))
def test_tokens_never_hold_spaces(line: bytes) -> None:
    assert all(b" " not in token for token in tokenize(line))


COMMANDS: list[tuple[Any, bytes]] = [
    (admin.Workers(), b"workers\r\n"),
    (admin.Status(), b"status\r\n"),
    (admin.PriorityStatus(), b"prioritystatus\r\n"),
    (admin.ShowJobs(), b"show jobs\r\n"),
    (admin.ShowUniqueJobs(), b"show unique jobs\r\n"),
    (admin.GetPid(), b"getpid\r\n"),
    (admin.Verbose(), b"verbose\r\n"),
    (admin.Version(), b"version\r\n"),
    (admin.Shutdown(), b"shutdown\r\n"),
    (admin.Shutdown(graceful=True), b"shutdown graceful\r\n"),
    (admin.CancelJob(b"H:x:1"), b"cancel job H:x:1\r\n"),
    (admin.CreateFunction(b"f"), b"create function f\r\n"),
    (admin.DropFunction(b"f"), b"drop function f\r\n"),
    (MaxQueue(b"f"), b"maxqueue f\r\n"),
    (MaxQueue(b"f", (1,)), b"maxqueue f 1\r\n"),
    (MaxQueue(b"f", (1, 2)), b"maxqueue f 1 2\r\n"),
    (MaxQueue(b"f", (1, 2, 3)), b"maxqueue f 1 2 3\r\n"),
]


@pytest.mark.parametrize(("command", "line"), COMMANDS)
def test_commands_format_and_parse_back(command: Any, line: bytes) -> None:
    assert format_command(command) == line
    assert parse_command(line[:-2]) == command


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (admin.CancelJob(b""), "handle must not be empty"),
        (admin.CancelJob(b"a b"), "contains b' '"),
        (admin.CreateFunction(b"a\nb"), "contains b'\\\\n'"),
        (admin.DropFunction("f"), "function must be bytes, not str"),  # type: ignore[arg-type]
        (MaxQueue(b"f", (1, 2, 3, 4)), "at most three limits"),
        (MaxQueue(b"f", (-1,)), "in 0..2\\*\\*31-1"),
        (MaxQueue(b"f", (True,)), "limits must be int"),
        (admin.AdminOk(), "AdminOk is not an admin command"),
    ],
)
def test_format_command_refuses(command: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        format_command(command)


def test_maxqueue_effective_limits() -> None:
    assert (MaxQueue(b"f").high, MaxQueue(b"f").normal, MaxQueue(b"f").low) == (0, 0, 0)
    one = MaxQueue(b"f", (4,))
    assert (one.high, one.normal, one.low) == (4, 4, 4)
    two = MaxQueue(b"f", (4, 5))
    assert (two.high, two.normal, two.low) == (4, 5, 0)
    three = MaxQueue(b"f", (4, -5, 6))
    assert (three.high, three.normal, three.low) == (4, 0, 6)


def test_admin_error_message_reads_well() -> None:
    assert AdminError(b"UNKNOWN_COMMAND", b"Unknown+server+commandx").message == (
        "UNKNOWN_COMMAND Unknown server commandx"
    )
    assert AdminError(b"UNKNOWN_JOB").message == "UNKNOWN_JOB"


REPLIES: list[tuple[Any, bytes]] = [
    (AdminOk(), b"OK\r\n"),
    (AdminOk(b"1.1.20+ds"), b"OK 1.1.20+ds\n"),
    (AdminOk(b""), b"OK \n"),
    (AdminError(b"UNKNOWN_JOB"), b"ERR UNKNOWN_JOB\r\n"),
    (
        AdminError(b"there", b"are still connected workers"),
        b"ERR there are still connected workers\r\n",
    ),
    (AdminError(b"X", b"trailing CR\r"), b"ERR X trailing CR\r\r\n"),
    (admin.StatusReply(()), b".\n"),
    (admin.StatusReply((StatusRow(b"f\tg", 1, 2, 3),)), b"f\tg\t1\t2\t3\n.\n"),
    (admin.PriorityStatusReply((PriorityStatusRow(b"f", 1, 2, 3, 4),)), b"f\t1\t2\t3\t4\n.\n"),
    (admin.WorkersReply((WorkerRow(7, b"::1", b"-"),)), b"7 ::1 - :\n.\n"),
    (admin.WorkersReply((WorkerRow(7, b"1.2.3.4", b"", (b"a", b"b")),)), b"7 1.2.3.4  : a b\n.\n"),
    (admin.WorkersReply((WorkerRow(7, b"h", b":", (b"",)),)), b"7 h : : \n.\n"),
    (admin.ShowJobsReply((JobRow(b"H:1", 2, True, False),)), b"H:1\t2\t1\t0\n.\n"),
    (admin.ShowUniqueJobsReply((b"", b"-", b"u\r")), b"\n-\nu\r\n.\n"),
]


@pytest.mark.parametrize(("reply", "wire"), REPLIES)
def test_replies_format_and_parse_back(reply: Any, wire: bytes) -> None:
    assert format_reply(reply) == wire
    if type(reply) in (AdminOk, AdminError):
        line = wire[:-2] if wire.endswith(b"\r\n") else wire[:-1]
        assert parse_reply_line(line) == reply
    else:
        command = {v: k for k, v in admin.REPLY_FOR.items()}[type(reply)]
        rows = wire.split(b"\n")[:-2]
        assert parse_listing(command, rows) == reply


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (AdminOk(b"a\nb"), "contains a newline"),
        (AdminOk(b"v\r"), "ends in CR"),
        (AdminError(b"TWO WORDS"), "must be one non-empty word"),
        (AdminError(b""), "must be one non-empty word"),
        (admin.StatusReply((StatusRow(b"f", -1, 0, 0),)), "non-negative int"),
        (admin.WorkersReply((WorkerRow(1, b"a b", b"-"),)), "must be one non-empty word"),
        (admin.WorkersReply((WorkerRow(1, b"h", b"x : y"),)), "ends the id"),
        (admin.WorkersReply((WorkerRow("1", b"h", b"-"),)), "fd must be an int"),  # type: ignore[arg-type]
        (admin.WorkersReply((WorkerRow(1, b"h", b"-", [b"f"]),)), "must be a tuple"),  # type: ignore[arg-type]
        (admin.ShowUniqueJobsReply((b".",)), "would end the listing"),
        (admin.ShowUniqueJobsReply((".",)), "must be bytes, not str"),  # type: ignore[arg-type]
        (admin.Status(), "Status is not an admin reply"),
    ],
)
def test_format_reply_refuses(reply: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        format_reply(reply)


def test_parse_errors() -> None:
    with pytest.raises(AdminParseError, match="expected an OK or ERR line"):
        parse_reply_line(b"okay")
    with pytest.raises(TypeError, match="Version is not answered by a listing"):
        parse_listing(admin.Version, [])
    with pytest.raises(AdminParseError, match="file descriptor"):
        parse_listing(admin.Workers, [b"1-2 h - :"])
    assert parse_listing(admin.Workers, [b"-1 h - :"]) == admin.WorkersReply(
        (WorkerRow(-1, b"h", b"-"),)
    )


def test_listing_errors_are_told_from_rows() -> None:
    assert admin.is_listing_error(admin.Status, b"ERR UNKNOWN_ERROR")
    assert not admin.is_listing_error(admin.Status, b"ERR x\t1\t2\t3")
    assert admin.is_listing_error(admin.Workers, b"ERR NOPE x")
    assert admin.is_listing_error(admin.ShowUniqueJobs, b"ERR PERMISSION_DENIED no")
    assert not admin.is_listing_error(admin.ShowUniqueJobs, b"ERR with two words")
    assert not admin.is_listing_error(admin.ShowJobs, b"OK")


def test_command_sets() -> None:
    assert set(admin.REPLY_FOR) == admin.LISTING_COMMANDS
    assert admin.MUTATING_COMMANDS < admin.COMMAND_CLASSES
    assert admin.MAX_TOKENS == 5


def test_shutdown_arguments() -> None:
    bad = parse_command(b"shutdown now")
    assert type(bad) is admin.AdminBadCommand
    assert bad.tokens == (b"shutdown", b"now")
    with pytest.raises(LocalProtocolError, match="what a server reads"):
        format_command(bad)
