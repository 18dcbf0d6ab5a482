"""Fuzz target for the protocol core's parser (``gearproto.Connection``), both sides.

Invariants checked for every input:

* arbitrary bytes fed to either side give only events or
  :class:`~gearproto.RemoteProtocolError` -- any other exception is a bug;
* the same events and errors come out whatever the input's split into chunks (whole,
  byte by byte, and a split pattern drawn from the input itself);
* the receive buffer stays bounded by the limits (a packet header plus its declared
  body, or one text line), and after a fatal error nothing is buffered any more;
* the compiled receive loops (``gearproto._speedups``, when built) and the Python ones
  give the same events, the same errors (class, message, fatal, hint) and leave the
  connection in the same state after every chunk.

Run it with atheris (``python -m gearproto.fuzz.selftest_core -runs=100000 [corpus]``);
without atheris installed the same :func:`check` is driven by hypothesis in
``tests/test_fuzz_core_target.py``.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from gearproto import (
    NEED_DATA,
    Connection,
    ConnectionState,
    Limits,
    ProtocolError,
    RemoteProtocolError,
    Side,
    _connection,
    admin,
)
from gearproto import events as ev

__all__ = [
    "SEEDS",
    "check",
    "chunked",
    "drive",
    "implementations",
    "main",
    "primed",
    "snapshot",
    "strict",
]

#: Small limits, so that "bounded" means something for short inputs.
SMALL = Limits(
    max_packet_size=96,
    max_function=16,
    max_unique=16,
    max_handle=16,
    max_line=48,
    max_text=32,
    max_number=8,
)
DEFAULT = Limits()

# Requests a client has sent before the fuzzed replies arrive, so that replies can
# be matched (and mismatched) against something.
_PRIMING: tuple[Any, ...] = (
    ev.SubmitJob(b"f", b"u1", b"x"),
    admin.Status(),
    ev.GrabJobUniq(),
    ev.EchoReq(b"e"),
    admin.Workers(),
    ev.SubmitJob(b"f", b"", b"y", background=True),
    ev.GetStatus(b"H:1"),
    admin.Version(),
    ev.GrabJob(),
    admin.ShowUniqueJobs(),
    ev.OptionReq(b"exceptions"),
    ev.GrabJobAll(),
    ev.GetStatusUnique(b"u1"),
    admin.ShowJobs(),
    admin.PriorityStatus(),
    ev.PreSleep(),
    ev.CanDo(b"f"),
)

#: Seed inputs: a byte of options, then a stream (valid traffic of both kinds).
SEEDS: tuple[bytes, ...] = (
    b"\x00\x07\0REQ\0\0\0\x07\0\0\0\x07f\0u1\0xyzstatus\r\n\0REQ\0\0\0\x09\0\0\0\0",
    b"\x01\x03\0RES\0\0\0\x08\0\0\0\x03H:1f\t1\t0\t1\n.\nOK 1.1.20\n\0RES\0\0\0\x06\0\0\0\0",
    b"\x02\x05\0REQ\0\0\0\x10\0\0\0\x05helloworkers\n\0RES\0\0\0\x10\0\0\0\x00",
    b"\x03\x02ERR UNKNOWN_COMMAND x\r\n\0RES\0\0\0\x13\0\0\0\x05X\0why",
)


def implementations() -> tuple[str, ...]:
    """The receive loops available here: ``"python"``, and ``"c"`` when it is built."""
    return ("python", "c") if _connection._speedups is not None else ("python",)


def primed(
    side: Side, limits: Limits, implementation: str = "default"
) -> tuple[Connection, list[Any]]:
    """A fresh connection; a client one has sent the priming requests.

    ``implementation`` ``"python"`` forces the Python receive loops; ``"c"`` and
    ``"default"`` leave what new connections use.
    """
    conn = Connection(side, limits=limits)
    if implementation == "python":
        _connection._use_python_loops(conn)
    sent: list[Any] = []
    if side is Side.CLIENT:
        for request in _PRIMING:
            try:
                conn.send(request)
            except Exception:  # a request over the small limits is just not sent
                continue
            sent.append(request)
    return conn, sent


def strict(value: Any) -> Any:
    """``value`` in a form that compares exactly: field types count (``True != 1``)."""
    cls = type(value)
    if isinstance(value, tuple):
        return (cls.__name__, tuple(strict(item) for item in value))
    if isinstance(value, list):
        return ("list", tuple(strict(item) for item in value))
    if isinstance(value, enum.Enum):
        return (cls.__name__, value.name)
    if isinstance(value, ProtocolError):
        return (cls.__name__, str(value), value.fatal, strict(value.hint))
    if value is None or cls in (bytes, int, bool, str):
        return (cls.__name__, value)
    return (cls.__name__, repr(value))


def snapshot(
    conn: Connection, sent: Sequence[Any], index_of: dict[int, int] | None = None
) -> tuple[Any, ...]:
    """Everything a connection holds after a call, public and private, comparably.

    Requests this side sent are named by their index in ``sent`` (the reply queue and
    :attr:`~gearproto.Connection.answered` hold those very objects); ``index_of``,
    if given, is that index by ``id()``, computed once by the caller.
    """
    if index_of is None:
        index_of = {id(request): i for i, request in enumerate(sent)}

    def ref(item: Any) -> Any:
        if id(item) in index_of:
            return ("sent", index_of[id(item)])
        if type(item) is list:
            return ("run", tuple(ref(x) for x in item))
        if type(item).__name__ == "_Owed":
            return ("owed", strict(item.hint))
        return strict(item)

    listing = conn._listing
    return (
        conn.state,
        conn.pending_replies,
        conn.worker_state,
        tuple(sorted(conn.assigned_handles)),
        tuple(sorted(conn._client_handles.items())),
        tuple(conn._finished),
        conn.buffered,
        ref(conn.answered),
        tuple(ref(entry) for entry in conn._pending),
        conn._grabs,
        conn._sleeping,
        None if listing is None else tuple(listing),
        conn._listing_size,
        conn._need,
        conn._line_wait,
        conn._dead,
        conn._eof,
        len(conn._chunks),
        b"".join(conn._chunks),
        conn._ri,
        tuple(ref(event) for event in conn._ready),
        tuple(sorted((index, ref(r)) for index, r in conn._answers.items())),
        strict(conn._raise_next),
        strict(conn._error),
    )


def drive(
    conn: Connection,
    sent: Sequence[Any],
    chunks: Iterable[bytes],
    *,
    many: bool = False,
    trace: list[Any] | None = None,
    states: bool = True,
) -> list[Any]:
    """Feed ``chunks`` then EOF, draining events after each; returns what came out.

    Events are recorded with the index in ``sent`` of the request they answer;
    errors as (message, fatal, hint).  Stops after a fatal error.  ``many`` drains
    with :meth:`~gearproto.Connection.next_events` (then what a reply answers is not
    recorded: only the last event of a batch says it).  ``trace`` receives, exactly
    (see :func:`strict`), every batch, error and return value, and a
    :func:`snapshot` after every call (``states``; else after the last one only):
    the record two implementations must share.
    """
    limits = conn.limits
    bound = max(12 + limits.max_packet_size, limits.max_line, limits.max_packet_size)
    out: list[Any] = []
    index_of = {id(request): i for i, request in enumerate(sent)}
    log = trace.append if trace is not None else None

    def record(item: Any) -> None:
        if log is not None:
            log(item)
            if states:
                log(snapshot(conn, sent, index_of))

    def failed(exc: RemoteProtocolError) -> bool:
        """Record a RemoteProtocolError; False if it was fatal."""
        out.append(("error", str(exc), exc.fatal, exc.hint))
        record(strict(exc))
        if exc.fatal:
            assert conn.state is ConnectionState.ERROR
            return False
        return True

    def drain() -> bool:
        while True:
            if many:
                try:
                    batch = conn.next_events()
                except RemoteProtocolError as exc:
                    if not failed(exc):
                        return False
                    continue
                if batch:
                    out.extend((event, None) for event in batch)
                    record(("batch", strict(batch), index_of.get(id(conn.answered))))
                    continue
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                if not failed(exc):
                    return False
                continue
            record((strict(event), index_of.get(id(conn.answered))))
            if event is NEED_DATA:
                assert conn.buffered <= bound, (conn.buffered, bound)
                return True
            out.append((event, None if many else index_of.get(id(conn.answered))))
            if type(event) is ev.ConnectionClosed:
                return False

    for chunk in chunks:
        conn.receive_data(chunk)
        if not drain():
            conn.receive_data(b"more bytes after the end")
            assert conn.buffered == 0
            if log is not None:
                after: Any
                try:
                    after = conn.next_event()
                except RemoteProtocolError as exc:
                    after = exc
                record(strict(after))
                if not states:
                    log(snapshot(conn, sent, index_of))
            return out
    conn.receive_eof()
    drain()
    if log is not None and not states:
        log(snapshot(conn, sent, index_of))
    return out


def chunked(data: bytes, pattern: bytes) -> list[bytes]:
    """Cut ``data`` into chunks whose sizes cycle through ``pattern`` (+1 each)."""
    sizes = [b % 23 + 1 for b in pattern] or [1]
    chunks: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    return chunks


def check(data: bytes) -> None:
    """The fuzz target: one input, both sides, three ways of chunking it.

    The first byte picks the side (bit 0), the limits (bit 1) and the draining call
    (bit 2: ``next_events()``); the second how the third chunking cuts the stream.
    Every chunking runs on each implementation of the receive loops; their traces
    must be identical.
    """
    if len(data) < 2:
        return
    options, pattern_byte, stream = data[0], data[1], data[2:]
    side = Side.CLIENT if options & 1 else Side.SERVER
    limits = SMALL if options & 2 else DEFAULT
    many = bool(options & 4)
    pattern = stream[: pattern_byte % 8]
    results = []
    for chunks, states in (
        ([stream], True),
        (chunked(stream, pattern), True),
        # Byte by byte: the state is compared once, at the end (cheaper to fuzz).
        ([stream[i : i + 1] for i in range(len(stream))], False),
    ):
        traces = []
        for implementation in implementations():
            conn, sent = primed(side, limits, implementation)
            trace: list[Any] = []
            result = drive(conn, sent, chunks, many=many, trace=trace, states=states)
            traces.append(trace)
        assert all(trace == traces[0] for trace in traces), "the implementations differ"
        results.append(result)
    assert results[0] == results[1] == results[2], results


_CORE_MODULES = (
    "gearproto._codec",
    "gearproto._connection",
    "gearproto._spec",
    "gearproto.admin",
    "gearproto.events",
    "gearproto.errors",
)


def _instrument_core(atheris: Any) -> None:
    """Coverage feedback from the core only (instrumenting everything loaded is slow).

    The core is imported before this module runs, so its functions and methods are
    instrumented in place rather than at import.
    """
    import inspect

    for name in _CORE_MODULES:
        module = sys.modules[name]
        for _, obj in inspect.getmembers(module):
            if getattr(obj, "__module__", None) != name:
                continue
            members = inspect.getmembers(obj) if inspect.isclass(obj) else [("", obj)]
            for _, member in members:
                func = getattr(member, "fget", member)
                if inspect.isfunction(func) and func.__module__ == name:
                    atheris.instrument_func(func)


def main(argv: list[str] | None = None) -> int:
    """Run the atheris fuzzer on :func:`check` (libFuzzer arguments pass through)."""
    import atheris

    args = list(sys.argv if argv is None else [sys.argv[0], *argv])
    _instrument_core(atheris)
    atheris.Setup(args, check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
