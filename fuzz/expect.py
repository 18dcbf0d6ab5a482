"""Matching a connection's replies against the requests that owed them.

Gearman has no request ids: replies come in request order.  :class:`ReplyMatcher`
lines the shadow's request list (see :mod:`gearproto.fuzz.shadow`) up with the
target's replies and reports replies nothing asked for, requests that were skipped
(a later request was answered, so this one never will be), admin lines and listings
that do not parse, and WORK_* packets for jobs this connection did not submit.

Admin (text) replies are matched in order against the admin commands; binary replies
against the binary requests.  For binary replies the only ambiguity is ERROR: some
requests *may* draw one (CAN_DO, WORK_* for a foreign handle), others *must*.  A
greedy pass settles the usual case; when it finds a problem, an alignment that
minimises skipped requests and unexpected replies decides, so an ERROR is never
blamed on the wrong request just because the greedy pass guessed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gearproto import PacketType, admin, events

from .listings import Ownership, forged_rows
from .shadow import ANY_CODE, WORK_TYPES, Request
from .wire import Reply

__all__ = ["MatchResult", "ReplyMatcher"]

_T = PacketType
#: Largest requests x replies table the alignment builds (beyond it the greedy result
#: stands).
_ALIGN_LIMIT = 400_000
_MISSING_COST = 1.0
_UNEXPECTED_COST = 1.5


@dataclass
class MatchResult:
    """What was wrong with one connection's replies."""

    #: Replies that break the protocol (malformed, unexpected, out of turn).
    violations: list[str] = field(default_factory=list)
    #: Requests owed a reply that were skipped: a later request was answered instead.
    missing: list[Request] = field(default_factory=list)
    #: WORK_* packets for jobs this connection never submitted in the foreground.
    wrong_client: list[str] = field(default_factory=list)
    #: Handles received in JOB_CREATED for foreground submissions.
    handles: list[bytes] = field(default_factory=list)
    #: Admin listing rows that nobody registered (see :mod:`.listings`).
    forged: list[str] = field(default_factory=list)


def _accepts(request: Request, reply: Reply) -> float | None:
    """Cost of ``reply`` answering ``request`` (``None``: it cannot)."""
    if reply.ptype == _T.ERROR:
        code = reply.fields[0]
        if request.kind == "silent":
            return 0.0 if code in request.codes or request.codes is ANY_CODE else None
        if request.kind == "error":
            return 0.0 if code in request.codes or not request.codes else 0.1
        return 0.0 if request.kind == "packet" else None
    if request.kind != "packet" or reply.ptype not in request.replies:
        return None
    # Replies that echo part of their request must echo the right request.
    event = request.event
    if isinstance(event, events.GetStatus | events.GetStatusUnique):
        # A NUL inside the asked-for id makes any answer ambiguous; servers echo the
        # id whole or up to the NUL.
        asked = event[0]
        return 0.0 if reply.fields[0] in (asked, asked.split(b"\0", 1)[0]) else None
    if isinstance(event, events.EchoReq):
        return 0.0 if reply.fields == (event.data,) else None
    return 0.0


class ReplyMatcher:
    """Match one connection's replies; use :meth:`run`, then read the attributes."""

    def __init__(self, requests: list[Request], owner: Ownership | None = None) -> None:
        self._owner = owner
        text = ("line", "listing", "optional-line")
        self._binary = [r for r in requests if r.kind not in text]
        self._admin: deque[Request] = deque(r for r in requests if r.kind in text)
        self._listing: list[bytes] | None = None
        self._listing_for: Request | None = None
        self._last_listing: type[Any] | None = None
        self._fg: dict[bytes, int] = {}
        self._order = {id(r): i for i, r in enumerate(requests)}
        self.result = MatchResult()
        #: (request, reply) pairs, in request order.
        self.answered: list[tuple[Request, Reply]] = []
        self._pending_binary: list[Request] = []

    @property
    def unanswered(self) -> list[Request]:
        """Requests still owed a reply when the replies ended."""
        out = [r for r in self._pending_binary if r.owes_reply]
        out += [r for r in self._admin if r.owes_reply]
        return sorted(out, key=lambda r: self._order[id(r)])

    def run(self, replies: list[Reply]) -> MatchResult:
        binary: list[Reply] = []
        for reply in replies:
            if reply.problem is not None:
                self.result.violations.append(reply.problem)
            elif reply.kind == "line":
                self._line(reply)
            elif self._listing is not None:
                self.result.violations.append(
                    f"{reply.name} packet in the middle of an admin listing"
                )
                self._listing = self._listing_for = None
                binary.append(reply)
            elif reply.ptype != _T.NOOP:
                binary.append(reply)
        self._match_binary(binary)
        self.answered.sort(key=lambda pair: self._order[id(pair[0])])
        return self.result

    # ------------------------------------------------------------------- binary

    def _match_binary(self, replies: list[Reply]) -> None:
        """Pair replies with binary requests; WORK_* are checked against handles."""
        answers = [r for r in replies if r.ptype not in WORK_TYPES]
        pairs, missing, unexpected, rest = self._greedy(answers)
        if (missing or unexpected) and len(self._binary) * len(answers) <= _ALIGN_LIMIT:
            pairs, missing, unexpected, rest = self._align(answers)
        self.result.missing += missing
        self._pending_binary = rest
        for reply in unexpected:
            self.result.violations.append(f"{reply.short()} received, but no request owed it")
        # Handles come from JOB_CREATED answers; WORK_* must be for one of them.  They
        # arrive interleaved, so walk the replies in order.
        created = {id(reply): request for request, reply in pairs}
        for reply in replies:
            request = created.get(id(reply))
            if request is not None and reply.ptype == _T.JOB_CREATED and request.foreground:
                handle = reply.fields[0]
                self._fg[handle] = self._fg.get(handle, 0) + 1
                self.result.handles.append(handle)
            elif reply.ptype in WORK_TYPES:
                self._work(reply)
        self.answered += pairs

    def _greedy(
        self, replies: list[Reply]
    ) -> tuple[list[tuple[Request, Reply]], list[Request], list[Reply], list[Request]]:
        queue = deque(self._binary)
        pairs: list[tuple[Request, Reply]] = []
        missing: list[Request] = []
        unexpected: list[Reply] = []
        for reply in replies:
            for index, request in enumerate(queue):
                if _accepts(request, reply) is not None:
                    for _ in range(index):
                        skipped = queue.popleft()
                        if skipped.owes_reply:
                            missing.append(skipped)
                    pairs.append((queue.popleft(), reply))
                    break
            else:
                unexpected.append(reply)
        return pairs, missing, unexpected, list(queue)

    def _align(
        self, replies: list[Reply]
    ) -> tuple[list[tuple[Request, Reply]], list[Request], list[Reply], list[Request]]:
        """Minimum-cost alignment of requests and replies (edit-distance style)."""
        requests = self._binary
        n, m = len(requests), len(replies)
        inf = float("inf")
        # cost[i][j]: cheapest way to explain replies[j:] with requests[i:].  Requests
        # left over once the replies run out are merely unanswered (cost 0).
        cost = [[inf] * (m + 1) for _ in range(n + 1)]
        move = [[0] * (m + 1) for _ in range(n + 1)]
        for j in range(m + 1):
            cost[n][j] = (m - j) * _UNEXPECTED_COST
            move[n][j] = 2
        for i in range(n - 1, -1, -1):
            request = requests[i]
            skip = _MISSING_COST if request.owes_reply else 0.0
            row, below = cost[i], cost[i + 1]
            row[m] = 0.0
            move[i][m] = 0
            for j in range(m - 1, -1, -1):
                best, how = skip + below[j], 0
                if j < m:
                    fit = _accepts(request, replies[j])
                    if fit is not None and fit + below[j + 1] < best:
                        best, how = fit + below[j + 1], 1
                    if _UNEXPECTED_COST + row[j + 1] < best:
                        best, how = _UNEXPECTED_COST + row[j + 1], 2
                row[j], move[i][j] = best, how
        pairs: list[tuple[Request, Reply]] = []
        missing: list[Request] = []
        unexpected: list[Reply] = []
        i = j = 0
        while i < n and j < m:
            how = move[i][j]
            if how == 0:
                if requests[i].owes_reply:
                    missing.append(requests[i])
                i += 1
            elif how == 1:
                pairs.append((requests[i], replies[j]))
                i += 1
                j += 1
            else:
                unexpected.append(replies[j])
                j += 1
        unexpected += replies[j:]
        return pairs, missing, unexpected, requests[i:]

    def _work(self, reply: Reply) -> None:
        handle = reply.fields[0]
        if handle not in self._fg and handle.endswith(b"\0") and handle[:-1] in self._fg:
            handle = handle[:-1]  # gearmand's WORK_FAIL "handle\0" (its issue #108)
        if handle not in self._fg:
            self.result.wrong_client.append(
                f"{reply.name} for handle {handle[:64]!r}, which this connection did not submit"
            )

    # -------------------------------------------------------------------- admin

    def _line(self, reply: Reply) -> None:
        line = reply.line
        if self._listing is not None:
            if line == b".":
                self._finish_listing()
            else:
                self._listing.append(line)
            return
        if self._continues_listing(line):
            return
        if not self._admin:
            self.result.violations.append(
                f"admin line {line[:40]!r} received, but no admin command is owed a reply"
            )
            return
        request = self._admin.popleft()
        if request.kind == "listing":
            is_error = line.startswith(b"ERR ") and not isinstance(
                request.event, admin.ShowUniqueJobs
            )
            if not is_error:
                self._listing_for = request
                self._listing = []
                if line == b".":
                    self._finish_listing()
                else:
                    self._listing.append(line)
                return
        self.answered.append((request, reply))
        try:
            admin.parse_reply_line(line)
        except admin.AdminParseError as exc:
            self.result.violations.append(f"malformed reply to {request.label}: {exc}")

    def _continues_listing(self, line: bytes) -> bool:
        """Whether ``line`` is debris of the listing that just ended.

        A registered name holding ``\n.\n`` ends a listing early, and the rest of it
        arrives as stray lines.  That is a forged-rows problem of whoever registered
        the name (often another case on the same server), checked where the name's
        own rows are; the debris must not be read as the replies that follow.
        """
        if self._last_listing is None:
            return False
        head = self._admin[0] if self._admin else None
        if head is None:
            return True
        if head.kind == "listing":
            return False
        return not line.startswith((b"OK", b"ERR "))

    def _finish_listing(self) -> None:
        rows, request = self._listing or [], self._listing_for
        self._listing = self._listing_for = None
        if request is None:
            return
        self._last_listing = type(request.event)
        self.answered.append((request, Reply("line", line=b".")))
        command = type(request.event)
        if command not in admin.LISTING_COMMANDS:
            return
        if self._owner is not None:
            # Rows of other cases (a long-lived server keeps every function it ever saw)
            # are not this case's business; its own rows must parse and be registered.
            self.result.forged.extend(forged_rows(command, rows, self._owner))
            return
        try:
            admin.parse_listing(command, rows)
        except admin.AdminParseError as exc:
            self.result.violations.append(f"malformed {request.label} listing: {exc}")
