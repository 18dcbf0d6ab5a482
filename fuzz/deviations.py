"""Known, deliberate differences between gearproto's server and gearmand, as signatures.

Differential mode (:mod:`.differential`) reports every place where two servers react
differently to the same case.  Between gearmand 1.1.20 and gearproto's own server
many of those are deliberate: each is described, with its reason, under a heading of
``docs/deviations.md``.  This table lets the report say so mechanically: every entry
names the heading (its anchor) and a predicate over one :class:`Divergence`.  A
divergence no entry matches is *unexplained*: a bug in one of the servers, or a
deviation nobody documented yet.

The predicates look at what the two servers answered at the first difference and at
the requests the connection sent (as the protocol core parsed them), never at timing.
``tests/test_fuzz_deviations.py`` checks that every anchor exists in the document.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gearproto import admin
from gearproto import events as ev

from .shadow import Request

__all__ = ["KNOWN_DEVIATIONS", "Divergence", "KnownDeviation", "anchor_of", "explain"]

Item = tuple[str, str]


@dataclass(frozen=True)
class Divergence:
    """One connection's differing reactions, seen from gearproto's side (``ours``) and
    gearmand's (``theirs``); ``where`` is the index of the first differing reply."""

    kind: str
    where: int
    ours: Sequence[Item]
    ours_fate: str
    theirs: Sequence[Item]
    theirs_fate: str
    #: The requests the connection sent, as the protocol core read them.
    requests: Sequence[Request]
    #: The case shut down the connection's write side.
    half_closed: bool = False
    #: Every byte the connection sent (for fields the parsed requests do not keep).
    sent_bytes: bytes = b""

    @property
    def ours_item(self) -> str:
        """Our reply at the first difference, or our fate if we had no more replies."""
        return self.ours[self.where][0] if self.where < len(self.ours) else self.ours_fate

    @property
    def theirs_item(self) -> str:
        return self.theirs[self.where][0] if self.where < len(self.theirs) else self.theirs_fate

    @property
    def ours_rest(self) -> list[str]:
        return [kind for kind, _ in self.ours[self.where :]]

    @property
    def theirs_ended(self) -> bool:
        """gearmand had no more replies here and closed the connection (or stopped
        answering it)."""
        return self.where >= len(self.theirs) and self.theirs_fate in ("closed", "silent")

    def sent(self, *types: type) -> list[Any]:
        """Events of the given types the connection sent."""
        return [r.event for r in self.requests if isinstance(r.event, types)]


@dataclass(frozen=True)
class KnownDeviation:
    """One heading of docs/deviations.md and how to recognise its divergences."""

    #: The heading's text, exactly as in docs/deviations.md.
    heading: str
    matches: Callable[[Divergence], bool]

    @property
    def anchor(self) -> str:
        return anchor_of(self.heading)


def anchor_of(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rules)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _is_error(kind: str) -> bool:
    return kind.startswith(("ERROR ", "ERR "))


def _too_many_tokens(d: Divergence) -> bool:
    # gearmand closes at the line, dropping the replies it still owed to earlier ones.
    return (
        d.theirs_ended
        and "ERR INVALID_ARGUMENTS" in d.ours_rest
        and any(r.label == "admin:too-many-tokens" for r in d.requests)
    )


def _oversize_refused(d: Divergence) -> bool:
    # We refuse every field beyond its limit with ARGUMENT_TOO_LARGE (and nothing else
    # draws that code; the oracles check our ERRORs against what the core library
    # says of each request); gearmand checks some fields on some packets and answers,
    # ignores or closes for the others.
    if d.ours_item == "ERROR ARGUMENT_TOO_LARGE":
        return True
    # gearmand refuses a 64-byte handle in WORK_FAIL (its buffer holds 63 and a NUL).
    return d.theirs_item == "ERROR ARGUMENT_TOO_LARGE" and 64 in _work_fail_handles(d)


_NOT_ASSIGNED = re.compile(r"^WORK_FAIL for job (b'.*'|b\".*\"), which is not assigned")


def _work_fail_handles(d: Divergence) -> list[int]:
    """Lengths of the handles of the connection's WORK_FAIL packets (the protocol core
    refuses those for jobs it did not see assigned, naming the handle)."""
    lengths = [len(e.handle) for e in d.sent(ev.WorkFail)]
    for request in d.requests:
        match = _NOT_ASSIGNED.match(request.detail)
        if match:
            with contextlib.suppress(ValueError, SyntaxError):
                lengths.append(len(ast.literal_eval(match.group(1))))
    return lengths


def _handle_of_64_bytes(d: Divergence) -> bool:
    # gearmand's handle buffer holds 63 bytes and a NUL: GET_STATUS for a 64-byte
    # handle gets no reply (or the connection closed); it is within the limit for us.
    return (
        d.ours_item == "STATUS_RES"
        and d.theirs_item != "STATUS_RES"
        and any(len(e.handle) == 64 for e in d.sent(ev.GetStatus))
    )


def _empty_function_name(d: Divergence) -> bool:
    # ``create function `` names no function: we refuse it; gearmand creates one with
    # an empty name (CRLF) or crashes (LF).
    return d.ours_item == "ERR INVALID_ARGUMENTS" and any(
        e.tokens[:2] == (b"create", b"function") and not any(e.tokens[2:])
        for e in d.sent(admin.AdminBadCommand)
    )


def _long_number_field(d: Divergence) -> bool:
    # A number is read like atoi and its limit applies to the number read; gearmand
    # drops (or closes on) a number field over 20 characters, whatever they are.
    return (
        d.theirs_ended
        and not any(_is_error(kind) for kind in d.ours_rest)
        and any(len(field) > 20 for field in _number_fields(d.sent_bytes))
    )


#: Packet type -> index of its number fields (NUL-separated).
_NUMBER_FIELDS = {12: (1, 2), 23: (1,), 36: (2,)}


def _number_fields(data: bytes) -> list[bytes]:
    """The raw number fields of the \\0REQ packets in ``data`` (CAN_DO_TIMEOUT,
    WORK_STATUS, SUBMIT_JOB_EPOCH)."""
    fields: list[bytes] = []
    pos = 0
    while (pos := data.find(b"\0REQ", pos)) >= 0 and pos + 12 <= len(data):
        ptype = int.from_bytes(data[pos + 4 : pos + 8], "big")
        size = int.from_bytes(data[pos + 8 : pos + 12], "big")
        indexes = _NUMBER_FIELDS.get(ptype)
        if indexes:
            parts = data[pos + 12 : pos + 12 + size].split(b"\0")
            fields += [parts[i] for i in indexes if i < len(parts)]
        pos += 12
    return fields


def _arguments_over_8k(d: Divergence) -> bool:
    # gearmand closes, silently, when a packet's arguments exceed its 8 KiB buffer.
    return (
        d.theirs_ended
        and not any(_is_error(kind) for kind in d.ours_rest)
        and any(r.oversize > _GEARMAND_ARGUMENTS for r in d.requests)
    )


_GEARMAND_ARGUMENTS = 8192


def _listing_split(d: Divergence) -> bool:
    # gearmand prints peers' names raw: a name with a line break or a row of "." (left
    # by an earlier case) splits its listing in two.
    def collapsed(items: Sequence[Item]) -> list[str]:
        out: list[str] = []
        for kind, _ in items:
            if not (kind == "listing" and out and out[-1] == "listing"):
                out.append(kind)
        return out

    theirs_listings = sum(1 for kind, _ in d.theirs if kind == "listing")
    ours_listings = sum(1 for kind, _ in d.ours if kind == "listing")
    return theirs_listings > ours_listings and collapsed(d.theirs) == collapsed(d.ours)


def _unique_of_64_bytes(d: Divergence) -> bool:
    # gearmand stores 63 bytes of a 64-byte unique (and does not answer a
    # GET_STATUS_UNIQUE for one): its status replies differ from ours.
    if "STATUS_RES_UNIQUE" not in (d.ours_item, d.theirs_item):
        return False
    return any(len(e.unique) == 64 for e in d.sent(ev.GetStatusUnique, *_SUBMITS))


_SUBMITS = (ev.SubmitJob, ev.SubmitJobEpoch, ev.SubmitJobSched, ev.SubmitReduceJob)


def _timeout_out_of_range(d: Divergence) -> bool:
    return d.ours_item == "ERROR INVALID_ARGUMENT" and any(
        not 0 <= e.timeout <= 2**31 - 1 for e in d.sent(ev.CanDoTimeout)
    )


def _epoch_out_of_range(d: Divergence) -> bool:
    return d.ours_item == "ERROR INVALID_ARGUMENT" and any(
        not 0 <= e.epoch <= 2**63 - 1 for e in d.sent(ev.SubmitJobEpoch)
    )


def _refusal_where_gearmand_hung_up(d: Divergence) -> bool:
    # gearmand closed (silently, dropping replies it still owed); we answered what
    # came before the bad input and then refused it.
    return d.theirs_ended and any(_is_error(kind) for kind in d.ours_rest)


def _answered_before_half_close(d: Divergence) -> bool:
    return (
        d.half_closed
        and d.theirs_ended
        and bool(d.ours_rest)
        and not any(_is_error(kind) for kind in d.ours_rest)
    )


def _woken_on_registration(d: Divergence) -> bool:
    # A sleeping worker that registers for a function with jobs waiting gets a NOOP.
    def noops(items: Sequence[Item]) -> int:
        return sum(int(count) for kind, count in items if kind == "NOOPs")

    return (
        noops(d.ours) > noops(d.theirs)
        and [k for k, _ in d.ours if k != "NOOPs"] == [k for k, _ in d.theirs if k != "NOOPs"]
        and bool(d.sent(ev.PreSleep))
        and bool(d.sent(ev.CanDo, ev.CanDoTimeout))
    )


#: Most specific first: the first match explains a divergence.
KNOWN_DEVIATIONS: tuple[KnownDeviation, ...] = (
    KnownDeviation("Admin lines with too many tokens get an ERR line", _too_many_tokens),
    KnownDeviation("Every field is held to its limit", _oversize_refused),
    KnownDeviation("Unique ids of exactly 64 bytes work", _unique_of_64_bytes),
    KnownDeviation("CAN_DO_TIMEOUT is timed per job", _timeout_out_of_range),
    KnownDeviation("Epoch jobs wake sleeping workers when they fall due", _epoch_out_of_range),
    KnownDeviation("Protocol errors are always answered", _refusal_where_gearmand_hung_up),
    KnownDeviation("Every field is held to its limit", _arguments_over_8k),
    KnownDeviation("Every field is held to its limit", _handle_of_64_bytes),
    KnownDeviation("Every field is held to its limit", _long_number_field),
    KnownDeviation("Listings escape names and ids", _listing_split),
    KnownDeviation("create function keeps the whole name", _empty_function_name),
    KnownDeviation("Requests sent before a half-close are answered", _answered_before_half_close),
    KnownDeviation("A new PRE_SLEEP re-arms wake-ups", _woken_on_registration),
)


def explain(divergence: Divergence) -> KnownDeviation | None:
    """The documented deviation that explains ``divergence``, if any.

    gearmand's listings may come split in two (see :func:`_listing_split`); when that
    alone does not explain everything, the rules are tried again on the replies with
    every run of listings counted as one.
    """
    for known in KNOWN_DEVIATIONS:
        if known.matches(divergence):
            return known
    ours, theirs = _merge_listings(divergence.ours), _merge_listings(divergence.theirs)
    if len(theirs) == len(divergence.theirs):
        return None
    where = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a[0] != b[0]),
        min(len(ours), len(theirs)),
    )
    merged = dataclasses.replace(divergence, where=where, ours=ours, theirs=theirs)
    for known in KNOWN_DEVIATIONS:
        if known.matches(merged):
            return known
    return None


def _merge_listings(items: Sequence[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        if not (item[0] == "listing" and out and out[-1][0] == "listing"):
            out.append(item)
    return out
