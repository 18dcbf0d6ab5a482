"""Fuzz target for the protocol core's parser (``gearproto.Connection``), both sides.

Invariants checked for every input:

* arbitrary bytes fed to either side give only events or
  :class:`~gearproto.RemoteProtocolError` -- any other exception is a bug;
* the same events and errors come out whatever the input's split into chunks (whole,
  byte by byte, and a split pattern drawn from the input itself);
* the receive buffer stays bounded by the limits (a packet header plus its declared
  body, or one text line), and after a fatal error nothing is buffered any more.

Run it with atheris (``python -m gearproto.fuzz.selftest_core -runs=100000 [corpus]``);
without atheris installed the same :func:`check` is driven by hypothesis in
``tests/test_fuzz_core_target.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from gearproto import (
    NEED_DATA,
    Connection,
    ConnectionState,
    Limits,
    RemoteProtocolError,
    Side,
    admin,
)
from gearproto import events as ev

__all__ = ["SEEDS", "check", "chunked", "drive", "main", "primed"]

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


def primed(side: Side, limits: Limits) -> tuple[Connection, list[Any]]:
    """A fresh connection; a client one has sent the priming requests."""
    conn = Connection(side, limits=limits)
    sent: list[Any] = []
    if side is Side.CLIENT:
        for request in _PRIMING:
            try:
                conn.send(request)
            except Exception:  # a request over the small limits is just not sent
                continue
            sent.append(request)
    return conn, sent


def drive(conn: Connection, sent: Sequence[Any], chunks: Iterable[bytes]) -> list[Any]:
    """Feed ``chunks`` then EOF, draining events after each; returns what came out.

    Events are recorded with the index in ``sent`` of the request they answer;
    errors as (message, fatal, hint).  Stops after a fatal error.
    """
    limits = conn.limits
    bound = max(12 + limits.max_packet_size, limits.max_line, limits.max_packet_size)
    out: list[Any] = []
    index_of = {id(request): i for i, request in enumerate(sent)}

    def drain() -> bool:
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                out.append(("error", str(exc), exc.fatal, exc.hint))
                if exc.fatal:
                    assert conn.state is ConnectionState.ERROR
                    return False
                continue
            if event is NEED_DATA:
                assert conn.buffered <= bound, (conn.buffered, bound)
                return True
            out.append((event, index_of.get(id(conn.answered))))
            if type(event) is ev.ConnectionClosed:
                return False

    for chunk in chunks:
        conn.receive_data(chunk)
        if not drain():
            conn.receive_data(b"more bytes after the end")
            assert conn.buffered == 0
            return out
    conn.receive_eof()
    drain()
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
    """The fuzz target: one input, both sides, three ways of chunking it."""
    if len(data) < 2:
        return
    options, pattern_byte, stream = data[0], data[1], data[2:]
    side = Side.CLIENT if options & 1 else Side.SERVER
    limits = SMALL if options & 2 else DEFAULT
    pattern = stream[: pattern_byte % 8]
    results = []
    for chunks in (
        [stream],
        chunked(stream, pattern),
        [stream[i : i + 1] for i in range(len(stream))],
    ):
        conn, sent = primed(side, limits)
        results.append(drive(conn, sent, chunks))
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
