"""The store writer: one long-lived thread that applies store batches, in order.

A durable commit blocks for an fsync, so it must not run on the event loop.  Handing
each batch to a thread pool costs a task object, a future and a pool wake-up per
commit, and lets nothing keep the thread warm; this writer is one thread that waits
on a queue, applies each batch with :meth:`JobStore.apply`, and reports the outcome
through a callback that the runner turns into a call on its loop
(``loop.call_soon_threadsafe`` or a trio token).  Batches are applied in the order
they were handed over, which the store interface requires.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from .storage import JobStore, StoreBatch

__all__ = ["StoreWriter"]

log = logging.getLogger("gearproto.server")

#: Called in the writer thread after each batch: (batch, None) once it is durable,
#: (batch, error) if the store raised.  It must hand the result to the loop.
Deliver = Callable[[StoreBatch, "BaseException | None"], None]

_STOP = object()


class StoreWriter:
    """Applies batches to ``store`` in one thread; see the module docstring."""

    def __init__(self, store: JobStore, deliver: Deliver) -> None:
        self.store = store
        self._deliver = deliver
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="gearproto-store-writer", daemon=True
        )
        self._thread.start()

    def submit(self, batch: StoreBatch) -> None:
        """Queue ``batch``; its outcome arrives through the ``deliver`` callback."""
        self._queue.put(batch)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, StoreBatch)
            error: BaseException | None = None
            try:
                self.store.apply(item)
            except BaseException as exc:  # reported to the loop, which answers the clients
                error = exc
            try:
                self._deliver(item, error)
            except Exception:  # pragma: no cover - the loop is gone (shutting down)
                log.debug("store result of batch %d not delivered", item.batch_id)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the batches already queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
