"""What every runner shares: carrying out the core's output, and the store work.

A runner owns the I/O (sockets, the in-memory transport), the clock and the event
loop; the core owns every rule.  This base class holds the glue that is the same for
asyncio and trio: writing each :class:`~gearproto.server.core.Transmit` to its
connection's *sink*, and turning the core's store batches into commits.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Final, Protocol

from . import _wire
from ._compiled import mypyc_attr
from ._state import Peer
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

# Output held back for a pipelining client (see RunnerBase.write_direct) is at most
# this big: the point is fewer writes of small replies, not delaying big payloads.
_HOLD_LIMIT: Final = 1 << 14

_write_chunks: Final = _wire.write_chunks
_write_nonblocking: Final = _wire.write_nonblocking
# What wakes an eventfd: a 64-bit 1 in the machine's byte order.
_WAKE: Final = (1).to_bytes(8, sys.byteorder)


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
        #: Peers whose output this flush writes to their sockets itself (those a
        #: runner gave a ``direct_fd``); reused from flush to flush.
        self.direct: list[Peer] = []
        #: Peers whose output the last flush held back (see write_direct), and an
        #: empty list to swap with it.
        self.held_back: list[Peer] = []
        self._spare: list[Peer] = []
        #: An eventfd that wakes the loop when output is held back; set by runners
        #: that watch it, which then also set ``may_hold`` (cleared when closing).
        self.wake_fd = -1
        self.wake_armed = False
        self.may_hold = False
        #: How many times a peer's output was held back (a diagnostic).
        self.held_count = 0

    def new_conn_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def flush(self) -> None:
        """Write everything the core has for its connections; close the ones it closes."""
        core = self.core
        sinks = self.sinks
        paused = self.paused
        direct = self.direct
        for conn_id, chunks, close in core.take_output(direct):
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
        if direct or self.held_back:
            self.write_direct(direct)
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

    def write_direct(self, direct: list[Peer]) -> None:
        """Write the output of ``direct`` peers to their sockets, each in one writev.

        A client with other jobs in flight (pipelining) is sent nothing now: its
        output waits for the next flush, which is at most one loop iteration away
        (``wake_fd`` makes sure of that), so that results arriving meanwhile go out
        in the same write: fewer system calls per job, at a cost of one iteration
        of latency for a client that is waiting for other results anyway.  Only
        while ``may_hold`` (a runner watching ``wake_fd`` sets it)."""
        previous = self.held_back
        keep = self._spare
        hold = self.may_hold
        for peer in direct:
            if peer.held_back:
                continue  # held once already: written with the others below
            if hold and len(peer.following) > 1 and _small(peer.out):
                peer.held_back = True
                self.held_count += 1
                keep.append(peer)
                continue
            self.write_peer(peer)
        if previous:
            for peer in previous:
                peer.held_back = False
                if _writable(peer):
                    self.write_peer(peer)
            previous.clear()
        self.held_back = keep
        self._spare = previous
        direct.clear()
        if keep and not self.wake_armed:
            self.wake_armed = True
            self.wake_poller()

    def wake_poller(self) -> None:
        """Make ``wake_fd`` readable: the poller watching it reports it at once
        (safe from any thread; a descriptor closed meanwhile is ignored)."""
        fd = self.wake_fd
        if fd >= 0:
            with contextlib.suppress(OSError):
                _write_nonblocking(fd, _WAKE)

    def flush_held(self) -> None:
        """Write the output held back at the last flush now (the runner is closing)."""
        held = self.held_back
        self.held_back = []
        for peer in held:
            peer.held_back = False
            if _writable(peer):
                self.write_peer(peer)

    def write_peer(self, peer: Peer) -> None:
        """All of ``peer``'s output in one writev, unjoined; its list is reused."""
        out = peer.out
        try:
            left = _write_chunks(peer.direct_fd, out)
        except OSError:
            left = -1
        if left:
            peer.out = []
            self.write_rest(peer, out, left)
        else:
            out.clear()

    def write_rest(self, peer: Peer, out: list[Any], left: int) -> None:
        """The socket took only part of ``peer``'s output ``out``: its last ``left``
        bytes (all of it if ``left`` is -1, the write failed) go another way, and
        ``peer.direct_fd`` is cleared until that way is empty again.  Only runners
        that set ``direct_fd`` implement it."""
        raise NotImplementedError

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


def _small(out: list[Any]) -> bool:
    """True when the chunks of ``out`` add up to at most :data:`_HOLD_LIMIT` bytes."""
    total = 0
    for chunk in out:
        total += len(chunk)
        if total > _HOLD_LIMIT:
            return False
    return True


def _writable(peer: Peer) -> bool:
    """Whether held-back output is still the runner's to write: not if the peer is
    gone or closing (the core handed its output over with the close), nor while it
    waits for a store commit (the core hands it over once committed)."""
    return bool(peer.out) and peer.direct_fd >= 0 and not peer.closing and not peer.held
