"""Cancellation in each binding's own terms leaves the connection usable and clean."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import trio
from helpers.fake_server import fake_server
from helpers.procs import ServerProcess

import gearproto.bindings.asyncio as gp_asyncio
import gearproto.bindings.sync as gp_sync
import gearproto.bindings.trio as gp_trio
from gearproto.bindings._outcomes import Abandoned, Completed

pytestmark = pytest.mark.timeout(60)


def clean(stats: dict[str, Any]) -> bool:
    return bool(
        stats["jobs"] == 0
        and stats["replies_owed"] == 0
        and stats["handles_followed"] == 0
        and stats["core_handles"] == 0
        and stats["queued"] == 0
    )


def addr(server: ServerProcess) -> str:
    return f"{server.host}:{server.port}"


def test_asyncio_task_cancel(job_server: ServerProcess) -> None:
    async def main() -> None:
        async with gp_asyncio.Client(addr(job_server)) as client:
            # Cancelled while waiting for the result of a job nobody runs.
            task = asyncio.create_task(client.call("nobody-runs-this", b"x"))
            while client.statistics()["handles_followed"] == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert clean(client.statistics())
            # A timeout around a wait cancels the wait only: the job goes on.
            job = client.submit("later", b"y")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await job.wait()
            assert job.outcome is None
            job.abandon()
            assert job.outcome == Abandoned()
            assert clean(client.statistics())
            # The connection is still good.
            assert await client.echo(b"alive") == b"alive"
            worker = gp_asyncio.Worker(addr(job_server))
            worker.register("later", lambda job: b"ran")
            work = asyncio.create_task(worker.work())
            assert await client.call("later", b"z") == b"ran"
            worker.drain()
            await work
            assert clean(client.statistics())

    asyncio.run(main())


def test_asyncio_cancel_before_job_created() -> None:
    async def main() -> None:
        with fake_server("late:0.3") as server:
            async with gp_asyncio.Client(server.address, exceptions=False) as client:
                task = asyncio.create_task(client.call("fn", b"x"))
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # The reply is still owed and will be read and dropped when it comes.
                assert client.statistics()["replies_owed"] == 1
                assert await client.echo(b"after") == b"after"
                assert clean(client.statistics())

    asyncio.run(main())


def test_trio_cancel_scope(job_server: ServerProcess) -> None:
    async def main() -> None:
        async with gp_trio.Client(addr(job_server)) as client:
            with trio.move_on_after(0.1) as scope:
                await client.call("nobody-runs-this", b"x")
            assert scope.cancelled_caught
            assert clean(client.statistics())
            job = client.submit("later", b"y")
            with trio.move_on_after(0.05):
                await job.wait()
            assert job.outcome is None
            job.abandon()
            assert clean(client.statistics())
            assert await client.echo(b"alive") == b"alive"
            worker = gp_trio.Worker(addr(job_server))
            worker.register("later", lambda job: b"ran")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.work)
                assert await client.call("later", b"z") == b"ran"
                worker.drain()
            assert clean(client.statistics())

    trio.run(main)


def test_trio_cancel_before_job_created() -> None:
    async def main() -> None:
        with fake_server("late:0.3") as server:
            async with gp_trio.Client(server.address, exceptions=False) as client:
                with trio.move_on_after(0.05):
                    await client.call("fn", b"x")
                assert client.statistics()["replies_owed"] == 1
                assert await client.echo(b"after") == b"after"
                assert clean(client.statistics())

    trio.run(main)


def test_sync_wait_timeout_and_abandon(job_server: ServerProcess) -> None:
    with gp_sync.Client(addr(job_server)) as client:
        job = client.submit("later", b"y")
        with pytest.raises(TimeoutError):
            job.wait(timeout=0.05)
        assert job.outcome is None
        assert job.handle is not None
        job.abandon()
        assert clean(client.statistics())
        assert client.echo(b"alive") == b"alive"
        ran = threading.Event()
        worker = gp_sync.Worker(addr(job_server))

        def later(job: Any) -> bytes:
            ran.set()
            return b"ran"

        worker.register("later", later)
        thread = threading.Thread(target=worker.work)
        thread.start()
        try:
            # The abandoned job still runs on the server; a new one completes normally.
            assert client.submit("later", b"z").wait(10) == Completed(b"ran")
        finally:
            worker.drain()
            thread.join(10)
        assert ran.is_set()
        assert clean(client.statistics())
