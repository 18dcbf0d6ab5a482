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
    "COMMAND_CLASSES",
    "LISTING_COMMANDS",
    "MAX_TOKENS",
    "MUTATING_COMMANDS",
    "REPLY_FOR",
    "AdminBadCommand",
    "AdminCommand",
    "AdminError",
    "AdminOk",
    "AdminParseError",
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
    "is_listing_error",
    "parse_command",
    "parse_listing",
    "parse_reply_line",
    "tokenize",
]

#: gearmand reads at most this many space-separated tokens from a line.
MAX_TOKENS = 5


class AdminParseError(ValueError):
    """An admin reply that does not have the format its command calls for."""


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


def _c_string(token: bytes) -> bytes:
    """gearmand reads tokens as C strings: a NUL ends them."""
    nul = token.find(b"\0")
    return token if nul < 0 else token[:nul]


def _bad(tokens: list[bytes], reply: AdminError) -> AdminBadCommand:
    return AdminBadCommand(tuple(tokens), reply)


def _unknown(tokens: list[bytes], name: bytes) -> AdminBadCommand:
    return _bad(tokens, AdminError(b"UNKNOWN_COMMAND", b"Unknown+server+command" + name))


def _bad_args(tokens: list[bytes], name: bytes) -> AdminBadCommand:
    return _bad(
        tokens,
        AdminError(
            b"INVALID_ARGUMENTS",
            b"An+incomplete+set+of+arguments+was+sent+to+this+command+" + name,
        ),
    )


def _atoi(raw: bytes) -> int:
    """C's ``atoi`` on a 64-bit Linux: ``strtol`` saturates, then the cast to int wraps."""
    value = max(min(parse_int(raw), (1 << 63) - 1), -(1 << 63))
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def parse_command(line: bytes) -> AdminCommand:
    """Read one admin line (without ``\\n`` and its optional ``\\r``) as a server does.

    The grammar, case-insensitive command words and argument counts are gearmand's
    (1.1.20, ``libgearman-server/text.cc``).  A line gearmand would refuse becomes
    :class:`AdminBadCommand` carrying the exact reply gearmand sends, with two
    deliberate differences: a line of more than five tokens is answered with
    ``ERR INVALID_ARGUMENTS`` (gearmand closes the connection without a word), and
    ``create function`` with an empty name is refused (gearmand computes a negative
    length).  Names are passed on as sent; gearmand's ``create function`` quirk of
    dropping the last character of a LF-terminated line is not reproduced.

    Args:
        line: one line, without its ``\n`` and without one trailing ``\r``.

    Returns:
        The command, or :class:`AdminBadCommand` with the reply to send.
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
        if argc == 3 and words[1].lower() == b"job":
            return CancelJob(words[2])
        return _bad(tokens, AdminError(b"UNKNOWN_ERROR"))
    if verb == b"show" and argc >= 2:
        if argc == 3 and words[1].lower() == b"unique" and words[2].lower() == b"jobs":
            return ShowUniqueJobs()
        if argc == 2 and words[1].lower() == b"jobs":
            return ShowJobs()
        return _bad(tokens, AdminError(b"UNKNOWN_SHOW_ARGUMENTS"))
    if verb == b"create":
        if argc == 3 and words[1].lower() == b"function" and words[2]:
            return CreateFunction(words[2])
        return _bad_args(tokens, name)
    if verb == b"drop":
        if argc == 3 and words[1].lower() == b"function":
            return DropFunction(words[2])
        return _bad_args(tokens, name)
    if verb == b"maxqueue":
        if argc == 1:
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


def _bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise LocalProtocolError(f"{what} must be bytes, not {type(value).__name__}")
    return value


def _no_newline(value: object, what: str) -> bytes:
    cell = _bytes(value, what)
    if b"\n" in cell:
        raise LocalProtocolError(f"{what} {cell[:60]!r} contains a newline, which ends a line")
    return cell


def _count(value: object, what: str) -> bytes:
    if type(value) is not int or value < 0:
        raise LocalProtocolError(f"{what} must be a non-negative int, not {value!r}")
    return b"%d" % value


def _status_row(row: StatusRow) -> bytes:
    return b"%s\t%s\t%s\t%s\n" % (
        _no_newline(row.function, "StatusRow.function"),
        _count(row.total, "StatusRow.total"),
        _count(row.running, "StatusRow.running"),
        _count(row.workers, "StatusRow.workers"),
    )


def _priority_row(row: PriorityStatusRow) -> bytes:
    return b"%s\t%s\t%s\t%s\t%s\n" % (
        _no_newline(row.function, "PriorityStatusRow.function"),
        _count(row.high, "PriorityStatusRow.high"),
        _count(row.normal, "PriorityStatusRow.normal"),
        _count(row.low, "PriorityStatusRow.low"),
        _count(row.workers, "PriorityStatusRow.workers"),
    )


def _worker_row(row: WorkerRow) -> bytes:
    if type(row.fd) is not int:
        raise LocalProtocolError(f"WorkerRow.fd must be an int, not {row.fd!r}")
    address = _no_newline(row.address, "WorkerRow.address")
    if b" " in address or not address:
        raise LocalProtocolError(f"WorkerRow.address {address!r} must be one non-empty word")
    client_id = _no_newline(row.client_id, "WorkerRow.client_id")
    # The id ends at the first lone ":" after it; one inside it would cut it short.
    if b":" in client_id.split(b" ")[1:]:
        raise LocalProtocolError(
            f"WorkerRow.client_id {client_id!r} contains ' :', which ends the id in a workers row"
        )
    if type(row.functions) is not tuple:
        raise LocalProtocolError("WorkerRow.functions must be a tuple of bytes")
    parts = [b"%d %s %s :" % (row.fd, address, client_id)]
    parts.extend(b" " + _no_newline(f, "WorkerRow function") for f in row.functions)
    parts.append(b"\n")
    return b"".join(parts)


def _job_row(row: JobRow) -> bytes:
    return b"%s\t%s\t%d\t%d\n" % (
        _no_newline(row.handle, "JobRow.handle"),
        _count(row.retries, "JobRow.retries"),
        bool(row.ignored),
        bool(row.queued),
    )


def _unique_row(unique: object) -> bytes:
    cell = _no_newline(unique, "unique")
    if cell == b"." or cell == b".\r":
        raise LocalProtocolError(f"a unique id of {cell!r} would end the listing")
    return cell + b"\n"


def format_reply(reply: AdminReply) -> bytes:
    """The bytes a server sends for ``reply``, exactly as gearmand formats them.

    Listings are rows ending in ``\\n`` and a final ``.\\n``; ``OK`` and ``ERR``
    lines end in ``\\r\\n``, ``OK <value>`` lines in ``\\n`` alone.

    Raises:
        LocalProtocolError: a cell would break the reply: a newline anywhere, a
            unique of ``.`` (it would end the listing), an ``OK`` value ending in
            ``\\r`` (a client strips it), a space or an empty error code, a worker
            row whose client id holds a lone ``:`` word, a negative count.
    """
    cls = type(reply)
    if cls is AdminOk:
        value = reply.value  # type: ignore[union-attr]
        if value is None:
            return b"OK\r\n"
        value = _no_newline(value, "AdminOk.value")
        if value.endswith(b"\r"):
            raise LocalProtocolError(f"AdminOk.value {value!r} ends in CR, which a client strips")
        return b"OK " + value + b"\n"
    if cls is AdminError:
        code = _no_newline(reply.code, "AdminError.code")  # type: ignore[union-attr]
        if not code or b" " in code:
            raise LocalProtocolError(f"AdminError.code {code!r} must be one non-empty word")
        text = _no_newline(reply.text, "AdminError.text")  # type: ignore[union-attr]
        return b"ERR " + code + (b" " + text if text else b"") + b"\r\n"
    if cls is StatusReply:
        return b"".join([_status_row(r) for r in reply.rows]) + b".\n"  # type: ignore[union-attr,arg-type]
    if cls is PriorityStatusReply:
        return b"".join([_priority_row(r) for r in reply.rows]) + b".\n"  # type: ignore[union-attr,arg-type]
    if cls is WorkersReply:
        return b"".join([_worker_row(r) for r in reply.rows]) + b".\n"  # type: ignore[union-attr,arg-type]
    if cls is ShowJobsReply:
        return b"".join([_job_row(r) for r in reply.rows]) + b".\n"  # type: ignore[union-attr,arg-type]
    if cls is ShowUniqueJobsReply:
        return b"".join([_unique_row(u) for u in reply.uniques]) + b".\n"  # type: ignore[union-attr]
    raise LocalProtocolError(f"{cls.__name__} is not an admin reply")


# ---------------------------------------------------------------------- reply parse


def _int(raw: bytes, what: str, row: bytes) -> int:
    if not raw.isdigit():
        raise AdminParseError(f"{what} must be a number in {row[:80]!r}")
    return int(raw)


def _cells(row: bytes, count: int, what: str) -> list[bytes]:
    # The first column (a function name or handle) may itself hold tabs, so split
    # from the right; a client-side CR before the LF is tolerated.
    cells = (row[:-1] if row.endswith(b"\r") else row).rsplit(b"\t", count - 1)
    if len(cells) != count:
        raise AdminParseError(f"{what} row needs {count} tab-separated columns: {row[:80]!r}")
    return cells


def _parse_status_row(row: bytes) -> StatusRow:
    f, total, running, workers = _cells(row, 4, "status")
    return StatusRow(
        f,
        _int(total, "total", row),
        _int(running, "running", row),
        _int(workers, "workers", row),
    )


def _parse_priority_row(row: bytes) -> PriorityStatusRow:
    f, high, normal, low, workers = _cells(row, 5, "prioritystatus")
    return PriorityStatusRow(
        f,
        _int(high, "high", row),
        _int(normal, "normal", row),
        _int(low, "low", row),
        _int(workers, "workers", row),
    )


def _parse_worker_row(row: bytes) -> WorkerRow:
    # <fd> <address> <client-id> :[ <function>]...; the id ends at the first lone
    # ":" after the three leading columns.  Function names are split on spaces.
    words = row.split(b" ")
    try:
        colon = words.index(b":", 3)
    except ValueError:
        raise AdminParseError(
            f"workers row without ' :' after three columns: {row[:80]!r}"
        ) from None
    fd = words[0]
    if not fd.lstrip(b"-").isdigit() or fd.count(b"-") > 1 or (b"-" in fd and fd[0] != 0x2D):
        raise AdminParseError(f"workers row must start with a file descriptor: {row[:80]!r}")
    return WorkerRow(int(fd), words[1], b" ".join(words[2:colon]), tuple(words[colon + 1 :]))


def _parse_job_row(row: bytes) -> JobRow:
    handle, retries, ignored, queued = _cells(row, 4, "show jobs")
    return JobRow(
        handle,
        _int(retries, "retries", row),
        _int(ignored, "ignored", row) != 0,
        _int(queued, "queued", row) != 0,
    )


def parse_listing(command: type[Any], rows: list[bytes]) -> AdminReply:
    """Build the reply to listing ``command`` from its rows.

    Args:
        command: the command class (:class:`Status`, :class:`Workers`, ...).
        rows: the rows without their ``\\n`` (and without the final ``.``).

    Raises:
        AdminParseError: a row does not have the command's format.
        TypeError: ``command`` is not answered by a listing.
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
    """Read a one-line reply: ``OK``, ``OK <value>`` or ``ERR <code> [<text>]``.

    Args:
        line: the line without its ``\\n`` and without one trailing ``\\r``.

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
    raise AdminParseError(f"expected an OK or ERR line, got {line[:80]!r}")


_UNIQUE_LISTING_ERROR = re.compile(rb"ERR [A-Z][A-Z0-9_]*(?: [^ \t]*)?")


def is_listing_error(command: type[Any], line: bytes) -> bool:
    """Whether ``line``, the first line of the reply to listing ``command``, is an ERR line.

    Rows of ``status``, ``prioritystatus`` and ``show jobs`` always hold tabs and
    ``workers`` rows start with a number, so an ``ERR`` line is told apart exactly.
    A ``show unique jobs`` row is a bare unique id, which may itself read like
    ``ERR CODE``: such a first row is taken for an error (a rare unique, against a
    reply that would otherwise swallow every later reply).
    """
    if not line.startswith(b"ERR "):
        return False
    if command is ShowUniqueJobs:
        return _UNIQUE_LISTING_ERROR.fullmatch(line) is not None
    return command is Workers or b"\t" not in line


#: Every admin command class a client may send (and :class:`AdminBadCommand`).
COMMAND_CLASSES: frozenset[type[Any]] = frozenset(
    {
        Workers,
        Status,
        PriorityStatus,
        MaxQueue,
        ShowJobs,
        ShowUniqueJobs,
        CancelJob,
        CreateFunction,
        DropFunction,
        GetPid,
        Verbose,
        Version,
        Shutdown,
        AdminBadCommand,
    }
)
#: The listing reply class of each listing command.
REPLY_FOR: dict[type[Any], type[Any]] = {
    Workers: WorkersReply,
    Status: StatusReply,
    PriorityStatus: PriorityStatusReply,
    ShowJobs: ShowJobsReply,
    ShowUniqueJobs: ShowUniqueJobsReply,
}
