"""The forged-rows oracle: do admin listings show only what was registered?

``status``, ``prioritystatus`` and ``workers`` print function names and client ids
that clients chose.  A server that prints them raw lets a client add rows to the
listing (a name with ``\\n``), shift columns (``\\t``) or invent functions in a
``workers`` row (a space), which misleads every monitoring script that parses the
output.  A row is checked only if it belongs to the case under test (it starts with
the case's name prefix, or carries a client id the case set), so leftovers from
other cases on a long-lived server are not blamed on this one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gearproto import admin

__all__ = ["Ownership", "forged_rows"]


@dataclass
class Ownership:
    """What one case (or one stateful run) registered on the server."""

    #: Rows whose first cell starts with one of these belong to the case.
    prefixes: tuple[bytes, ...]
    #: Function names the case registered, submitted to or created.
    functions: set[bytes] = field(default_factory=set)
    #: Client ids the case set with SET_CLIENT_ID.
    client_ids: set[bytes] = field(default_factory=set)

    @classmethod
    def from_names(cls, prefixes: Iterable[bytes], names: Iterable[bytes]) -> Ownership:
        names = set(names)
        return cls(tuple(p for p in prefixes if p), names, names)

    def shows_function(self, shown: bytes) -> bool:
        """``shown`` is a registered function name, verbatim or escaped."""
        return shown in self.functions or _escaped_form(shown, self.functions)

    def owns(self, text: bytes) -> bool:
        return any(text.startswith(p) for p in self.prefixes)

    def id_known(self, shown: bytes) -> bool:
        # gearmand truncates ids to 127 bytes, which is display, not forgery.
        return (
            shown in self.client_ids
            or (len(shown) >= 64 and any(i.startswith(shown) for i in self.client_ids))
            or _escaped_form(shown, self.client_ids)
        )


_SEPARATORS = re.compile(rb"[\x00-\x20\x7f]+")


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_BACKSLASH = re.compile(rb"\\(x[0-9A-Fa-f]{2}|[ntr0\\])")
_BACKSLASH_CODES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"0": b"\0", b"\\": b"\\"}


def _unescape(shown: bytes) -> set[bytes]:
    """``shown`` read back under the usual escaping schemes (%XX, C backslashes)."""
    percent = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), shown)
    backslash = _BACKSLASH.sub(
        lambda m: (
            bytes([int(m.group(1)[1:], 16)])
            if m.group(1).startswith(b"x")
            else _BACKSLASH_CODES[m.group(1)]
        ),
        shown,
    )
    return {percent, backslash}


def _escaped_form(shown: bytes, names: set[bytes]) -> bool:
    """Whether ``shown`` renders one of ``names`` with its control bytes escaped.

    A server may print ``a\\nb``, ``a%0Ab`` or ``a?b`` for a name ``a<LF>b``; that is
    honest output.  Forgery needs the raw byte, so ``shown`` must hold no control
    byte or space, and every printable run of the name must appear in it, in order.
    """
    if _SEPARATORS.search(shown):
        return False
    if _unescape(shown) & names:
        return True
    for name in names:
        parts = [p for p in _SEPARATORS.split(name) if p]
        if len(parts) < 2 or not shown.startswith(parts[0]):
            continue
        pos = 0
        for part in parts:
            pos = shown.find(part, pos)
            if pos < 0:
                break
            pos += len(part)
        else:
            return True
    return False


def forged_rows(command: type[Any], rows: list[bytes], owner: Ownership) -> list[str]:
    """Problems with the rows of one listing that belong to ``owner``."""
    problems: list[str] = []
    if command in (admin.Status, admin.PriorityStatus):
        for row in rows:
            if not owner.owns(row):
                continue
            try:
                reply = admin.parse_listing(command, [row])
            except admin.AdminParseError:
                problems.append(f"{command.__name__.lower()} row {row[:80]!r} does not parse")
                continue
            name = reply.rows[0].function  # type: ignore[union-attr]
            if not owner.shows_function(name):
                problems.append(
                    f"{command.__name__.lower()} lists function {name[:80]!r}, which was never"
                    " registered"
                )
    elif command is admin.Workers:
        for row in rows:
            try:
                parsed = admin.parse_listing(admin.Workers, [row])
            except admin.AdminParseError:
                if owner.owns(row) or any(i and i in row for i in owner.client_ids):
                    problems.append(f"workers row {row[:80]!r} does not parse")
                continue
            worker = parsed.rows[0]  # type: ignore[union-attr]
            assert isinstance(worker, admin.WorkerRow)
            owned_id = worker.client_id != b"-" and (
                owner.id_known(worker.client_id) or owner.owns(worker.client_id)
            )
            if owner.owns(worker.client_id) and not owner.id_known(worker.client_id):
                problems.append(f"workers lists client id {worker.client_id[:80]!r}, never set")
            if not owned_id:
                continue
            problems += [
                f"workers row of {worker.client_id[:40]!r} lists function"
                f" {function[:80]!r}, which was never registered"
                for function in worker.functions
                if function and not owner.shows_function(function)
            ]
    return problems
