"""Several servers: consistent hashing keeps coalescing, and failover loses no job."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers.bindings import Harness, wait_until
from helpers.procs import ServerProcess

from gearproto.bindings._outcomes import Accepted, Completed
from gearproto.bindings._routing import Backoff

pytestmark = pytest.mark.timeout(90)
FAST = Backoff(initial=0.02, maximum=0.5)


def addr(server: ServerProcess) -> str:
    return f"{server.host}:{server.port}"


def test_unique_ids_hash_to_one_server_so_coalescing_works(
    harness: Harness, job_server_factory: Any
) -> None:
    servers = [addr(job_server_factory()) for _ in range(2)]
    release = threading.Event()
    runs: list[bytes] = []

    def slow(job: Any) -> bytes:
        runs.append(job.unique)
        release.wait(20)
        return b"once"

    harness.worker(servers, {"co": slow}, concurrency=4).start()
    # Two clients that list the servers in different orders still agree on the owner.
    a = harness.client(servers)
    b = harness.client(list(reversed(servers)))
    first = a.submit("co", b"", unique="shared-key")
    first.wait_created()
    second = b.submit("co", b"", unique="shared-key")
    assert second.wait_created() == first.handle
    assert second.server == first.server
    release.set()
    assert first.result() == second.result() == b"once"
    assert runs == [b"shared-key"]
    # Different keys spread over both servers.
    spread = {a.submit("co", b"", unique=f"key-{i}", background=True) for i in range(40)}
    servers_used = set()
    for job in spread:
        assert isinstance(job.wait(), Accepted)
        servers_used.add(str(job.server))
    assert servers_used == set(servers)


def test_failover_when_a_server_dies_mid_run(harness: Harness, job_server_factory: Any) -> None:
    first, second = job_server_factory(), job_server_factory()
    servers = [addr(first), addr(second)]
    gate = threading.Semaphore(0)

    def work(job: Any) -> bytes:
        gate.acquire(timeout=20)
        return b"done:" + bytes(job.data)

    harness.worker(servers, {"fo": work}, concurrency=8, backoff=FAST).start()
    client = harness.client(servers, backoff=FAST, max_attempts=3)
    jobs = [client.submit("fo", b"%d" % i, unique=f"fo-{i}") for i in range(60)]
    for job in jobs:
        job.wait_created()
    on_first = [j for j in jobs if j.server is not None and str(j.server) == servers[0]]
    assert on_first, "the hash ring put no job on the first server"
    for _ in range(10):
        gate.release()  # a few jobs finish before the crash
    wait_until(lambda: sum(j.done for j in jobs) >= 5)
    first.kill()
    for _ in range(200):
        gate.release()
    outcomes = [job.wait() for job in jobs]
    assert outcomes == [Completed(b"done:%d" % i) for i in range(60)]
    # The jobs that were on the dead server were resubmitted to the survivor.
    assert any(job.attempts == 2 for job in on_first if job.attempts > 1)
    assert all(str(job.server) == servers[1] for job in on_first if job.attempts > 1)
    # New work, foreground and background, goes to the survivor.
    assert client.call("fo", b"after") == b"done:after"
    late = client.submit("fo", b"bg", unique="fo-late", background=True)
    assert isinstance(late.wait(), Accepted)
    assert str(late.server) == servers[1]
