"""Hypothesis strategies for the protocol core's events, driven by ``gearproto.PACKETS``.

``packet_events()`` draws any packet event (all 42 types); ``event_for(ptype)`` one of
a given type.  Fields respect the default :class:`gearproto.Limits` and the wire rules
(no NUL inside a field that is NUL-terminated), so every drawn event is sendable by the
side its direction allows, given the right connection state.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from gearproto import PACKETS, FieldKind, Limits, PacketType, Priority
from gearproto.events import EVENT_CLASSES, SUBMIT_VARIANTS, SubmitReduceJob

LIMITS = Limits()

_NUMBER = st.integers(min_value=-(10**18), max_value=10**19)


def field_value(kind: FieldKind, *, tail: bool, limits: Limits = LIMITS) -> st.SearchStrategy[Any]:
    """Values for one field of ``kind``; only the tail field may hold NUL bytes."""
    if kind is FieldKind.NUMBER:
        return _NUMBER
    if kind is FieldKind.FLAG:
        return st.booleans()
    cap = {
        FieldKind.FUNCTION: limits.max_function,
        FieldKind.UNIQUE: limits.max_unique,
        FieldKind.HANDLE: limits.max_handle,
        FieldKind.TEXT: 200,
        FieldKind.DATA: 300,
    }[kind]
    if tail:
        return st.binary(max_size=cap)
    alphabet = st.integers(min_value=1, max_value=255)
    return st.lists(alphabet, max_size=cap).map(bytes)


def event_for(ptype: PacketType, *, nul_free: bool = False) -> st.SearchStrategy[Any]:
    """Events carried by packets of type ``ptype``.

    Args:
        ptype: the packet type.
        nul_free: keep NUL bytes out of tail fields too (for identifiers that must
            be reused in a NUL-terminated field elsewhere, like a handle).
    """
    spec = PACKETS[ptype]
    cls = EVENT_CLASSES[ptype]
    last = len(spec.fields) - 1
    fields = [
        field_value(f.kind, tail=i == last and not nul_free) for i, f in enumerate(spec.fields)
    ]
    extra: tuple[Any, ...] = ()
    if ptype in SUBMIT_VARIANTS:
        priority, background = SUBMIT_VARIANTS[ptype]
        extra = (Priority(priority), background)
    elif cls is SubmitReduceJob:
        extra = (ptype is PacketType.SUBMIT_REDUCE_JOB_BACKGROUND,)
    return st.tuples(*fields).map(lambda values: cls(*values, *extra))


def packet_events() -> st.SearchStrategy[Any]:
    """Any packet event, of any of the 42 types."""
    return st.sampled_from(list(PacketType)).flatmap(event_for)


def handles() -> st.SearchStrategy[bytes]:
    """Job handles as a server makes them (no NUL, within the default limit)."""
    return st.binary(min_size=1, max_size=LIMITS.max_handle).filter(lambda h: b"\0" not in h)
