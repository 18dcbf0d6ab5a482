"""Stateless conversion between binary packets and events.

Nothing here knows about connections, limits or state; :mod:`gearproto._connection`
adds those.  The decoders are built from the packet table in :mod:`gearproto._spec`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from typing import Any

from ._spec import HEADER_SIZE, PACKETS, FieldKind, PacketType
from .errors import ErrorCode
from .events import EVENT_CLASSES, SUBMIT_VARIANTS, PacketEvent, SubmitReduceJob, packet_type

__all__ = [
    "HEADER",
    "MAX_TYPE",
    "ParseError",
    "decode_body",
    "encode",
    "encode_parts",
    "parse_int",
    "raw_packet",
]

#: magic, type, size — the 12-byte header.
HEADER = struct.Struct(">4sII")
#: Largest valid packet type number.
MAX_TYPE = max(PacketType)

# Bodies at least this large are sliced field by field from the receive buffer instead
# of being copied once whole and then split (which would copy the payload twice).
LARGE_BODY = 1 << 16

_tuple_new = tuple.__new__


class ParseError(Exception):
    """A packet or line that cannot be turned into an event.

    ``code`` and ``text`` are the ERROR a server answers with; ``fatal`` says whether
    the byte stream can no longer be framed (bad magic, bad type, oversize header).
    """

    def __init__(self, code: bytes, text: bytes, *, fatal: bool) -> None:
        super().__init__(f"{code.decode()}: {text.decode(errors='replace')}")
        self.code = code
        self.text = text
        self.fatal = fatal


_ATOI = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def parse_int(raw: bytes) -> int:
    """Read a decimal number the way C's ``atoi``/``strtol`` do.

    Leading whitespace and a sign are allowed, trailing garbage is ignored and a field
    with no digits reads as 0 — that is how gearmand reads numbers, and what it
    forwards unchanged, so a client must read them the same way.

    Args:
        raw: the field's bytes.

    Returns:
        The number; at most 31 digits are read (more would be nonsense).
    """
    if raw.isdigit() and len(raw) <= 30:
        return int(raw)
    match = _ATOI.match(raw)
    if match is None:
        return 0
    # Beyond 30 digits the value is nonsense anyway; the cap keeps int() cheap and
    # far below Python's limit on digits in a conversion.
    return int(match.group(1)[:31])


# ------------------------------------------------------------------------- decoding

_Decoder = Callable[[bytes], Any]


def _make_decoder(ptype: PacketType) -> _Decoder:
    spec = PACKETS[ptype]
    cls = EVENT_CLASSES[ptype]
    n_fields = len(spec.fields)
    nnul = spec.nul_terminated
    extra: tuple[Any, ...] = ()
    if ptype in SUBMIT_VARIANTS:
        extra = SUBMIT_VARIANTS[ptype]
    elif cls is SubmitReduceJob:
        extra = (ptype is PacketType.SUBMIT_REDUCE_JOB_BACKGROUND,)
    converters: list[tuple[int, Callable[[bytes], Any]]] = []
    for index, field in enumerate(spec.fields):
        if field.kind is FieldKind.NUMBER:
            converters.append((index, parse_int))
        elif field.kind is FieldKind.FLAG:
            converters.append((index, lambda raw: parse_int(raw) != 0))
    missing = f"{ptype.name} needs {nnul} NUL-terminated field(s)".encode()

    if n_fields == 0:
        singleton = cls()

        def decode_empty(body: bytes) -> Any:
            # gearmand reads and discards a body sent with an argument-less packet.
            return singleton

        return decode_empty

    if nnul == 0 and not converters and not extra:

        def decode_one(body: bytes) -> Any:
            return _tuple_new(cls, (body,))

        return decode_one

    if not converters and not extra:

        def decode_plain(body: bytes) -> Any:
            parts = body.split(b"\0", nnul)
            if len(parts) != n_fields:
                raise ParseError(ErrorCode.INVALID_PACKET, missing, fatal=False)
            return _tuple_new(cls, parts)

        return decode_plain

    def decode_general(body: bytes) -> Any:
        parts = body.split(b"\0", nnul) if nnul else [body]
        if len(parts) != n_fields:
            raise ParseError(ErrorCode.INVALID_PACKET, missing, fatal=False)
        for index, convert in converters:
            parts[index] = convert(parts[index])
        if extra:
            parts.extend(extra)
        return _tuple_new(cls, parts)

    return decode_general


#: Decoder per type number; index 0 (the admin-text pseudo type) is ``None``.
DECODERS: list[_Decoder | None] = [None] + [_make_decoder(t) for t in PacketType]


def decode_slice(ptype: int, src: bytes, start: int, end: int) -> PacketEvent:
    """Decode the body ``src[start:end]`` without first copying it out whole.

    For large bodies: the small NUL-terminated fields are decoded from a short
    slice, and the opaque payload is sliced once, straight from ``src``.
    """
    spec = PACKETS[PacketType(ptype)] if 0 < ptype <= MAX_TYPE else None
    if spec is None or spec.tail is None or spec.tail.kind is not FieldKind.DATA:
        return decode_body(ptype, src[start:end])
    fields_end = start
    for _ in range(spec.nul_terminated):
        nul = src.find(b"\0", fields_end, end)
        if nul < 0:
            return decode_body(ptype, src[start:end])  # raises the missing-NUL error
        fields_end = nul + 1
    # The head decodes to the event with an empty payload; put the payload in.
    event = decode_body(ptype, src[start:fields_end])
    fields = list(event)
    fields[len(spec.fields) - 1] = src[fields_end:end]
    result: PacketEvent = _tuple_new(type(event), fields)
    return result


def decode_body(ptype: int, body: bytes) -> PacketEvent:
    """Turn the body of a packet of type ``ptype`` into its event.

    Raises:
        ParseError: unknown type, or a NUL-terminated field without its NUL.
    """
    decoder = DECODERS[ptype] if 0 < ptype <= MAX_TYPE else None
    if decoder is None:
        raise ParseError(ErrorCode.INVALID_COMMAND, b"Invalid command expected", fatal=True)
    result: PacketEvent = decoder(body)
    return result


# ------------------------------------------------------------------------- encoding

_Encoder = Callable[[Any], list[bytes]]


def _make_encoder(ptype: PacketType) -> Callable[[Any], list[bytes]]:
    spec = PACKETS[ptype]
    n_fields = len(spec.fields)
    kinds = [f.kind for f in spec.fields]
    if all(k not in (FieldKind.NUMBER, FieldKind.FLAG) for k in kinds):
        if n_fields == 0:
            return lambda ev: []
        return lambda ev: list(ev[:n_fields])

    def fields(ev: Any) -> list[bytes]:
        out = []
        for kind, value in zip(kinds, ev, strict=False):
            if kind is FieldKind.NUMBER:
                out.append(b"%d" % value)
            elif kind is FieldKind.FLAG:
                out.append(b"1" if value else b"0")
            else:
                out.append(value)
        return out

    return fields


_FIELDS: dict[PacketType, _Encoder] = {t: _make_encoder(t) for t in PacketType}


def event_fields(event: PacketEvent) -> tuple[PacketType, list[bytes]]:
    """The packet type of ``event`` and its fields as wire bytes."""
    ptype = packet_type(event)
    return ptype, _FIELDS[ptype](event)


def raw_packet(magic: bytes, ptype: int, fields: Sequence[bytes]) -> bytes:
    """Frame ``fields`` as one packet, with no checks at all.

    For tests and fuzzers that need packets no :class:`Connection` would send
    (wrong magic, unknown types, NULs inside fields).

    Args:
        magic: the first four bytes, normally ``REQ`` or ``RES``.
        ptype: the type number (any unsigned 32-bit value).
        fields: the fields, joined with NUL bytes into the body.

    Returns:
        The header and body.
    """
    body = b"\0".join(fields)
    return HEADER.pack(magic, ptype, len(body)) + body


def encode(event: PacketEvent, magic: bytes) -> bytes:
    """Encode ``event`` as one packet with ``magic``; no validation."""
    ptype, fields = event_fields(event)
    body = b"\0".join(fields)
    return HEADER.pack(magic, ptype, len(body)) + body


def encode_parts(event: PacketEvent, magic: bytes) -> list[bytes]:
    """Like :func:`encode`, but the payload stays a separate, uncopied chunk.

    For multi-megabyte payloads: write the parts with ``writelines``/``sendmsg``
    instead of joining them.
    """
    ptype, fields = event_fields(event)
    if not fields:
        return [HEADER.pack(magic, ptype, 0)]
    tail = fields[-1]
    head = b"".join(f + b"\0" for f in fields[:-1])
    return [HEADER.pack(magic, ptype, len(head) + len(tail)) + head, tail]


assert HEADER.size == HEADER_SIZE
