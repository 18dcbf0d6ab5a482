"""Shrinking a failing case to a minimal one that still fails the same way.

Three passes, each keeping a change only if the case still fails:

1. remove whole steps (connections with everything they do, writes, pauses, closes);
2. cut writes into packets and lines and remove those, and shrink large fills;
3. delta-debug the remaining bytes of every write.

Each candidate is one run against the live target, so the passes are bounded by a
deadline and an attempt count; what is left when either runs out is still valid.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from .case import Case, Connect, Pause, Send, Step

__all__ = ["Minimizer", "ddmin", "split_frames"]

_T = TypeVar("_T")
_HEADER = struct.Struct(">4sII")


class _OutOfBudget(Exception):
    pass


def ddmin(items: Sequence[_T], fails: Callable[[list[_T]], bool]) -> list[_T]:
    """Zeller's delta debugging: a 1-minimal subsequence of ``items`` that still fails."""
    current = list(items)
    n = 2
    while len(current) >= 2:
        chunk = max(1, len(current) // n)
        subsets = [current[i : i + chunk] for i in range(0, len(current), chunk)]
        reduced = False
        for index in range(len(subsets)):
            complement = [x for j, s in enumerate(subsets) if j != index for x in s]
            if complement and fails(complement):
                current = complement
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(current):
                break
            n = min(len(current), n * 2)
    if len(current) == 1 and fails([]):
        return []
    return current


def split_frames(data: bytes) -> list[bytes]:
    """Cut a byte stream into packets and text lines (whatever cannot be framed stays
    one piece)."""
    out: list[bytes] = []
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:
            if n - pos < 12:
                break
            size = _HEADER.unpack_from(data, pos)[2]
            end = pos + 12 + size
            if end > n:
                break
            out.append(data[pos:end])
            pos = end
        else:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break
            out.append(data[pos : newline + 1])
            pos = newline + 1
    if pos < n:
        out.append(data[pos:])
    return out


def _normalise(steps: list[Step]) -> list[Step]:
    """Drop steps on connections that are never opened."""
    opened: set[int] = set()
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Connect):
            opened.add(step.conn)
            out.append(step)
        elif isinstance(step, Pause) or step.conn in opened:
            out.append(step)
    return out


class Minimizer:
    """Shrinks cases with a ``fails(case) -> bool`` predicate, within a budget."""

    def __init__(
        self, fails: Callable[[Case], bool], *, deadline: float, max_attempts: int = 400
    ) -> None:
        self._fails = fails
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.attempts = 0

    def _try(self, case: Case) -> bool:
        if self.attempts >= self.max_attempts or time.monotonic() >= self.deadline:
            raise _OutOfBudget
        self.attempts += 1
        return self._fails(case)

    def minimize(self, case: Case) -> Case:
        best = case
        try:
            best = self._steps(best)
            best = self._frames(best)
            best = self._fills(best)
            best = self._bytes(best)
            best = self._merge(best)
        except _OutOfBudget:
            pass
        return best

    # ----------------------------------------------------------------------- passes

    def _steps(self, case: Case) -> Case:
        # Whole connections first (cheap and usually the biggest win) ...
        conns = case.connections
        if len(conns) > 1:
            keep = ddmin(
                conns,
                lambda kept: self._try(
                    case.with_steps(
                        s for s in case.steps if isinstance(s, Pause) or s.conn in set(kept)
                    )
                ),
            )
            case = case.with_steps(
                s for s in case.steps if isinstance(s, Pause) or s.conn in set(keep)
            )
        # ... then single steps.
        steps = ddmin(list(case.steps), lambda kept: self._try(case.with_steps(_normalise(kept))))
        return case.with_steps(_normalise(steps))

    @staticmethod
    def _with_data(case: Case, index: int, data: bytes) -> Case:
        steps = list(case.steps)
        step = steps[index]
        assert isinstance(step, Send)
        steps[index] = Send(step.conn, data, step.fill_byte, step.fill_count)
        return case.with_steps(steps)

    def _shrink_send(self, case: Case, index: int, pieces: list[bytes]) -> Case:
        """ddmin over the pieces (frames or single bytes) of write number ``index``."""

        def fails(kept: list[bytes]) -> bool:
            return self._try(self._with_data(case, index, b"".join(kept)))

        kept: list[bytes] = ddmin(pieces, fails)
        return self._with_data(case, index, b"".join(kept))

    def _frames(self, case: Case) -> Case:
        for index in range(len(case.steps)):
            step = case.steps[index]
            if not isinstance(step, Send) or step.fill_count:
                continue
            frames = split_frames(step.data)
            if len(frames) >= 2:
                case = self._shrink_send(case, index, frames)
        return case

    def _fills(self, case: Case) -> Case:
        for index in range(len(case.steps)):
            step = case.steps[index]
            if not isinstance(step, Send):
                continue
            count = step.fill_count
            while count > 1:
                smaller = count // 2
                steps = list(case.steps)
                steps[index] = Send(step.conn, step.data, step.fill_byte, smaller)
                candidate = case.with_steps(steps)
                if not self._try(candidate):
                    break
                case, count = candidate, smaller
        return case

    def _bytes(self, case: Case) -> Case:
        for index in range(len(case.steps)):
            step = case.steps[index]
            if isinstance(step, Send) and 1 < len(step.data) <= 4096:
                case = self._shrink_send(case, index, [bytes([b]) for b in step.data])
        return case

    def _merge(self, case: Case) -> Case:
        """Fewer, larger writes read better; keep the merge only if it still fails."""
        merged: list[Step] = []
        for step in case.steps:
            last = merged[-1] if merged else None
            if (
                isinstance(step, Send)
                and isinstance(last, Send)
                and last.conn == step.conn
                and not last.fill_count
                and not step.fill_count
            ):
                merged[-1] = Send(step.conn, last.data + step.data)
            else:
                merged.append(step)
        if len(merged) < len(case.steps):
            candidate = case.with_steps(merged)
            if self._try(candidate):
                return candidate
        return case
