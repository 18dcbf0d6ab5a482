"""A tiny language for scripted scenarios: raw packets and admin lines over sockets.

A :class:`Scenario` is a list of :class:`Step`: on a named connection, send bytes, then
read a number of replies of known kinds.  Running it gives a *transcript* (one entry
per reply) that can be compared between two servers byte for byte.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gearproto import REQ, raw_packet

#: Reply kinds a step can read.
PACKET = "packet"  # one binary packet
LINE = "line"  # one admin line (OK/ERR)
LISTING = "listing"  # admin rows up to ".\n"
SILENCE = "silence"  # nothing arrives for a short while
CLOSED = "closed"  # the server closes the connection (EOF)
MAYBE = "maybe"  # one packet if it arrives within a short while, else "<silence>"

Transcript = list[tuple[str, bytes]]


def req(ptype: int, *fields: bytes) -> bytes:
    """A request packet with ``fields`` joined by NULs."""
    return raw_packet(REQ, ptype, list(fields))


def res(ptype: int, *fields: bytes) -> bytes:
    """The bytes of a response packet (for expected values)."""
    return raw_packet(b"\0RES", ptype, list(fields))


@dataclass
class Step:
    conn: str
    #: Bytes to send, or a function making them when the step runs (times).
    send: bytes | Callable[[], bytes] = b""
    read: Sequence[str] = ()
    #: Seconds to wait before this step (timers).
    wait: float = 0.0
    #: Close the connection after sending.
    close: bool = False


@dataclass
class Scenario:
    name: str
    #: The rule or admin command the scenario covers (issue checklist wording).
    rule: str
    steps: list[Step]
    #: Extra server options given to both servers.
    args: tuple[str, ...] = ()
    #: When we deliberately differ: the entry in docs/deviations.md, and a check of
    #: (ours, gearmand's) transcripts that states both behaviours.
    deviation: str | None = None
    check: Callable[[Transcript, Transcript], None] | None = None
    #: Extra options for gearmand only (e.g. ``-R``).
    gearmand_args: tuple[str, ...] = ()
    normalize: Callable[[Transcript], Transcript] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


class ScenarioError(AssertionError):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ScenarioError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _recv_line(sock: socket.socket, pending: bytearray) -> bytes:
    while b"\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ScenarioError(f"connection closed in a line: {bytes(pending)!r}")
        pending += chunk
    index = pending.index(b"\n") + 1
    line = bytes(pending[:index])
    del pending[:index]
    return line


def run(scenario: Scenario, address: tuple[str, int], timeout: float = 5.0) -> Transcript:
    """Play ``scenario`` against the server at ``address``; its transcript."""
    socks: dict[str, socket.socket] = {}
    pending: dict[str, bytearray] = {}
    transcript: Transcript = []
    try:
        for step in scenario.steps:
            if step.wait:
                time.sleep(step.wait)
            sock = socks.get(step.conn)
            if sock is None:
                sock = socket.create_connection(address, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[step.conn] = sock
                pending[step.conn] = bytearray()
            data = step.send() if callable(step.send) else step.send
            if data:
                sock.sendall(data)
            if step.close:
                sock.close()
                del socks[step.conn]
                continue
            for kind in step.read:
                transcript.append((step.conn, _read(sock, pending[step.conn], kind, timeout)))
    finally:
        for sock in socks.values():
            sock.close()
    return transcript


def _read(sock: socket.socket, buf: bytearray, kind: str, timeout: float) -> bytes:
    sock.settimeout(timeout)
    if kind == PACKET:
        while len(buf) < 12:
            chunk = sock.recv(65536)
            if not chunk:
                raise ScenarioError("connection closed while a packet was expected")
            buf += chunk
        size = int.from_bytes(buf[8:12], "big")
        while len(buf) < 12 + size:
            chunk = sock.recv(65536)
            if not chunk:
                raise ScenarioError("connection closed inside a packet")
            buf += chunk
        packet = bytes(buf[: 12 + size])
        del buf[: 12 + size]
        return packet
    if kind == LINE:
        return _recv_line(sock, buf)
    if kind == LISTING:
        out = b""
        while True:
            line = _recv_line(sock, buf)
            out += line
            if line == b".\n":
                return out
    if kind == MAYBE:
        if not buf:
            sock.settimeout(0.4)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return b"<silence>"
            if not chunk:
                return b"<closed>"
            buf += chunk
        return _read(sock, buf, PACKET, timeout)
    if kind in (SILENCE, CLOSED):
        if buf:
            return b"UNEXPECTED " + bytes(buf)
        sock.settimeout(0.4 if kind == SILENCE else timeout)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"<silence>"
        except ConnectionResetError:
            return b"<closed>"
        if not chunk:
            return b"<closed>"
        if kind == CLOSED:
            # Anything sent before closing is part of the answer.
            rest = chunk
            try:
                while more := sock.recv(65536):
                    rest += more
            except (TimeoutError, ConnectionResetError):
                pass
            return rest + b"<closed>"
        return b"UNEXPECTED " + chunk
    raise ValueError(kind)


_FD = re.compile(rb"^-?\d+ ", re.M)


def sort_listings(transcript: Transcript) -> Transcript:
    """Listings in a stable order (gearmand lists in hash order), fds masked."""
    out = []
    for conn, data in transcript:
        if data.endswith(b".\n") and not data.startswith(b"\0"):
            rows = data[:-2].split(b"\n")[:-1] if data != b".\n" else []
            rows = sorted(_FD.sub(b"FD ", row + b"\n", count=1) for row in rows)
            data = b"".join(rows) + b".\n"
        out.append((conn, data))
    return out
