"""Client features on every binding (sync, asyncio, trio) against a real job server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers.bindings import Harness, wait_until
from helpers.procs import ServerProcess

from gearproto import LocalProtocolError, Priority
from gearproto.bindings._outcomes import (
    Accepted,
    Completed,
    ExceptionRaised,
    Failed,
    JobException,
    JobFailed,
    JobRejected,
    JobTimedOut,
    Rejected,
    TimedOut,
)
from gearproto.events import WorkData, WorkStatus, WorkWarning

pytestmark = pytest.mark.timeout(60)


def addr(server: ServerProcess) -> str:
    return f"{server.host}:{server.port}"


def reverse(job: Any) -> bytes:
    return bytes(job.data[::-1])


def streaming(job: Any) -> bytes:
    job.send_status(1, 3)
    job.send_data(b"part1-")
    job.send_warning(b"careful")
    job.send_status(2, 3)
    job.send_data(b"part2-")
    return b"done"


def raising(job: Any) -> bytes:
    raise ValueError("boom: " + job.data.decode())


def failing(job: Any) -> bytes:
    from gearproto.bindings.sync import JobFail

    raise JobFail()


def test_call_returns_the_result(harness: Harness, job_server: ServerProcess) -> None:
    harness.worker(addr(job_server), {"reverse": reverse}).start()
    client = harness.client(addr(job_server))
    assert client.call("reverse", b"hello") == b"olleh"
    assert client.call(b"reverse", "text is utf-8") == b"8-ftu si txet"
    assert client.echo(b"ping\0with nul") == b"ping\0with nul"


def test_updates_stream_in_order_and_end_in_one_outcome(
    harness: Harness, job_server: ServerProcess
) -> None:
    harness.worker(addr(job_server), {"stream": streaming}).start()
    client = harness.client(addr(job_server))
    job = client.submit("stream", b"x")
    updates = list(job)
    handle = job.handle
    assert updates == [
        WorkStatus(handle, 1, 3),
        WorkData(handle, b"part1-"),
        WorkWarning(handle, b"careful"),
        WorkStatus(handle, 2, 3),
        WorkData(handle, b"part2-"),
    ]
    outcome = job.outcome
    assert outcome == Completed(b"done", (b"part1-", b"part2-"))
    assert outcome.assembled == b"part1-part2-done"
    assert job.status == (2, 3)


def test_exceptions_are_requested_by_default(harness: Harness, job_server: ServerProcess) -> None:
    harness.worker(addr(job_server), {"raise": raising}).start()
    client = harness.client(addr(job_server))
    job = client.submit("raise", b"data")
    outcome = job.wait()
    assert isinstance(outcome, ExceptionRaised)
    assert outcome.data == b"ValueError: boom: data"
    with pytest.raises(JobException) as info:
        client.call("raise", b"again")
    assert info.value.data == b"ValueError: boom: again"
    # Without the option gearmand turns the exception into WORK_FAIL.
    plain = harness.client(addr(job_server), exceptions=False)
    assert plain.submit("raise", b"x").wait() == Failed()


def test_work_fail_is_a_typed_outcome(harness: Harness, job_server: ServerProcess) -> None:
    harness.worker(addr(job_server), {"fail": failing}).start()
    client = harness.client(addr(job_server))
    assert client.submit("fail").wait() == Failed()
    with pytest.raises(JobFailed):
        client.call("fail")


def test_background_jobs_and_status_by_handle_and_unique(
    harness: Harness, job_server: ServerProcess
) -> None:
    client = harness.client(addr(job_server))
    job = client.submit("later", b"payload", unique="u-status-1", background=True)
    outcome = job.wait()
    assert isinstance(outcome, Accepted)
    assert outcome.handle == job.handle
    status = client.get_status(job)
    assert (status.known, status.running) == (True, False)
    by_unique = client.get_status_unique("u-status-1")
    assert by_unique.unique == b"u-status-1"
    assert (by_unique.known, by_unique.running) == (True, False)
    unknown = client.get_status(b"H:nope:1")
    assert (unknown.known, unknown.running) == (False, False)
    assert client.get_status_unique(b"never-submitted").known is False
    # Once a worker ran it, the job is gone.
    harness.worker(addr(job_server), {"later": reverse}).start()
    wait_until(lambda: not client.get_status(job).known)


def test_priorities_decide_the_order(harness: Harness, job_server: ServerProcess) -> None:
    client = harness.client(addr(job_server))
    order = ["low1", "normal1", "high1", "low2", "high2", "normal2"]
    priority = {"l": Priority.LOW, "n": "normal", "h": "high"}
    for name in order:
        client.submit("prio", name, priority=priority[name[0]], background=True).wait()
    seen: list[bytes] = []

    def record(job: Any) -> bytes:
        seen.append(job.data)
        return b""

    harness.worker(addr(job_server), {"prio": record}, concurrency=1).start()
    wait_until(lambda: len(seen) == 6)
    assert seen == [b"high1", b"high2", b"normal1", b"normal2", b"low1", b"low2"]


def test_epoch_jobs_run_when_due(harness: Harness, job_server: ServerProcess) -> None:
    client = harness.client(addr(job_server))
    ran: list[bytes] = []
    done = threading.Event()

    def record(job: Any) -> bytes:
        ran.append(job.data)
        done.set()
        return b""

    future = client.submit("epoch", b"future", epoch=time.time() + 3600)
    past = client.submit("epoch", b"past", epoch=time.time() - 10)
    assert isinstance(future.wait(), Accepted)
    assert isinstance(past.wait(), Accepted)
    harness.worker(addr(job_server), {"epoch": record}).start()
    assert done.wait(10)
    assert ran == [b"past"]
    status = client.get_status(future)
    assert (status.known, status.running) == (True, False)
    with pytest.raises(ValueError, match="normal priority"):
        client.submit("epoch", b"x", epoch=time.time(), priority="high")


def test_coalescing_is_seen_from_two_clients(harness: Harness, job_server: ServerProcess) -> None:
    release = threading.Event()
    runs: list[bytes] = []

    def slow(job: Any) -> bytes:
        runs.append(job.unique)
        job.send_data(b"progress")
        assert release.wait(20)
        return b"shared result"

    harness.worker(addr(job_server), {"coalesce": slow}).start()
    first = harness.client(addr(job_server))
    second = harness.client(addr(job_server))
    a = first.submit("coalesce", b"one", unique="same-key")
    a_handle = a.wait_created()
    wait_until(lambda: runs == [b"same-key"])
    b = second.submit("coalesce", b"two", unique="same-key")
    assert b.wait_created() == a_handle
    release.set()
    assert a.result() == b"shared result"
    assert b.result() == b"shared result"
    assert runs == [b"same-key"]


def test_same_connection_coalescing_delivers_each_update_once(
    harness: Harness, job_server: ServerProcess
) -> None:
    release = threading.Event()

    def slow(job: Any) -> bytes:
        assert release.wait(20)
        job.send_data(b"chunk")
        return b"r"

    harness.worker(addr(job_server), {"dup": slow}).start()
    client = harness.client(addr(job_server))
    a = client.submit("dup", b"", unique="k")
    b = client.submit("dup", b"", unique="k")
    assert a.wait_created() == b.wait_created()
    release.set()
    assert a.wait() == Completed(b"r", (b"chunk",))
    assert b.wait() == Completed(b"r", (b"chunk",))
    assert client.statistics()["handles_followed"] == 0


def test_thousand_jobs_pipelined_on_one_connection(
    harness: Harness, job_server: ServerProcess
) -> None:
    harness.worker(addr(job_server), {"reverse": reverse}, concurrency=4).start()
    client = harness.client(addr(job_server))
    assert client.echo(b"connected") == b"connected"
    jobs = [client.submit("reverse", b"job-%d" % i) for i in range(1200)]
    results = [job.result() for job in jobs]
    assert results == [(b"job-%d" % i)[::-1] for i in range(1200)]
    stats = client.statistics()
    assert stats["jobs"] == 0
    assert stats["replies_owed"] == 0
    assert list(stats["servers"].values()) == ["up"]
    # JOB_CREATED deadlines are kept per connection, not with a timer per job (jobs
    # submitted while the connection opens have their own, dropped once due).
    assert stats["timers"] <= 1


def test_reduce_jobs_show_their_reducer_to_the_worker(
    harness: Harness, job_server: ServerProcess
) -> None:
    seen: list[tuple[bytes, bytes, bytes | None, bytes]] = []

    def mapper(job: Any) -> bytes:
        seen.append((job.function, job.unique, job.reducer, bytes(job.data)))
        return bytes(job.data[::-1])

    harness.worker(addr(job_server), {"map": mapper}).start()
    client = harness.client(addr(job_server))
    # GRAB_JOB_ALL: JOB_ASSIGN_ALL for reduce jobs, JOB_ASSIGN_UNIQ for the others.
    assert client.submit("map", b"abc", unique="r-1", reducer="reduce-fn").result() == b"cba"
    assert client.call("map", b"plain", unique="p-1") == b"nialp"
    background = client.submit("map", b"bg", unique="r-2", reducer="count", background=True)
    assert isinstance(background.wait(), Accepted)
    wait_until(lambda: len(seen) == 3)
    assert seen == [
        (b"map", b"r-1", b"reduce-fn", b"abc"),
        (b"map", b"p-1", None, b"plain"),
        (b"map", b"r-2", b"count", b"bg"),
    ]
    with pytest.raises(ValueError, match="normal priority"):
        client.submit("map", b"x", reducer="r", priority="high")


def test_completion_timeout_is_a_typed_outcome(harness: Harness, job_server: ServerProcess) -> None:
    client = harness.client(addr(job_server))
    started = time.monotonic()
    outcome = client.submit("no-worker", b"x", timeout=0.3).wait()
    assert outcome == TimedOut("complete", 0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(JobTimedOut):
        client.call("no-worker", b"y", timeout=0.2)
    stats = client.statistics()
    assert stats["jobs"] == 0
    assert stats["handles_followed"] == 0
    assert stats["core_handles"] == 0
    assert client.echo(b"still usable") == b"still usable"


def test_queue_full_is_rejected(harness: Harness, job_server: ServerProcess) -> None:
    admin = harness.admin(addr(job_server))
    admin.create_function("capped")
    admin.max_queue("capped", 1)
    client = harness.client(addr(job_server))
    assert isinstance(client.submit("capped", b"1", background=True).wait(), Accepted)
    outcome = client.submit("capped", b"2", background=True).wait()
    assert outcome == Rejected(b"QUEUE_ERROR", b"Job queue is full")
    with pytest.raises(JobRejected):
        client.call("capped", b"3")


def test_invalid_submissions_fail_before_any_io(
    harness: Harness, job_server: ServerProcess
) -> None:
    client = harness.client(addr(job_server))
    with pytest.raises(LocalProtocolError, match="unique"):
        client.submit("fn", b"", unique="u" * 65)
    with pytest.raises(LocalProtocolError, match="NUL"):
        client.submit("f\0n", b"")
    with pytest.raises(ValueError, match="priority"):
        client.submit("fn", b"", priority="urgent")
    assert client.statistics()["jobs"] == 0


def test_client_id_is_sent(harness: Harness, job_server: ServerProcess) -> None:
    client = harness.client(addr(job_server), client_id="reporting-client")
    assert client.echo(b"x") == b"x"
    admin = harness.admin(addr(job_server))
    ids = [row.client_id for row in admin.workers().rows]
    assert b"reporting-client" in ids


def test_asyncio_binding_runs_on_uvloop(job_server: ServerProcess) -> None:
    uvloop = pytest.importorskip("uvloop")
    import asyncio

    import gearproto.bindings.asyncio as gp_asyncio

    async def main() -> list[bytes]:
        worker = gp_asyncio.Worker(addr(job_server))
        worker.register("uv-reverse", reverse)
        work = asyncio.create_task(worker.work())
        async with gp_asyncio.Client(addr(job_server)) as client:
            jobs = [client.submit("uv-reverse", b"uv-%d" % i) for i in range(300)]
            results = [await job.result() for job in jobs]
        worker.drain()
        await work
        return results

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(main())
    assert results == [(b"uv-%d" % i)[::-1] for i in range(300)]


@pytest.mark.parametrize("binding", ["asyncio", "trio"])
def test_a_burst_of_submissions_is_written_while_it_is_made(
    binding: str, job_server: ServerProcess
) -> None:
    # Submitting without an await in between gives the loop no chance to write: the
    # bindings write such bursts as they grow.  Big payloads fill the socket, so some
    # writes are partial and the writer task has to finish them, in order.
    import asyncio

    import trio

    import gearproto.bindings.asyncio as gp_asyncio
    import gearproto.bindings.trio as gp_trio

    module: Any = gp_asyncio if binding == "asyncio" else gp_trio
    payloads = [b"%05d" % i + bytes(range(256)) * 128 for i in range(300)]

    async def echo(job: Any) -> bytes:
        return bytes(job.data)

    async def burst(client: Any) -> tuple[int, list[bytes]]:
        jobs = [client.submit("burst-echo", data) for data in payloads]
        waiting = sum(len(slot.outbox) for slot in client._engine.slots)
        return waiting, [await job.result() for job in jobs]

    async def main() -> tuple[int, list[bytes]]:
        worker = module.Worker(addr(job_server), concurrency=8)
        worker.register("burst-echo", echo)
        async with module.Client(addr(job_server)) as client:
            await client.echo(b"connected")
            if binding == "asyncio":
                work = asyncio.create_task(worker.work())
                result = await burst(client)
                worker.drain()
                await work
                return result
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.work)
                result = await burst(client)
                worker.drain()
            return result

    waiting, results = asyncio.run(main()) if binding == "asyncio" else trio.run(main)
    assert waiting < 256  # handed to the socket (or the writer) during the burst
    assert results == payloads
