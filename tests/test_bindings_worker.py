"""Worker features on every binding against a real job server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.bindings import Harness, job_server_process, wait_until
from helpers.fake_server import fake_server
from helpers.procs import ServerProcess

from gearproto.bindings._outcomes import Accepted, Completed, ExceptionRaised, Failed
from gearproto.bindings._routing import Backoff
from gearproto.events import CanDo, GrabJob, GrabJobAll, GrabJobUniq, WorkComplete

pytestmark = pytest.mark.timeout(60)
FAST = Backoff(initial=0.02, maximum=0.2)


def addr(server: ServerProcess) -> str:
    return f"{server.host}:{server.port}"


def test_concurrency_limit_is_never_exceeded(harness: Harness, job_server: ServerProcess) -> None:
    release = threading.Event()
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def slow(job: Any) -> bytes:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        assert release.wait(20)
        with lock:
            active[0] -= 1
        return bytes(job.data)

    worker = harness.worker(addr(job_server), {"slow": slow}, concurrency=2).start()
    client = harness.client(addr(job_server))
    jobs = [client.submit("slow", b"%d" % i) for i in range(6)]
    admin = harness.admin(addr(job_server))
    wait_until(lambda: active[0] == 2)
    # The server agrees: two running, the rest queued, and no grab is outstanding.
    row = next(r for r in admin.status().rows if r.function == b"slow")
    assert (row.total, row.running) == (6, 2)
    stats = worker.statistics()
    assert stats["running"] + stats["grabs"] <= 2
    release.set()
    assert sorted(job.result() for job in jobs) == [b"%d" % i for i in range(6)]
    assert peak[0] == 2


def test_sleeping_worker_is_woken_and_noop_at_capacity_is_not_lost(
    harness: Harness, job_server: ServerProcess
) -> None:
    release = threading.Event()

    def gated(job: Any) -> bytes:
        if job.data == b"first":
            assert release.wait(20)
        return bytes(job.data)

    harness.worker(addr(job_server), {"gated": gated}, concurrency=1).start()
    client = harness.client(addr(job_server))
    admin = harness.admin(addr(job_server))
    # The worker is asleep (PRE_SLEEP) with no job: a submission must wake it.
    wait_until(lambda: any(r.function == b"gated" for r in admin.status().rows))
    first = client.submit("gated", b"first")
    wait_until(lambda: client.get_status(first).running)
    # Jobs queued while the only slot is busy are picked up when it frees.
    second = client.submit("gated", b"second")
    third = client.submit("gated", b"third")
    release.set()
    assert [first.result(), second.result(), third.result()] == [b"first", b"second", b"third"]


def test_older_servers_get_simpler_grabs(harness: Harness) -> None:
    seen: list[tuple[bytes, bytes | None]] = []

    def record(job: Any) -> bytes:
        seen.append((job.unique, job.reducer))
        return b"done"

    with fake_server("grab-job-only") as server:
        worker = harness.worker(server.address, {"fn": record}).start()
        wait_until(lambda: WorkComplete(b"H:fake:1", b"done") in server.requests)
        worker.stop()
        grabs = [type(e) for e in server.requests if type(e) in (GrabJobAll, GrabJobUniq, GrabJob)]
    # GRAB_JOB_ALL and GRAB_JOB_UNIQ are refused once each, before anything else is
    # sent (an ERROR behind CAN_DO would be taken as CAN_DO's); GRAB_JOB from then on.
    assert server.requests[:4] == [GrabJobAll(), GrabJobUniq(), GrabJob(), CanDo(b"fn")]
    assert set(grabs[3:]) == {GrabJob}
    assert seen == [(b"", None)]


def test_local_timeout_reports_an_exception(harness: Harness, job_server: ServerProcess) -> None:
    unblock = threading.Event()

    def stuck(job: Any) -> bytes:
        unblock.wait(10)
        return b"too late"

    worker = harness.worker(addr(job_server), concurrency=1)
    worker.register("stuck", stuck, timeout=0.3)
    worker.register("quick", lambda job: b"ok")
    worker.start()
    client = harness.client(addr(job_server))
    outcome = client.submit("stuck", b"").wait()
    assert isinstance(outcome, ExceptionRaised)
    assert b"TimeoutError" in outcome.data
    assert b"0.3 s" in outcome.data
    # A thread cannot be killed: the slot frees when the function returns.
    unblock.set()
    assert client.call("quick") == b"ok"


def test_async_job_functions_are_cancelled_at_their_timeout(
    harness: Harness, job_server: ServerProcess
) -> None:
    if harness.name == "sync":
        pytest.skip("the blocking worker runs plain functions only")
    cancelled = threading.Event()

    async def body(job: Any) -> bytes:
        try:
            await harness.sleep(30)
        except BaseException:
            cancelled.set()
            raise
        return b"never"

    async def echo(job: Any) -> bytes:
        await harness.sleep(0)
        job.send_data(b"async data")
        return bytes(job.data)

    worker = harness.worker(addr(job_server), concurrency=1)
    worker.register("sleepy", harness.async_fn(body), timeout=0.3)
    worker.register("aecho", echo)
    worker.start()
    client = harness.client(addr(job_server))
    outcome = client.submit("sleepy").wait()
    assert isinstance(outcome, ExceptionRaised)
    assert b"TimeoutError" in outcome.data
    assert cancelled.wait(5)
    # The slot is free again at once.
    assert client.submit("aecho", b"hi").wait() == Completed(b"hi", (b"async data",))


def test_can_do_timeout_is_sent_in_milliseconds(harness: Harness, job_server_factory: Any) -> None:
    # With -j 1 gearmand fails the job (instead of requeueing it) when the timeout hits.
    server = job_server_factory("-j", "1")
    unblock = threading.Event()

    def stuck(job: Any) -> bytes:
        unblock.wait(10)
        return b"late"

    worker = harness.worker(addr(server))
    worker.register("limited", stuck, server_timeout=1.0)
    worker.start()
    client = harness.client(addr(server))
    started = time.monotonic()
    assert client.submit("limited").wait() == Failed()
    elapsed = time.monotonic() - started
    unblock.set()
    assert 0.9 < elapsed < 5


def test_drain_finishes_running_jobs_and_grabs_no_more(
    harness: Harness, job_server: ServerProcess
) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(job: Any) -> bytes:
        started.set()
        assert release.wait(20)
        return b"finished"

    worker = harness.worker(addr(job_server), {"drain": slow}, concurrency=1).start()
    client = harness.client(addr(job_server))
    running = client.submit("drain", b"1")
    assert started.wait(10)
    worker.drain()
    waiting = client.submit("drain", b"2", background=True)
    assert isinstance(waiting.wait(), Accepted)
    release.set()
    assert running.result() == b"finished"
    worker.join()
    status = client.get_status(waiting)
    assert (status.known, status.running) == (True, False)


def test_reconnect_re_registers(harness: Harness, job_server_kind: str, tmp_path: Path) -> None:
    first_dir = tmp_path / "a"
    first_dir.mkdir()
    with job_server_process(job_server_kind, first_dir) as first:
        port = first.port
        worker = harness.worker(
            addr(first), {"again": lambda job: b"pong"}, backoff=FAST, client_id="w-reconnect"
        ).start()
        client = harness.client(addr(first))
        assert client.call("again") == b"pong"
    # Same port, new server: the worker must reconnect and register its functions again.
    second_dir = tmp_path / "b"
    second_dir.mkdir()
    with job_server_process(job_server_kind, second_dir, port=port):
        try:
            client2 = harness.client(f"127.0.0.1:{port}")
            assert client2.submit("again", timeout=10).result() == b"pong"
            admin = harness.admin(f"127.0.0.1:{port}")
            rows = [r for r in admin.workers().rows if r.client_id == b"w-reconnect"]
            assert rows
            assert rows[0].functions == (b"again",)
        finally:
            worker.stop()


SIGTERM_SCRIPT = """
import sys, threading
binding, server, marker = sys.argv[1], sys.argv[2], sys.argv[3]
def slow(job):
    open(marker, "w").write("started")
    import time
    time.sleep(0.5)
    return b"graceful"
if binding == "sync":
    from gearproto.bindings.sync import Worker
    w = Worker(server)
    w.register("term", slow)
    w.work(handle_signals=True)
elif binding == "asyncio":
    import asyncio
    from gearproto.bindings.asyncio import Worker
    w = Worker(server)
    w.register("term", slow)
    asyncio.run(w.work(handle_signals=True))
else:
    import trio
    from gearproto.bindings.trio import Worker
    w = Worker(server)
    w.register("term", slow)
    trio.run(lambda: w.work(handle_signals=True))
print("drained")
"""


def test_sigterm_drains_gracefully(
    harness: Harness, job_server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, harness.name, addr(job_server), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = harness.client(addr(job_server))
        job = client.submit("term", b"")
        wait_until(marker.exists)
        os.kill(proc.pid, signal.SIGTERM)
        assert job.result() == b"graceful"
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "drained" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
