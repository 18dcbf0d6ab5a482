"""``own_waits``: the asyncio runner waits for its polled sockets itself while busy
(the ``gearproto server`` daemon turns it on), and goes back to the loop whenever
the loop has work of its own.

The rules of :meth:`AsyncioRunner.wait_budget` are checked one by one on a live
runner; then real traffic runs with the waits on: pipelined and synchronous jobs,
a new connection served while another keeps the server busy, and durable jobs whose
replies wait for the store's writer thread (which must cut a wait short).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from helpers.asyncio_peers import LOOPS, Peer, run, runner_of, wait_until

from gearproto.events import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    Noop,
    PreSleep,
    SubmitJob,
    WorkComplete,
)
from gearproto.server import JobServer
from gearproto.server.asyncio_runner import _OWN_ROUNDS, _OWN_WAIT_MS
from gearproto.server.sqlite_store import SQLiteStore

pytestmark = pytest.mark.timeout(60)


async def echo(peer: Peer, data: bytes) -> None:
    await peer.send(EchoReq(data))
    assert await peer.next_event() == EchoRes(data)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_wait_budget_goes_back_to_the_loop_whenever_it_has_work(loop_name: str) -> None:
    async def main() -> None:
        async with JobServer(own_waits=True) as server:
            runner = runner_of(server)
            assert runner.own_waits
            peer = await Peer.open(server.address)
            await echo(peer, b"first")
            await wait_until(lambda: len(runner.polled) == 1, "the peer is polled")
            now = time.time()
            runner._armed = None
            assert runner.wait_budget(0, now) == _OWN_WAIT_MS
            assert runner.wait_budget(_OWN_ROUNDS - 1, now) == _OWN_WAIT_MS
            assert runner.wait_budget(_OWN_ROUNDS, now) == 0
            # Work the loop must do: each one ends the runner's own waits.
            runner.loop_wanted = True
            assert runner.wait_budget(0, now) == 0
            assert not runner.loop_wanted  # taken as handled: the loop runs next
            runner.backlogged[12345] = None
            assert runner.wait_budget(0, now) == 0
            del runner.backlogged[12345]
            runner.flush_scheduled = True
            assert runner.wait_budget(0, now) == 0
            runner.flush_scheduled = False
            runner.store_scheduled = True
            assert runner.wait_budget(0, now) == 0
            runner.store_scheduled = False
            # A timer due: no wait past it.
            runner._armed = now + 0.0004
            assert runner.wait_budget(0, now) == 0
            runner._armed = now - 1.0
            assert runner.wait_budget(0, now) == 0
            runner._armed = now + 60.0
            assert runner.wait_budget(0, now) == _OWN_WAIT_MS
            runner._armed = None
            # A connection the runner does not read itself (not polled yet).
            quiet = await Peer.open(server.address)
            await wait_until(lambda: len(runner.sinks) == 2, "the second connection is in")
            assert runner.wait_budget(0, now) == 0
            await echo(quiet, b"now polled too")
            await wait_until(lambda: len(runner.polled) == 2, "the second peer is polled")
            assert runner.wait_budget(0, now) == _OWN_WAIT_MS
            await peer.close()
            await quiet.close()
        async with JobServer() as default:
            assert not runner_of(default).own_waits  # off unless asked for
        for garbage in ("yes", 1, None):
            with pytest.raises(TypeError, match="own_waits must be True or False"):
                JobServer(own_waits=garbage)  # type: ignore[arg-type]

    run(loop_name, main)


async def upper_worker(worker: Peer, jobs: int) -> None:
    await worker.send(CanDo(b"upper"))
    done = 0
    while done < jobs:
        await worker.send(GrabJobUniq())
        event = await worker.next_event()
        if isinstance(event, NoJob):
            await worker.send(PreSleep())
            assert isinstance(await worker.next_event(), Noop)
            continue
        assert isinstance(event, JobAssignUniq)
        await worker.send(WorkComplete(event.handle, event.data.upper()))
        done += 1


@pytest.mark.parametrize("loop_name", LOOPS)
def test_jobs_and_a_new_connection_while_the_runner_waits_itself(loop_name: str) -> None:
    async def main() -> None:
        async with JobServer(own_waits=True) as server:
            runner = runner_of(server)
            count = 400
            worker = await Peer.open(server.address)
            client = await Peer.open(server.address)
            work = asyncio.create_task(upper_worker(worker, count + 20))
            await client.send(*(SubmitJob(b"upper", b"", b"job %d" % i) for i in range(count)))
            # Meanwhile a synchronous client, connecting while the server is busy.
            late = await Peer.open(server.address)
            await echo(late, b"hello")
            for i in range(20):
                await late.send(SubmitJob(b"upper", b"", b"sync %d" % i))
                created = await late.next_event()
                assert isinstance(created, JobCreated)
                assert await late.next_event() == WorkComplete(created.handle, b"SYNC %d" % i)
            handles: list[bytes] = []
            results: dict[bytes, bytes] = {}
            while len(results) < count:
                event = await client.next_event()
                if isinstance(event, JobCreated):
                    handles.append(event.handle)
                else:
                    assert isinstance(event, WorkComplete)
                    results[event.handle] = event.data
            await work
            assert [results[h] for h in handles] == [b"JOB %d" % i for i in range(count)]
            assert len(runner.polled) == 3
            for peer in (client, worker, late):
                await peer.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_durable_jobs_are_answered_after_each_commit_with_own_waits(
    loop_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        store = SQLiteStore(tmp_path / "jobs.sqlite3")
        async with JobServer(store=store, own_waits=True) as server:
            runner = runner_of(server)
            client = await Peer.open(server.address)
            await echo(client, b"start")
            await wait_until(lambda: len(runner.polled) == 1, "the client is polled")
            count = 60
            # Each JOB_CREATED is sent only once its row is committed by the writer
            # thread, whose report must reach a runner that may be waiting itself.
            for i in range(count):
                await client.send(SubmitJob(b"upper", b"", b"bg %d" % i, background=True))
                assert isinstance(await client.next_event(), JobCreated)
            await client.send(*(SubmitJob(b"upper", b"", b"bg %d" % i, background=True)
                                for i in range(count, 2 * count)))  # fmt: skip
            for _ in range(count):
                assert isinstance(await client.next_event(), JobCreated)
            worker = await Peer.open(server.address)
            await upper_worker(worker, 2 * count)
            core = server.core
            assert core is not None
            await wait_until(lambda: core.job_count == 0, "every job is done")
            await client.close()
            await worker.close()

    run(loop_name, main)
