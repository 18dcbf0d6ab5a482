"""``ServerCore``: the whole job server as a sans-IO state machine.

The core owns every job, function and connection, and applies gearmand's rules (with
the fixes listed in ``docs/deviations.md``).  It never touches a socket, a clock, a
thread or a file: a runner feeds it bytes and time, and carries out what it returns.

Driving it::

    core = ServerCore(ServerConfig())
    core.connect(1, PeerInfo("127.0.0.1", 50000, 7))
    core.receive(1, data, now)          # bytes from connection 1
    for t in core.drain():              # what to write / close
        write(t.conn_id, t.chunks); t.close and close(t.conn_id)
    batch = core.take_store_batch()     # durable-store work, if a store is used
    ...apply it...; core.store_committed(batch.batch_id, now)
    deadline = core.next_deadline()     # call handle_timer(now) at or after it

``now`` is Unix time in seconds (a float): epoch jobs are scheduled in wall-clock
time, and CAN_DO_TIMEOUT deadlines are measured on the same clock.
"""

from __future__ import annotations

import heapq
import mmap as _mmap
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import count, islice
from typing import Any, ClassVar, Final, NamedTuple

from gearproto import Limits, Priority, RemoteProtocolError
from gearproto import admin as _admin
from gearproto import events as ev
from gearproto._version import __version__

from . import _wire as wire
from ._compiled import mypyc_attr
from ._frames import free_buffer
from ._handles import HandleMaker
from ._state import Function, Held, Job, JobState, Payload, Peer, PeerInfo
from .acl import AdminAccess
from .storage import StoreBatch, StoredJob

__all__ = ["AdminGuard", "ServerConfig", "ServerCore", "Transmit", "default_admin_guard"]

_QUEUED: Final = JobState.QUEUED
_RUNNING: Final = JobState.RUNNING
_SCHEDULED: Final = JobState.SCHEDULED
_PENDING: Final = JobState.PENDING
_GONE: Final = JobState.GONE

_UINT32: Final = 0xFFFFFFFF
# CAN_DO_TIMEOUT above this many milliseconds (about 24 days) is refused.
_MAX_TIMEOUT_MS: Final = 0x7FFFFFFF
# Epoch times beyond this are refused (strtoll's range in gearmand).
_MAX_EPOCH: Final = 0x7FFFFFFFFFFFFFFF
_MAX_CLIENT_ID: Final = 127

#: Decides whether ``peer`` may run an admin ``command``: ``None`` allows it, an
#: :class:`~gearproto.admin.AdminError` is sent instead of running it.
AdminGuard = Callable[[PeerInfo, Any], "_admin.AdminError | None"]

_DEFAULT_ACCESS: Final = AdminAccess()


def default_admin_guard(peer: PeerInfo, command: Any) -> _admin.AdminError | None:
    """The default admin policy (:class:`~gearproto.server.acl.AdminAccess` defaults):
    read-only commands from anyone; mutating ones (``cancel job``, ``maxqueue``,
    ``create/drop function``, ``shutdown``) only from local peers (loopback, Unix
    sockets, the in-memory transport)."""
    return _DEFAULT_ACCESS.guard(peer, command)


@dataclass
class ServerConfig:
    """Settings of one server; every field has gearmand's default unless noted."""

    #: Requeues after which a job is dropped with WORK_FAIL (``-j``).  0 or a
    #: negative value means unlimited, as in gearmand 1.1.20 (see docs/deviations.md).
    job_retries: int = 0
    #: NOOPs sent per newly runnable job (``-w``); 0 wakes every sleeping worker.
    worker_wakeup: int = 0
    #: Forward WORK_EXCEPTION to every client, as if each had sent OPTION_REQ.
    exceptions: bool = False
    #: ``<prefix>:<n>`` handles like gearmand; ``None`` makes unguessable handles.
    job_handle_prefix: bytes | None = None
    #: Size limits applied to every connection.
    limits: Limits = field(default_factory=Limits)
    #: What ``version`` answers.
    version: bytes = b"gearproto-" + __version__.encode()
    #: What ``verbose`` answers (the log level name).
    verbose: bytes = b"ERROR"
    #: What ``getpid`` answers.
    pid: int = field(default_factory=os.getpid)
    #: Who may run which admin command.
    admin_guard: AdminGuard = default_admin_guard
    #: True when a durable store takes background jobs (see ServerCore.take_store_batch).
    durable: bool = False
    #: Seconds a packet or admin line may take to arrive, from its first byte to its
    #: last; then ERROR TIMEOUT (or ERR TIMEOUT) and close.  0: no limit.
    partial_timeout: float = 60.0
    #: Seconds a connection that holds no work (no registered function, no job it
    #: runs or follows, no reply waiting for a commit) may go without a byte in either
    #: direction; then ERROR TIMEOUT (ERR TIMEOUT if it spoke admin text) and close.
    #: 0: no limit.
    idle_timeout: float = 300.0
    #: Connections at once; a connection beyond it gets ERROR TOO_MANY_CONNECTIONS and
    #: is closed.  0: no limit.
    max_connections: int = 10_000
    #: Jobs the server holds (queued, scheduled, running); a submission that would
    #: add one more gets ERROR QUEUE_ERROR.  0: no limit.
    max_queued_jobs: int = 1_000_000
    #: Payload plus unique-id bytes of the jobs the server holds; a submission that
    #: would go beyond it gets ERROR QUEUE_ERROR.  0: no limit.
    max_queued_bytes: int = 1 << 30
    #: Unsent output at which the runner stops reading from a connection (bytes).
    output_pause: int = 1 << 20
    #: Unsent output at which a connection that does not read is dropped (bytes);
    #: 0: twice the packet size limit plus ``output_pause`` (a largest reply fits).
    max_output: int = 0

    def __post_init__(self) -> None:
        for name in ("partial_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1e9:
                raise ValueError(f"ServerConfig.{name} must be 0..1e9 seconds, not {value!r}")
        for name in ("max_connections", "max_queued_jobs", "max_queued_bytes", "max_output"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"ServerConfig.{name} must be an int >= 0, not {value!r}")
        if type(self.output_pause) is not int or self.output_pause < 1:
            raise ValueError(
                f"ServerConfig.output_pause must be an int >= 1, not {self.output_pause!r}"
            )
        if self.max_output and self.max_output < self.limits.max_packet_size + self.output_pause:
            raise ValueError(
                f"ServerConfig.max_output ({self.max_output}) must be at least the packet size"
                f" limit plus output_pause ({self.limits.max_packet_size + self.output_pause}),"
                " so that a largest reply fits"
            )

    @property
    def output_limit(self) -> int:
        """The effective :attr:`max_output`."""
        return self.max_output or 2 * self.limits.max_packet_size + self.output_pause


class Transmit(NamedTuple):
    """Bytes for the runner to write to one connection, in order, then maybe close it."""

    conn_id: Any
    chunks: list[bytes]
    close: bool


# Interpreted subclasses of the compiled class are allowed (tests and tools plant
# faults by overriding a method; overrides are honoured by the compiled code).
@mypyc_attr(allow_interpreted_subclasses=True)
class ServerCore:
    """All scheduling state and rules of the job server; see the module docstring."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config if config is not None else ServerConfig()
        self._limits = config.limits
        self._max_packet = config.limits.max_packet_size
        self._max_line = config.limits.max_line
        self._oracle = wire.ErrorOracle(config.limits)
        self._retry_limit = config.job_retries if config.job_retries > 0 else 0
        self._wakeup = config.worker_wakeup if config.worker_wakeup > 0 else 0
        self._durable = config.durable
        self._new_handle = HandleMaker(config.job_handle_prefix)
        self._peers: dict[Any, Peer] = {}
        self._functions: dict[bytes, Function] = {}
        self._jobs: dict[bytes, Job] = {}
        self._coalesce: dict[tuple[bytes, ...], Job] = {}
        self._by_unique: dict[bytes, list[Job]] = {}
        self._timer_seq = count(1)
        # Timers: (due, tiebreak, job) for epoch jobs; (due, tiebreak, job, peer,
        # retries) for CAN_DO_TIMEOUT (stale entries are recognised and skipped).
        self._epochs: list[tuple[float, int, Job]] = []
        self._timeouts: list[tuple[float, int, Job, Peer, int]] = []
        self._timeouts_limit = _MIN_TIMER_COMPACT
        self._dirty: list[Peer] = []
        self._frame_pool: list[Any] = []
        # The latest time seen, for work done outside a timed call (drain).
        self._now = 0.0
        # Durable store work: the batch being gathered, and batches being applied.
        self._store_seq = count(1)
        self._batch_id = 1
        self._committed = 0
        self._adds: list[StoredJob] = []
        self._removes: list[int] = []
        self._batch_jobs: list[Job] = []
        self._batch_helds: list[Held] = []
        self._inflight: dict[int, tuple[list[Job], list[Held], list[int]]] = {}
        self._holding: dict[Peer, None] = {}
        # Resource limits (see ServerConfig).
        self._partial_timeout = float(config.partial_timeout)
        self._idle_timeout = float(config.idle_timeout)
        self._max_connections = config.max_connections
        self._max_jobs = config.max_queued_jobs
        self._max_bytes = config.max_queued_bytes
        #: Payload and unique-id bytes of every job in the tables.
        self.queued_bytes = 0
        # Peers in the middle of a packet or line, with when it began (insertion
        # order is start order, so the first entry is the next to time out).
        self._partial: dict[Peer, float] = {}
        # Idle checks: (when to look, tiebreak, peer); one entry per connected peer,
        # re-pushed when looked at (lazy: activity only updates ``peer.active_at``).
        self._idle: list[tuple[float, int, Peer]] = []
        #: ``None``, ``"now"`` or ``"graceful"``: a stop the runner should carry out.
        self.stop_requested: str | None = None
        #: Set whenever a deadline is added (a runner re-arms its timer from
        #: :meth:`next_deadline` when it finds this set, and clears it): asking only
        #: then keeps the deadline computation off the per-packet path.
        self.timers_changed = False
        # Per-packet limits, read on every packet.
        self._max_function = config.limits.max_function
        self._max_unique = config.limits.max_unique
        self._max_handle = config.limits.max_handle
        self._dispatch: dict[type[Any], Callable[[Peer, Any, float], None]] = {
            ev.SubmitJob: self._on_submit,
            ev.GrabJobUniq: self._on_grab_uniq,
            ev.GrabJob: self._on_grab,
            ev.GrabJobAll: self._on_grab_all,
            ev.WorkComplete: self._on_work_complete,
            ev.PreSleep: self._on_pre_sleep,
            ev.WorkData: self._on_work_forward,
            ev.WorkWarning: self._on_work_forward,
            ev.WorkStatus: self._on_work_status,
            ev.WorkFail: self._on_work_fail,
            ev.WorkException: self._on_work_exception,
            ev.CanDo: self._on_can_do,
            ev.CanDoTimeout: self._on_can_do_timeout,
            ev.CantDo: self._on_cant_do,
            ev.ResetAbilities: self._on_reset_abilities,
            ev.SubmitJobEpoch: self._on_submit_epoch,
            ev.SubmitReduceJob: self._on_submit_reduce,
            ev.GetStatus: self._on_get_status,
            ev.GetStatusUnique: self._on_get_status_unique,
            ev.EchoReq: self._on_echo,
            ev.OptionReq: self._on_option,
            ev.SetClientId: self._on_set_client_id,
            ev.Unused: self._on_not_expected,
            ev.AllYours: self._on_not_expected,
            ev.SubmitJobSched: self._on_not_expected,
        }
        from ._admin import AdminRunner

        self._admin = AdminRunner(self)
        for cls in _ADMIN_CLASSES:
            self._dispatch[cls] = self._admin.run

    # ------------------------------------------------------------------ inspection

    @property
    def job_count(self) -> int:
        """Jobs in the tables (queued, scheduled, running, or waiting for a commit)."""
        return len(self._jobs)

    @property
    def connection_count(self) -> int:
        return len(self._peers)

    def peer(self, conn_id: Any) -> Peer | None:
        """The record of connection ``conn_id`` (for runners and tests)."""
        return self._peers.get(conn_id)

    def functions(self) -> Iterable[Function]:
        return self._functions.values()

    def jobs(self) -> Iterable[Job]:
        return self._jobs.values()

    def peers(self) -> Iterable[Peer]:
        return self._peers.values()

    # ----------------------------------------------------------------- connections

    def connect(self, conn_id: Any, info: PeerInfo | None = None, now: float | None = None) -> bool:
        """A connection was accepted (at ``now``, Unix time; default: the latest time
        the core has seen).

        Returns False when it is one more than ``max_connections``: it is then answered
        ``ERROR TOO_MANY_CONNECTIONS`` and closed by the next :meth:`drain`.
        """
        if conn_id in self._peers:
            raise ValueError(f"connection {conn_id!r} is already connected")
        peer = self._peers[conn_id] = Peer(
            conn_id, info if info is not None else PeerInfo(), self.config.exceptions
        )
        if now is not None:
            self._now = now
            peer.active_at = now
        limit = self._max_connections
        if limit and len(self._peers) > limit:
            self._error(
                peer,
                b"TOO_MANY_CONNECTIONS",
                b"The server has %d connections, its limit; try again later" % limit,
            )
            self._close(peer)
            return False
        if self._idle_timeout:
            due = (now if now is not None else self._now) + self._idle_timeout
            heapq.heappush(self._idle, (due, next(self._timer_seq), peer))
            self.timers_changed = True
        return True

    def disconnect(self, conn_id: Any, now: float) -> None:
        """The connection is gone (peer closed it, or the runner dropped it).

        Jobs it was running are requeued; foreground jobs nobody follows any more are
        dropped.  Unknown ids (e.g. a connection the core closed itself) are ignored.
        """
        peer = self._peers.pop(conn_id, None)
        if peer is None:
            return
        peer.closing = True
        peer.out = []
        peer.held = 0
        if peer.dirty and peer in self._dirty:
            # Nothing more goes to a connection the runner dropped, not even a close.
            peer.dirty = False
            self._dirty.remove(peer)
        self._holding.pop(peer, None)
        if peer.partial_at:
            self._partial.pop(peer, None)
        # Stop following first: a job this peer both runs and follows may fail when it
        # is taken back (retry limit), and its WORK_FAIL must not go to this peer.
        for job in list(peer.following):
            clients = job.clients
            job.clients = [c for c in clients if c is not peer]
            if not job.clients and not job.background:
                self._abandon(job)
        peer.following.clear()
        self._unregister_all(peer, now)

    # ``data`` is any bytes-like object (typed Any so that the compiled core accepts a
    # bytearray or memoryview as the Python one does, and subclasses may narrow it).
    def receive(self, conn_id: Any, data: Any, now: float) -> bool:
        """Bytes arrived from connection ``conn_id``; an empty ``data`` means EOF.

        At EOF the connection is closed once its pending replies are out.  Returns
        True when the connection is in the middle of a big packet that
        :meth:`take_large_frame` can hand over.
        """
        peer = self._peers.get(conn_id)
        if peer is None or peer.closing:
            return False
        self._now = now
        peer.active_at = now
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            peer.buffered = []
            self._close(peer)
            return False
        buffered = peer.buffered
        if buffered:
            buffered.append(data)
            peer.need -= len(data)
            if peer.need > 0:
                return False
            buf = b"".join(buffered)
            peer.buffered = []
            continuing = True
        else:
            buf = data
            continuing = False
        n = len(buf)
        pos = 0
        unpack = _unpack_header
        max_packet = self._max_packet
        submit_types = _SUBMIT_TYPES
        while pos < n:
            if buf[pos] == 0:
                if n - pos < 12:
                    break
                # The header's numbers read byte by byte: compiled, these are plain
                # integer operations (no struct call, no tuple or magic object).
                ptype = (buf[pos + 4] << 24) | (buf[pos + 5] << 16) | (buf[pos + 6] << 8)
                ptype |= buf[pos + 7]
                size = (buf[pos + 8] << 24) | (buf[pos + 9] << 16) | (buf[pos + 10] << 8)
                size |= buf[pos + 11]
                end = pos + 12 + size
                # Fast paths for the packets of every job (decoded inline, no event
                # object); anything unusual falls through to the general path.
                # A type no request has is refused at its header (below), not after
                # its whole declared body was buffered.
                if (
                    buf[pos + 1] == 82  # "\0REQ"
                    and buf[pos + 2] == 69
                    and buf[pos + 3] == 81
                    and size <= max_packet
                    and 0 < ptype <= 42
                ):
                    if end > n:
                        break
                    start = pos + 12
                    if ptype == 30:
                        self._on_grab_uniq(peer, None, now)
                        pos = end
                        continue
                    if ptype == 13:
                        nul = _find_nul(buf, start, min(end, start + self._max_handle + 1))
                        if nul >= 0:
                            self._complete(peer, buf[start:nul], buf[nul + 1 : end])
                            pos = end
                            continue
                    elif ptype in submit_types:
                        nul1 = _find_nul(buf, start, min(end, start + self._max_function + 1))
                        if nul1 >= 0:
                            after = nul1 + 1
                            nul2 = _find_nul(buf, after, min(end, after + self._max_unique + 1))
                            if nul2 >= 0:
                                priority, background = submit_types[ptype]
                                self._submit(
                                    peer, buf[start:nul1], buf[nul1 + 1 : nul2],
                                    buf[nul2 + 1 : end], priority, background, 0, b"", now,
                                )  # fmt: skip
                                pos = end
                                continue
                magic = buf[pos : pos + 4]
                verdict = self._packet(peer, buf, pos, magic, ptype, size, end, n, now)
                if verdict:
                    if verdict == _INCOMPLETE:
                        break
                    return False
                pos = end
            else:
                newline = buf.find(b"\n", pos, pos + self._max_line)
                if newline < 0:
                    if n - pos >= self._max_line:
                        self._judge(peer, buf[pos : pos + self._max_line], now)
                        return False
                    break
                line_end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
                peer.text = True
                self._admin.run(peer, _admin.parse_command(buf[pos:line_end]), now)
                pos = newline + 1
            if peer.closing:
                return False
        if pos < n:
            tail = buf[pos:] if pos else buf
            peer.buffered = [tail]
            rest = len(tail)
            # A packet needs its header, then its body; a line needs one more byte.
            need = rest + 1 if tail[0] else (12 + unpack(tail, 0)[2] if rest >= 12 else 12)
            peer.need = need - rest
            if (pos or not continuing) and self._partial_timeout:
                self._begin_partial(peer, now)
            return need >= self.LARGE_FRAME and not tail[0]
        if peer.partial_at:
            self._end_partial(peer)
        return False

    def _packet(
        self,
        peer: Peer,
        buf: bytes,
        pos: int,
        magic: bytes,
        ptype: int,
        size: int,
        end: int,
        n: int,
        now: float,
    ) -> int:
        """The general path for one binary packet at ``buf[pos:end]``: decode it and
        run its handler.  Returns 0 once it ran, ``_INCOMPLETE`` if the packet has not
        fully arrived, ``_UNFRAMEABLE`` if nothing more of ``buf`` may be parsed."""
        if magic != b"\0REQ" or not 0 < ptype <= 42 or size > self._max_packet:
            if size > self._max_packet or not 0 < ptype <= 42 or magic != b"\0RES":
                # Unframeable: the oracle answers, then the connection closes.
                self._judge(peer, buf[pos : pos + 12], now)
                return _UNFRAMEABLE
            decoder = None
        else:
            decoder = wire.DECODERS[ptype]
        if end > n:
            return _INCOMPLETE
        event = decoder(buf, pos + 12, end, self._limits) if decoder is not None else None
        if event is None:
            self._judge(peer, buf[pos:end], now)
        else:
            self._dispatch[type(event)](peer, event, now)
        return 0

    def _begin_partial(self, peer: Peer, now: float) -> None:
        """A packet or line began arriving at ``now`` and is not complete yet."""
        partial = self._partial
        if peer.partial_at:
            del partial[peer]
        peer.partial_at = now or 1e-9
        partial[peer] = peer.partial_at
        self.timers_changed = True

    def _end_partial(self, peer: Peer) -> None:
        peer.partial_at = 0.0
        self._partial.pop(peer, None)

    # ------------------------------------------------------------- large frames
    #
    # A runner that can read into a buffer of its choice (asyncio's BufferedProtocol)
    # asks take_large_frame() after each receive(): when the connection is in the
    # middle of a big packet, the core hands over a buffer of the packet's exact size
    # with what arrived so far, the runner reads the rest straight into it, and gives
    # it back with receive_frame().  The payload is then used in place (a memoryview),
    # never joined or sliced: megabyte jobs cross the server without a user-space copy.

    #: Packets at least this large (header included) take the large-frame path.
    LARGE_FRAME: ClassVar[int] = 1 << 16

    def take_large_frame(self, conn_id: Any) -> tuple[memoryview, int] | None:
        """The buffer for the big packet ``conn_id`` is receiving (exactly its size),
        and how much of it is filled; ``None`` if it is not receiving one."""
        peer = self._peers.get(conn_id)
        if peer is None or not peer.buffered or peer.closing:
            return None
        head = peer.buffered[0]
        if head[0] != 0 or len(head) < 12:
            return None
        magic, ptype, size = wire._unpack(head, 0)
        total = 12 + size
        if total < self.LARGE_FRAME or magic != b"\0REQ" or size > self._max_packet:
            return None
        if ptype not in _LARGE_FRAME_TYPES:
            return None
        frame = self._frame_buffer(total)
        filled = 0
        for chunk in peer.buffered:
            frame[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        peer.buffered = []
        peer.need = 0
        return memoryview(frame)[:total], filled

    def _frame_buffer(self, size: int) -> Any:
        """A buffer of at least ``size`` bytes, reused once nothing refers to it.

        Allocating (and zero-filling) a fresh megabyte for every big packet costs
        more than the packet's trip through the server; a payload in use keeps its
        buffer alive through the memoryview that refers to it, so a buffer whose only
        holder is the pool is free to be filled again.

        A fresh buffer is an anonymous memory map, not a bytearray: its pages are
        committed only as the packet's bytes arrive, so a header that declares a
        big body costs memory for what is actually sent, not for what is declared.
        """
        pool = self._frame_pool
        buffer = free_buffer(pool, size)
        if buffer is not None:
            return buffer
        capacity = -(-size // _FRAME_ROUND) * _FRAME_ROUND
        buffer = _mmap.mmap(-1, capacity)
        if capacity <= _POOL_MAX_BUFFER:
            if len(pool) >= _POOL_BUFFERS:
                pool.pop(0)
            pool.append(buffer)
        return buffer

    def receive_frame(self, conn_id: Any, frame_view: memoryview, now: float) -> None:
        """A big packet handed out by :meth:`take_large_frame`, now complete."""
        peer = self._peers.get(conn_id)
        if peer is None or peer.closing:
            return
        self._now = now
        peer.active_at = now
        if peer.partial_at:
            self._end_partial(peer)
        frame: Any = frame_view.obj
        end = len(frame_view)
        view = frame_view.toreadonly()
        ptype = wire._unpack(frame, 0)[1]
        limits = self._limits
        if ptype in _SUBMIT_TYPES:
            nul1 = frame.find(b"\0", 12, end)
            nul2 = frame.find(b"\0", nul1 + 1, end) if nul1 >= 0 else -1
            if 0 <= nul1 - 12 <= limits.max_function and 0 <= nul2 - nul1 - 1 <= limits.max_unique:
                priority, background = _SUBMIT_TYPES[ptype]
                unique = bytes(frame[nul1 + 1 : nul2])
                payload: Any = view[nul2 + 1 :]
                if unique == b"-":
                    payload = bytes(payload)  # coalesced by payload: it must be hashable
                self._submit(
                    peer, bytes(frame[12:nul1]), unique, payload, priority, background, 0, b"",
                    now,
                )  # fmt: skip
                return
        elif ptype in _HANDLE_DATA_TYPES:
            nul = frame.find(b"\0", 12, end)
            if 0 <= nul - 12 <= limits.max_handle:
                handle = bytes(frame[12:nul])
                payload = view[nul + 1 :]
                if ptype == 13:
                    self._complete(peer, handle, payload)
                else:
                    event = _tuple_new(_HANDLE_DATA_TYPES[ptype], (handle, payload))
                    self._dispatch[type(event)](peer, event, now)
                return
        elif ptype == 16:
            self._outs(peer, wire.echo_res(view[12:end]))
            return
        # Anything else (or malformed) goes the ordinary way.
        self.receive(conn_id, bytes(view), now)

    def _judge(self, peer: Peer, data: bytes, now: float) -> None:
        """Let the protocol core decide about bytes the fast path declined."""
        try:
            events = self._oracle.judge(data)
        except RemoteProtocolError as exc:
            self._protocol_error(peer, exc)
            return
        dispatch = self._dispatch
        for event in events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(peer, event, now)

    def _protocol_error(self, peer: Peer, exc: RemoteProtocolError) -> None:
        """Answer a peer's protocol error; close the connection if it is fatal."""
        hint = exc.hint
        if hint is not None:
            if isinstance(hint, ev.Error):
                self._out(peer, wire.error(hint.code, hint.text))
            else:
                self._out(peer, _admin.format_reply(hint))
        if exc.fatal:
            peer.buffered = []
            self._close(peer)

    def _close(self, peer: Peer) -> None:
        peer.closing = True
        self._mark(peer)

    # ---------------------------------------------------------------------- output

    def _mark(self, peer: Peer) -> None:
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)

    def _out(self, peer: Peer, data: bytes) -> None:
        peer.out.append(data)
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)

    def _outs(self, peer: Peer, chunks: list[bytes]) -> None:
        peer.out += chunks
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)

    def _error(self, peer: Peer, code: bytes, text: bytes) -> None:
        self._out(peer, wire.error(code, text))

    def drain(self) -> list[Transmit]:
        """What to write to which connection now (and which to close after writing).

        A connection the core closes is forgotten here: the runner need not call
        :meth:`disconnect` for it (doing so is harmless).
        """
        return [Transmit(*item) for item in self.take_output()]

    def take_output(self, direct: list[Peer] | None = None) -> list[tuple[Any, list[bytes], bool]]:
        """:meth:`drain` as plain ``(conn_id, chunks, close)`` tuples (what runners
        use: no record object per connection and flush).

        With a ``direct`` list, a peer whose ``direct_fd`` a runner set (the runner
        writes to its socket itself), that has output and is not closing nor waiting
        for a store commit, is appended to ``direct`` instead: its bytes stay in
        ``peer.out`` for the runner to write and clear (no tuple, no list handed
        over per connection and flush)."""
        dirty = self._dirty
        if not dirty:
            return []
        self._dirty = []
        result: list[tuple[Any, list[bytes], bool]] = []
        now = self._now
        for peer in dirty:
            peer.dirty = False
            peer.active_at = now
            if peer.held:
                chunks = self._releasable(peer)
                close = peer.closing and not peer.held
            elif direct is not None and peer.direct_fd >= 0 and not peer.closing:
                if peer.out:
                    direct.append(peer)
                continue
            else:
                chunks = peer.out
                peer.out = []
                close = peer.closing
            if chunks or close:
                result.append((peer.conn_id, chunks, close))
            if close and self._peers.get(peer.conn_id) is peer:
                self.disconnect(peer.conn_id, now)
        return result

    def _releasable(self, peer: Peer) -> list[bytes]:
        """Output up to the first reply still waiting for a store commit."""
        committed = self._committed
        out = peer.out
        chunks: list[bytes] = []
        for index, item in enumerate(out):
            if type(item) is Held:
                if item.batch_id > committed:
                    peer.out = out[index:]
                    return chunks
                chunks += item.chunks
                peer.held -= 1
            else:
                chunks.append(item)
        peer.out = []
        return chunks

    # ------------------------------------------------------------------- functions

    def _function(self, name: bytes) -> Function:
        function = self._functions.get(name)
        if function is None:
            function = self._functions[name] = Function(name)
        return function

    # ------------------------------------------------------------- worker abilities

    def _register(self, peer: Peer, name: bytes, timeout: float) -> None:
        function = self._function(name)
        peer.abilities.append(name)
        function.workers[peer] = function.workers.get(peer, 0) + 1
        function.registrations += 1
        if function not in peer.timeouts:
            peer.funcs.append(function)
            # The rotation starts at the newest registration, as in gearmand.
            peer.rotation = len(peer.funcs) - 1
        peer.timeouts[function] = timeout
        if peer.sleeping and not peer.noop_sent:
            function.sleepers[peer] = None
            if function.ready:
                self._noop(peer)

    def _unregister(self, peer: Peer, function: Function, now: float) -> None:
        registrations = function.workers.pop(peer, 0)
        function.registrations -= registrations
        function.sleepers.pop(peer, None)
        del peer.timeouts[function]
        peer.funcs.remove(function)
        peer.rotation = 0
        name = function.name
        peer.abilities = [a for a in peer.abilities if a != name]
        for job in [j for j in peer.working if j.function is function]:
            self._take_back(job, now)

    def _unregister_all(self, peer: Peer, now: float) -> None:
        for function in peer.funcs:
            function.registrations -= function.workers.pop(peer, 0)
            function.sleepers.pop(peer, None)
        peer.funcs = []
        peer.timeouts = {}
        peer.abilities = []
        peer.rotation = 0
        for job in list(peer.working):
            self._take_back(job, now)

    def _on_can_do(self, peer: Peer, event: ev.CanDo, now: float) -> None:
        self._register(peer, event.function, 0.0)

    def _on_can_do_timeout(self, peer: Peer, event: ev.CanDoTimeout, now: float) -> None:
        timeout = event.timeout
        if timeout > _MAX_TIMEOUT_MS:
            self._error(peer, b"INVALID_ARGUMENT", b"Timeout must be at most 2147483647 ms")
            return
        # gearmand: no timer for <= 0, and at least one second otherwise.
        seconds = 0.0 if timeout <= 0 else max(timeout, 1000) / 1000.0
        self._register(peer, event.function, seconds)

    def _on_cant_do(self, peer: Peer, event: ev.CantDo, now: float) -> None:
        function = self._functions.get(event.function)
        if function is not None and function in peer.timeouts:
            self._unregister(peer, function, now)

    def _on_reset_abilities(self, peer: Peer, event: ev.ResetAbilities, now: float) -> None:
        self._unregister_all(peer, now)

    # ------------------------------------------------------------------ submission

    def _on_submit(self, peer: Peer, event: ev.SubmitJob, now: float) -> None:
        self._submit(peer, event[0], event[1], event[2], event[3], event[4], 0, b"", now)

    def _on_submit_epoch(self, peer: Peer, event: ev.SubmitJobEpoch, now: float) -> None:
        when = event.epoch
        if when < 0 or when > _MAX_EPOCH:
            self._error(peer, b"INVALID_ARGUMENT", b"Epoch time out of range")
            return
        self._submit(
            peer, event.function, event.unique, event.data, Priority.NORMAL, True, when, b"", now
        )  # fmt: skip

    def _on_submit_reduce(self, peer: Peer, event: ev.SubmitReduceJob, now: float) -> None:
        if len(event.reducer) > self._limits.max_unique:
            # gearmand stores the reducer in a unique-sized buffer.
            self._error(peer, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
            return
        self._submit(
            peer, event.function, event.unique, event.data, Priority.NORMAL, event.background,
            0, event.reducer, now,
        )  # fmt: skip

    def _submit(
        self,
        peer: Peer,
        name: bytes,
        unique: bytes,
        data: Payload,
        priority: int,
        background: bool,
        when: int,
        reducer: bytes,
        now: float,
    ) -> None:
        key: tuple[bytes, ...] | None = None
        if unique:
            # "-" coalesces by payload (an empty payload never coalesces).
            # (Payloads coalesced by value arrive as bytes: receive_frame() sees to it.)
            key = (
                (name, unique) if unique != b"-" else ((name, b"-", bytes(data)) if data else None)
            )
            if key is not None:
                job = self._coalesce.get(key)
                if job is not None:
                    self._join(peer, job, background)
                    return
        function = self._functions.get(name)
        if function is None:
            function = self._function(name)
        limit = function.max_queue[priority]
        if limit and function.total >= limit:
            self._error(peer, b"QUEUE_ERROR", b"Job queue is full")
            return
        size = len(data) + len(unique)
        if self._max_jobs and len(self._jobs) >= self._max_jobs:
            self._error(
                peer, b"QUEUE_ERROR", b"Server job limit reached (%d jobs)" % self._max_jobs
            )
            return
        if self._max_bytes and self.queued_bytes + size > self._max_bytes:
            self._error(
                peer,
                b"QUEUE_ERROR",
                b"Server queued-bytes limit reached (%d bytes)" % self._max_bytes,
            )
            return
        self.queued_bytes += size
        handle = self._new_handle()
        job = Job(handle, function, unique, data, priority, background, when, reducer)
        if key is not None:
            job.key = key
            self._coalesce[key] = job
            if key[1] != b"-":
                same = self._by_unique.get(unique)
                if same is None:
                    self._by_unique[unique] = [job]
                else:
                    same.append(job)
        self._jobs[handle] = job
        function.total += 1
        function.queued[priority] += 1
        if not background:
            job.clients.append(peer)
            peer.following[job] = 1
        if background and self._durable:
            self._persist(job)
            self._hold(peer, job)
            return
        peer.out.append(_res_packet(8, handle))
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)
        if when > now:
            self._make_visible(job, now)
            return
        job.state = _QUEUED
        function.queues[priority].append(job)
        function.ready += 1
        if function.sleepers:
            self._wake(function)

    def _join(self, peer: Peer, job: Job, background: bool) -> None:
        """A submission coalesced onto an existing job."""
        if not background:
            job.clients.append(peer)
            following = peer.following
            following[job] = following.get(job, 0) + 1
        elif not job.background:
            # A background submitter expects the job to run even if every foreground
            # client leaves, and (with a store) to survive a restart.
            job.background = True
            if self._durable:
                self._persist(job)
        if job.batch > self._committed:
            self._hold(peer, job)
        else:
            self._out(peer, wire.job_created(job.handle))

    def _make_visible(self, job: Job, now: float) -> None:
        """A new (or newly committed) job enters its queue, or waits for its time."""
        if job.when > now:
            job.state = _SCHEDULED
            heapq.heappush(self._epochs, (float(job.when), next(self._timer_seq), job))
            self.timers_changed = True
            return
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        job.state = _QUEUED
        function = job.function
        function.queues[job.priority].append(job)
        function.ready += 1
        if function.sleepers:
            self._wake(function)

    # --------------------------------------------------------------- durable store

    def _persist(self, job: Job) -> None:
        job.store_id = next(self._store_seq)
        job.batch = self._batch_id
        if type(job.data) is not bytes:
            job.data = bytes(job.data)  # a store keeps bytes, not a view of a buffer
        self._adds.append(
            StoredJob(
                job.store_id,
                job.function.name,
                job.unique,
                job.data,
                Priority(job.priority),
                job.when,
                job.reducer,
            )
        )
        self._batch_jobs.append(job)

    def _hold(self, peer: Peer, job: Job) -> None:
        held = Held(job.batch, [wire.job_created(job.handle)], job)
        peer.out.append(held)
        peer.held += 1
        self._holding[peer] = None
        if job.batch == self._batch_id:
            self._batch_helds.append(held)
        else:
            self._inflight[job.batch][1].append(held)

    def load(self, stored: Iterable[StoredJob], now: float) -> int:
        """Replay jobs from a durable store at start-up; returns how many were loaded.

        Jobs get new handles (as in gearmand) and keep their store ids, priority,
        FIFO order (``job_id`` order) and epoch time.
        """
        loaded = 0
        highest = 0
        for item in sorted(stored, key=lambda s: s.job_id):
            function = self._function(item.function)
            key: tuple[bytes, ...] | None = None
            if item.unique:
                key = (item.function, b"-", item.data) if item.unique == b"-" else None
                if item.unique != b"-":
                    key = (item.function, item.unique)
            handle = self._new_handle()
            priority = int(item.priority)
            job = Job(
                handle, function, item.unique, item.data, priority, True, item.when, item.reducer
            )
            job.store_id = item.job_id
            highest = max(highest, item.job_id)
            if key is not None and key not in self._coalesce:
                job.key = key
                self._coalesce[key] = job
                if key[1] != b"-":
                    self._by_unique.setdefault(item.unique, []).append(job)
            self._jobs[handle] = job
            self.queued_bytes += len(item.data) + len(item.unique)
            function.total += 1
            function.queued[priority] += 1
            self._make_visible(job, now)
            loaded += 1
        if highest:
            self._store_seq = count(highest + 1)
        return loaded

    def take_store_batch(self) -> StoreBatch | None:
        """The store changes gathered since the last call, as one batch (or ``None``).

        Apply it in one transaction, then call :meth:`store_committed` (or
        :meth:`store_failed`).  Batches must be applied in the order taken.
        """
        if not self._adds and not self._removes:
            return None
        batch = StoreBatch(self._batch_id, tuple(self._adds), tuple(self._removes))
        self._inflight[self._batch_id] = (self._batch_jobs, self._batch_helds, self._removes)
        self._batch_id += 1
        self._adds = []
        self._removes = []
        self._batch_jobs = []
        self._batch_helds = []
        return batch

    @property
    def store_work_pending(self) -> bool:
        """True if :meth:`take_store_batch` has something to return."""
        return bool(self._adds or self._removes)

    def store_committed(self, batch_id: int, now: float) -> None:
        """Batch ``batch_id`` is durable: its jobs become visible, its replies go out."""
        jobs, _helds, _removes = self._inflight.pop(batch_id, ([], [], []))
        self._now = now  # the replies it releases are dated now (idle timeout)
        self._committed = max(self._committed, batch_id)
        for job in jobs:
            if job.state == _PENDING:
                self._make_visible(job, now)
        self._release_held()

    def store_failed(self, batch_id: int, reason: bytes, now: float) -> None:
        """Batch ``batch_id`` could not be applied: its submissions get ERROR QUEUE_ERROR."""
        jobs, helds, removes = self._inflight.pop(batch_id, ([], [], []))
        self._now = now
        self._committed = max(self._committed, batch_id)
        # Removals not applied are retried with the next batch (a finished job must
        # not come back after a restart if that can be helped).
        self._removes.extend(removes)
        error = wire.error(b"QUEUE_ERROR", reason or b"QUEUE_ERROR")
        failed = set()
        for job in jobs:
            failed.add(job)
            if job.state == _PENDING:
                for client in job.clients:
                    client.following.pop(job, None)
                job.clients = []
                self._remove(job)
            else:
                # A foreground job made background by a coalesced submission stays.
                job.store_id = 0
        for held in helds:
            if held.job in failed:
                held.chunks = [error]
        self._release_held()

    def _release_held(self) -> None:
        holding = self._holding
        if not holding:
            return
        for peer in list(holding):
            self._mark(peer)
            # Whatever stays held after the drain keeps the peer in the table.
            if not any(type(i) is Held and i.batch_id > self._committed for i in peer.out):
                del holding[peer]

    # ------------------------------------------------------------------ assignment

    def _on_grab(self, peer: Peer, event: Any, now: float) -> None:
        job = self._grab(peer, now)
        if job is None:
            self._out(peer, wire.NO_JOB)
        else:
            self._outs(
                peer, _with_payload(11, job.handle + b"\0" + job.function.name + b"\0", job.data)
            )

    def _on_grab_uniq(self, peer: Peer, event: Any, now: float) -> None:
        job = self._grab(peer, now)
        if job is None:
            self._out(peer, wire.NO_JOB)
        elif len(job.data) <= _JOIN_PAYLOAD:
            # The common case in one object: no head to build and concatenate first.
            nul = b"\0"
            self._out(
                peer,
                _res_packet(31, job.handle, nul, job.function.name, nul, job.unique, nul, job.data),
            )
        else:
            head = job.handle + b"\0" + job.function.name + b"\0" + job.unique + b"\0"
            self._outs(peer, _with_payload(31, head, job.data))

    def _on_grab_all(self, peer: Peer, event: Any, now: float) -> None:
        job = self._grab(peer, now)
        if job is None:
            self._out(peer, wire.NO_JOB)
            return
        head = job.handle + b"\0" + job.function.name + b"\0" + job.unique + b"\0"
        if job.reducer:
            self._outs(peer, _with_payload(40, head + job.reducer + b"\0", job.data))
        else:
            self._outs(peer, _with_payload(31, head, job.data))

    def _grab(self, peer: Peer, now: float) -> Job | None:
        if peer.sleeping:
            peer.sleeping = False
            if not peer.noop_sent:
                for function in peer.funcs:
                    function.sleepers.pop(peer, None)
        peer.noop_sent = False
        job = self._next_job(peer)
        if job is None:
            return None
        function = job.function
        job.state = _RUNNING
        job.worker = peer
        function.ready -= 1
        function.queued[job.priority] -= 1
        function.running += 1
        peer.working[job] = None
        timeout = peer.timeouts[function]
        if timeout:
            timeouts = self._timeouts
            heapq.heappush(timeouts, (now + timeout, next(self._timer_seq), job, peer, job.retries))
            self.timers_changed = True
            if len(timeouts) > self._timeouts_limit:
                self._compact_timeouts()
        return job

    def _compact_timeouts(self) -> None:
        """Drop timers of jobs that already ended (they would fire and do nothing),
        so that long timeouts on a busy server do not pile up in memory."""
        live = [
            entry
            for entry in self._timeouts
            if entry[2].state is _RUNNING and entry[2].worker is entry[3]
            and entry[2].retries == entry[4]
        ]  # fmt: skip
        heapq.heapify(live)
        self._timeouts = live
        self._timeouts_limit = max(_MIN_TIMER_COMPACT, 2 * len(live))

    def _next_job(self, peer: Peer) -> Job | None:
        """Global priority (HIGH, NORMAL, LOW) over the peer's functions, FIFO within
        a priority, rotating the start function for fairness."""
        funcs = peer.funcs
        n = len(funcs)
        if n == 1:
            function = funcs[0]
            if not function.ready:
                return None
            for queue in function.queues:
                while queue:
                    job = queue.popleft()
                    if job.state is _QUEUED and job.function is function:
                        return job
            return None  # pragma: no cover - ready > 0 guarantees a job
        if n == 0:
            return None
        start = peer.rotation
        for priority in (0, 1, 2):
            for offset in range(n):
                index = (start + offset) % n
                function = funcs[index]
                if not function.ready:
                    continue
                queue = function.queues[priority]
                while queue:
                    job = queue.popleft()
                    if job.state is _QUEUED:
                        peer.rotation = (index + 1) % n
                        return job
        return None

    # ---------------------------------------------------------------- sleep / wake

    def _on_pre_sleep(self, peer: Peer, event: ev.PreSleep, now: float) -> None:
        peer.sleeping = True
        # A new PRE_SLEEP re-arms wake-ups even if a NOOP went unanswered (gearmand
        # would never wake such a worker again).
        peer.noop_sent = False
        for function in peer.funcs:
            if function.ready:
                self._noop(peer)
                return
        for function in peer.funcs:
            function.sleepers[peer] = None

    def _noop(self, peer: Peer) -> None:
        peer.noop_sent = True
        for function in peer.funcs:
            function.sleepers.pop(peer, None)
        self._out(peer, wire.NOOP)

    def _wake(self, function: Function) -> None:
        sleepers = function.sleepers
        limit = self._wakeup
        woken = list(islice(sleepers, limit)) if limit else list(sleepers)
        for peer in woken:
            self._noop(peer)

    # ----------------------------------------------------------------- work results

    def _worker_job(self, peer: Peer, handle: bytes, text: bytes) -> Job | None:
        """The job ``handle`` if ``peer`` holds it; else answer JOB_NOT_FOUND."""
        job = self._jobs.get(handle)
        if job is None or job.worker is not peer:
            self._error(peer, b"JOB_NOT_FOUND", text)
            return None
        return job

    def _forward(self, job: Job, chunks: list[bytes]) -> None:
        dirty = self._dirty
        for client in job.clients:
            client.out += chunks
            if not client.dirty:
                client.dirty = True
                dirty.append(client)

    def _on_work_complete(self, peer: Peer, event: ev.WorkComplete, now: float) -> None:
        self._complete(peer, event[0], event[1])

    def _complete(self, peer: Peer, handle: bytes, data: Payload) -> None:
        job = self._jobs.get(handle)
        if job is None or job.worker is not peer:
            self._error(peer, b"JOB_NOT_FOUND", _NOT_FOUND_RESULT)
            return
        clients = job.clients
        if clients:
            dirty = self._dirty
            if len(data) <= _JOIN_PAYLOAD:
                # One packet object, shared by every client that follows the job.
                packet = _res_packet(13, handle, b"\0", data)
                for client in clients:
                    client.out.append(packet)
                    if not client.dirty:
                        client.dirty = True
                        dirty.append(client)
            else:
                # Typed loosely: a big payload is a view of the buffer it arrived in.
                header = _pack_header(_RES, 13, len(handle) + 1 + len(data)) + handle + b"\0"
                chunks: list[Any] = [header, data]
                for client in clients:
                    client.out += chunks
                    if not client.dirty:
                        client.dirty = True
                        dirty.append(client)
        # Inline _remove for the common case: a running job with no key or store row.
        if job.key is None and not job.store_id and job.state is _RUNNING:
            job.state = _GONE
            function = job.function
            function.total -= 1
            function.running -= 1
            del peer.working[job]
            job.worker = None
            del self._jobs[handle]
            self.queued_bytes -= len(job.data) + len(job.unique)
            if clients:
                for client in clients:
                    # Not dict.pop(job, None): compiled, that is a generic method call.
                    following = client.following
                    if job in following:
                        del following[job]
                job.clients = []
            return
        self._remove(job)

    def _on_work_fail(self, peer: Peer, event: ev.WorkFail, now: float) -> None:
        job = self._worker_job(peer, event[0], _NOT_FOUND_RESULT)
        if job is not None:
            self._fail_job(job)

    def _on_work_exception(self, peer: Peer, event: ev.WorkException, now: float) -> None:
        job = self._worker_job(peer, event[0], _NOT_FOUND_EXCEPTION)
        if job is None:
            return
        if job.clients:
            exception = _with_payload(25, job.handle + b"\0", event[1])
            fail = wire.handle_only(14, job.handle)
            for client in job.clients:
                if client.exceptions:
                    self._outs(client, exception)
                else:
                    self._out(client, fail)
        self._remove(job)

    def _on_work_forward(self, peer: Peer, event: Any, now: float) -> None:
        job = self._worker_job(peer, event[0], _NOT_FOUND_DATA)
        if job is not None and job.clients:
            ptype = 28 if type(event) is ev.WorkData else 29
            self._forward(job, _with_payload(ptype, job.handle + b"\0", event[1]))

    def _on_work_status(self, peer: Peer, event: ev.WorkStatus, now: float) -> None:
        job = self._worker_job(peer, event[0], _NOT_FOUND_RESULT)
        if job is None:
            return
        # gearmand keeps (uint32)atoi() of each number; clients get the same values.
        job.numerator = event.numerator & _UINT32
        job.denominator = event.denominator & _UINT32
        if job.clients:
            self._forward(job, [wire.work_status(job.handle, job.numerator, job.denominator)])

    def _fail_job(self, job: Job) -> None:
        """End ``job`` with WORK_FAIL to every client."""
        if job.clients:
            self._forward(job, [wire.handle_only(14, job.handle)])
        self._remove(job)

    def _remove(self, job: Job) -> None:
        """Take ``job`` out of every table (it finished, failed or was dropped)."""
        state = job.state
        job.state = _GONE
        function = job.function
        function.total -= 1
        if state is _RUNNING:
            function.running -= 1
            worker = job.worker
            if worker is not None:
                worker.working.pop(job, None)
                job.worker = None
        elif state is _QUEUED:
            function.ready -= 1
            function.queued[job.priority] -= 1
            queue = function.queues[job.priority]
            if len(queue) > 64 and len(queue) > 2 * function.ready:
                # Removed jobs stay in their deque until met; rebuild it before the
                # dead entries outnumber the live ones.
                live = [j for j in queue if j.state is _QUEUED and j.function is function]
                queue.clear()
                queue.extend(live)
        elif state is _SCHEDULED or state is _PENDING:
            function.queued[job.priority] -= 1
        del self._jobs[job.handle]
        self.queued_bytes -= len(job.data) + len(job.unique)
        key = job.key
        if key is not None:
            if self._coalesce.get(key) is job:
                del self._coalesce[key]
            if key[1] != b"-":
                same = self._by_unique.get(job.unique)
                if same is not None:
                    if len(same) == 1:
                        del self._by_unique[job.unique]
                    else:
                        same.remove(job)
        clients = job.clients
        if clients:
            for client in clients:
                client.following.pop(job, None)
            job.clients = []
        if job.store_id:
            self._removes.append(job.store_id)
            job.store_id = 0

    def _abandon(self, job: Job) -> None:
        """A foreground job lost its last client."""
        if job.state is _RUNNING:
            # The worker is not told; its results are accepted and discarded.
            return
        self._remove(job)

    def _take_back(self, job: Job, now: float) -> None:
        """The worker lost the job (disconnect, CANT_DO, RESET_ABILITIES, timeout)."""
        worker = job.worker
        if worker is not None:
            worker.working.pop(job, None)
        if not job.clients and not job.background:
            self._remove(job)
            return
        job.retries += 1
        if self._retry_limit and job.retries >= self._retry_limit:
            self._fail_job(job)
            return
        function = job.function
        function.running -= 1
        function.queued[job.priority] += 1
        job.worker = None
        job.numerator = 0
        job.denominator = 0
        self._enqueue(job)

    # ----------------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (Unix time), or ``None``."""
        epochs = self._epochs
        timeouts = self._timeouts
        if epochs:
            deadline: float | None = min(epochs[0][0], timeouts[0][0]) if timeouts else epochs[0][0]
        elif timeouts:
            deadline = timeouts[0][0]
        else:
            deadline = None
        if self._partial:
            due = next(iter(self._partial.values())) + self._partial_timeout
            deadline = due if deadline is None or due < deadline else deadline
        if self._idle:
            due = self._idle[0][0]
            deadline = due if deadline is None or due < deadline else deadline
        return deadline

    @property
    def has_timers(self) -> bool:
        """True when :meth:`next_deadline` is not ``None`` (cheap to ask)."""
        return bool(self._epochs or self._timeouts or self._partial or self._idle)

    def handle_timer(self, now: float) -> None:
        """Run the timers due at ``now``: epoch jobs become runnable (waking sleeping
        workers), and jobs past their CAN_DO_TIMEOUT are taken back and requeued."""
        self._now = now
        epochs = self._epochs
        while epochs and epochs[0][0] <= now:
            job = heapq.heappop(epochs)[2]
            if job.state is _SCHEDULED:
                self._enqueue(job)
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _due, _seq, job, peer, retries = heapq.heappop(timeouts)
            if job.state is _RUNNING and job.worker is peer and job.retries == retries:
                self._take_back(job, now)
        if self._partial:
            self._expire_partial(now)
        if self._idle and self._idle[0][0] <= now:
            self._expire_idle(now)

    def _expire_partial(self, now: float) -> None:
        """Close connections whose packet or line took longer than ``partial_timeout``."""
        partial = self._partial
        limit = self._partial_timeout
        seconds = b"%g" % limit
        while partial:
            peer, started = next(iter(partial.items()))
            if started + limit > now:
                return
            self._end_partial(peer)
            if peer.closing or self._peers.get(peer.conn_id) is not peer:
                continue
            head = peer.buffered[0][:1] if peer.buffered else b"\0"
            if head == b"\0":
                self._error(peer, b"TIMEOUT", b"Packet not completed within %s seconds" % seconds)
            else:
                self._out(peer, _admin.format_reply(
                    _admin.AdminError(b"TIMEOUT", b"Line+not+completed+within+%s+seconds" % seconds)
                ))  # fmt: skip
            peer.buffered = []
            self._close(peer)

    def _expire_idle(self, now: float) -> None:
        """Close connections that hold no work and were silent for ``idle_timeout``."""
        idle = self._idle
        limit = self._idle_timeout
        peers = self._peers
        while idle and idle[0][0] <= now:
            peer = heapq.heappop(idle)[2]
            if peer.closing or peers.get(peer.conn_id) is not peer:
                continue
            if peer.active_at < 0:
                peer.active_at = now  # connected before the core knew the time
            due = peer.active_at + limit
            if due > now:
                heapq.heappush(idle, (due, next(self._timer_seq), peer))
                continue
            if peer.funcs or peer.working or peer.following or peer.held or peer.partial_at:
                # It holds work: not idle.  Look again later.
                heapq.heappush(idle, (now + limit, next(self._timer_seq), peer))
                continue
            seconds = b"%g" % limit
            if peer.text:
                self._out(peer, _admin.format_reply(
                    _admin.AdminError(b"TIMEOUT", b"Idle+for+%s+seconds" % seconds)
                ))  # fmt: skip
            else:
                self._error(peer, b"TIMEOUT", b"Idle for %s seconds" % seconds)
            self._close(peer)

    # ---------------------------------------------------------------- client status

    def _on_get_status(self, peer: Peer, event: ev.GetStatus, now: float) -> None:
        job = self._jobs.get(event.handle)
        if job is None or job.state is _PENDING:
            self._out(peer, wire.status_res(event.handle, False, False, 0, 0))
        else:
            self._out(
                peer,
                wire.status_res(
                    event.handle, True, job.state is _RUNNING, job.numerator, job.denominator
                ),
            )

    def _on_get_status_unique(self, peer: Peer, event: ev.GetStatusUnique, now: float) -> None:
        same = self._by_unique.get(event.unique)
        job = None
        if same:
            job = next((j for j in same if j.state is not _PENDING), None)
        if job is None:
            self._out(peer, wire.status_res_unique(event.unique, False, False, 0, 0, 0))
        else:
            self._out(
                peer,
                wire.status_res_unique(
                    event.unique,
                    True,
                    job.state is _RUNNING,
                    job.numerator,
                    job.denominator,
                    len(job.clients),
                ),
            )

    # ------------------------------------------------------------------- the rest

    def _on_echo(self, peer: Peer, event: ev.EchoReq, now: float) -> None:
        self._outs(peer, wire.echo_res(event.data))

    def _on_option(self, peer: Peer, event: ev.OptionReq, now: float) -> None:
        # gearmand compares the option as a C string (a NUL ends it), ignoring case.
        name = event.option.split(b"\0", 1)[0]
        if name.lower() == b"exceptions" and len(event.option) < 64:
            peer.exceptions = True
            self._out(peer, wire.handle_only(27, event.option))
        else:
            self._error(peer, b"UNKNOWN_OPTION", b"Server does not recognize given option")

    def _on_set_client_id(self, peer: Peer, event: ev.SetClientId, now: float) -> None:
        peer.client_id = event.client_id[:_MAX_CLIENT_ID] or b"-"

    def _on_not_expected(self, peer: Peer, event: Any, now: float) -> None:
        self._error(peer, b"INVALID_COMMAND", b"Command not expected")

    # ------------------------------------------------------------------ admin hooks

    def cancel(self, handle: bytes) -> bool:
        """Cancel a job (admin ``cancel job``); False if no such job."""
        job = self._jobs.get(handle)
        if job is None or job.state is _PENDING:
            return False
        if job.clients:
            self._forward(job, [wire.handle_only(14, job.handle)])
            for client in job.clients:
                client.following.pop(job, None)
            job.clients = []
        if job.state is _RUNNING:
            # The worker keeps the job until it reports; its results are discarded.
            job.background = False
            if job.store_id:
                self._removes.append(job.store_id)
                job.store_id = 0
            return True
        self._remove(job)
        return True

    def drop_function(self, function: Function) -> None:
        del self._functions[function.name]

    def request_stop(self, graceful: bool) -> None:
        """Ask the runner to stop (``shutdown`` admin command, signals)."""
        if self.stop_requested != "now":
            self.stop_requested = "graceful" if graceful else "now"


def _find_nul(buf: bytes, start: int, stop: int) -> int:
    """The index of the first NUL in ``buf[start:stop]``, or -1.  Fields are short
    and the scan ends at the first NUL: compiled, a byte loop beats ``bytes.find``'s
    argument parsing.  Only a span that must be scanned far (a limit raised well past
    the defaults, and a field that does not end early) is left to ``bytes.find``."""
    if stop - start > 4096:
        return buf.find(b"\0", start, stop)
    i = start
    while i < stop:
        if buf[i] == 0:
            return i
        i += 1
    return -1


_with_payload: Final = wire.Encoder.with_payload
_pack_header: Final = wire._pack
_res_packet: Final = wire.res_packet
_unpack_header: Final = wire._unpack
# What ServerCore._packet found.
_INCOMPLETE: Final = 1
_UNFRAMEABLE: Final = 2
_RES: Final = b"\0RES"
_JOIN_PAYLOAD: Final = wire._JOIN_PAYLOAD
_tuple_new: Final = tuple.__new__
# The CAN_DO_TIMEOUT heap is compacted when it holds twice its live entries (and at
# least this many).
_MIN_TIMER_COMPACT: Final = 1024
# Big-packet buffers: sizes rounded to this, at most this many kept for reuse, and
# none larger than this kept.
_FRAME_ROUND: Final = 1 << 16
_POOL_BUFFERS: Final = 8
_POOL_MAX_BUFFER: Final = 4 << 20
_HANDLE_DATA_TYPES: Final[dict[int, type[Any]]] = {
    13: ev.WorkComplete,
    25: ev.WorkException,
    28: ev.WorkData,
    29: ev.WorkWarning,
}
_SUBMIT_TYPES: Final = {
    7: (1, False),
    18: (1, True),
    21: (0, False),
    32: (0, True),
    33: (2, False),
    34: (2, True),
}
# Packets whose payload the large-frame path uses in place.
_LARGE_FRAME_TYPES: Final = frozenset(_SUBMIT_TYPES) | frozenset(_HANDLE_DATA_TYPES) | {16}
# gearmand's texts for ERROR JOB_NOT_FOUND, which differ by packet type.
_NOT_FOUND_RESULT: Final = b"Job given in work result not found"
_NOT_FOUND_DATA: Final = b"Job does not exist on server"
_NOT_FOUND_EXCEPTION: Final = b"An exception was received for a job that does not exist"
_ADMIN_CLASSES: Final[tuple[type[Any], ...]] = (
    _admin.Workers,
    _admin.Status,
    _admin.PriorityStatus,
    _admin.MaxQueue,
    _admin.ShowJobs,
    _admin.ShowUniqueJobs,
    _admin.CancelJob,
    _admin.CreateFunction,
    _admin.DropFunction,
    _admin.GetPid,
    _admin.Verbose,
    _admin.Version,
    _admin.Shutdown,
    _admin.AdminBadCommand,
)
