"""The admin text protocol: commands, replies, and their exact byte formats.

Admin commands are text lines sent on the same port as binary packets (a line is
anything that does not start with a NUL byte).  Replies are either one line
(``OK\\r\\n``, ``OK <value>\\n``, ``ERR <CODE> <text>\\r\\n``) or a listing: rows ending
in ``\\n`` and a final ``.\\n``.  The formats here reproduce gearmand 1.1.20 byte for
byte, including its mixed line endings and tab-separated columns.

Commands are what a client sends (:func:`format_command`) and what a server reads
(:func:`parse_command`); replies are what a server sends (:func:`format_reply`) and a
client reads (:class:`gearproto.Connection` assembles listings and calls
:func:`parse_reply_line` / :func:`parse_listing`).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, TypeAlias

from ._codec import parse_int
from .errors import LocalProtocolError
from .events import _event

__all__ = [
    "LISTING_COMMANDS",
    "MUTATING_COMMANDS",
    "AdminBadCommand",
    "AdminCommand",
    "AdminError",
    "AdminOk",
    "AdminReply",
    "CancelJob",
    "CreateFunction",
    "DropFunction",
    "GetPid",
    "JobRow",
    "MaxQueue",
    "PriorityStatus",
    "PriorityStatusReply",
    "PriorityStatusRow",
    "ShowJobs",
    "ShowJobsReply",
    "ShowUniqueJobs",
    "ShowUniqueJobsReply",
    "Shutdown",
    "Status",
    "StatusReply",
    "StatusRow",
    "Verbose",
    "Version",
    "WorkerRow",
    "Workers",
    "WorkersReply",
    "format_command",
    "format_reply",
    "parse_command",
    "parse_listing",
    "parse_reply_line",
    "tokenize",
]

#: gearmand reads at most this many space-separated tokens from a line.
MAX_TOKENS = 5


class AdminParseError(Exception):
    """A reply that does not have the format its command calls for."""


# ------------------------------------------------------------------------- commands


@_event
class Workers(NamedTuple):
    """``workers``: one row per connection with its id and registered functions."""


@_event
class Status(NamedTuple):
    """``status``: per function, jobs in total, jobs running, registered workers."""


@_event
class PriorityStatus(NamedTuple):
    """``prioritystatus``: per function, queued jobs per priority and workers."""


@_event
class MaxQueue(NamedTuple):
    """``maxqueue <function> [<n> | <high> <normal> [<low>]]``.

    ``limits`` holds what was given: ``()`` resets every limit to 0 (unlimited),
    ``(n,)`` sets all three, ``(high, normal)`` leaves LOW unlimited, and
    ``(high, normal, low)`` sets each.  :attr:`high`, :attr:`normal` and :attr:`low`
    give the effective values; 0 means unlimited.
    """

    function: bytes
    limits: tuple[int, ...] = ()

    @property
    def high(self) -> int:
        return max(self.limits[0], 0) if self.limits else 0

    @property
    def normal(self) -> int:
        if len(self.limits) >= 2:
            return max(self.limits[1], 0)
        return self.high

    @property
    def low(self) -> int:
        if len(self.limits) == 3:
            return max(self.limits[2], 0)
        return self.high if len(self.limits) == 1 else 0


@_event
class ShowJobs(NamedTuple):
    """``show jobs``: one row per job (handle, retries, ignored, queued)."""


@_event
class ShowUniqueJobs(NamedTuple):
    """``show unique jobs``: the unique id of every job."""


@_event
class CancelJob(NamedTuple):
    """``cancel job <handle>``: fail a queued job."""

    handle: bytes


@_event
class CreateFunction(NamedTuple):
    """``create function <function>``: create an empty function entry."""

    function: bytes


@_event
class DropFunction(NamedTuple):
    """``drop function <function>``: remove a function with no workers or running jobs."""

    function: bytes


@_event
class GetPid(NamedTuple):
    """``getpid``: the server's process id."""


@_event
class Verbose(NamedTuple):
    """``verbose``: the server's log level name."""


@_event
class Version(NamedTuple):
    """``version``: the server's version string."""


@_event
class Shutdown(NamedTuple):
    """``shutdown [graceful]``: stop the server (removed from gearmand in 1.1.15)."""

    graceful: bool = False


@_event
class AdminBadCommand(NamedTuple):
    """A line a server cannot run, with the reply gearmand gives to it.

    Only produced by a server-side :class:`~gearproto.Connection`; a server sends
    ``reply`` back.  ``tokens`` are the line's tokens as split by the server.
    """

    tokens: tuple[bytes, ...]
    reply: AdminError


AdminCommand: TypeAlias = (
    Workers
    | Status
    | PriorityStatus
    | MaxQueue
    | ShowJobs
    | ShowUniqueJobs
    | CancelJob
    | CreateFunction
    | DropFunction
    | GetPid
    | Verbose
    | Version
    | Shutdown
    | AdminBadCommand
)

#: Commands answered by a listing (rows, then ``.``).
LISTING_COMMANDS: frozenset[type[Any]] = frozenset(
    {Workers, Status, PriorityStatus, ShowJobs, ShowUniqueJobs}
)
#: Commands that change server state (servers may restrict who can send them).
MUTATING_COMMANDS: frozenset[type[Any]] = frozenset(
    {MaxQueue, CancelJob, CreateFunction, DropFunction, Shutdown}
)

# --------------------------------------------------------------------------- replies


@_event
class WorkerRow(NamedTuple):
    """One row of ``workers``: ``<fd> <address> <client-id> : <function>...``."""

    fd: int
    address: bytes
    client_id: bytes
    functions: tuple[bytes, ...] = ()


@_event
class StatusRow(NamedTuple):
    """One row of ``status``."""

    function: bytes
    total: int
    running: int
    workers: int


@_event
class PriorityStatusRow(NamedTuple):
    """One row of ``prioritystatus`` (queued, not running, jobs per priority)."""

    function: bytes
    high: int
    normal: int
    low: int
    workers: int


@_event
class JobRow(NamedTuple):
    """One row of ``show jobs``."""

    handle: bytes
    retries: int
    ignored: bool
    queued: bool


@_event
class WorkersReply(NamedTuple):
    """Reply to ``workers``."""

    rows: tuple[WorkerRow, ...]


@_event
class StatusReply(NamedTuple):
    """Reply to ``status``."""

    rows: tuple[StatusRow, ...]


@_event
class PriorityStatusReply(NamedTuple):
    """Reply to ``prioritystatus``."""

    rows: tuple[PriorityStatusRow, ...]


@_event
class ShowJobsReply(NamedTuple):
    """Reply to ``show jobs``."""

    rows: tuple[JobRow, ...]


@_event
class ShowUniqueJobsReply(NamedTuple):
    """Reply to ``show unique jobs``: one entry per job (may be empty bytes)."""

    uniques: tuple[bytes, ...]


@_event
class AdminOk(NamedTuple):
    """``OK\\r\\n`` (``value`` is ``None``) or ``OK <value>\\n``."""

    value: bytes | None = None


@_event
class AdminError(NamedTuple):
    """``ERR <code> <text>\\r\\n`` (or ``ERR <code>\\r\\n`` when ``text`` is empty)."""

    code: bytes
    text: bytes = b""

    @property
    def message(self) -> str:
        """Code and text as one readable string (gearmand writes ``+`` for spaces)."""
        text = self.text.replace(b"+", b" ")
        return (self.code + (b" " + text if text else b"")).decode(errors="replace")


AdminReply: TypeAlias = (
    WorkersReply
    | StatusReply
    | PriorityStatusReply
    | ShowJobsReply
    | ShowUniqueJobsReply
    | AdminOk
    | AdminError
)

# ------------------------------------------------------------------- command format


def _check_token(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"{name} must be bytes, not {type(value).__name__}")
    if not value:
        raise LocalProtocolError(f"{name} must not be empty in an admin command")
    for bad in (b" ", b"\r", b"\n", b"\0"):
        if bad in value:
            raise LocalProtocolError(f"{name} contains {bad!r}, which admin lines cannot carry")
    return value


def format_command(command: AdminCommand) -> bytes:
    """The line a client sends for ``command`` (CRLF-terminated, as gearadmin does).

    Raises:
        LocalProtocolError: an argument is empty or holds a space, CR, LF or NUL.
    """
    match command:
        case Workers():
            return b"workers\r\n"
        case Status():
            return b"status\r\n"
        case PriorityStatus():
            return b"prioritystatus\r\n"
        case MaxQueue(function=function, limits=limits):
            if len(limits) > 3:
                raise LocalProtocolError("maxqueue takes at most three limits")
            words = [b"maxqueue", _check_token("function", function)]
            for limit in limits:
                if not isinstance(limit, int) or isinstance(limit, bool):
                    raise LocalProtocolError("maxqueue limits must be int")
                if not 0 <= limit <= 0x7FFFFFFF:
                    raise LocalProtocolError("maxqueue limits must be in 0..2**31-1")
                words.append(b"%d" % limit)
            return b" ".join(words) + b"\r\n"
        case ShowJobs():
            return b"show jobs\r\n"
        case ShowUniqueJobs():
            return b"show unique jobs\r\n"
        case CancelJob(handle=handle):
            return b"cancel job " + _check_token("handle", handle) + b"\r\n"
        case CreateFunction(function=function):
            return b"create function " + _check_token("function", function) + b"\r\n"
        case DropFunction(function=function):
            return b"drop function " + _check_token("function", function) + b"\r\n"
        case GetPid():
            return b"getpid\r\n"
        case Verbose():
            return b"verbose\r\n"
        case Version():
            return b"version\r\n"
        case Shutdown(graceful=graceful):
            return b"shutdown graceful\r\n" if graceful else b"shutdown\r\n"
        case AdminBadCommand():
            raise LocalProtocolError("AdminBadCommand is what a server reads, not a command")
    raise LocalProtocolError(f"{type(command).__name__} is not an admin command")


# -------------------------------------------------------------------- command parse


def tokenize(line: bytes) -> list[bytes]:
    """Split an admin line (without its line ending) the way gearmand does.

    Tokens are separated by spaces only (a tab is part of a token); a run of spaces
    counts as one separator; a leading space makes an empty first token and a
    trailing space an empty last token.
    """
    tokens: list[bytes] = []
    start = 0
    end = len(line)
    while True:
        space = line.find(b" ", start)
        if space < 0:
            tokens.append(line[start:])
            return tokens
        tokens.append(line[start:space])
        start = space + 1
        while start < end and line[start] == 0x20:
            start += 1
        if start == end:
            tokens.append(b"")
            return tokens


_PLAIN = re.compile(rb"[\x21-\x24\x26-\x7e]*")


def _printable(token: bytes) -> bytes:
    """Escape what must not be echoed into a reply line (controls, non-ASCII, ``%``)."""
    if _PLAIN.fullmatch(token):
        return token
    return b"".join(bytes([c]) if 0x21 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in token)


def _c_string(token: bytes) -> bytes:
    """gearmand reads tokens as C strings: a NUL ends them."""
    nul = token.find(b"\0")
    return token if nul < 0 else token[:nul]


def _bad(tokens: list[bytes], reply: AdminError) -> AdminBadCommand:
    return AdminBadCommand(tuple(tokens), reply)


def _unknown(tokens: list[bytes], name: bytes) -> AdminBadCommand:
    return _bad(
        tokens, AdminError(b"UNKNOWN_COMMAND", b"Unknown+server+command" + _printable(name))
    )


def _bad_args(tokens: list[bytes], name: bytes) -> AdminBadCommand:
    return _bad(
        tokens,
        AdminError(
            b"INVALID_ARGUMENTS",
            b"An+incomplete+set+of+arguments+was+sent+to+this+command+" + _printable(name),
        ),
    )


def _atoi(raw: bytes) -> int:
    value = parse_int(raw)
    # gearmand stores the result of atoi() in an int.
    return max(min(value, 0x7FFFFFFF), -0x80000000)


def parse_command(line: bytes) -> AdminCommand:
    """Read one admin line (without ``\\n`` and its optional ``\\r``) as a server does.

    The grammar, case-insensitive command words and argument counts are gearmand's.
    A line gearmand would refuse becomes :class:`AdminBadCommand` carrying the reply
    gearmand sends, with two deliberate differences: bytes that cannot appear in a
    reply line are escaped as ``%XX`` when echoed, and a line of more than five tokens
    is answered with ``ERR INVALID_ARGUMENTS`` instead of closing the connection.
    """
    tokens = tokenize(line)
    words = [_c_string(t) for t in tokens]
    name = words[0]
    verb = name.lower()
    argc = len(words)
    if argc > MAX_TOKENS:
        return _bad_args(tokens, name)
    if verb == b"workers":
        return Workers()
    if verb == b"status":
        return Status()
    if verb == b"prioritystatus":
        return PriorityStatus()
    if verb == b"cancel" and argc >= 3:
        if argc == 3 and words[1].lower() == b"job" and words[2]:
            return CancelJob(words[2])
        return _bad(tokens, AdminError(b"UNKNOWN_ERROR"))
    if verb == b"show" and argc >= 2:
        if argc == 3 and words[1].lower() == b"unique" and words[2].lower() == b"jobs":
            return ShowUniqueJobs()
        if argc == 2 and words[1].lower() == b"jobs":
            return ShowJobs()
        return _bad(tokens, AdminError(b"UNKNOWN_SHOW_ARGUMENTS"))
    if verb in (b"create", b"drop"):
        if argc == 3 and words[1].lower() == b"function" and words[2]:
            return CreateFunction(words[2]) if verb == b"create" else DropFunction(words[2])
        return _bad_args(tokens, name)
    if verb == b"maxqueue":
        if argc == 1 or not words[1]:
            return _bad_args(tokens, name)
        return MaxQueue(words[1], tuple(_atoi(w) for w in words[2:]))
    if verb == b"getpid":
        return GetPid()
    if verb == b"verbose":
        return Verbose()
    if verb == b"version":
        return Version()
    if verb == b"shutdown":
        if argc == 1:
            return Shutdown()
        if argc == 2 and words[1].lower() == b"graceful":
            return Shutdown(graceful=True)
        return _bad_args(tokens, name)
    return _unknown(tokens, name)


# --------------------------------------------------------------------- reply format


def _check_cell(value: bytes, what: str, forbidden: bytes) -> bytes:
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"{what} must be bytes, not {type(value).__name__}")
    for c in forbidden:
        if c in value:
            raise LocalProtocolError(f"{what} {value!r} contains {bytes([c])!r}")
    return value


_LINE_BREAKS = b"\r\n"
_ROW_BREAKS = b"\r\n\t"


def _u(value: int, what: str) -> bytes:
    if not isinstance(value, int) or value < 0:
        raise LocalProtocolError(f"{what} must be a non-negative int")
    return b"%d" % value


def _status_row(row: StatusRow) -> bytes:
    return b"%s\t%s\t%s\t%s\n" % (
        _check_cell(row.function, "function", _ROW_BREAKS),
        _u(row.total, "total"),
        _u(row.running, "running"),
        _u(row.workers, "workers"),
    )


def _priority_row(row: PriorityStatusRow) -> bytes:
    return b"%s\t%s\t%s\t%s\t%s\n" % (
        _check_cell(row.function, "function", _ROW_BREAKS),
        _u(row.high, "high"),
        _u(row.normal, "normal"),
        _u(row.low, "low"),
        _u(row.workers, "workers"),
    )


def _worker_row(row: WorkerRow) -> bytes:
    parts = [
        b"%d %s %s :"
        % (
            row.fd,
            _check_cell(row.address, "address", _LINE_BREAKS + b" "),
            _check_cell(row.client_id, "client id", _LINE_BREAKS + b" "),
        )
    ]
    parts.extend(b" " + _check_cell(f, "function", _LINE_BREAKS) for f in row.functions)
    parts.append(b"\n")
    return b"".join(parts)


def _job_row(row: JobRow) -> bytes:
    return b"%s\t%s\t%d\t%d\n" % (
        _check_cell(row.handle, "handle", _ROW_BREAKS),
        _u(row.retries, "retries"),
        bool(row.ignored),
        bool(row.queued),
    )


def format_reply(reply: AdminReply) -> bytes:
    """The bytes a server sends for ``reply``, exactly as gearmand formats them.

    Raises:
        LocalProtocolError: a cell would break the listing (a line break in any
            cell, a tab in a tab-separated cell, a space in a worker row's id).
    """
    match reply:
        case AdminOk(value=None):
            return b"OK\r\n"
        case AdminOk(value=bytes() as value):
            return b"OK " + _check_cell(value, "OK value", _LINE_BREAKS) + b"\n"
        case AdminError(code=code, text=text):
            _check_cell(code, "error code", _LINE_BREAKS + b" ")
            if not code:
                raise LocalProtocolError("an ERR line needs a code")
            _check_cell(text, "error text", _LINE_BREAKS)
            return b"ERR " + code + (b" " + text if text else b"") + b"\r\n"
        case StatusReply(rows=rows):
            return b"".join([_status_row(r) for r in rows]) + b".\n"
        case PriorityStatusReply(rows=rows):
            return b"".join([_priority_row(r) for r in rows]) + b".\n"
        case WorkersReply(rows=rows):
            return b"".join([_worker_row(r) for r in rows]) + b".\n"
        case ShowJobsReply(rows=rows):
            return b"".join([_job_row(r) for r in rows]) + b".\n"
        case ShowUniqueJobsReply(uniques=uniques):
            cells = [_check_cell(u, "unique", _LINE_BREAKS) for u in uniques]
            for cell in cells:
                if cell == b".":
                    raise LocalProtocolError("a unique id of '.' would end the listing")
            return b"".join([c + b"\n" for c in cells]) + b".\n"
    raise LocalProtocolError(f"{type(reply).__name__} is not an admin reply")


# ---------------------------------------------------------------------- reply parse


def _int(raw: bytes) -> int:
    if not raw.isdigit():
        raise AdminParseError(f"expected a number, got {raw!r}")
    return int(raw)


def _parse_status_row(row: bytes) -> StatusRow:
    cells = row.rsplit(b"\t", 3)
    if len(cells) != 4:
        raise AdminParseError(f"status row needs 4 columns: {row!r}")
    return StatusRow(cells[0], _int(cells[1]), _int(cells[2]), _int(cells[3]))


def _parse_priority_row(row: bytes) -> PriorityStatusRow:
    cells = row.rsplit(b"\t", 4)
    if len(cells) != 5:
        raise AdminParseError(f"prioritystatus row needs 5 columns: {row!r}")
    return PriorityStatusRow(
        cells[0], _int(cells[1]), _int(cells[2]), _int(cells[3]), _int(cells[4])
    )


def _parse_worker_row(row: bytes) -> WorkerRow:
    words = row.split(b" ")
    # <fd> <address> <client-id> : [functions]; the ":" is the first lone colon
    # after the three leading columns.
    try:
        colon = words.index(b":", 3)
    except ValueError:
        raise AdminParseError(f"workers row without ' :': {row!r}") from None
    fd_text = words[0]
    fd = int(fd_text) if fd_text.lstrip(b"-").isdigit() else None
    if fd is None:
        raise AdminParseError(f"workers row must start with a number: {row!r}")
    return WorkerRow(fd, words[1], b" ".join(words[2:colon]), tuple(words[colon + 1 :]))


def _parse_job_row(row: bytes) -> JobRow:
    cells = row.rsplit(b"\t", 3)
    if len(cells) != 4:
        raise AdminParseError(f"show jobs row needs 4 columns: {row!r}")
    return JobRow(cells[0], _int(cells[1]), _int(cells[2]) != 0, _int(cells[3]) != 0)


def parse_listing(command: type[Any], rows: list[bytes]) -> AdminReply:
    """Build the reply to a listing ``command`` from its rows (without the ``.``).

    Raises:
        AdminParseError: a row does not have the command's format.
    """
    if command is Status:
        return StatusReply(tuple(_parse_status_row(r) for r in rows))
    if command is PriorityStatus:
        return PriorityStatusReply(tuple(_parse_priority_row(r) for r in rows))
    if command is Workers:
        return WorkersReply(tuple(_parse_worker_row(r) for r in rows))
    if command is ShowJobs:
        return ShowJobsReply(tuple(_parse_job_row(r) for r in rows))
    if command is ShowUniqueJobs:
        return ShowUniqueJobsReply(tuple(rows))
    raise TypeError(f"{command.__name__} is not answered by a listing")


def parse_reply_line(line: bytes) -> AdminOk | AdminError:
    """Read a one-line reply (``OK``, ``OK <value>`` or ``ERR ...``, no line ending).

    Raises:
        AdminParseError: the line is neither ``OK`` nor ``ERR``.
    """
    if line == b"OK":
        return AdminOk()
    if line.startswith(b"OK "):
        return AdminOk(line[3:])
    if line.startswith(b"ERR "):
        code, _, text = line[4:].partition(b" ")
        return AdminError(code, text)
    raise AdminParseError(f"expected OK or ERR, got {line[:80]!r}")
