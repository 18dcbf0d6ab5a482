"""The server's fast packet codec: well-formed requests in, replies out.

Why the server does not run a full :class:`gearproto.Connection` per peer: the core
already holds the authoritative state that the Connection would track a second time
(which jobs each worker holds, which clients follow which job, and replies are
produced in request order by construction), and tracking it twice cost about 4x the
whole per-job budget.  So this module decodes *well-formed* requests straight from
the receive buffer (payloads are sliced once, never copied twice) and builds each
reply in one allocation (:data:`res_packet`).  Anything unusual -- a bad header, a missing NUL,
an over-long field, a response type sent to the server -- is not judged here: the
packet is handed to :class:`ErrorOracle`, a protocol-core Connection, whose
:class:`~gearproto.RemoteProtocolError` and ``hint`` decide the answer.  The core
library remains the one place that defines what is malformed.
"""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Callable
from typing import Any, Final

from gearproto import RES, Connection, Limits, Priority, Side, parse_int
from gearproto import events as ev

__all__ = ["DECODERS", "Encoder", "ErrorOracle"]

HEADER: Final = struct.Struct(">4sII")
_unpack: Final = HEADER.unpack_from
_pack: Final = HEADER.pack
_tuple_new: Final = tuple.__new__

# Payloads at most this long are joined with their header into one chunk.
_JOIN_PAYLOAD: Final = 1 << 14

# --------------------------------------------------------------------------- decode
#
# A decoder takes (buffer, start, end, limits) and returns the event, or None when the
# packet is not plainly well-formed (the ErrorOracle then decides).

Decoder = Callable[[bytes, int, int, Limits], Any]


def _submit(priority: int, background: bool) -> Decoder:
    extra = (Priority(priority), background)

    def decode(buf: bytes, start: int, end: int, limits: Limits) -> Any:
        nul1 = buf.find(b"\0", start, end)
        if nul1 < 0 or nul1 - start > limits.max_function:
            return None
        nul2 = buf.find(b"\0", nul1 + 1, end)
        if nul2 < 0 or nul2 - nul1 - 1 > limits.max_unique:
            return None
        return _tuple_new(
            ev.SubmitJob, (buf[start:nul1], buf[nul1 + 1 : nul2], buf[nul2 + 1 : end], *extra)
        )

    return decode


def _empty(cls: type[Any]) -> Decoder:
    singleton = cls()

    def decode(buf: bytes, start: int, end: int, limits: Limits) -> Any:
        return singleton  # gearmand reads and discards a body sent with these

    return decode


def _handle_data(cls: type[Any]) -> Decoder:
    def decode(buf: bytes, start: int, end: int, limits: Limits) -> Any:
        nul = buf.find(b"\0", start, end)
        if nul < 0 or nul - start > limits.max_handle:
            return None
        return _tuple_new(cls, (buf[start:nul], buf[nul + 1 : end]))

    return decode


def _one_field(cls: type[Any], limit_name: str) -> Decoder:
    def decode(buf: bytes, start: int, end: int, limits: Limits) -> Any:
        if end - start > getattr(limits, limit_name):
            return None
        return _tuple_new(cls, (buf[start:end],))

    return decode


def _work_status(buf: bytes, start: int, end: int, limits: Limits) -> Any:
    parts = buf[start:end].split(b"\0", 2)
    if len(parts) != 3 or len(parts[0]) > limits.max_handle:
        return None
    return ev.WorkStatus(parts[0], parse_int(parts[1]), parse_int(parts[2]))


def _can_do_timeout(buf: bytes, start: int, end: int, limits: Limits) -> Any:
    parts = buf[start:end].split(b"\0", 1)
    if len(parts) != 2 or len(parts[0]) > limits.max_function:
        return None
    if len(parts[1]) > limits.max_number:
        return None  # the oracle answers "Number too large" style errors
    return ev.CanDoTimeout(parts[0], parse_int(parts[1]))


def _echo(buf: bytes, start: int, end: int, limits: Limits) -> Any:
    return _tuple_new(ev.EchoReq, (buf[start:end],))


def _epoch(buf: bytes, start: int, end: int, limits: Limits) -> Any:
    nul1 = buf.find(b"\0", start, end)
    nul2 = buf.find(b"\0", nul1 + 1, end) if nul1 >= 0 else -1
    nul3 = buf.find(b"\0", nul2 + 1, end) if nul2 >= 0 else -1
    if nul3 < 0 or nul1 - start > limits.max_function or nul2 - nul1 - 1 > limits.max_unique:
        return None
    when = buf[nul2 + 1 : nul3]
    if len(when) > limits.max_number:
        return None
    return ev.SubmitJobEpoch(
        buf[start:nul1], buf[nul1 + 1 : nul2], parse_int(when), buf[nul3 + 1 : end]
    )


def _reduce(background: bool) -> Decoder:
    def decode(buf: bytes, start: int, end: int, limits: Limits) -> Any:
        cuts = []
        at = start
        for _ in range(4):
            nul = buf.find(b"\0", at, end)
            if nul < 0:
                return None
            cuts.append(nul)
            at = nul + 1
        function = buf[start : cuts[0]]
        unique = buf[cuts[0] + 1 : cuts[1]]
        reducer = buf[cuts[1] + 1 : cuts[2]]
        aggregator = buf[cuts[2] + 1 : cuts[3]]
        if (
            len(function) > limits.max_function
            or len(unique) > limits.max_unique
            or len(reducer) > limits.max_function
            or len(aggregator) > limits.max_text
        ):
            return None
        return ev.SubmitReduceJob(
            function, unique, reducer, aggregator, buf[cuts[3] + 1 : end], background
        )

    return decode


def _sched(buf: bytes, start: int, end: int, limits: Limits) -> Any:
    # Refused (INVALID_COMMAND), as gearmand does, once the oracle has checked its
    # fields: a malformed one gets the same ERROR as any other malformed request.
    return None


def _build() -> list[Decoder | None]:
    table: list[Decoder | None] = [None] * 43
    table[1] = _one_field(ev.CanDo, "max_function")
    table[2] = _one_field(ev.CantDo, "max_function")
    table[3] = _empty(ev.ResetAbilities)
    table[4] = _empty(ev.PreSleep)
    table[5] = _empty(ev.Unused)
    table[7] = _submit(1, False)
    table[9] = _empty(ev.GrabJob)
    table[12] = _work_status
    table[13] = _handle_data(ev.WorkComplete)
    table[14] = _one_field(ev.WorkFail, "max_handle")
    table[15] = _one_field(ev.GetStatus, "max_handle")
    table[16] = _echo
    table[18] = _submit(1, True)
    table[21] = _submit(0, False)
    table[22] = _one_field(ev.SetClientId, "max_text")
    table[23] = _can_do_timeout
    table[24] = _empty(ev.AllYours)
    table[25] = _handle_data(ev.WorkException)
    table[26] = _one_field(ev.OptionReq, "max_text")
    table[28] = _handle_data(ev.WorkData)
    table[29] = _handle_data(ev.WorkWarning)
    table[30] = _empty(ev.GrabJobUniq)
    table[32] = _submit(0, True)
    table[33] = _submit(2, False)
    table[34] = _submit(2, True)
    table[35] = _sched
    table[36] = _epoch
    table[37] = _reduce(False)
    table[38] = _reduce(True)
    table[39] = _empty(ev.GrabJobAll)
    table[41] = _one_field(ev.GetStatusUnique, "max_unique")
    return table


#: Decoder per request type (``None``: not a request, always judged by the oracle).
DECODERS: Final = _build()


class ErrorOracle:
    """Judges a packet or line the fast decoder would not accept, with the core's rules.

    :meth:`judge` returns the event the core library reads from those bytes (some
    packets the fast path declines are still valid), or raises its
    :class:`~gearproto.RemoteProtocolError`.  One Connection is reused across calls
    (building one is costly) and replaced once it has failed or served many calls.
    """

    _REUSE = 256

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._conn: Connection | None = None
        self._uses = 0

    def judge(self, data: bytes) -> list[Any]:
        """Events in ``data`` (one packet or line); raises RemoteProtocolError."""
        conn = self._conn
        if conn is None or self._uses >= self._REUSE:
            conn = self._conn = Connection(Side.SERVER, limits=self.limits)
            self._uses = 0
        self._uses += 1
        conn.receive_data(data)
        events: list[Any] = []
        try:
            while True:
                event = conn.next_event()
                if event is _NEED_DATA:
                    break
                events.append(event)
        except Exception:
            self._conn = None
            raise
        if conn.buffered:
            # An incomplete frame: its verdict is not known yet.
            self._conn = None
        return events


from gearproto import NEED_DATA as _NEED_DATA  # noqa: E402

# --------------------------------------------------------------------------- encode


def _res_packet(ptype: int, *parts: bytes | memoryview) -> bytes:
    """A whole ``\0RES`` packet whose body is ``parts`` joined."""
    body = b"".join(parts)
    return _pack(RES, ptype, len(body)) + body


def _write_nonblocking(fd: int, data: bytes | memoryview) -> int:
    """One write to the non-blocking ``fd``: the bytes taken, 0 if none can be now."""
    try:
        return os.write(fd, data)
    except (BlockingIOError, InterruptedError):
        return 0


#: Most chunks one :func:`_write_chunks` call hands to the kernel (Linux's IOV_MAX).
WRITE_CHUNKS_MAX: Final = 1024


def _write_chunks(fd: int, chunks: list[Any]) -> int:
    """One ``writev`` of ``chunks`` to the non-blocking ``fd``: the bytes *not*
    written (0: all out; the total: none can be now).  Chunks past
    :data:`WRITE_CHUNKS_MAX` count as not written."""
    if not isinstance(chunks, list):
        raise TypeError("chunks must be a list")
    total = 0
    for chunk in chunks:
        total += memoryview(chunk).nbytes
    if not chunks:
        return 0
    try:
        return total - os.writev(fd, chunks[:WRITE_CHUNKS_MAX])
    except (BlockingIOError, InterruptedError):
        return total


#: Most bytes :func:`_poll_read` takes from one socket at a time.
POLL_READ_SIZE: Final = 65536


def _poll_read(poller: Any, maxevents: int, timeout_ms: int = 0) -> list[int | bytes]:
    """The sockets of ``poller`` (a ``select.epoll``) that are ready now (or within
    ``timeout_ms``), each read once: a flat list ``fd, data, ...``; ``data`` is
    ``b""`` at EOF or on an error (the connection's transport reads it again and
    reports it), and a socket with nothing to read after all is left out."""
    if not isinstance(maxevents, int) or not isinstance(timeout_ms, int):
        raise TypeError("maxevents and timeout_ms must be ints")
    if maxevents < 1:
        raise ValueError("maxevents must be at least 1")
    if not 0 <= timeout_ms < 1 << 31:
        raise ValueError("timeout_ms must be from 0 to 2**31-1")
    if not isinstance(poller, select.epoll):
        # Its file descriptor (as the C version accepts): polled through a copy.
        if isinstance(poller, int):
            fd = poller
        elif callable(getattr(poller, "fileno", None)):
            fd = poller.fileno()
        else:
            raise TypeError("poller must be a select.epoll, a file descriptor or have fileno()")
        with select.epoll.fromfd(os.dup(fd)) as copy:
            return _poll_read(copy, maxevents, timeout_ms)
    result: list[int | bytes] = []
    try:
        ready = poller.poll(timeout_ms / 1000, min(maxevents, 64))
    except InterruptedError:  # pragma: no cover - Python retries EINTR itself
        return result
    for fd, _events in ready:
        try:
            data = os.read(fd, POLL_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        result.append(fd)
        result.append(data)
    return result


def _c_primitives() -> tuple[
    Callable[..., bytes],
    Callable[[int, Any], int],
    Callable[..., list[int | bytes]],
    Callable[[int, list[Any]], int],
]:
    """The C versions (``gearproto.server._speedups``) of the primitives above when
    they are built and not switched off, else the Python ones."""
    if os.environ.get("GEARPROTO_PURE_PYTHON", "0") in ("", "0"):
        try:
            from gearproto.server import _speedups
        except ImportError:
            pass
        else:
            # Each looked up alone: a checkout's older build may lack the newest.
            return (
                getattr(_speedups, "res_packet", _res_packet),
                getattr(_speedups, "write_nonblocking", _write_nonblocking),
                getattr(_speedups, "poll_read", _poll_read),
                getattr(_speedups, "write_chunks", _write_chunks),
            )
    return _res_packet, _write_nonblocking, _poll_read, _write_chunks


#: ``res_packet(ptype, *parts)``: the server's packets, header and body in one object.
#: ``write_nonblocking(fd, data)``: a socket write that keeps the GIL (it never waits).
#: ``poll_read(poller, maxevents, timeout_ms=0)``: one round of reads of the polled
#: sockets (waiting for the first at most ``timeout_ms``).
#: ``write_chunks(fd, chunks)``: a connection's replies in one writev, unjoined.
_PRIMITIVES: Final = _c_primitives()
res_packet: Final = _PRIMITIVES[0]
write_nonblocking: Final = _PRIMITIVES[1]
poll_read: Final = _PRIMITIVES[2]
write_chunks: Final = _PRIMITIVES[3]


class Encoder:
    """Formats every packet the server sends (``\\0RES`` magic)."""

    __slots__ = ()

    @staticmethod
    def packet(ptype: int, fields: tuple[bytes, ...] | list[bytes]) -> bytes:
        body = b"\0".join(fields)
        return _pack(RES, ptype, len(body)) + body

    @staticmethod
    def with_payload(ptype: int, head: bytes, payload: bytes | memoryview) -> list[Any]:
        """``head`` (NUL-terminated fields) then ``payload``: one chunk, or two for
        large payloads so the payload is never copied."""
        if len(payload) <= _JOIN_PAYLOAD:
            return [res_packet(ptype, head, payload)]
        return [_pack(RES, ptype, len(head) + len(payload)) + head, payload]


NOOP: Final = _pack(RES, 6, 0)
NO_JOB: Final = _pack(RES, 10, 0)


def job_created(handle: bytes) -> bytes:
    return _pack(RES, 8, len(handle)) + handle


def error(code: bytes, text: bytes) -> bytes:
    return _pack(RES, 19, len(code) + 1 + len(text)) + code + b"\0" + text


def status_res(handle: bytes, known: bool, running: bool, num: int, den: int) -> bytes:
    body = b"%s\0%d\0%d\0%d\0%d" % (handle, known, running, num, den)
    return _pack(RES, 20, len(body)) + body


def status_res_unique(
    unique: bytes, known: bool, running: bool, num: int, den: int, clients: int
) -> bytes:
    body = b"%s\0%d\0%d\0%d\0%d\0%d" % (unique, known, running, num, den, clients)
    return _pack(RES, 42, len(body)) + body


def work_status(handle: bytes, num: int, den: int) -> bytes:
    body = b"%s\0%d\0%d" % (handle, num, den)
    return _pack(RES, 12, len(body)) + body


def handle_only(ptype: int, handle: bytes) -> bytes:
    return _pack(RES, ptype, len(handle)) + handle


def echo_res(data: bytes | memoryview) -> list[Any]:
    return Encoder.with_payload(17, b"", data)
