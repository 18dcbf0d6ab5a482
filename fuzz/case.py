"""Fuzz cases: what is sent to a target, step by step, and their replayable file format.

A :class:`Case` is a list of steps over numbered connections: open a connection, write
bytes on it, pause, close it (FIN, RST or half-close).  Cases carry no expectations:
the oracles derive what a correct server must answer from the bytes themselves, so a
reproducer file is only the steps plus where the case came from.

The file format is JSON (``gearproto-fuzz-case/1``).  Bytes are stored as latin-1 text,
which JSON escapes where needed, so short protocol bytes stay readable; a long run of
one byte is stored as ``fill`` instead of being spelled out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CASE_FORMAT",
    "Case",
    "CaseFormatError",
    "Close",
    "Connect",
    "Pause",
    "Send",
    "Step",
    "load_case_dict",
]

CASE_FORMAT = "gearproto-fuzz-case/1"

#: Longest pause a case may ask for; keeps every case bounded in time.
MAX_PAUSE_MS = 2000
#: Most connections one case may open.
MAX_CONNECTIONS = 512

CloseHow = Literal["fin", "rst", "half"]


class CaseFormatError(ValueError):
    """A reproducer file that is not a valid case."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Open connection ``conn``.  ``read=False`` makes it a reader that never reads."""

    conn: int
    read: bool = True


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` and then ``fill_count`` copies of ``fill_byte`` on ``conn``."""

    conn: int
    data: bytes
    fill_byte: int = 0x78
    fill_count: int = 0

    @property
    def size(self) -> int:
        return len(self.data) + self.fill_count

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes to write, without materialising a large fill at once."""
        if self.data:
            yield self.data
        left = self.fill_count
        block = bytes([self.fill_byte]) * min(left, chunk_size)
        while left > 0:
            n = min(left, chunk_size)
            yield block if n == len(block) else block[:n]
            left -= n

    def materialise(self) -> bytes:
        return self.data + bytes([self.fill_byte]) * self.fill_count


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``ms`` milliseconds (reading whatever arrives meanwhile)."""

    ms: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``conn``: ``fin`` (normal close), ``rst`` (abortive) or ``half`` (shutdown
    of the write side only; the connection is still read)."""

    conn: int
    how: CloseHow = "fin"


Step = Connect | Send | Pause | Close


@dataclass(frozen=True)
class Case:
    """One fuzz case: steps plus where it came from (generator, seed, index)."""

    steps: tuple[Step, ...]
    generator: str = "manual"
    seed: int = 0
    index: int = 0
    description: str = ""
    #: Free-form details the generator wants in reports (never read by oracles).
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return f"{self.generator}/{self.seed}/{self.index}"

    @property
    def connections(self) -> list[int]:
        seen: dict[int, None] = {}
        for step in self.steps:
            if isinstance(step, Connect):
                seen[step.conn] = None
        return list(seen)

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.steps if isinstance(s, Send))

    def sent_by(self, conn: int) -> bytes:
        """Everything the case writes on ``conn`` (fills included)."""
        return b"".join(
            s.materialise() for s in self.steps if isinstance(s, Send) and s.conn == conn
        )

    def with_steps(self, steps: Iterable[Step]) -> Case:
        return replace(self, steps=tuple(steps))

    # ------------------------------------------------------------------ file format

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CASE_FORMAT,
            "generator": self.generator,
            "seed": self.seed,
            "index": self.index,
            "description": self.description,
            "notes": self.notes,
            "steps": [_step_to_dict(s) for s in self.steps],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=True) + "\n"

    def save(self, path: Path) -> None:
        path.write_text(self.dumps(), encoding="ascii")


def _step_to_dict(step: Step) -> dict[str, Any]:
    if isinstance(step, Connect):
        out: dict[str, Any] = {"op": "connect", "conn": step.conn}
        if not step.read:
            out["read"] = False
        return out
    if isinstance(step, Send):
        out = {"op": "send", "conn": step.conn, "data": step.data.decode("latin-1")}
        if step.fill_count:
            out["fill"] = [step.fill_byte, step.fill_count]
        return out
    if isinstance(step, Pause):
        return {"op": "pause", "ms": step.ms}
    return {"op": "close", "conn": step.conn, "how": step.how}


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CaseFormatError(f"step {obj!r}: {key!r} must be an integer in {low}..{high}")
    return value


def _step_from_dict(obj: Any) -> Step:
    if not isinstance(obj, dict):
        raise CaseFormatError(f"a step must be an object, not {obj!r}")
    op = obj.get("op")
    if op == "connect":
        read = obj.get("read", True)
        if not isinstance(read, bool):
            raise CaseFormatError(f"step {obj!r}: 'read' must be true or false")
        return Connect(_int(obj, "conn", 0, MAX_CONNECTIONS - 1), read)
    if op == "send":
        data = obj.get("data", "")
        if not isinstance(data, str):
            raise CaseFormatError(f"step {obj!r}: 'data' must be a string")
        try:
            raw = data.encode("latin-1")
        except UnicodeEncodeError:
            raise CaseFormatError(
                f"step {obj!r}: 'data' holds characters above U+00FF (bytes are latin-1)"
            ) from None
        fill = obj.get("fill", [0x78, 0])
        if (
            not isinstance(fill, list)
            or len(fill) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in fill)
            or not 0 <= fill[0] <= 255
            or not 0 <= fill[1] <= 1 << 32
        ):
            raise CaseFormatError(f"step {obj!r}: 'fill' must be [byte, count]")
        return Send(_int(obj, "conn", 0, MAX_CONNECTIONS - 1), raw, fill[0], fill[1])
    if op == "pause":
        return Pause(_int(obj, "ms", 0, MAX_PAUSE_MS))
    if op == "close":
        how = obj.get("how", "fin")
        if how not in ("fin", "rst", "half"):
            raise CaseFormatError(f"step {obj!r}: 'how' must be fin, rst or half")
        return Close(_int(obj, "conn", 0, MAX_CONNECTIONS - 1), how)
    raise CaseFormatError(f"unknown step op {op!r} (expected connect, send, pause or close)")


def load_case_dict(obj: Any) -> Case:
    """Build a :class:`Case` from its JSON object, checking every field.

    Raises:
        CaseFormatError: the object is not a valid case.
    """
    if not isinstance(obj, dict) or obj.get("format") != CASE_FORMAT:
        raise CaseFormatError(f'not a fuzz case (expected "format": {CASE_FORMAT!r})')
    steps_obj = obj.get("steps")
    if not isinstance(steps_obj, list):
        raise CaseFormatError("'steps' must be a list")
    steps = tuple(_step_from_dict(s) for s in steps_obj)
    opened: set[int] = set()
    for step in steps:
        if isinstance(step, Connect):
            opened.add(step.conn)
        elif not isinstance(step, Pause) and step.conn not in opened:
            raise CaseFormatError(f"step {_step_to_dict(step)} uses a connection never opened")
    seed, index = obj.get("seed", 0), obj.get("index", 0)
    if not isinstance(seed, int) or not isinstance(index, int):
        raise CaseFormatError("'seed' and 'index' must be integers")
    notes = obj.get("notes", {})
    return Case(
        steps=steps,
        generator=str(obj.get("generator", "manual")),
        seed=seed,
        index=index,
        description=str(obj.get("description", "")),
        notes=notes if isinstance(notes, dict) else {},
    )
