"""Multi-connection scenarios and resource cases.

Clients and workers join and drop (with FIN, RST or a half-close, sometimes in the
middle of a packet), readers stop reading, slow writers dribble bytes, and large
declared bodies are streamed to see whether the server buffers them.
"""

from __future__ import annotations

import random
import struct

from gearproto import PacketType

from .case import Case, Close, Connect, Pause, Send, Step
from .gen_packets import random_request, request
from .values import GenContext

__all__ = ["gen_memory", "gen_multi"]

_T = PacketType


def _workers_and_clients(rng: random.Random, ctx: GenContext, index: int) -> tuple[list[Step], str]:
    """Workers take jobs and die holding them; clients submit and vanish."""
    fn = ctx.name(rng, index)
    nworkers, nclients = rng.randrange(1, 4), rng.randrange(1, 4)
    conns = list(range(nworkers + nclients))
    steps: list[Step] = [Connect(c) for c in conns]
    steps += [Send(w, request(_T.CAN_DO, fn)) for w in range(nworkers)]
    for c in range(nworkers, nworkers + nclients):
        ptype = _T.SUBMIT_JOB_BG if rng.random() < 0.5 else _T.SUBMIT_JOB
        steps += [
            Send(c, request(ptype, fn, rng.choice((b"", b"same")), b"w"))
            for _ in range(rng.randrange(1, 4))
        ]
    steps.append(Pause(2))
    open_conns = set(conns)
    for _ in range(rng.randrange(3, 10)):
        if not open_conns:
            break
        c = rng.choice(sorted(open_conns))
        action = rng.randrange(5)
        if action == 0 and c < nworkers:
            steps.append(Send(c, request(rng.choice((_T.GRAB_JOB, _T.GRAB_JOB_UNIQ)))))
        elif action == 1:
            pkt = random_request(rng, ctx, index, weird=0.0)
            cut = rng.randrange(1, len(pkt))
            steps.append(Send(c, pkt[:cut]))
            steps.append(Close(c, rng.choice(("fin", "rst"))))
            open_conns.discard(c)
        elif action == 2:
            steps.append(Close(c, rng.choice(("fin", "rst", "half"))))
            open_conns.discard(c)
        elif action == 3:
            steps.append(Send(c, request(_T.PRE_SLEEP)))
        else:
            steps.append(Send(c, random_request(rng, ctx, index, weird=0.2)))
    # Survivors grab whatever is left, so requeued jobs get exercised.
    steps += [Send(w, request(_T.GRAB_JOB_UNIQ)) for w in range(nworkers) if w in open_conns]
    return steps, f"{nworkers} worker(s), {nclients} client(s) joining and dropping"


def _slow_reader(rng: random.Random, ctx: GenContext, index: int) -> tuple[list[Step], str]:
    """A client asks for big echoes and never reads; another client keeps working."""
    size = rng.choice((1 << 16, 1 << 18))
    count = rng.choice((16, 64, 128))
    steps: list[Step] = [Connect(0, read=False), Connect(1)]
    steps.append(Send(0, request(_T.ECHO_REQ, b"e" * size) * count))
    steps.append(Pause(20))
    steps.append(Send(1, request(_T.ECHO_REQ, b"still served?")))
    steps.append(Send(1, random_request(rng, ctx, index, weird=0.0)))
    return steps, f"reader that never reads {count} echoes of {size} bytes"


def _slow_writer(rng: random.Random, ctx: GenContext, index: int) -> tuple[list[Step], str]:
    """A packet dribbled a few bytes at a time while another connection works."""
    pkt = random_request(rng, ctx, index, weird=0.0)
    steps: list[Step] = [Connect(0), Connect(1)]
    for i in range(0, len(pkt), 3):
        steps.append(Send(0, pkt[i : i + 3]))
        steps.append(Pause(rng.choice((1, 5, 20))))
        if i % 9 == 0:
            steps.append(Send(1, random_request(rng, ctx, index, weird=0.0)))
    return steps, f"{len(pkt)}-byte packet written 3 bytes at a time"


def _burst(rng: random.Random, ctx: GenContext, index: int) -> tuple[list[Step], str]:
    """Many connections at once, each sending one request, some dropping at once."""
    count = rng.choice((20, 64, 200))
    steps: list[Step] = []
    for c in range(count):
        steps.append(Connect(c))
        steps.append(Send(c, random_request(rng, ctx, index, weird=0.1)))
        if rng.random() < 0.3:
            steps.append(Close(c, rng.choice(("fin", "rst"))))
    return steps, f"{count} connections at once"


def _half_close(rng: random.Random, ctx: GenContext, index: int) -> tuple[list[Step], str]:
    """Requests, then a half-close: the replies must still arrive."""
    steps: list[Step] = [Connect(0)]
    steps += [
        Send(0, random_request(rng, ctx, index, weird=0.0)) for _ in range(rng.randrange(1, 4))
    ]
    steps.append(Close(0, "half"))
    steps.append(Connect(1))
    steps.append(Send(1, request(_T.ECHO_REQ, b"other")))
    return steps, "requests followed by a half-close"


_SCENARIOS = (_workers_and_clients, _slow_reader, _slow_writer, _burst, _half_close)


def gen_multi(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """A multi-connection scenario."""
    make = rng.choice(_SCENARIOS)
    steps, what = make(rng, ctx, index)
    return Case(tuple(steps), f"multi.{make.__name__.lstrip('_')}", seed, index, what)


def gen_memory(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """Large declared bodies: streamed in part, or only announced on many connections.

    A server should not buffer (or allocate) more than it has actually received, and
    should refuse sizes beyond its limit before reading them.
    """
    ptype = rng.choice((_T.ECHO_REQ, _T.SUBMIT_JOB_BG, _T.WORK_DATA, _T.CAN_DO))
    announce_only = rng.random() < 0.4
    if announce_only:
        # Sizes under typical limits (16, 32, 60 MiB), announced and never sent.
        declared = rng.choice((16 << 20, 32 << 20, 60 << 20, 0xFFFFFFF0))
        conns, fill = rng.choice((2, 4, 8)), 0
    else:
        declared = rng.choice((0xFFFFFFF0, 0x7FFFFFFF, ctx.max_fill * 2))
        conns, fill = rng.choice((1, 1, 2)), min(ctx.max_fill, declared)
    head = struct.pack(">4sII", b"\0REQ", ptype, declared)
    if ptype == _T.SUBMIT_JOB_BG:
        head += ctx.name(rng, index) + b"\0\0"
    elif ptype == _T.WORK_DATA:
        head += ctx.handle(rng) + b"\0"
    steps: list[Step] = []
    for c in range(conns):
        steps.append(Connect(c))
        steps.append(Send(c, head, fill_byte=0x61, fill_count=fill // conns))
    steps.append(Pause(50))
    what = (
        f"{ptype.name} declaring {declared} bytes on {conns} connections, body never sent"
        if announce_only
        else f"{ptype.name} declaring {declared} bytes, {fill >> 20} MiB sent over {conns}"
        " connection(s)"
    )
    return Case(tuple(steps), "memory.declared", seed, index, what)
