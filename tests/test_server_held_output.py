"""A pipelining client's replies may wait one loop iteration (asyncio runner), so
that results arriving meanwhile share its write; they never wait longer.

Over real loopback sockets, on asyncio's loop and on uvloop's: a client with other
jobs in flight gets each reply with no further traffic to prompt it (the runner's
wake-up descriptor ends the wait), a synchronous client's replies are never held,
and replies held when the server closes are written before the connection ends.
"""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from helpers.asyncio_peers import EACH_LOOP_AND_WAITS, Peer, run, runner_of, wait_until

from gearproto.events import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    SubmitJob,
    WorkComplete,
)
from gearproto.server import JobServer

pytestmark = pytest.mark.timeout(60)


async def three_jobs_and_a_worker(server: JobServer) -> tuple[Peer, Peer, list[bytes]]:
    """A client that submitted three jobs at once (all still in flight), and a worker
    that holds the first of them."""
    client = await Peer.open(server.address)
    await client.send(*(SubmitJob(b"upper", b"", b"job %d" % i) for i in range(3)))
    handles: list[bytes] = []
    for _ in range(3):
        event = await client.next_event()
        assert isinstance(event, JobCreated)
        handles.append(event.handle)
    worker = await Peer.open(server.address)
    await worker.send(CanDo(b"upper"), GrabJobUniq())
    assign = await worker.next_event()
    assert isinstance(assign, JobAssignUniq)
    assert (assign.handle, assign.data) == (handles[0], b"job 0")
    return client, worker, handles


@EACH_LOOP_AND_WAITS
def test_a_held_reply_goes_out_with_no_further_traffic(loop_name: str, own_waits: bool) -> None:
    async def main() -> None:
        async with JobServer(own_waits=own_waits) as server:
            runner = runner_of(server)
            client, worker, handles = await three_jobs_and_a_worker(server)
            assert runner.wake_fd >= 0
            assert runner.may_hold
            await wait_until(lambda: not runner.held_back, "earlier held replies are out")
            before = runner.held_count
            # The client still follows two other jobs: this result is held back,
            # and nothing but the runner's wake-up can send it (both peers wait).
            await worker.send(WorkComplete(handles[0], b"JOB 0"))
            started = time.monotonic()
            assert await client.next_event() == WorkComplete(handles[0], b"JOB 0")
            assert time.monotonic() - started < 5
            assert runner.held_count == before + 1
            assert not runner.held_back
            # The other two complete as well, unheld: the client has at most one
            # other job in flight now.
            for handle in handles[1:]:
                await worker.send(GrabJobUniq())
                assign = await worker.next_event()
                assert isinstance(assign, JobAssignUniq)
                await worker.send(WorkComplete(handle, assign.data.upper()))
                assert await client.next_event() == WorkComplete(handle, assign.data.upper())
            assert runner.held_count == before + 1
            await client.close()
            await worker.close()

    run(loop_name, main)


@EACH_LOOP_AND_WAITS
def test_a_synchronous_clients_replies_are_never_held(loop_name: str, own_waits: bool) -> None:
    async def main() -> None:
        async with JobServer(own_waits=own_waits) as server:
            runner = runner_of(server)
            worker = await Peer.open(server.address)
            await worker.send(CanDo(b"upper"))
            client = await Peer.open(server.address)
            before = runner.held_count
            for i in range(20):
                await client.send(SubmitJob(b"upper", b"", b"sync %d" % i))
                created = await client.next_event()
                assert isinstance(created, JobCreated)
                await worker.send(GrabJobUniq())
                assign = await worker.next_event()
                assert isinstance(assign, JobAssignUniq)
                await worker.send(WorkComplete(assign.handle, assign.data.upper()))
                assert await client.next_event() == WorkComplete(created.handle, b"SYNC %d" % i)
            assert runner.held_count == before
            await client.close()
            await worker.close()

    run(loop_name, main)


@EACH_LOOP_AND_WAITS
def test_replies_held_when_the_server_closes_are_written_first(
    loop_name: str, own_waits: bool
) -> None:
    async def main() -> None:
        server = JobServer(own_waits=own_waits)
        await server.__aenter__()
        try:
            runner = runner_of(server)
            core = server.core
            assert core is not None
            client, worker, handles = await three_jobs_and_a_worker(server)
            await wait_until(lambda: not runner.held_back, "earlier held replies are out")
            # The worker's result handed to the core and flushed within this one
            # callback, then the server closed before the loop runs again: the
            # held reply must not be lost.
            worker_peer = next(p for p in core.peers() if p.working)
            body = handles[0] + b"\0JOB 0"
            result = b"\0REQ" + struct.pack(">II", 13, len(body)) + body
            core.receive(worker_peer.conn_id, result, time.time())
            runner.flush()
            assert runner.held_back
        finally:
            await server.aclose()
        assert not runner.may_hold
        assert runner.wake_fd == -1  # closed once the store's writer has stopped
        assert await client.next_event() == WorkComplete(handles[0], b"JOB 0")
        assert await asyncio.wait_for(client.reader.read(), 10) == b""
        client.writer.close()
        worker.writer.close()

    run(loop_name, main)
