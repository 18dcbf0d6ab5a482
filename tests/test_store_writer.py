"""The store writer thread under both runners: one long-lived thread applies every
batch, in order; every acknowledged job is in the file; a failing store answers
QUEUE_ERROR and the server carries on."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import Error, JobCreated, SubmitJob
from gearproto.server import JobServer, StoreBatch
from gearproto.server.sqlite_store import SQLiteStore

pytestmark = pytest.mark.timeout(120)

CLIENTS = 6
JOBS = 150  # per client, all pipelined


class Submitter:
    """One client's pipelined background submissions, and the replies to them."""

    def __init__(self, index: int) -> None:
        self.conn = Connection(Side.CLIENT)
        self.data = b"".join(
            self.conn.send(
                SubmitJob(b"w", b"c%d-%d" % (index, n), b"payload %d" % n, background=True)
            )
            for n in range(JOBS)
        )
        self.replies: list[Any] = []

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once every submission is answered."""
        assert data, "the server closed the connection"
        self.conn.receive_data(data)
        while (event := self.conn.next_event()) is not NEED_DATA:
            self.replies.append(event)
        return len(self.replies) >= JOBS


class CountingStore(SQLiteStore):
    """A SQLiteStore that records which thread applied each batch, and in what order."""

    def __init__(self, path: Path, fail_batches: frozenset[int] = frozenset()) -> None:
        super().__init__(path)
        self.threads: set[str] = set()
        self.order: list[int] = []
        self.fail_batches = fail_batches

    def apply(self, batch: StoreBatch) -> None:
        self.threads.add(threading.current_thread().name)
        self.order.append(batch.batch_id)
        if batch.batch_id in self.fail_batches:
            from gearproto.server.storage import StoreError

            raise StoreError("a refused batch (test)")
        super().apply(batch)


def check(store: CountingStore, results: list[list[Any]], path: Path) -> None:
    created = [e for events in results for e in events if isinstance(e, JobCreated)]
    errors = [e for events in results for e in events if isinstance(e, Error)]
    assert len(created) + len(errors) == CLIENTS * JOBS
    assert all(e.code == b"QUEUE_ERROR" for e in errors)
    assert store.threads == {"gearproto-store-writer"}  # one long-lived thread
    assert store.order == sorted(store.order)  # applied in the order taken
    assert len(store.order) < CLIENTS * JOBS  # submissions shared commits
    with SQLiteStore(path) as reopened:  # every acknowledged job is in the file
        assert len(reopened.load()) == len(created)


def test_asyncio_runner_commits_in_its_writer_thread(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"

    async def main() -> list[list[Any]]:
        store = CountingStore(path)
        async with JobServer(store=store) as server:

            async def client(index: int) -> list[Any]:
                reader, writer = await asyncio.open_connection(*server.address)
                submitter = Submitter(index)
                writer.write(submitter.data)
                while not submitter.feed(await reader.read(65536)):
                    pass
                writer.close()
                return submitter.replies

            results = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        check(store, results, path)
        return results

    asyncio.run(main())


def test_trio_runner_commits_in_its_writer_thread(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    results: list[list[Any]] = []

    async def main() -> None:
        store = CountingStore(path)
        async with JobServer(store=store) as server:

            async def client(index: int) -> None:
                stream = await trio.open_tcp_stream(*server.address)
                submitter = Submitter(index)
                await stream.send_all(submitter.data)
                while not submitter.feed(await stream.receive_some(65536)):
                    pass
                await stream.aclose()
                results.append(submitter.replies)

            async with trio.open_nursery() as nursery:
                for i in range(CLIENTS):
                    nursery.start_soon(client, i)
        check(store, results, path)

    trio.run(main)


def test_a_failed_batch_is_answered_and_the_writer_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"

    async def main() -> None:
        store = CountingStore(path, fail_batches=frozenset({2}))
        async with JobServer(store=store) as server:
            results = []
            for index in range(3):
                reader, writer = await asyncio.open_connection(*server.address)
                submitter = Submitter(index)
                writer.write(submitter.data)
                while not submitter.feed(await reader.read(65536)):
                    pass
                results.append(submitter.replies)
                writer.close()
        errors = [e for events in results for e in events if isinstance(e, Error)]
        assert errors  # batch 2's submissions were refused, not acknowledged
        assert all(e == Error(b"QUEUE_ERROR", b"QUEUE_ERROR") for e in errors)
        created = [e for events in results for e in events if isinstance(e, JobCreated)]
        assert created
        with SQLiteStore(path) as reopened:
            assert len(reopened.load()) == len(created)

    asyncio.run(main())
