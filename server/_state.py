"""The server's bookkeeping records: jobs, functions and connected peers.

Plain ``__slots__`` classes with no behaviour beyond small helpers: every rule lives
in :mod:`gearproto.server.core`, which owns these objects.  They are mutable and
identity-hashed on purpose (a job is the same job wherever it is referenced).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, NamedTuple

__all__ = ["Function", "Held", "Job", "JobState", "Payload", "Peer", "PeerInfo"]

#: A job's data: bytes, or a view of the buffer a big packet was received into.
Payload = bytes | memoryview


class JobState:
    """Where a job is (ints, compared by identity on the hot path)."""

    #: Waiting for its store batch to commit; not visible to workers yet.
    PENDING: Final = 0
    #: Runnable, in its function's priority queue.
    QUEUED: Final = 1
    #: An epoch job whose time has not come.
    SCHEDULED: Final = 2
    #: Assigned to a worker.
    RUNNING: Final = 3
    #: Finished, failed, dropped or cancelled: no longer in any table.
    GONE: Final = 4


class PeerInfo(NamedTuple):
    """What the runner knows about a connection's other end."""

    #: Address shown by the ``workers`` admin command (an IP, or ``memory``).
    host: str = "memory"
    port: int = 0
    #: The server-side file descriptor gearmand shows in ``workers``; -1 if none.
    fd: int = -1
    #: The peer's verified TLS certificate (``ssl.SSLSocket.getpeercert()``), if any.
    peercert: Any = None


class Job:
    """One job, from submission until it finishes or is dropped."""

    __slots__ = (
        "background",
        "batch",
        "clients",
        "data",
        "denominator",
        "function",
        "handle",
        "key",
        "numerator",
        "priority",
        "reducer",
        "retries",
        "state",
        "store_id",
        "unique",
        "when",
        "worker",
    )

    def __init__(
        self,
        handle: bytes,
        function: Function,
        unique: bytes,
        data: Payload,
        priority: int,
        background: bool,
        when: int,
        reducer: bytes,
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.background = background
        #: Unix time before which the job must not run (epoch jobs), else 0.
        self.when = when
        self.reducer = reducer
        #: Peers following the job's results, once per foreground submission.
        self.clients: list[Peer] = []
        self.worker: Peer | None = None
        self.retries = 0
        self.numerator = 0
        self.denominator = 0
        self.state = JobState.PENDING
        #: Id in the durable store (0 = not stored).
        self.store_id = 0
        #: The store batch whose commit makes the job visible (PENDING jobs).
        self.batch = 0
        #: The coalescing key, or ``None`` for jobs that never coalesce.
        self.key: tuple[bytes, ...] | None = None

    def __repr__(self) -> str:
        return f"<Job {self.handle!r} {self.function.name!r} state={self.state}>"


class Function:
    """A function name with its three priority queues and its workers."""

    __slots__ = (
        "max_queue",
        "name",
        "queued",
        "queues",
        "ready",
        "registrations",
        "running",
        "sleepers",
        "total",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        #: HIGH, NORMAL, LOW queues.  Entries whose job is no longer QUEUED are
        #: skipped when met (lazy removal keeps cancel and disconnect O(1)).
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        #: Live runnable jobs in the queues.
        self.ready = 0
        #: Jobs not running, per priority, including not-yet-due epoch jobs.
        self.queued = [0, 0, 0]
        self.running = 0
        #: Every job of the function that is in the tables (queued, scheduled, running).
        self.total = 0
        #: Per-priority limits on ``total`` for new jobs (0 = unlimited).
        self.max_queue = [0, 0, 0]
        #: Peers registered for this function, with their number of registrations.
        self.workers: dict[Peer, int] = {}
        #: Sum of registrations (duplicates count, as in gearmand's ``status``).
        self.registrations = 0
        #: Registered peers that sleep and have not been sent a NOOP, in wake order.
        self.sleepers: dict[Peer, None] = {}

    def __repr__(self) -> str:
        return f"<Function {self.name!r} ready={self.ready} total={self.total}>"


class Peer:
    """One connection: its receive buffer, output, and its roles' state."""

    __slots__ = (
        "abilities",
        "active_at",
        "buffered",
        "client_id",
        "closing",
        "conn_id",
        "direct_fd",
        "dirty",
        "exceptions",
        "following",
        "funcs",
        "held",
        "held_back",
        "info",
        "need",
        "noop_sent",
        "out",
        "partial_at",
        "rotation",
        "sleeping",
        "text",
        "timeouts",
        "working",
    )

    def __init__(self, conn_id: Any, info: PeerInfo, exceptions: bool) -> None:
        self.conn_id = conn_id
        self.info = info
        #: Received bytes not yet parsed (an incomplete packet or line), as chunks,
        #: and how many bytes must be buffered before parsing can progress.
        self.buffered: list[bytes] = []
        self.need = 0
        self.client_id = b"-"
        self.exceptions = exceptions
        #: Registered function names in registration order, duplicates kept (``workers``).
        self.abilities: list[bytes] = []
        #: Distinct registered functions, in the order the fair rotation walks them.
        self.funcs: list[Function] = []
        #: CAN_DO_TIMEOUT per function, in seconds (0 = none).
        self.timeouts: dict[Function, float] = {}
        self.rotation = 0
        self.sleeping = False
        self.noop_sent = False
        #: Jobs assigned to this peer as a worker.
        self.working: dict[Job, None] = {}
        #: Foreground jobs this peer follows as a client, with submission counts.
        self.following: dict[Job, int] = {}
        #: Bytes to send, in order; may hold :class:`Held` entries waiting for a commit.
        self.out: list[Any] = []
        #: Number of :class:`Held` entries in ``out``.
        self.held = 0
        #: True when ``out`` has something to hand to the runner.
        self.dirty = False
        #: Close after the output is flushed.
        self.closing = False
        #: The socket a runner writes this peer's output to itself (-1: none); see
        #: :meth:`ServerCore.take_output`.
        self.direct_fd = -1
        #: True while a runner holds this peer's output back for one more loop
        #: iteration (a pipelining client: see RunnerBase.write_direct).
        self.held_back = False
        #: Unix time of the latest byte received from or handed out for this peer
        #: (-1: not known yet), for the idle timeout.
        self.active_at = -1.0
        #: When the incomplete packet or line in ``buffered`` began arriving (0: none).
        self.partial_at = 0.0
        #: True once the peer sent an admin text line (timeouts then answer ERR).
        self.text = False

    def __repr__(self) -> str:
        return f"<Peer {self.conn_id!r} {self.info.host}>"


class Held:
    """A reply that may be sent only after store batch ``batch_id`` commits."""

    __slots__ = ("batch_id", "chunks", "job")

    def __init__(self, batch_id: int, chunks: list[bytes], job: Job) -> None:
        self.batch_id = batch_id
        self.chunks = chunks
        self.job = job
