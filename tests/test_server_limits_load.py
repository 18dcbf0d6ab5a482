"""The limits under load: 1,000 dribblers, 2,000 idle connections, 4 GiB headers.

The scenarios are ``bench/bench_limits.py``'s (which prints the same figures as a
benchmark); here they run against the real server process and assert behaviour:
every normal job completes, every dribbler is answered and closed, every idle
connection is held, and memory follows what peers send, not what they declare.
Figures are printed (``pytest -s`` shows them); no timing is asserted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_limits.py"
    spec = importlib.util.spec_from_file_location("bench_limits", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_limits"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module", autouse=True)
def many_files() -> None:
    if bench.raise_fd_limit(2400) < 2400:
        pytest.skip("this process may not open 2,400 files")


def test_normal_clients_are_served_while_1000_connections_dribble() -> None:
    with bench.server("--partial-packet-timeout", "3") as srv:
        result = bench.run_dribblers(srv.address, 1000, 3.0, jobs=300, interval=0.2)
    print("\n" + "\n".join(result.lines()))
    assert len(result.quiet) == len(result.busy) == 300  # every normal job completed
    assert result.closed == 1000
    assert result.timed_out == 1000  # each answered ERROR TIMEOUT, then closed


def test_2000_idle_connections_are_held_and_cheap() -> None:
    with bench.server() as srv:
        result = bench.run_idle(srv, 2000)
        worker = bench.Worker(srv.address)  # the server still serves jobs afterwards
        worker.start()
        try:
            assert len(bench.job_latencies(srv.address, 5)) == 5
        finally:
            worker.stop()
    print("\n" + "\n".join(result.lines()))
    assert result.answered == 2000
    assert result.mib_per_1000 < 64  # a loose bound: a few MiB is what it costs


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_declared_sizes_allocate_nothing(loop: str) -> None:
    with bench.server(loop=loop) as srv:
        result = bench.run_declared(srv, 64 * 2**20 - 1)
    print("\n" + "\n".join(result.lines()))
    assert result.huge_refused == result.huge_headers
    assert result.rss_after_huge_kib - result.rss_start_kib < 8 * 1024
    # 16 connections declared 1 GiB between them and sent 1 MiB: memory follows the 1 MiB.
    assert result.rss_after_near_kib - result.rss_start_kib < 64 * 1024
