"""Fixtures shared by the whole suite."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest
from helpers.bindings import BINDINGS, SERVER_KINDS, Harness, job_server_process
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
# loopback port: ``(directory, *extra_args) -> context manager yielding a ServerProcess``.
JOB_SERVERS: dict[str, Callable[..., AbstractContextManager[ServerProcess]]] = {
    kind: functools.partial(job_server_process, kind) for kind in SERVER_KINDS
}

#: Binding tests that fail on a server because of a defect of that server, excluded
#: until it is fixed: (test function, server kind) -> the defect.  A binding name can
#: narrow an entry: (test function, server kind, binding).  Each entry names what the
#: server does wrong; remove it with the fix.
SERVER_DEFECTS: dict[tuple[str, ...], str] = {}


@pytest.fixture(params=sorted(JOB_SERVERS))
def job_server_kind(request: pytest.FixtureRequest) -> str:
    """The kind of job server a binding test runs against (each kind in JOB_SERVERS)."""
    kind: str = request.param
    if kind == "gearmand" and GEARMAND is None:
        if os.environ.get("GEARPROTO_REQUIRE_GEARMAND"):
            pytest.fail("gearmand is required (GEARPROTO_REQUIRE_GEARMAND is set) but missing")
        pytest.skip("gearmand is not installed")
    test = request.node.originalname
    binding = getattr(request.node, "callspec", None)
    binding = binding.params.get("harness") if binding is not None else None
    defect = SERVER_DEFECTS.get((test, kind)) or SERVER_DEFECTS.get((test, kind, str(binding)))
    if defect:
        pytest.skip(f"known {kind} server defect: {defect}")
    return kind


@pytest.fixture
def job_server_factory(
    job_server_kind: str, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers of the parametrised kind (``factory(*extra_args)``); all stopped after."""
    start = JOB_SERVERS[job_server_kind]
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
