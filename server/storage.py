"""The job server's storage interface: where background jobs are made durable.

The server core is sans-IO, so it never writes to storage itself.  It hands the
runner a :class:`StoreBatch` (jobs to add, jobs to remove) and keeps the JOB_CREATED
replies of the added jobs back until the runner reports the batch committed.  The
runner applies batches to a :class:`JobStore`, off the event loop, one transaction per
batch: submissions that arrive together share one commit (group commit).

A backend implements :class:`JobStore`: three methods, small enough that a networked
store (PostgreSQL, Redis) can follow the SQLite one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gearproto import Limits, Priority

__all__ = [
    "MAX_JOB_ID",
    "MAX_WHEN",
    "InvalidJobError",
    "JobStore",
    "MemoryStore",
    "RowProblem",
    "StoreBatch",
    "StoreBrokenError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreOpenError",
    "StoredJob",
    "first_free_job_id",
    "stored_job_from_values",
]

#: Largest job id and ``when`` a store keeps (SQL's signed 64-bit integers).
MAX_JOB_ID = 2**63 - 1
MAX_WHEN = 2**63 - 1


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A background job as it is kept in durable storage."""

    #: Assigned by the server, unique for the store's lifetime and increasing in
    #: submission order, so replaying in ``job_id`` order restores FIFO order.
    job_id: int
    function: bytes
    unique: bytes
    data: bytes
    priority: Priority
    #: Unix time before which the job must not run (SUBMIT_JOB_EPOCH); 0 = any time.
    when: int = 0
    #: Reducer function of a SUBMIT_REDUCE_JOB_BACKGROUND job, else empty.
    reducer: bytes = b""


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """Changes to apply atomically; ``batch_id`` increases by one per batch."""

    batch_id: int
    added: Sequence[StoredJob] = field(default_factory=tuple)
    removed: Sequence[int] = field(default_factory=tuple)


@runtime_checkable
class JobStore(Protocol):
    """A durable store of background jobs."""

    def load(self) -> list[StoredJob]:
        """Every stored job, in ``job_id`` order (called once, at start-up)."""
        ...

    def apply(self, batch: StoreBatch) -> None:
        """Apply ``batch`` in one transaction; durable when this returns.

        Removing a job id that is not stored is not an error (the job may have been
        added and removed within the same batch, or already removed).

        Raises:
            StoreError: nothing of ``batch`` was stored.  The server answers the
                submissions it added with ``ERROR QUEUE_ERROR`` (they were never
                acknowledged) and carries its removals over into a later batch
                (removals are idempotent).
        """
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


class MemoryStore:
    """A :class:`JobStore` that keeps jobs in memory only (nothing survives a restart)."""

    def __init__(self) -> None:
        self.jobs: dict[int, StoredJob] = {}
        self.batches_applied = 0

    def load(self) -> list[StoredJob]:
        return [self.jobs[k] for k in sorted(self.jobs)]

    def apply(self, batch: StoreBatch) -> None:
        for job in batch.added:
            self.jobs[job.job_id] = job
        for job_id in batch.removed:
            self.jobs.pop(job_id, None)
        self.batches_applied += 1

    def close(self) -> None:
        self.jobs.clear()


# ------------------------------------------------------------------------- errors


class StoreError(Exception):
    """A store operation failed; nothing of the failed call was stored."""


class StoreOpenError(StoreError):
    """The store cannot be opened (not a job store, unreadable, newer schema, ...)."""


class StoreLockedError(StoreOpenError):
    """Another process (or another store object) already has the store open."""


class StoreFullError(StoreError):
    """The disk, or the store's size cap, is full: the batch was not stored.

    The store stays usable: removals free space, and later batches may succeed.
    """


class StoreBrokenError(StoreError):
    """An I/O error made the store's state on disk uncertain; it refuses further writes.

    Everything acknowledged before the error is safe.  The server should stop and be
    restarted (after the disk is repaired), which replays what the store holds.
    """


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one stored row cannot be loaded, and where it is."""

    #: Where the row is, e.g. ``"gearproto_jobs row job_id=17"``.
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class StoreCorruptError(StoreError):
    """Stored rows fail validation; :attr:`problems` names each bad row."""

    #: How many problems the message lists (all are in :attr:`problems`).
    SHOWN = 20

    def __init__(self, source: str, problems: Sequence[RowProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [str(problem) for problem in self.problems[: self.SHOWN]]
        more = len(self.problems) - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        noun = "row" if len(self.problems) == 1 else "rows"
        super().__init__(f"{source}: {len(self.problems)} bad {noun}:\n  " + "\n  ".join(lines))


class InvalidJobError(ValueError):
    """A value read from storage cannot be part of a :class:`StoredJob`."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field} {reason}")


# --------------------------------------------------------------------- validation

_SQL_TYPE_NAMES = {type(None): "NULL", int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


def _describe(value: object) -> str:
    kind = _SQL_TYPE_NAMES.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({kind})"


def _integer(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:
        raise InvalidJobError(name, f"must be an integer {low}..{high}, not {_describe(value)}")
    if not low <= value <= high:
        raise InvalidJobError(name, f"must be in {low}..{high}, not {value}")
    return value


def _name(name: str, value: object, limit: int, *, empty_ok: bool) -> bytes:
    if type(value) is not bytes:
        raise InvalidJobError(name, f"must be bytes, not {_describe(value)}")
    if not value and not empty_ok:
        raise InvalidJobError(name, "must not be empty")
    if len(value) > limit:
        raise InvalidJobError(name, f"is {len(value)} bytes long; the limit is {limit}")
    if b"\0" in value:
        raise InvalidJobError(name, "contains a NUL byte, which no packet can carry")
    return value


def stored_job_from_values(
    job_id: object,
    function: object,
    unique: object,
    data: object,
    priority: object,
    when: object = 0,
    reducer: object = b"",
    *,
    limits: Limits | None = None,
) -> StoredJob:
    """Build a :class:`StoredJob` from untrusted values (a row read back from storage).

    Every value is checked against what a submission could have carried under
    ``limits`` (default: :class:`gearproto.Limits`): integer types and ranges
    (priority 0..2, ``when`` >= 0), bytes for names and payloads, name lengths, no NUL
    in names.

    Raises:
        InvalidJobError: naming the first bad field and why.
    """
    limits = limits or _DEFAULT_LIMITS
    checked_id = _integer("job_id", job_id, 1, MAX_JOB_ID)
    checked_function = _name("function", function, limits.max_function, empty_ok=False)
    checked_unique = _name("unique", unique, limits.max_unique, empty_ok=True)
    if type(data) is not bytes:
        raise InvalidJobError("data", f"must be bytes, not {_describe(data)}")
    if len(data) > limits.max_packet_size:
        raise InvalidJobError(
            "data", f"is {len(data)} bytes long; the limit is {limits.max_packet_size}"
        )
    checked_priority = Priority(_integer("priority", priority, 0, 2))
    checked_when = _integer("when", when, 0, MAX_WHEN)
    checked_reducer = _name("reducer", reducer, limits.max_function, empty_ok=True)
    return StoredJob(
        checked_id,
        checked_function,
        checked_unique,
        data,
        checked_priority,
        checked_when,
        checked_reducer,
    )


_DEFAULT_LIMITS = Limits()


def first_free_job_id(jobs: Iterable[StoredJob]) -> int:
    """The job id to give the first new job after ``jobs`` were loaded.

    New ids must be larger than every loaded one, so that replaying in ``job_id``
    order keeps FIFO order across restarts.
    """
    return max((job.job_id for job in jobs), default=0) + 1
