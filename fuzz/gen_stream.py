"""Byte-level mutations of valid streams, and valid streams split at every boundary."""

from __future__ import annotations

import random
import struct

from .case import Case, Connect, Pause, Send, Step
from .gen_admin import admin_line
from .gen_packets import random_request
from .values import TYPE_VALUES, GenContext

__all__ = ["gen_mutate", "gen_split", "valid_stream"]

_INTERESTING_BYTES = (0x00, 0x01, 0x0A, 0x0D, 0x20, 0x09, 0x7F, 0x80, 0xFF, 0x2E)
_INTERESTING_U32 = (*TYPE_VALUES, 8191, 8192, 8193, 65536, 1 << 24)


def valid_stream(rng: random.Random, ctx: GenContext, index: int) -> bytes:
    """A few well-formed requests and admin lines, back to back."""
    parts = []
    for _ in range(rng.randrange(1, 6)):
        if rng.random() < 0.25:
            parts.append(admin_line(rng, ctx, index, destructive=False))
        else:
            parts.append(random_request(rng, ctx, index, weird=0.0))
    return b"".join(parts)


def _mutate_once(rng: random.Random, data: bytearray) -> str:
    if not data:
        data += bytes([rng.randrange(256)])
        return "insert into empty"
    choice = rng.randrange(8)
    pos = rng.randrange(len(data))
    if choice == 0:
        bit = rng.randrange(8)
        data[pos] ^= 1 << bit
        return f"flip bit {bit} of byte {pos}"
    if choice == 1:
        value = rng.choice(_INTERESTING_BYTES)
        data[pos] = value
        return f"byte {pos} := {value:#x}"
    if choice == 2:
        insert = bytes(rng.choice(_INTERESTING_BYTES) for _ in range(rng.randrange(1, 5)))
        data[pos:pos] = insert
        return f"insert {insert!r} at {pos}"
    if choice == 3:
        length = rng.randrange(1, min(16, len(data) - pos) + 1)
        del data[pos : pos + length]
        return f"delete {length} bytes at {pos}"
    if choice == 4:
        length = rng.randrange(1, min(32, len(data) - pos) + 1)
        data[pos:pos] = data[pos : pos + length]
        return f"duplicate {length} bytes at {pos}"
    if choice == 5 and len(data) >= pos + 4:
        value = rng.choice(_INTERESTING_U32)
        struct.pack_into(">I", data, pos, value)
        return f"u32 {value:#x} at {pos}"
    if choice == 6:
        cut = rng.randrange(len(data))
        del data[cut:]
        return f"truncate at {cut}"
    a, b = sorted((rng.randrange(len(data)), rng.randrange(len(data))))
    data[a:b] = data[a:b][::-1]
    return f"reverse {a}..{b}"


def gen_mutate(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """A valid stream with 1-4 byte-level mutations."""
    data = bytearray(valid_stream(rng, ctx, index))
    what = [_mutate_once(rng, data) for _ in range(rng.randrange(1, 5))]
    return Case(
        (Connect(0), Send(0, bytes(data))), "mutate.bytes", seed, index, "; ".join(what)[:200]
    )


def gen_split(rng: random.Random, ctx: GenContext, seed: int, index: int) -> Case:
    """A valid stream written in pieces: byte by byte, or cut at random points."""
    data = valid_stream(rng, ctx, index)
    steps: list[Step] = [Connect(0)]
    if len(data) <= 96 or rng.random() < 0.3:
        cuts = list(range(1, len(data)))[:400]
        what = "byte by byte"
    else:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 12))))
        what = f"in {len(cuts) + 1} pieces"
    pause = rng.choice((0, 0, 1)) if what == "byte by byte" else rng.choice((0, 1, 3))
    last = 0
    for cut in [*cuts, len(data)]:
        steps.append(Send(0, data[last:cut]))
        if pause:
            steps.append(Pause(pause))
        last = cut
    return Case(tuple(steps), "split.stream", seed, index, f"{len(data)} bytes written {what}")
