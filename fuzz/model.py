"""A model of the jobs a server holds, with the slack real servers are entitled to.

The model knows what clients submitted and what workers did, and from that what a
correct server may and may not do next.  Where the protocol allows several outcomes
(a job whose last client disconnected may be dropped or still run; a worker's
connection drop is noticed a moment later), a job is marked *in doubt* or *requeue
pending* and the checks accept either outcome instead of guessing one server's
choice.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

__all__ = ["Job", "JobState", "Model", "Range"]


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DROPPED = "dropped"


_FINISHED = frozenset({JobState.DONE, JobState.FAILED})


@dataclass
class Job:
    """One job the server acknowledged (JOB_CREATED)."""

    seq: int
    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    background: bool
    priority: int
    epoch: int | None = None
    reducer: bytes | None = None
    state: JobState = JobState.QUEUED
    holder: int | None = None
    #: Foreground submissions per client id (each gets its own results).
    clients: dict[int, int] = field(default_factory=dict)
    #: Every client that ever submitted it in the foreground.
    ever_clients: set[int] = field(default_factory=set)
    deliveries: int = 0
    #: Deliveries a correct server may make: 1 plus one per cause (worker died, ...).
    allowed: int = 1
    #: The job may legitimately vanish (no client left for a foreground job, dropped).
    in_doubt: bool = False
    #: Its worker died; the server may not have requeued it yet.
    requeue_pending: bool = False
    #: What the worker ended it with: ("complete", data), ("fail", b""), ("exception", d).
    outcome: tuple[str, bytes] | None = None
    numerator: int = 0
    denominator: int = 0
    #: The function was dropped by an admin command while the job was queued.
    dropped: bool = False
    #: Cancelled by the admin command (a running job keeps running).
    cancelled: bool = False
    #: A background submission joined this (foreground) job: it must survive its clients.
    bg_joined: bool = False

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED

    @property
    def active(self) -> bool:
        return self.state in (JobState.QUEUED, JobState.RUNNING)

    @property
    def certain(self) -> bool:
        """Active, and nothing allows the server to have let go of it."""
        return self.active and not self.in_doubt and not self.dropped

    def due(self, now: float | None = None) -> bool:
        """Runnable as far as its epoch goes (with a margin for clock skew)."""
        if self.epoch is None:
            return True
        return self.epoch <= (time.time() if now is None else now) - 2

    @property
    def coalesces(self) -> bool:
        return self.unique not in (b"", b"-")


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range a counter must fall in."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}..{self.high}"


class Model:
    """Every job of one stateful run, by submission order and by handle."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.by_handle: dict[bytes, Job] = {}

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        self.by_handle[job.handle] = job

    def active_with(self, function: bytes, unique: bytes, data: bytes) -> Job | None:
        """The job a submission of (function, unique, data) must join, if any."""
        for job in reversed(self.jobs):
            if not job.active or job.function != function:
                continue
            if job.unique == unique and job.coalesces:
                return job
            if unique == b"-" and job.unique == b"-" and data and job.data == data:
                return job
        return None

    def runnable_for(self, functions: set[bytes]) -> list[Job]:
        """Queued jobs a worker with ``functions`` must be able to get right now."""
        now = time.time()
        return [
            j
            for j in self.jobs
            if j.state is JobState.QUEUED
            and j.function in functions
            and not j.in_doubt
            and not j.dropped
            and not j.requeue_pending
            and j.due(now)
        ]

    def counts(self, function: bytes) -> dict[str, Range]:
        """What ``status`` may show for ``function`` (total and running)."""
        total_low = total_high = running_low = running_high = 0
        for job in self.jobs:
            if job.function != function:
                continue
            maybe = job.in_doubt or job.dropped or job.state is JobState.CANCELLED
            if job.active and not maybe:
                total_low += 1
                total_high += 1
            elif maybe and not job.finished:
                total_high += 1
            if job.state is JobState.RUNNING and not job.requeue_pending and not maybe:
                running_low += 1
                running_high += 1
            elif (job.state is JobState.RUNNING or job.requeue_pending) and not job.finished:
                running_high += 1
        return {
            "total": Range(total_low, total_high),
            "running": Range(running_low, running_high),
        }

    def queued_by_priority(self, function: bytes) -> list[Range]:
        """What ``prioritystatus`` may show: queued (not running) jobs per priority."""
        out = []
        for priority in (0, 1, 2):
            low = high = 0
            for job in self.jobs:
                if job.function != function or job.priority != priority or job.finished:
                    continue
                maybe = (
                    job.in_doubt
                    or job.dropped
                    or job.requeue_pending
                    or job.state is JobState.CANCELLED
                )
                if job.state is JobState.QUEUED and not maybe:
                    low += 1
                    high += 1
                elif maybe:
                    high += 1
            out.append(Range(low, high))
        return out
