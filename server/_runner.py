"""What every runner shares: carrying out the core's output, and the store work.

A runner owns the I/O (sockets, the in-memory transport), the clock and the event
loop; the core owns every rule.  This base class holds the glue that is the same for
asyncio and trio: writing each :class:`~gearproto.server.core.Transmit` to its
connection's *sink*, and turning the core's store batches into commits.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from .core import ServerCore
from .storage import JobStore, MemoryStore, StoreBatch

__all__ = ["RunnerBase", "Sink"]

log = logging.getLogger("gearproto.server")

# Below this many bytes, chunks are joined into one write (one syscall, one copy of
# small data); above it they are written as they are so payloads are not copied.
_JOIN_LIMIT = 1 << 16


class Sink(Protocol):
    """Where a connection's output goes (a transport, a trio stream's sender, ...)."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, chunks: list[bytes]) -> None: ...

    def close(self) -> None: ...


class RunnerBase:
    """Glue between a :class:`ServerCore`, its connections' sinks and a store."""

    def __init__(self, core: ServerCore, store: JobStore | None) -> None:
        self.core = core
        self.store = store
        self.sinks: dict[Any, Sink] = {}
        self._next_id = 0
        # A MemoryStore commits inline; other stores run in a thread.
        self.inline_store = store is None or isinstance(store, MemoryStore)
        self.store_busy = False
        self.store_scheduled = False

    def new_conn_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def flush(self) -> None:
        """Write everything the core has for its connections; close the ones it closes."""
        core = self.core
        sinks = self.sinks
        for conn_id, chunks, close in core.drain():
            sink = sinks.get(conn_id)
            if sink is None:
                continue
            if chunks:
                if len(chunks) == 1:
                    sink.write(chunks[0])
                else:
                    if sum(map(len, chunks)) <= _JOIN_LIMIT:
                        sink.write(b"".join(chunks))
                    else:
                        sink.writelines(chunks)
            if close:
                del sinks[conn_id]
                sink.close()
        if core.store_work_pending and not self.store_scheduled and not self.store_busy:
            self.store_scheduled = True
            self.schedule_store()

    # ------------------------------------------------------------------ store work

    def schedule_store(self) -> None:
        """Arrange for :meth:`run_store` to run once the current loop iteration ends."""
        raise NotImplementedError

    def run_store(self) -> None:
        """Take the gathered batch and commit it (inline, or start a thread)."""
        self.store_scheduled = False
        if self.store_busy:
            return
        batch = self.core.take_store_batch()
        if batch is None:
            return
        if self.inline_store:
            self.apply_batch(batch)
            self.batch_done(batch, None)
            return
        self.store_busy = True
        self.apply_in_thread(batch)

    def apply_batch(self, batch: StoreBatch) -> None:
        if self.store is not None:
            self.store.apply(batch)

    def apply_in_thread(self, batch: StoreBatch) -> None:
        """Run :meth:`apply_batch` off the loop, then :meth:`batch_done` on it."""
        raise NotImplementedError

    def batch_done(self, batch: StoreBatch, error: BaseException | None) -> None:
        self.store_busy = False
        now = time.time()
        if error is None:
            self.core.store_committed(batch.batch_id, now)
        else:
            log.error("job store failed to apply batch %d: %s", batch.batch_id, error)
            self.core.store_failed(batch.batch_id, b"QUEUE_ERROR", now)
        self.flush()
        self.after_timers_changed()

    def after_timers_changed(self) -> None:
        """Re-arm the loop's timer from :meth:`ServerCore.next_deadline`."""
        raise NotImplementedError
