"""Interesting field values, by the field kinds of the packet table.

Each kind gets the values that break servers in practice: the empty string, sizes at
and around every limit (gearmand's 64-byte unique and handle, libgearman's 512-byte
function name, the 8 KiB receive buffer), bytes that are not UTF-8, and the bytes that
separate things elsewhere in the protocol (NUL, CR, LF, TAB, space).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gearproto import FieldKind, FieldSpec

__all__ = ["LIMIT_SIZES", "NUMBERS", "TYPE_VALUES", "GenContext", "field_value"]

#: Sizes at and around the limits servers have (and the ones they should have).
LIMIT_SIZES = (0, 1, 63, 64, 65, 127, 128, 129, 511, 512, 513, 8191, 8192, 8193, 9000)

#: Packet type numbers worth trying: all real ones come from the table; these are the
#: boundaries of the unsigned 32-bit field and of signed interpretations of it.
TYPE_VALUES = (
    0,
    5,
    24,
    35,
    43,
    44,
    64,
    127,
    128,
    255,
    256,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0x80000001,
    0xFFFFFFFE,
    0xFFFFFFFF,
)

#: Numbers as decimal text, including what strtol/atoi get wrong.
NUMBERS: tuple[bytes, ...] = (
    b"0",
    b"1",
    b"-1",
    b"-2",
    b"+6",
    b" 5",
    b"12abc",
    b"abc",
    b"",
    b"999",
    b"1000",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"99999999999",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"1" * 21,
    b"-" + b"9" * 30,
)

_SPECIALS: tuple[bytes, ...] = (
    b"\t",
    b"\n",
    b"\r\n",
    b" ",
    b"\r",
    b"\xff\xfe",
    b"\xc3\x28",
    b"%s%n",
    b".",
    b"\x1b[2J",
)


@dataclass
class GenContext:
    """What generators may know about the campaign and the target."""

    #: Prefix of every function name a case uses (keeps cases apart on the server).
    prefix: bytes = b"fz"
    #: The target's job-handle prefix (learnt at start), for guessing real handles.
    handle_prefix: bytes = b"H:"
    #: Include commands that change more than the fuzzer's own functions.
    destructive: bool = False
    #: Largest single streamed body (memory cases).
    max_fill: int = 48 << 20
    #: Extra names seen on the target (function names from earlier cases).
    names: list[bytes] = field(default_factory=list)

    def case_prefix(self, case_index: int) -> bytes:
        """The prefix of every name case ``case_index`` registers."""
        return b"%s%d_" % (self.prefix, case_index)

    def name(self, rng: random.Random, case_index: int) -> bytes:
        """A function name private to this case (a few per case, so they collide)."""
        return self.case_prefix(case_index) + b"f%d" % rng.randrange(3)

    def handle(self, rng: random.Random) -> bytes:
        """A handle that may well exist on the target (other cases' jobs)."""
        return self.handle_prefix + b"%d" % rng.randrange(1, 200)


def _sized(rng: random.Random, size: int, alphabet: bytes = b"abcdefghij") -> bytes:
    if size <= 0:
        return b""
    unit = bytes(rng.choice(alphabet) for _ in range(min(size, 16)))
    return (unit * (size // len(unit) + 1))[:size]


def field_value(
    rng: random.Random,
    spec: FieldSpec,
    ctx: GenContext,
    case_index: int,
    *,
    weird: float = 0.3,
    allow_nul: bool = False,
) -> bytes:
    """A value for ``spec``: usually plausible, with probability ``weird`` hostile."""
    kind = spec.kind
    hostile = rng.random() < weird
    if kind is FieldKind.NUMBER:
        if hostile:
            return rng.choice(NUMBERS)
        return b"%d" % rng.choice((0, 1, 3, 10, 100, 1000, 1500))
    if kind is FieldKind.FLAG:
        return rng.choice((b"0", b"1"))
    if kind is FieldKind.FUNCTION:
        base = ctx.name(rng, case_index)
        if not hostile:
            return base
        return _hostile(rng, base, allow_nul)
    if kind is FieldKind.UNIQUE:
        if not hostile:
            return rng.choice((b"", b"-", b"u%d" % rng.randrange(4), b"%s-u" % ctx.prefix))
        return _hostile(rng, b"u", allow_nul)
    if kind is FieldKind.HANDLE:
        if not hostile:
            return ctx.handle(rng)
        return _hostile(rng, ctx.handle(rng), allow_nul)
    if kind is FieldKind.TEXT:
        if spec.name == "option" and not hostile:
            return rng.choice((b"exceptions", b"EXCEPTIONS", b"Exceptions"))
        base = b"%s%d_id%d" % (ctx.prefix, case_index, rng.randrange(3))
        if not hostile:
            return base
        return _hostile(rng, base, allow_nul)
    # DATA: opaque tail; NULs inside are always fine here.
    if not hostile:
        return rng.choice((b"", b"payload", b"x" * rng.randrange(1, 64)))
    return rng.choice(
        (
            b"\0",
            b"a\0b\0c",
            _sized(rng, rng.choice(LIMIT_SIZES)),
            _sized(rng, rng.choice((65536, 65537, 1 << 20))),
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))),
        )
    )


def _hostile(rng: random.Random, base: bytes, allow_nul: bool) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return _sized(rng, rng.choice(LIMIT_SIZES))
    if choice == 1:
        special = rng.choice(_SPECIALS + ((b"\0",) if allow_nul else ()))
        at = rng.randrange(len(base) + 1)
        return base[:at] + special + base[at:]
    if choice == 2:
        return base + rng.choice(_SPECIALS) + b"fake\t9\t9\t9"
    if choice == 3:
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 24)))
    return b""
