"""Generators of binary packets: valid-but-unusual sequences and malformed frames.

Everything is derived from the core's packet table (:data:`gearproto.PACKETS`): the
request types, their fields and the fields' kinds decide what is generated, so a new
packet type is fuzzed without touching this module.
"""

from __future__ import annotations

import random
import struct

from gearproto import PACKETS, REQ, RES, Direction, PacketType, raw_packet

from .case import Case, Connect, Pause, Send, Step
from .values import LIMIT_SIZES, NUMBERS, TYPE_VALUES, GenContext, field_value

__all__ = [
    "REQUEST_TYPES",
    "gen_frames",
    "gen_sequence",
    "gen_single",
    "random_request",
    "request",
]

_T = PacketType
#: Every type a client or worker may send, from the table.
REQUEST_TYPES = tuple(t for t, spec in PACKETS.items() if spec.direction is not Direction.RESPONSE)
#: Types only servers send (sending them to a server must draw an ERROR).
RESPONSE_TYPES = tuple(t for t, spec in PACKETS.items() if spec.direction is Direction.RESPONSE)
_HEADER = struct.Struct(">4sII")


def request(ptype: PacketType, *fields: bytes) -> bytes:
    """A well-framed request packet (fields joined with NUL, no checks)."""
    return raw_packet(REQ, ptype, fields)


def random_request(
    rng: random.Random,
    ctx: GenContext,
    index: int,
    *,
    weird: float = 0.3,
    types: tuple[PacketType, ...] = REQUEST_TYPES,
) -> bytes:
    """One request of a random type with values drawn per field kind."""
    ptype = rng.choice(types)
    spec = PACKETS[ptype]
    fields = [
        field_value(rng, f, ctx, index, weird=weird, allow_nul=(i == len(spec.fields) - 1))
        for i, f in enumerate(spec.fields)
    ]
    return raw_packet(REQ, ptype, fields)


def _case(steps: list[Step], name: str, rng_seed: tuple[int, int], description: str) -> Case:
    seed, index = rng_seed
    return Case(tuple(steps), name, seed, index, description)


def _one_conn(data: list[bytes], *, pipelined: bool) -> list[Step]:
    steps: list[Step] = [Connect(0)]
    if pipelined:
        steps.append(Send(0, b"".join(data)))
    else:
        steps.extend(Send(0, d) for d in data)
    return steps


def gen_single(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """1-8 requests of random types with unusual field values on one connection."""
    count = rng.randrange(1, 9)
    weird = rng.choice((0.0, 0.2, 0.5, 1.0))
    data = [random_request(rng, ctx, index, weird=weird) for _ in range(count)]
    return _case(
        _one_conn(data, pipelined=rng.random() < 0.5),
        "valid.single",
        (seed, index),
        f"{count} request(s) with unusual field values",
    )


# --------------------------------------------------------------------- sequences


def _fn(rng: random.Random, ctx: GenContext, index: int) -> bytes:
    return ctx.name(rng, index)


def _seq_work_orders(rng: random.Random, ctx: GenContext, index: int) -> list[bytes]:
    """WORK_* in every order, for foreign, made-up, finished and no handles."""
    fn = _fn(rng, ctx, index)
    out = [request(_T.CAN_DO, fn)]
    if rng.random() < 0.5:
        out.append(request(_T.SUBMIT_JOB_BG, fn, b"", b"job"))
    if rng.random() < 0.5:
        out.append(request(rng.choice((_T.GRAB_JOB, _T.GRAB_JOB_UNIQ, _T.GRAB_JOB_ALL))))
    work = [
        _T.WORK_STATUS,
        _T.WORK_COMPLETE,
        _T.WORK_FAIL,
        _T.WORK_EXCEPTION,
        _T.WORK_DATA,
        _T.WORK_WARNING,
    ]
    for _ in range(rng.randrange(1, 7)):
        ptype = rng.choice(work)
        handle = rng.choice(
            (ctx.handle(rng), b"", b"H:nonexistent:1", b"x" * rng.choice((63, 64, 65, 200)))
        )
        if ptype == _T.WORK_STATUS:
            out.append(request(ptype, handle, rng.choice(NUMBERS), rng.choice(NUMBERS)))
        elif ptype == _T.WORK_FAIL:
            out.append(request(ptype, handle))
        else:
            out.append(request(ptype, handle, b"result"))
    return out


def _seq_abilities(rng: random.Random, ctx: GenContext, index: int) -> list[bytes]:
    """Duplicate CAN_DO, CANT_DO of unknowns, RESET, CAN_DO_TIMEOUT edge values."""
    fn = _fn(rng, ctx, index)
    out: list[bytes] = []
    for _ in range(rng.randrange(2, 8)):
        choice = rng.randrange(6)
        if choice == 0:
            out.append(request(_T.CAN_DO, fn))
        elif choice == 1:
            out.append(request(_T.CANT_DO, rng.choice((fn, b"unknown-fn", b""))))
        elif choice == 2:
            out.append(request(_T.RESET_ABILITIES))
        elif choice == 3:
            out.append(request(_T.CAN_DO_TIMEOUT, fn, rng.choice(NUMBERS)))
        elif choice == 4:
            out.append(request(_T.PRE_SLEEP))
        else:
            out.append(request(rng.choice((_T.GRAB_JOB, _T.GRAB_JOB_UNIQ, _T.GRAB_JOB_ALL))))
    return out


def _seq_submissions(rng: random.Random, ctx: GenContext, index: int) -> list[bytes]:
    """Coalescing uniques, every priority, epoch and reduce jobs, status queries."""
    fn = _fn(rng, ctx, index)
    unique = rng.choice((b"", b"-", b"same", b"u" * 63, b"u" * 64, b"u" * 65))
    out: list[bytes] = []
    submits = [
        t
        for t in REQUEST_TYPES
        if t.name.startswith("SUBMIT_JOB") and t not in (_T.SUBMIT_JOB_SCHED, _T.SUBMIT_JOB_EPOCH)
    ]
    for _ in range(rng.randrange(1, 6)):
        choice = rng.randrange(6)
        if choice <= 1:
            out.append(request(rng.choice(submits), fn, unique, rng.choice((b"", b"data", b"d\0"))))
        elif choice == 2:
            epoch = rng.choice(
                (b"0", b"1", b"4102444800", b"-1", b"abc", b"99999999999999999999", b"9" * 40)
            )
            out.append(request(_T.SUBMIT_JOB_EPOCH, fn, unique, epoch, b"data"))
        elif choice == 3:
            ptype = rng.choice((_T.SUBMIT_REDUCE_JOB, _T.SUBMIT_REDUCE_JOB_BACKGROUND))
            reducer = rng.choice((b"", fn, b"r" * 65))
            out.append(request(ptype, fn, unique, reducer, b"", b"data"))
        elif choice == 4:
            out.append(request(_T.GET_STATUS_UNIQUE, unique))
        else:
            out.append(request(_T.GET_STATUS, ctx.handle(rng)))
    return out


def _seq_options(rng: random.Random, ctx: GenContext, index: int) -> list[bytes]:
    """OPTION_REQ variants, client ids, echo, then a submission."""
    opts = (b"exceptions", b"EXCEPTIONS", b"exceptions\0", b"foo", b"", b"e" * 64, b"e" * 65)
    out = [request(_T.OPTION_REQ, rng.choice(opts)) for _ in range(rng.randrange(1, 4))]
    out.append(
        request(
            _T.SET_CLIENT_ID,
            rng.choice((b"id", b"x" * 127, b"x" * 128, b"x" * 200, b"a b", b"a\nb", b"")),
        )
    )
    out.append(request(_T.ECHO_REQ, rng.choice((b"", b"\0", b"echo\0data", b"e" * 70000))))
    out.append(request(_T.SUBMIT_JOB_BG, _fn(rng, ctx, index), b"", b"x"))
    return out


def _seq_unimplemented(rng: random.Random, ctx: GenContext, index: int) -> list[bytes]:
    """Reserved, unimplemented and response-only types sent to the server."""
    out: list[bytes] = []
    for _ in range(rng.randrange(1, 5)):
        choice = rng.randrange(3)
        if choice == 0:
            out.append(request(rng.choice((_T.UNUSED, _T.ALL_YOURS))))
        elif choice == 1:
            fn = _fn(rng, ctx, index)
            out.append(request(_T.SUBMIT_JOB_SCHED, fn, b"", b"1", b"2", b"3", b"4", b"5", b"d"))
        else:
            ptype = rng.choice(RESPONSE_TYPES)
            spec = PACKETS[ptype]
            fields = [field_value(rng, f, ctx, index, weird=0.2) for f in spec.fields]
            out.append(raw_packet(REQ, ptype, fields))
    return out


def _seq_pipeline(rng: random.Random, ctx: GenContext, index: int) -> list[bytes]:
    """Many requests in one write (tests output buffering and reply order)."""
    count = rng.choice((50, 200, 1000))
    fn = _fn(rng, ctx, index)
    kinds = (
        lambda: request(_T.ECHO_REQ, b"e" * rng.randrange(100)),
        lambda: request(_T.SUBMIT_JOB_BG, fn, b"", b"p"),
        lambda: request(_T.GET_STATUS, ctx.handle(rng)),
        lambda: request(_T.GRAB_JOB),
    )
    return [rng.choice(kinds)() for _ in range(count)]


_SEQUENCES = (
    _seq_work_orders,
    _seq_abilities,
    _seq_submissions,
    _seq_options,
    _seq_unimplemented,
    _seq_pipeline,
)


def gen_sequence(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """A valid-but-unusual sequence on one connection."""
    make = rng.choice(_SEQUENCES)
    data = make(rng, ctx, index)
    name = make.__name__.removeprefix("_seq_")
    return _case(
        _one_conn(data, pipelined=rng.random() < 0.6),
        f"valid.{name}",
        (seed, index),
        (make.__doc__ or name).strip().splitlines()[0],
    )


# ------------------------------------------------------------------------ frames


def _frame_magic(rng: random.Random, body_packet: bytes) -> tuple[bytes, str]:
    choice = rng.randrange(4)
    if choice == 0:
        return RES + body_packet[4:], "response magic on a request"
    if choice == 1:
        pos = rng.randrange(4)
        magic = bytearray(REQ)
        magic[pos] ^= 1 << rng.randrange(8)
        return bytes(magic) + body_packet[4:], f"magic byte {pos} flipped"
    if choice == 2:
        return b"\0req" + body_packet[4:], "lower-case magic"
    return b"\0" + bytes(rng.randrange(256) for _ in range(3)) + body_packet[4:], "random magic"


def _frame_type(rng: random.Random, ctx: GenContext, index: int) -> tuple[bytes, str]:
    ptype = rng.choice(TYPE_VALUES)
    body = rng.choice((b"", b"x", b"fn\0u\0data"))
    return _HEADER.pack(REQ, ptype, len(body)) + body, f"type {ptype:#x}"


def _frame_size(rng: random.Random, ctx: GenContext, index: int) -> tuple[bytes, str]:
    pkt = random_request(rng, ctx, index, weird=0.1)
    magic, ptype, size = _HEADER.unpack_from(pkt)
    body = pkt[12:]
    declared = rng.choice(
        (
            0,
            1,
            max(size - 1, 0),
            size + 1,
            size + 100,
            8191,
            8192,
            8193,
            65535,
            65536,
            0x7FFFFFFF,
            0x80000000,
            0xFFFFFFFF,
            rng.randrange(size + 1) if size else 0,
        )
    )
    return _HEADER.pack(magic, ptype, declared) + body, (
        f"{PacketType(ptype).name} declares {declared} bytes, sends {size}"
    )


def _frame_nuls(rng: random.Random, ctx: GenContext, index: int) -> tuple[bytes, str]:
    with_args = [t for t in REQUEST_TYPES if len(PACKETS[t].fields) >= 2]
    ptype = rng.choice(with_args)
    spec = PACKETS[ptype]
    fields = [field_value(rng, f, ctx, index, weird=0.1) for f in spec.fields]
    if rng.random() < 0.5:
        drop = rng.randrange(1, len(fields))
        merged = b"".join(fields[: drop + 1])
        fields = [merged, *fields[drop + 1 :]]
        what = "missing NUL(s)"
    else:
        extra = rng.randrange(1, 4)
        at = rng.randrange(len(fields))
        fields = fields[:at] + [b""] * extra + fields[at:]
        what = f"{extra} extra NUL(s)"
    return raw_packet(REQ, ptype, fields), f"{ptype.name} with {what}"


def _frame_oversize(rng: random.Random, ctx: GenContext, index: int) -> tuple[bytes, str]:
    with_fields = [t for t in REQUEST_TYPES if PACKETS[t].fields]
    ptype = rng.choice(with_fields)
    spec = PACKETS[ptype]
    target = rng.randrange(len(spec.fields))
    size = rng.choice(LIMIT_SIZES[1:])
    fields = [field_value(rng, f, ctx, index, weird=0.0) for f in spec.fields]
    fields[target] = (fields[target] + b"z" * size)[:size] if size else b""
    return raw_packet(REQ, ptype, fields), (
        f"{ptype.name}.{spec.fields[target].name} of {size} bytes"
    )


def _frame_control(rng: random.Random, ctx: GenContext, index: int) -> tuple[bytes, str]:
    with_fields = [t for t in REQUEST_TYPES if PACKETS[t].fields]
    ptype = rng.choice(with_fields)
    spec = PACKETS[ptype]
    fields = [field_value(rng, f, ctx, index, weird=0.0) for f in spec.fields]
    target = rng.randrange(len(fields))
    special = rng.choice((b"\r", b"\n", b"\t", b" ", b"\xff", b"\x80\x80", b"\r\n.\r\n"))
    fields[target] = fields[target] + special + b"tail"
    return raw_packet(REQ, ptype, fields), (
        f"{ptype.name}.{spec.fields[target].name} contains {special!r}"
    )


_FRAMES = (
    ("magic", lambda rng, ctx, i: _frame_magic(rng, random_request(rng, ctx, i, weird=0.0))),
    ("type", _frame_type),
    ("size", _frame_size),
    ("nuls", _frame_nuls),
    ("oversize", _frame_oversize),
    ("control", _frame_control),
)


def gen_frames(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """One malformed frame, maybe between valid requests, maybe split in pieces."""
    name, make = rng.choice(_FRAMES)
    bad, what = make(rng, ctx, index)
    before = [random_request(rng, ctx, index, weird=0.0) for _ in range(rng.randrange(2))]
    after = [random_request(rng, ctx, index, weird=0.0) for _ in range(rng.randrange(2))]
    steps: list[Step] = [Connect(0)]
    mode = rng.randrange(3)
    if mode == 0:
        steps.append(Send(0, b"".join([*before, bad, *after])))
    elif mode == 1:
        steps.extend(Send(0, d) for d in [*before, bad, *after])
    else:
        # The bad frame's header byte by byte, then the rest.
        steps.extend(Send(0, d) for d in before)
        steps.extend(Send(0, bad[i : i + 1]) for i in range(min(12, len(bad))))
        if len(bad) > 12:
            steps.append(Send(0, bad[12:]))
        steps.append(Pause(rng.choice((0, 5))))
        steps.extend(Send(0, d) for d in after)
    return _case(steps, f"frames.{name}", (seed, index), what)
