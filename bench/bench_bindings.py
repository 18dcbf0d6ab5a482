"""Client throughput: N pipelined echo jobs through a real gearmand, per binding and gear.

Every client submits N foreground jobs on one connection without waiting in between,
then waits for all results; jobs/s = N / wall time.  The same worker (our asyncio
worker, async echo, on uvloop when it is installed, in its own process) serves every
run, and the clients run in turn in the same process and the same gearmand, so the
ratios are comparable.  The ``gear`` library (``pip install gear``, or the ``bench``
extra) is the baseline: its ``submitJob`` waits for JOB_CREATED, which is the best it
can do.

Wall-clock rates depend on everything else the machine runs; the client's own CPU time
per job (this process, every thread) is printed beside them because it is much less
sensitive to that.

    python bench/bench_bindings.py [--jobs 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.procs import gearmand

WORKER = """
import asyncio, sys
from gearproto.bindings.asyncio import Worker

async def echo(job):
    return job.data

async def main():
    worker = Worker(sys.argv[1], concurrency=256)
    worker.register("bench-echo", echo)
    await worker.work(handle_signals=True)

try:
    import uvloop
except ImportError:
    asyncio.run(main())
else:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
"""


def run_sync(address: str, jobs: int) -> float:
    from gearproto.bindings.sync import Client

    with Client(address) as client:
        client.echo(b"warm-up")
        start = time.perf_counter()
        submitted = [client.submit("bench-echo", b"payload-%d" % i) for i in range(jobs)]
        for job in submitted:
            job.result()
        return time.perf_counter() - start


def run_asyncio(address: str, jobs: int) -> float:
    from gearproto.bindings.asyncio import Client

    async def main() -> float:
        async with Client(address) as client:
            await client.echo(b"warm-up")
            start = time.perf_counter()
            submitted = [client.submit("bench-echo", b"payload-%d" % i) for i in range(jobs)]
            for job in submitted:
                await job.result()
            return time.perf_counter() - start

    return asyncio.run(main())


def run_trio(address: str, jobs: int) -> float:
    import trio

    from gearproto.bindings.trio import Client

    async def main() -> float:
        async with Client(address) as client:
            await client.echo(b"warm-up")
            start = time.perf_counter()
            submitted = [client.submit("bench-echo", b"payload-%d" % i) for i in range(jobs)]
            for job in submitted:
                await job.result()
            return time.perf_counter() - start

    elapsed: float = trio.run(main)
    return elapsed


def run_gear(address: str, jobs: int) -> float:
    import gear

    host, port = address.rsplit(":", 1)
    done = threading.Event()
    count = [0]

    class CountingClient(gear.Client):  # type: ignore[misc]
        def handleWorkComplete(self, packet: object) -> object:
            job = super().handleWorkComplete(packet)
            count[0] += 1
            if count[0] == jobs:
                done.set()
            return job

    client = CountingClient()
    client.addServer(host, int(port))
    client.waitForServer()
    try:
        start = time.perf_counter()
        for i in range(jobs):
            client.submitJob(gear.Job(b"bench-echo", b"payload-%d" % i))
        if not done.wait(300):
            raise RuntimeError(f"gear finished only {count[0]} of {jobs} jobs")
        return time.perf_counter() - start
    finally:
        client.shutdown()


RUNNERS: dict[str, Callable[[str, int], float]] = {
    "gear": run_gear,
    "sync": run_sync,
    "asyncio": run_asyncio,
    "trio": run_trio,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import gear  # noqa: F401
    except ImportError:
        print("the baseline needs the gear library: pip install gear", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, gearmand(Path(tmp)) as server:
        address = f"{server.host}:{server.port}"
        worker = subprocess.Popen([sys.executable, "-c", WORKER, address])
        try:
            run_sync(address, 1000)  # the worker is up and warm before the first round
            times: dict[str, list[float]] = {name: [] for name in RUNNERS}
            cpu: dict[str, list[float]] = {name: [] for name in RUNNERS}
            for round_ in range(args.rounds):
                for name, runner in RUNNERS.items():
                    cpu_start = time.process_time()
                    elapsed = runner(address, args.jobs)
                    cpu[name].append(time.process_time() - cpu_start)
                    times[name].append(elapsed)
                    print(f"round {round_ + 1} {name:8} {args.jobs / elapsed:9.0f} jobs/s")
        finally:
            worker.terminate()
            worker.wait(10)
    rate = {name: args.jobs / statistics.median(ts) for name, ts in times.items()}
    per_job = {name: statistics.median(cs) / args.jobs * 1e6 for name, cs in cpu.items()}
    print(f"\n{args.jobs} pipelined echo jobs through gearmand, median of {args.rounds} rounds:")
    print(f"  {'client':8} {'jobs/s':>9}  {'vs gear':>8}   {'CPU/job':>9}  {'vs gear':>8}")
    for name, value in rate.items():
        print(
            f"  {name:8} {value:9.0f}  {value / rate['gear']:7.2f}x"
            f"   {per_job[name]:7.1f}us  {per_job['gear'] / per_job[name]:7.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
