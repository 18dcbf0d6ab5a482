"""Feeds a seeded random stream of traffic to a ServerCore; prints what it answered.

Run as a script (``python tests/server_core_trace.py SEED STEPS``): one JSON line per
output of the core (``drain()`` results, timer deadlines, counters).  The compiled
and the Python implementation of the core (``GEARPROTO_PURE_PYTHON=1``) must print
exactly the same thing; tests/test_server_compiled.py compares them.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import sys
from typing import Any

from gearproto import Limits
from gearproto.server import IMPLEMENTATION, PeerInfo, ServerConfig, ServerCore

HEADER = struct.Struct(">4sII")
FUNCTIONS = [b"f1", b"f2", b"rev"]


def packet(ptype: int, *fields: bytes, magic: bytes = b"\0REQ") -> bytes:
    body = b"\0".join(fields)
    return HEADER.pack(magic, ptype, len(body)) + body


def _handle(rng: random.Random, assigned: list[bytes]) -> bytes:
    if assigned and rng.random() < 0.8:
        return rng.choice(assigned[-4:])  # a job this connection was given, most likely
    return b"H:t:%d" % rng.randrange(1, 40)


def _assignments(data: bytes) -> list[bytes]:
    """Handles of the JOB_ASSIGN* packets in a connection's output."""
    handles = []
    pos = 0
    while len(data) - pos >= 12 and data[pos] == 0:
        magic, ptype, size = HEADER.unpack_from(data, pos)
        if magic == b"\0RES" and ptype in (11, 31, 40):
            body = data[pos + 12 : pos + 12 + size]
            handles.append(body.split(b"\0", 1)[0])
        pos += 12 + size
    return handles


def _payload(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return bytes([rng.randrange(256)]) * rng.randrange(70_000, 140_000)  # big frame
    if roll < 0.2:
        return b""
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))


def _request(rng: random.Random, assigned: list[bytes]) -> bytes:
    fn = rng.choice(FUNCTIONS)
    if assigned and rng.random() < 0.3:
        return packet(13, assigned.pop(), _payload(rng))  # a worker finishing its job
    kind = rng.randrange(22)
    if kind < 4:
        unique = rng.choice([b"", b"", b"u%d" % rng.randrange(5), b"-"])
        ptype = rng.choice([7, 21, 32, 18, 33, 34])
        return packet(ptype, fn, unique, _payload(rng))
    if kind < 7:
        return packet(rng.choice([30, 30, 9, 39]))
    if kind == 7:
        return packet(4)
    if kind < 10:
        return packet(13, _handle(rng, assigned), _payload(rng))
    if kind == 10:
        return packet(rng.choice([14, 25, 28, 29]), _handle(rng, assigned), _payload(rng))
    if kind == 11:
        numbers = (b"%d" % rng.randrange(5), b"%d" % rng.randrange(5))
        return packet(12, _handle(rng, assigned), *numbers)
    if kind == 12:
        return packet(1, fn) if rng.random() < 0.7 else packet(23, fn, b"%d" % rng.randrange(3))
    if kind == 13:
        return packet(rng.choice([2, 3]), fn) if rng.random() < 0.5 else packet(3)
    if kind == 14:
        return packet(16, _payload(rng))
    if kind == 15:
        return packet(rng.choice([15, 41]), _handle(rng, assigned))
    if kind == 16:
        return packet(26, rng.choice([b"exceptions", b"bogus"]))
    if kind == 17:
        return packet(36, fn, b"", b"%d" % rng.randrange(-1, 3), b"x")
    if kind == 18:
        line = rng.choice([b"status", b"workers", b"show jobs", b"version", b"bogus x"])
        return line + rng.choice([b"\n", b"\r\n"])
    if kind == 19 and rng.random() < 0.1:
        return packet(rng.choice([0, 8, 43]), b"junk")  # refused: the connection closes
    if kind == 20 and rng.random() < 0.3:
        return packet(7, fn)  # malformed (missing fields)
    return packet(22, b"client-%d" % rng.randrange(3))


def _emit(out: Any, record: list[Any]) -> None:
    out.write(json.dumps(record) + "\n")


def run(seed: int, steps: int, out: Any, full: bool = False) -> None:
    rng = random.Random(seed)
    limits = Limits(max_packet_size=1 << 20)
    core = ServerCore(ServerConfig(job_handle_prefix=b"H:t", limits=limits, max_connections=6))
    now = 1000.0
    conns: set[int] = set()
    next_id = 1
    large: dict[int, tuple[memoryview, int]] = {}
    assigned: dict[int, list[bytes]] = {}
    for step in range(steps):
        now += rng.choice([0.0, 0.001, 0.5, 3.0])
        roll = rng.random()
        if roll < 0.06 or not conns:
            conn = next_id
            next_id += 1
            ok = core.connect(conn, PeerInfo("127.0.0.1", 40000 + conn, conn), now)
            conns.add(conn)
            _emit(out, ["connect", step, conn, ok])
        elif roll < 0.09:
            conn = rng.choice(sorted(conns))
            conns.discard(conn)
            large.pop(conn, None)
            core.disconnect(conn, now)
        elif roll < 0.11:
            core.handle_timer(now + rng.choice([0.0, 70.0, 400.0]))
        else:
            conn = rng.choice(sorted(conns))
            given = assigned.setdefault(conn, [])
            data = b"".join(_request(rng, given) for _ in range(rng.randrange(1, 5)))
            if rng.random() < 0.03:
                data = b""  # EOF
            cuts = sorted(rng.sample(range(1, len(data)), min(2, len(data) - 1))) if data else []
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            for piece in pieces or [b""]:
                if conn in large:
                    frame, filled = large.pop(conn)
                    take = min(len(piece), len(frame) - filled)
                    frame[filled : filled + take] = piece[:take]
                    filled += take
                    if filled < len(frame):
                        large[conn] = (frame, filled)
                        continue
                    core.receive_frame(conn, frame, now)
                    piece = piece[take:]
                    if not piece:
                        continue
                if core.receive(conn, piece, now):
                    handed = core.take_large_frame(conn)
                    if handed is not None:
                        large[conn] = handed
        for conn_id, chunks, close in core.take_output():
            data = b"".join(bytes(c) for c in chunks)
            assigned.setdefault(conn_id, []).extend(_assignments(data))
            short = full or len(data) <= 256
            digest = data.hex() if short else hashlib.sha256(data).hexdigest()[:16]
            _emit(out, ["out", step, conn_id, digest, close])
            if close:
                conns.discard(conn_id)
                large.pop(conn_id, None)
        deadline = core.next_deadline()
        _emit(out, ["state", step, core.job_count, core.connection_count, core.queued_bytes,
                    None if deadline is None else round(deadline, 6)])  # fmt: skip


if __name__ == "__main__":
    print(IMPLEMENTATION)
    run(int(sys.argv[1]), int(sys.argv[2]), sys.stdout, full=sys.argv[3:] == ["full"])
