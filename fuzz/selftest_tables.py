"""Consistency checks on a :class:`~gearproto.server.ServerCore`'s own tables.

The core keeps counters (per function: jobs in total, running, runnable, per
priority; bytes queued) next to the jobs, queues, peers and timers they summarise.
:func:`check_tables` recomputes every counter from the jobs and peers themselves and
checks every cross-reference (a queued job is in its queue, a running job's worker
holds it, a client follows the jobs that list it, ...), plus the memory bounds the
configuration promises.  :func:`expected_listing` recomputes an admin listing the
same way, so ``status`` & co. can be compared with what the tables say.

These read private attributes on purpose: the fuzz target is the core's own test.
"""

from __future__ import annotations

from typing import Any

from gearproto import admin
from gearproto.server import ServerCore
from gearproto.server._admin import escape
from gearproto.server._state import Held, Job, JobState, Peer

from .selftest_peer import Failure

__all__ = ["check_tables", "expected_listing", "ready_heads"]

_LIVE_STATES = frozenset({JobState.PENDING, JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING})


def _fail(message: str) -> Failure:
    return Failure(f"server tables: {message}")


def check_tables(core: Any) -> None:
    """Raise :class:`Failure` if the core's tables disagree with each other."""
    jobs: dict[bytes, Job] = core._jobs
    functions = core._functions
    peers: dict[Any, Peer] = core._peers
    live_peers = {id(p) for p in peers.values()}
    config = core.config
    queued_bytes = 0
    for handle, job in jobs.items():
        if job.handle != handle:
            raise _fail(f"job {job!r} is filed under {handle!r}")
        if job.state not in _LIVE_STATES:
            raise _fail(f"job {job!r} is in the tables in state {job.state}")
        if functions.get(job.function.name) is not job.function:
            raise _fail(f"job {job!r} belongs to a function that is not in the tables")
        queued_bytes += len(job.data) + len(job.unique)
        state = job.state
        if state is JobState.QUEUED:
            if job.worker is not None:
                raise _fail(f"queued job {job!r} has a worker")
            if not any(entry is job for entry in job.function.queues[job.priority]):
                raise _fail(f"queued job {job!r} is missing from its priority queue (lost)")
        elif state is JobState.RUNNING:
            worker = job.worker
            if worker is None or id(worker) not in live_peers:
                raise _fail(f"running job {job!r} has no connected worker")
            if job not in worker.working:
                raise _fail(f"running job {job!r} is not in its worker's list")
        elif state is JobState.SCHEDULED:
            if not any(entry[2] is job for entry in core._epochs):
                raise _fail(f"scheduled job {job!r} has no timer")
        elif state is JobState.PENDING:
            if not job.background or job.batch < core._committed + 1:
                raise _fail(f"pending job {job!r} waits for no store batch")
        for client in job.clients:
            if id(client) not in live_peers:
                raise _fail(f"job {job!r} lists a disconnected client {client!r}")
            if client.following.get(job) != job.clients.count(client):
                raise _fail(f"job {job!r} and client {client!r} disagree on following")
        if not job.clients and not job.background and state is not JobState.RUNNING:
            raise _fail(f"foreground job {job!r} has no client left but is kept")
        key = job.key
        if key is not None and core._coalesce.get(key) is not job:
            raise _fail(f"job {job!r} has coalescing key {key!r} but is not filed under it")
    if queued_bytes != core.queued_bytes:
        raise _fail(f"queued_bytes is {core.queued_bytes}, the jobs hold {queued_bytes}")
    for key, job in core._coalesce.items():
        if jobs.get(job.handle) is not job or job.key != key:
            raise _fail(f"coalescing key {key!r} points at a job that is gone")
    for unique, same in core._by_unique.items():
        for job in same:
            if jobs.get(job.handle) is not job or job.unique != unique:
                raise _fail(f"unique {unique!r} lists a job that is gone")
    _check_functions(core, jobs, peers)
    _check_peers(core, peers)
    if config.max_queued_jobs and len(jobs) > config.max_queued_jobs:
        raise _fail(f"{len(jobs)} jobs held, the limit is {config.max_queued_jobs}")
    if config.max_queued_bytes and core.queued_bytes > config.max_queued_bytes:
        raise _fail(f"{core.queued_bytes} bytes queued, the limit is {config.max_queued_bytes}")
    if len(core._timeouts) > core._timeouts_limit:
        raise _fail("the CAN_DO_TIMEOUT heap outgrew its compaction limit")
    if len(core._frame_pool) > 8:
        raise _fail(f"{len(core._frame_pool)} big-packet buffers kept")
    for batch_id in core._inflight:
        if not core._committed < batch_id < core._batch_id:
            raise _fail(f"store batch {batch_id} in flight out of order")


def _check_functions(core: Any, jobs: dict[bytes, Job], peers: dict[Any, Peer]) -> None:
    for name, function in core._functions.items():
        if function.name != name:
            raise _fail(f"function {function!r} is filed under {name!r}")
        mine = [j for j in jobs.values() if j.function is function]
        total = len(mine)
        running = sum(1 for j in mine if j.state is JobState.RUNNING)
        ready = sum(1 for j in mine if j.state is JobState.QUEUED)
        queued = [
            sum(1 for j in mine if j.priority == p and j.state is not JobState.RUNNING)
            for p in range(3)
        ]
        counters = (function.total, function.running, function.ready, list(function.queued))
        if counters != (total, running, ready, queued):
            raise _fail(
                f"function {name!r} counts (total, running, ready, queued) {counters},"
                f" its jobs say {(total, running, ready, queued)}"
            )
        registrations = 0
        for peer, count in function.workers.items():
            filed = peers.get(peer.conn_id)
            if filed is None or filed is not peer:
                raise _fail(f"function {name!r} lists a disconnected worker {peer!r}")
            if count != peer.abilities.count(name):
                raise _fail(f"function {name!r} and worker {peer!r} disagree on registrations")
            registrations += count
        if registrations != function.registrations:
            raise _fail(f"function {name!r} counts {function.registrations} registrations,"
                        f" its workers {registrations}")  # fmt: skip
        for peer in function.sleepers:
            if peer not in function.workers or not peer.sleeping or peer.noop_sent:
                raise _fail(f"function {name!r} lists {peer!r} as a sleeper wrongly")
        if core._wakeup == 0 and function.ready and function.sleepers:
            raise _fail(f"function {name!r} has runnable jobs and sleeping workers not woken")


def _check_peers(core: Any, peers: dict[Any, Peer]) -> None:
    max_buffer = max(12 + core._max_packet, core._max_line)
    for conn_id, peer in peers.items():
        if peer.conn_id != conn_id:
            raise _fail(f"peer {peer!r} is filed under {conn_id!r}")
        if peer.dirty:
            raise _fail(f"peer {peer!r} still has output after drain()")
        held = sum(1 for item in peer.out if type(item) is Held)
        if held != peer.held:
            raise _fail(f"peer {peer!r} counts {peer.held} held replies, holds {held}")
        if not held and peer.out and not peer.closing:
            raise _fail(f"peer {peer!r} keeps output that drain() did not hand out")
        if held and peer not in core._holding:
            raise _fail(f"peer {peer!r} holds replies but is not in the holding table")
        buffered = sum(len(chunk) for chunk in peer.buffered)
        if buffered > max_buffer:
            raise _fail(f"peer {peer!r} buffers {buffered} bytes (bound {max_buffer})")
        if bool(peer.partial_at) != (peer in core._partial):
            raise _fail(f"peer {peer!r} partial-packet timer out of step")
        for job in peer.working:
            if job.state is not JobState.RUNNING or job.worker is not peer:
                raise _fail(f"peer {peer!r} lists {job!r} as running but it is not its")
        for job in peer.following:
            if peer not in job.clients:
                raise _fail(f"peer {peer!r} follows {job!r}, which does not list it")
        names = {f.name for f in peer.funcs}
        if names != set(peer.abilities) or len(names) != len(peer.funcs):
            raise _fail(f"peer {peer!r} functions {names} disagree with {peer.abilities}")
        if set(peer.timeouts) != set(peer.funcs):
            raise _fail(f"peer {peer!r} timeouts disagree with its functions")
        for function in peer.funcs:
            if core._functions.get(function.name) is not function:
                raise _fail(f"peer {peer!r} is registered for a function not in the tables")


def expected_listing(core: ServerCore, command: Any) -> Any:
    """The reply ``command`` (a listing) should get, recomputed from jobs and peers."""
    jobs = list(core.jobs())
    peers = list(core.peers())
    cls = type(command)
    if cls is admin.Status or cls is admin.PriorityStatus:
        rows: list[Any] = []
        for function in core.functions():
            mine = [j for j in jobs if j.function is function]
            workers = sum(p.abilities.count(function.name) for p in peers)
            if cls is admin.Status:
                running = sum(1 for j in mine if j.state is JobState.RUNNING)
                rows.append(admin.StatusRow(escape(function.name), len(mine), running, workers))
            else:
                waiting = [
                    sum(1 for j in mine if j.priority == p and j.state is not JobState.RUNNING)
                    for p in range(3)
                ]
                high, normal, low = waiting
                rows.append(
                    admin.PriorityStatusRow(escape(function.name), high, normal, low, workers)
                )
        return (
            admin.StatusReply(tuple(rows))
            if cls is admin.Status
            else (admin.PriorityStatusReply(tuple(rows)))
        )
    if cls is admin.Workers:
        return admin.WorkersReply(
            tuple(
                admin.WorkerRow(
                    p.info.fd if p.info.fd >= 0 else p.conn_id,
                    escape(p.info.host.encode()),
                    escape(p.client_id),
                    tuple(escape(name) for name in p.abilities),
                )
                for p in reversed(peers)
            )
        )
    visible = [j for j in jobs if j.state is not JobState.PENDING]
    if cls is admin.ShowJobs:
        return admin.ShowJobsReply(
            tuple(
                admin.JobRow(
                    escape(j.handle), j.retries, not j.clients and not j.background, j.background
                )
                for j in visible
            )
        )
    if cls is admin.ShowUniqueJobs:
        return admin.ShowUniqueJobsReply(
            tuple(b"%2E" if j.unique == b"." else escape(j.unique) for j in visible)
        )
    raise TypeError(f"{cls.__name__} is not a listing")


def ready_heads(peer: Peer) -> list[Job]:
    """The jobs a GRAB by ``peer`` may be given: for the highest priority that has a
    runnable job in any of its functions, the oldest runnable job of each function."""
    for priority in range(3):
        heads = []
        for function in peer.funcs:
            for job in function.queues[priority]:
                if job.state is JobState.QUEUED and job.function is function:
                    heads.append(job)
                    break
        if heads:
            return heads
    return []
