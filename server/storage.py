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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gearproto import Priority

__all__ = ["JobStore", "MemoryStore", "StoreBatch", "StoredJob"]


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
