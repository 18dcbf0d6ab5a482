"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest
from helpers.bindings import BINDINGS, Harness
from helpers.procs import GEARMAND, ServerProcess, gearmand


@pytest.fixture
def gearmand_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh real gearmand (1.1.20 on Debian) on a free 127.0.0.1 port."""
    if GEARMAND is None:
        if os.environ.get("GEARPROTO_REQUIRE_GEARMAND"):
            pytest.fail("gearmand is required (GEARPROTO_REQUIRE_GEARMAND is set) but missing")
        pytest.skip("gearmand is not installed")
    with gearmand(tmp_path) as server:
        yield server


# ----------------------------------------------------------------- binding suites
# The servers the binding suites run against.  Each entry starts one server on a free
# loopback port; adding our own server is one more entry here.
# Each value is ``(directory, *extra_args) -> context manager yielding a ServerProcess``.
JOB_SERVERS: dict[str, Callable[..., AbstractContextManager[ServerProcess]]] = {
    "gearmand": gearmand,
}


@pytest.fixture(params=sorted(JOB_SERVERS))
def job_server_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers of the parametrised kind (``factory(*extra_args)``); all stopped after."""
    if request.param == "gearmand" and GEARMAND is None:
        if os.environ.get("GEARPROTO_REQUIRE_GEARMAND"):
            pytest.fail("gearmand is required (GEARPROTO_REQUIRE_GEARMAND is set) but missing")
        pytest.skip("gearmand is not installed")
    start = JOB_SERVERS[request.param]
    with ExitStack() as stack:
        count = 0

        def factory(*args: str) -> ServerProcess:
            nonlocal count
            directory = tmp_path / f"server{count}"
            count += 1
            directory.mkdir()
            return stack.enter_context(start(directory, *args))

        yield factory


@pytest.fixture
def job_server(job_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """One fresh job server (every kind in JOB_SERVERS)."""
    return job_server_factory()


@pytest.fixture(params=BINDINGS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The same scenario on the sync, asyncio and trio bindings."""
    h = Harness(request.param)
    yield h
    h.close()
