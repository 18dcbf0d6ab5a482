"""Reading what a target sends back, without trusting it.

:class:`ReplyReader` cuts the server's byte stream into binary packets and text lines
and checks each against the packet table, so that a reply nothing could parse is a
finding rather than an exception.  It never waits for a declared body longer than
:data:`MAX_REPLY_BODY` (a lying size field is itself reported).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gearproto import HEADER_SIZE, PACKETS, REQ, RES, Direction, PacketType

__all__ = ["MAX_REPLY_BODY", "MAX_REPLY_LINE", "Reply", "ReplyReader", "packet_name"]

#: Reply bodies larger than this are reported instead of buffered.
MAX_REPLY_BODY = 256 << 20
#: Text reply lines longer than this are reported instead of buffered.
MAX_REPLY_LINE = 1 << 20

_HEADER = struct.Struct(">4sII")
_MAX_TYPE = max(PacketType)


def packet_name(ptype: int) -> str:
    """``SUBMIT_JOB`` for 7, ``type-0x80000000`` for numbers outside the table."""
    return PacketType(ptype).name if 0 < ptype <= _MAX_TYPE else f"type-{ptype:#x}"


@dataclass(frozen=True, slots=True)
class Reply:
    """One binary packet or text line received from a server."""

    #: ``"packet"`` or ``"line"``.
    kind: str
    ptype: int = 0
    magic: bytes = b""
    body: bytes = b""
    #: The body split into the fields the packet table gives the type (packets only).
    fields: tuple[bytes, ...] = ()
    #: A text line without its ``\\n`` (and without one ``\\r`` before it).
    line: bytes = b""
    #: What is wrong with the frame itself, if anything.
    problem: str | None = None

    @property
    def name(self) -> str:
        return packet_name(self.ptype) if self.kind == "packet" else "text"

    def short(self) -> str:
        """A one-line description for reports."""
        if self.kind == "line":
            return f"line {self.line[:60]!r}"
        if self.ptype == PacketType.ERROR and len(self.fields) == 2:
            return f"ERROR {self.fields[0].decode('latin-1')}"
        return self.name


def _check_packet(magic: bytes, ptype: int, body: bytes) -> Reply:
    if magic != RES:
        problem = (
            "reply uses the request magic \\0REQ"
            if magic == REQ
            else f"reply with invalid magic {magic!r}"
        )
        return Reply("packet", ptype, magic, body, problem=problem)
    if not 0 < ptype <= _MAX_TYPE:
        return Reply("packet", ptype, magic, body, problem=f"reply with unknown type {ptype}")
    spec = PACKETS[PacketType(ptype)]
    if spec.direction is Direction.REQUEST:
        return Reply(
            "packet", ptype, magic, body, problem=f"server sent {spec.name}, a request type"
        )
    if not spec.fields:
        fields: tuple[bytes, ...] = ()
        empty_problem = (
            f"{spec.name} with a {len(body)}-byte body (must be empty)" if body else None
        )
        return Reply("packet", ptype, magic, body, fields, problem=empty_problem)
    parts = body.split(b"\0", spec.nul_terminated)
    if len(parts) != len(spec.fields):
        return Reply(
            "packet",
            ptype,
            magic,
            body,
            problem=f"{spec.name} body lacks its {spec.nul_terminated} NUL-terminated field(s)",
        )
    return Reply("packet", ptype, magic, body, tuple(parts))


class ReplyReader:
    """Incremental splitter for a server's reply stream."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.total = 0
        #: Set when the stream cannot be framed any further (then nothing more is read).
        self.broken: str | None = None

    def feed(self, data: bytes) -> list[Reply]:
        """Add received bytes; returns every complete reply they finish."""
        if self.broken is not None:
            return []
        self.total += len(data)
        buf = self._buf
        buf += data
        out: list[Reply] = []
        pos = 0
        n = len(buf)
        while pos < n:
            if buf[pos] == 0:
                if n - pos < HEADER_SIZE:
                    break
                magic, ptype, size = _HEADER.unpack_from(buf, pos)
                if size > MAX_REPLY_BODY:
                    self.broken = f"reply {packet_name(ptype)} declares a {size}-byte body"
                    out.append(Reply("packet", ptype, bytes(magic), problem=self.broken))
                    pos = n
                    break
                end = pos + HEADER_SIZE + size
                if end > n:
                    break
                out.append(_check_packet(bytes(magic), ptype, bytes(buf[pos + HEADER_SIZE : end])))
                pos = end
            else:
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    if n - pos > MAX_REPLY_LINE:
                        self.broken = f"text reply line longer than {MAX_REPLY_LINE} bytes"
                        out.append(Reply("line", problem=self.broken))
                        pos = n
                    break
                end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
                out.append(Reply("line", line=bytes(buf[pos:end])))
                pos = newline + 1
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished reply."""
        return len(self._buf)
