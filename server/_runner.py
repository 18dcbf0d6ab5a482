"""What every runner shares: carrying out the core's output, and the store work.

A runner owns the I/O (sockets, the in-memory transport), the clock and the event
loop; the core owns every rule.  This base class holds the glue that is the same for
asyncio and trio: writing each :class:`~gearproto.server.core.Transmit` to its
connection's *sink*, and turning the core's store batches into commits.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, Protocol

from ._compiled import mypyc_attr
from ._store_writer import StoreWriter
from .core import ServerCore
from .storage import JobStore, MemoryStore, StoreBatch

__all__ = ["RunnerBase", "Sink"]

log = logging.getLogger("gearproto.server")

# Batches handed to the store writer at once: one being committed and one waiting, so
# the writer starts the next commit the moment one ends (without a round trip through
# the event loop), while everything that arrives meanwhile still shares a commit.
_STORE_DEPTH: Final = 2

# Below this many bytes, chunks are joined into one write (one syscall, one copy of
# small data); above it they are written as they are so payloads are not copied.
_JOIN_LIMIT: Final = 1 << 16


class Sink(Protocol):
    """Where a connection's output goes (a transport, a trio stream's sender, ...)."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, chunks: list[bytes]) -> None: ...

    def close(self) -> None: ...


# Compiled by mypyc with the core; the trio runner (interpreted) subclasses it.
@mypyc_attr(allow_interpreted_subclasses=True)
class RunnerBase:
    """Glue between a :class:`ServerCore`, its connections' sinks and a store."""

    def __init__(self, core: ServerCore, store: JobStore | None) -> None:
        self.core = core
        self.store = store
        self.sinks: dict[Any, Sink] = {}
        self._next_id = 0
        # A MemoryStore commits inline; other stores run in the writer thread.
        self.inline_store = store is None or isinstance(store, MemoryStore)
        #: Batches handed to the writer thread and not yet reported back.
        self.store_inflight = 0
        self.store_scheduled = False
        self.writer: StoreWriter | None = None
        #: Connections whose unsent output is over ``output_pause`` (reading paused),
        #: checked against the hard cap after each write.
        self.paused: dict[Any, Any] = {}
        self.output_limit = core.config.output_limit
        # How long a closed connection may take to read its last output before it is
        # reset (a peer that stops reading must not keep its socket forever).
        self.linger = core.config.partial_timeout or 60.0

    def new_conn_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def flush(self) -> None:
        """Write everything the core has for its connections; close the ones it closes."""
        core = self.core
        sinks = self.sinks
        paused = self.paused
        for conn_id, chunks, close in core.take_output():
            sink = sinks.get(conn_id)
            if sink is None:
                continue
            if chunks:
                if len(chunks) == 1:
                    self.write_to(conn_id, sink, chunks[0])
                else:
                    # Typed loosely: a chunk may be a view of a big packet's buffer.
                    items: list[Any] = chunks
                    total = 0
                    for chunk in items:
                        total += len(chunk)
                    if total <= _JOIN_LIMIT:
                        self.write_to(conn_id, sink, b"".join(chunks))
                    else:
                        self.write_chunks_to(conn_id, sink, chunks)
                if paused and conn_id in paused:
                    self.check_output(conn_id, sink)
            if close:
                del sinks[conn_id]
                self.close_sink(sink)
        if (
            core.store_work_pending
            and not self.store_scheduled
            and self.store_inflight < _STORE_DEPTH
        ):
            self.store_scheduled = True
            self.schedule_store()

    def write_to(self, conn_id: Any, sink: Any, data: Any) -> None:
        """Write one joined chunk of ``conn_id``'s output (runners may bypass ``sink``)."""
        sink.write(data)

    def write_chunks_to(self, conn_id: Any, sink: Any, chunks: list[Any]) -> None:
        """Write ``conn_id``'s output as separate chunks (big payloads: no join)."""
        sink.writelines(chunks)

    def close_sink(self, sink: Any) -> None:
        """Close a connection once its output is written (runners bound the wait)."""
        sink.close()

    def check_output(self, conn_id: Any, sink: Any) -> None:
        """Drop ``conn_id`` if its unsent output is over the hard cap (runner-specific)."""

    def drop_unread(self, conn_id: Any, unsent: int) -> None:
        """Forget a connection dropped for not reading its output."""
        log.warning(
            "connection %s dropped: %d bytes of output unread (limit %d)",
            conn_id,
            unsent,
            self.output_limit,
        )
        self.paused.pop(conn_id, None)
        self.sinks.pop(conn_id, None)

    # ------------------------------------------------------------------ store work

    def schedule_store(self) -> None:
        """Arrange for :meth:`run_store` to run once the current loop iteration ends."""
        raise NotImplementedError

    def run_store(self) -> None:
        """Take the gathered batch and commit it (inline, or start a thread)."""
        self.store_scheduled = False
        if self.store_inflight >= _STORE_DEPTH:
            return
        batch = self.core.take_store_batch()
        if batch is None:
            return
        if self.inline_store:
            self.apply_batch(batch)
            self.batch_done(batch, None)
            return
        self.store_inflight += 1
        if self.writer is None:
            assert self.store is not None
            self.writer = StoreWriter(self.store, self.deliver_from_writer)
        self.writer.submit(batch)

    def apply_batch(self, batch: StoreBatch) -> None:
        if self.store is not None:
            self.store.apply(batch)

    def deliver_from_writer(self, batch: StoreBatch, error: BaseException | None) -> None:
        """Called in the writer thread: run :meth:`writer_done` on the loop."""
        raise NotImplementedError

    @property
    def store_busy(self) -> bool:
        """True while the writer thread holds batches not reported back yet."""
        return self.store_inflight > 0

    def writer_done(self, batch: StoreBatch, error: BaseException | None) -> None:
        """A batch came back from the writer thread (on the loop)."""
        self.store_inflight -= 1
        self.batch_done(batch, error)
        if self.core.store_work_pending and not self.store_scheduled:
            # Through the loop, so that what arrived meanwhile joins the next batch.
            self.store_scheduled = True
            self.schedule_store()

    def batch_done(self, batch: StoreBatch, error: BaseException | None) -> None:
        now = time.time()
        if error is None:
            self.core.store_committed(batch.batch_id, now)
        else:
            log.error("job store failed to apply batch %d: %s", batch.batch_id, error)
            self.core.store_failed(batch.batch_id, b"QUEUE_ERROR", now)
        self.flush()
        self.after_timers_changed()

    def stop_writer(self) -> None:
        """Stop the writer thread once the batches handed to it are applied."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()

    def after_timers_changed(self) -> None:
        """Re-arm the loop's timer from :meth:`ServerCore.next_deadline`."""
        raise NotImplementedError
