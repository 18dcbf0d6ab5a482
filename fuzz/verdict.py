"""Finding classes and verdicts: the vocabulary every oracle reports in."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FindingClass", "Verdict", "Violation", "normalise"]


class FindingClass(enum.Enum):
    """What kind of bug a finding is; ``severity`` 1 is the worst."""

    CRASH = "crash"
    LOST_JOB = "lost-job"
    DUPLICATE_JOB = "duplicate-job"
    WRONG_CLIENT = "wrong-client"
    JOB_MIXUP = "job-mixup"
    HANG = "hang"
    MISSED_WAKEUP = "missed-wakeup"
    DESYNC = "desync"
    MEMORY = "memory"
    PROTOCOL_VIOLATION = "protocol-violation"
    MISSING_REPLY = "missing-reply"
    STATUS_MISMATCH = "status-mismatch"
    FORGED_ROWS = "forged-rows"
    UNEXPECTED_CLOSE = "unexpected-close"
    DIVERGENCE = "divergence"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def meaning(self) -> str:
        return _MEANING[self]


_SEVERITY = {
    FindingClass.CRASH: 1,
    FindingClass.LOST_JOB: 2,
    FindingClass.DUPLICATE_JOB: 2,
    FindingClass.WRONG_CLIENT: 2,
    FindingClass.JOB_MIXUP: 2,
    FindingClass.HANG: 3,
    FindingClass.MISSED_WAKEUP: 3,
    FindingClass.DESYNC: 4,
    FindingClass.MEMORY: 5,
    FindingClass.PROTOCOL_VIOLATION: 6,
    FindingClass.MISSING_REPLY: 6,
    FindingClass.STATUS_MISMATCH: 7,
    FindingClass.FORGED_ROWS: 7,
    FindingClass.UNEXPECTED_CLOSE: 8,
    FindingClass.DIVERGENCE: 9,
}

_MEANING = {
    FindingClass.CRASH: "the target process died (or stopped accepting connections)",
    FindingClass.LOST_JOB: "an acknowledged job (or its result) was never delivered",
    FindingClass.DUPLICATE_JOB: "a job was handed out again without a cause"
    " (no worker died or gave it back)",
    FindingClass.WRONG_CLIENT: "a job's result or progress reached a client that did not submit it",
    FindingClass.JOB_MIXUP: "a worker received a job nobody submitted, or with other contents",
    FindingClass.HANG: "the server stopped answering a liveness probe on a fresh connection",
    FindingClass.MISSED_WAKEUP: "a sleeping worker was not woken (NOOP) for a job it can run",
    FindingClass.DESYNC: "after the case, a well-formed request on the same connection"
    " was never answered",
    FindingClass.MEMORY: "the server's resident memory grew beyond the threshold during a case",
    FindingClass.PROTOCOL_VIOLATION: "a reply that cannot be parsed or is not allowed"
    " at that point",
    FindingClass.MISSING_REPLY: "a request that must be answered got no reply,"
    " though later ones were",
    FindingClass.STATUS_MISMATCH: "admin status counts or GET_STATUS answers disagree"
    " with what clients did",
    FindingClass.FORGED_ROWS: "admin output contains rows nobody registered"
    " (names or ids broke the listing)",
    FindingClass.UNEXPECTED_CLOSE: "the server closed the connection where a correct server"
    " answers (a reply or an ERROR)",
    FindingClass.DIVERGENCE: "two targets reacted differently to the same input",
}


@dataclass(frozen=True)
class Verdict:
    """One oracle's conclusion about one run.

    ``key`` identifies the bug for deduplication: two verdicts with the same class
    and key are the same finding.
    """

    cls: FindingClass
    key: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> str:
        return f"{self.cls.value}:{self.key}"


_HEX = re.compile(r"0x[0-9a-f]+")
_NUM = re.compile(r"\d+")


def normalise(text: str, limit: int = 80) -> str:
    """Make a message usable as a dedup key: numbers and byte strings generalised."""
    text = re.sub(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"", "<bytes>", text)
    text = _HEX.sub("N", text)
    text = _NUM.sub("N", text)
    return text[:limit]


class Violation(Exception):
    """A job invariant or protocol rule the target broke (raised by the stateful engine)."""

    def __init__(
        self, cls: FindingClass, key: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{cls.value}: {message}")
        self.cls = cls
        self.key = key
        self.message = message
        self.details = details or {}

    @property
    def signature(self) -> str:
        return f"{self.cls.value}:{self.key}"
