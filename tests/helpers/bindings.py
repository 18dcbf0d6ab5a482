"""Run one test scenario against every binding (sync, asyncio, trio).

Scenarios are written once, in blocking style.  For the async bindings a *portal* runs
the real event loop in a background thread and every call made on a proxied object is
executed in that loop (coroutines are awaited there, async iterators collected), so the
same lines exercise the real asyncio and trio code paths.  Job functions given to
workers are plain functions (every binding runs them, the async ones in threads);
``Harness.async_fn`` wraps an async body for the async bindings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

import gearproto.bindings.asyncio as gp_asyncio
import gearproto.bindings.sync as gp_sync
import gearproto.bindings.trio as gp_trio
from helpers.procs import GEARMAND, ServerProcess, start_process, wait_listening

BINDINGS = ["sync", "asyncio", "trio"]
CALL_TIMEOUT = 30.0


class Portal:
    """Runs calls in a binding's event loop (or directly, for the blocking binding)."""

    name: str
    module: Any

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def host(self, cm_factory: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        """Enter an (async) context manager in a task that lives until ``close()``."""
        raise NotImplementedError

    def background(self, afn: Callable[[], Any]) -> Callable[[float], None]:
        """Start ``afn()`` in the loop; returns ``join(timeout)`` that re-raises errors."""
        raise NotImplementedError

    def stop(self) -> None:
        pass


class SyncPortal(Portal):
    name = "sync"
    module = gp_sync

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def host(self, cm_factory: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        cm = cm_factory()
        obj = cm.__enter__()
        return obj, lambda: cm.__exit__(None, None, None)

    def background(self, afn: Callable[[], Any]) -> Callable[[float], None]:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                afn()
            except BaseException as exc:  # reported by join()
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def join(timeout: float) -> None:
            thread.join(timeout)
            assert not thread.is_alive(), "background work did not finish in time"
            if errors:
                raise errors[0]

        return join


class AsyncioPortal(Portal):
    name = "asyncio"
    module = gp_asyncio

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(CALL_TIMEOUT)

    def host(self, cm_factory: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        cm = self.call(cm_factory)
        obj = self.call(cm.__aenter__)
        return obj, lambda: self.call(cm.__aexit__, None, None, None)

    def background(self, afn: Callable[[], Any]) -> Callable[[float], None]:
        async def start() -> asyncio.Future[Any]:
            future: asyncio.Future[Any] = asyncio.ensure_future(afn())
            return future

        task = self.call(start)

        def join(timeout: float) -> None:
            async def wait() -> Any:
                return await asyncio.wait_for(task, timeout)

            asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout + 5)

        return join

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class TrioPortal(Portal):
    name = "trio"
    module = gp_trio

    def __init__(self) -> None:
        ready = threading.Event()
        self._stop: trio.Event | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None

        async def main() -> None:
            self._stop = trio.Event()
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        self.thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return trio.from_thread.run(run, trio_token=self.token)

    def host(self, cm_factory: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        done = threading.Event()
        exit_event: list[trio.Event] = []
        errors: list[BaseException] = []

        async def keeper(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with cm_factory() as obj:
                    close = trio.Event()
                    exit_event.append(close)
                    task_status.started(obj)
                    await close.wait()
            except BaseException as exc:
                errors.append(exc)
                raise
            finally:
                done.set()

        assert self.nursery is not None
        obj = trio.from_thread.run(self.nursery.start, keeper, trio_token=self.token)

        def close() -> None:
            trio.from_thread.run_sync(exit_event[0].set, trio_token=self.token)
            done.wait(10)
            if errors:
                raise errors[0]

        return obj, close

    def background(self, afn: Callable[[], Any]) -> Callable[[float], None]:
        done = threading.Event()
        errors: list[BaseException] = []

        async def runner() -> None:
            try:
                await afn()
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        assert self.nursery is not None
        trio.from_thread.run_sync(self.nursery.start_soon, runner, trio_token=self.token)

        def join(timeout: float) -> None:
            assert done.wait(timeout), "background work did not finish in time"
            if errors:
                raise errors[0]

        return join

    def stop(self) -> None:
        if self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self.thread.join(10)


class Proxy:
    """Calls on the wrapped object run through the portal (results proxied too)."""

    __slots__ = ("_obj", "_portal")

    def __init__(self, obj: Any, portal: Portal) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_portal", portal)

    @property
    def target(self) -> Any:
        return self._obj

    def __getattr__(self, name: str) -> Any:
        portal = self._portal
        value = portal.call(getattr, self._obj, name)
        if callable(value) and not isinstance(value, type):

            def method(*args: Any, **kwargs: Any) -> Any:
                args = tuple(a.target if isinstance(a, Proxy) else a for a in args)
                return _wrap(portal.call(value, *args, **kwargs), portal)

            return method
        return _wrap(value, portal)

    def __iter__(self) -> Iterator[Any]:
        obj = self._obj
        if hasattr(obj, "__aiter__"):

            async def collect() -> list[Any]:
                return [item async for item in obj]

            return iter(self._portal.call(collect))
        return iter(self._portal.call(list, obj))

    def __repr__(self) -> str:
        return f"Proxy({self._obj!r})"


def _wrap(value: Any, portal: Portal) -> Any:
    module = type(value).__module__
    if module.startswith("gearproto.bindings") and hasattr(value, "_engine"):
        return Proxy(value, portal)
    return value


class WorkerHandle:
    """A worker running in the background of a harness."""

    def __init__(self, harness: Harness, worker: Any) -> None:
        self.harness = harness
        self.worker = worker
        self._join: Callable[[float], None] | None = None

    def register(self, name: str | bytes, fn: Callable[..., Any], **options: Any) -> None:
        self.harness.portal.call(self.worker.register, name, fn, **options)

    def start(self) -> WorkerHandle:
        self._join = self.harness.portal.background(self.worker.work)
        return self

    def drain(self) -> None:
        self.harness.portal.call(self.worker.drain)

    def stop(self, timeout: float = 15.0) -> None:
        if self._join is not None:
            self.drain()
            join, self._join = self._join, None
            join(timeout)

    def join(self, timeout: float = 15.0) -> None:
        if self._join is not None:
            join, self._join = self._join, None
            join(timeout)

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.harness.portal.call(self.worker.statistics)
        return stats


class Harness:
    """Clients, admins and workers of one binding, all closed at the end of a test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.portal: Portal = {"sync": SyncPortal, "asyncio": AsyncioPortal, "trio": TrioPortal}[
            name
        ]()
        self.module = self.portal.module
        self._closers: list[Callable[[], None]] = []
        self._workers: list[WorkerHandle] = []

    def client(self, servers: Any, **options: Any) -> Any:
        module = self.module
        obj, close = self.portal.host(lambda: module.Client(servers, **options))
        self._closers.append(close)
        return Proxy(obj, self.portal)

    def admin(self, server: Any, **options: Any) -> Any:
        module = self.module
        obj, close = self.portal.host(lambda: module.Admin(server, **options))
        self._closers.append(close)
        return Proxy(obj, self.portal)

    def worker(
        self, servers: Any, functions: dict[str, Any] | None = None, **options: Any
    ) -> WorkerHandle:
        worker = self.portal.call(self.module.Worker, servers, **options)
        handle = WorkerHandle(self, worker)
        for name, fn in (functions or {}).items():
            handle.register(name, fn)
        self._workers.append(handle)
        return handle

    def async_fn(self, body: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Any]:
        """``body`` as an async job function (only for the async bindings)."""

        async def fn(job: Any) -> Any:
            return await body(job)

        return fn

    def sleep(self, seconds: float) -> Awaitable[None]:
        """The binding's own async sleep (call it inside async job functions)."""
        sleep: Callable[[float], Awaitable[None]] = (
            trio.sleep if self.name == "trio" else asyncio.sleep
        )
        return sleep(seconds)

    def close(self) -> None:
        errors: list[BaseException] = []
        for worker in self._workers:
            try:
                worker.stop()
            except BaseException as exc:
                errors.append(exc)
        for close in reversed(self._closers):
            try:
                close()
            except BaseException as exc:
                errors.append(exc)
        self.portal.stop()
        if errors:
            raise errors[0]


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` (for state that has no event to wait on) within ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def gate() -> tuple[threading.Event, Callable[[float], bool]]:
    """An event job functions can block on (bounded), released by the test."""
    event = threading.Event()
    return event, event.wait


# ------------------------------------------------------------------ job servers

#: The job servers the binding suites run against: the real gearmand, and ours.
SERVER_KINDS = ["gearmand", "gearproto"]


def server_argv(kind: str, directory: Path, *args: str) -> list[str]:
    """The command line of a server of ``kind`` (``{host}``/``{port}`` to fill in)."""
    if kind == "gearmand":
        if GEARMAND is None:
            raise RuntimeError("gearmand is not installed (apt-get install gearman-job-server)")
        argv = [GEARMAND, "-L", "{host}", "-p", "{port}", "-l", "stderr", "--verbose", "ERROR"]
        argv += ["--job-handle-prefix", "H:test"]
    elif kind == "gearproto":
        # Our server as users run it: default options (memory queue, random handles).
        argv = [sys.executable, "-m", "gearproto.server", "-L", "{host}", "-p", "{port}"]
        argv += ["-q", "builtin", "-l", "stderr", "--verbose", "ERROR"]
    else:
        raise ValueError(f"unknown job server kind {kind!r}")
    return [*argv, "-P", str(directory / f"{kind}.pid"), *args]


@contextlib.contextmanager
def job_server_process(
    kind: str, directory: Path, *args: str, port: int | None = None
) -> Iterator[ServerProcess]:
    """Run a job server of ``kind`` on a free loopback port (or ``port``) for the block."""
    argv = server_argv(kind, directory, *args)
    log = directory / f"{kind}.log"
    if port is None:
        server = start_process(argv, log=log)
    else:
        argv = [a.format(host="127.0.0.1", port=port) for a in argv]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        server = ServerProcess("127.0.0.1", port, proc, log, argv)
        if not wait_listening("127.0.0.1", port, proc, 10):
            server.stop()
            raise RuntimeError(f"{kind} did not start on port {port}: {log.read_text()[-2000:]}")
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "BINDINGS",
    "SERVER_KINDS",
    "Harness",
    "Proxy",
    "WorkerHandle",
    "concurrent",
    "gate",
    "job_server_process",
    "server_argv",
    "wait_until",
]

_ = concurrent.futures  # re-exported for scenario helpers
