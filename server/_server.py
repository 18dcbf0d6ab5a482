"""``JobServer``: the embeddable job server (asyncio, trio, or a background thread)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .core import ServerConfig, ServerCore
from .storage import JobStore

__all__ = ["JobServer", "new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _running_library() -> str:
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        return "asyncio"
    if "trio" in sys.modules:
        import trio

        with contextlib.suppress(RuntimeError):
            trio.lowlevel.current_task()
            return "trio"
    raise RuntimeError("JobServer must be entered inside a running asyncio or trio program")


class JobServer:
    """A Gearman job server you can embed.

    * ``async with JobServer() as server:`` inside a running asyncio or trio program
      (the library is detected);
    * ``with JobServer() as server:`` from synchronous code (the server runs on its
      own event loop in a background thread);
    * ``server.address`` is the ``(host, port)`` it listens on (port 0 picks a free
      port); ``port=None`` listens on no socket at all, for in-memory use only
      (``await server.connect_memory()``).

    Args:
        host: address (or addresses) to listen on; loopback by default.
        port: TCP port; 0 for a free one; ``None`` for no listening socket.
        config: scheduling settings (:class:`ServerConfig`); keyword arguments
            override its fields (``JobServer(job_retries=3)``).
        store: a durable :class:`~gearproto.server.storage.JobStore` for background
            jobs, loaded at start; ``None`` keeps everything in memory.
        backlog: ``listen()`` backlog.
        keepalive: ``(idle, interval, count)`` to turn TCP keepalive on.
        ssl: a server-side ``ssl.SSLContext``: every connection is TLS (the verified
            client certificate, under mutual TLS, is in ``PeerInfo.peercert``).
        own_waits: on asyncio (Linux), let the server wait for its connections'
            next reads itself while it is busy, instead of through the event loop:
            less CPU per job, but other callbacks on the loop may wait up to about
            a millisecond per round (64 rounds at most).  For a loop that runs
            nothing but the server, as the ``gearproto server`` daemon's does.
    """

    def __init__(
        self,
        host: str | Sequence[str] = "127.0.0.1",
        port: int | None = 0,
        *,
        config: ServerConfig | None = None,
        store: JobStore | None = None,
        backlog: int = 32,
        keepalive: tuple[int, int, int] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        own_waits: bool = False,
        **settings: Any,
    ) -> None:
        if not isinstance(own_waits, bool):
            raise TypeError(f"own_waits must be True or False, not {own_waits!r}")
        config = config if config is not None else ServerConfig()
        if settings:
            config = replace(config, **settings)
        if store is not None and not config.durable:
            config = replace(config, durable=True)
        self.config = config
        self.host = host
        self.port = port
        self.store = store
        self.backlog = backlog
        self.keepalive = keepalive
        self.ssl = ssl
        self.own_waits = own_waits
        self.core: ServerCore | None = None
        self._runner: Any = None
        self._library: str | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every ``(host, port)`` listened on."""
        if self._runner is None:
            raise RuntimeError("the server is not running")
        result: list[tuple[str, int]] = self._runner.addresses
        return result

    @property
    def address(self) -> tuple[str, int]:
        """The first ``(host, port)`` listened on."""
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("the server listens on no socket (port=None)")
        return addresses[0]

    @property
    def server_string(self) -> str:
        """``host:port``, the form Gearman tools and ``GEARMAN_SERVER`` use."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -------------------------------------------------------------------- start

    def _new_core(self) -> ServerCore:
        core = ServerCore(self.config)
        if self.store is not None:
            core.load(self.store.load(), time.time())
        self.core = core
        return core

    async def __aenter__(self) -> JobServer:
        self._library = _running_library()
        core = self._new_core()
        if self._library == "asyncio":
            from .asyncio_runner import AsyncioRunner

            runner = AsyncioRunner(
                core, self.store, keepalive=self.keepalive, own_waits=self.own_waits
            )
            self._runner = runner
            if self.port is not None:
                await runner.listen(self.host, self.port, self.backlog, ssl=self.ssl)
        else:
            from .trio_runner import TrioRunner

            stack = contextlib.AsyncExitStack()
            trio_runner = TrioRunner(core, self.store, keepalive=self.keepalive)
            self._runner = trio_runner
            await stack.enter_async_context(trio_runner.running())
            self._exit_stack = stack
            if self.port is not None:
                try:
                    await trio_runner.listen(self.host, self.port, self.backlog, ssl=self.ssl)
                except BaseException:
                    await stack.aclose()
                    raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop at once: close the listeners and every connection."""
        runner = self._runner
        if runner is None:
            return
        await runner.close()
        if self._exit_stack is not None:
            stack, self._exit_stack = self._exit_stack, None
            await stack.aclose()
        if self.store is not None:
            self.store.close()

    async def serve_forever(self) -> None:
        """Run until stopped (``stop()``, ``shutdown`` admin command, graceful drain)."""
        await self._runner.wait_stopped()

    def stop(self, graceful: bool = False) -> None:
        """Ask the server to stop; ``graceful`` first finishes queued and running jobs.

        Safe to call from a signal handler or another thread.
        """
        runner = self._runner
        if runner is None:
            return
        loop = self._thread_loop
        call = runner.begin_graceful if graceful else runner.stop
        if loop is not None:
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    loop.call_soon_threadsafe(call)
        else:
            runner.call_soon(call) if hasattr(runner, "call_soon") else call()

    async def connect_memory(self) -> Any:
        """A connection with no socket: ``send_all``/``receive_some``/``aclose``."""
        if self._runner is None:
            raise RuntimeError("the server is not running")
        return self._runner.open_memory()

    # ------------------------------------------------------- background thread

    def __enter__(self) -> JobServer:
        """Start the server on its own event loop in a daemon thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await self.__aenter__()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self.serve_forever()
            finally:
                await self.aclose()

        def run() -> None:
            loop = new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="gearproto-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
