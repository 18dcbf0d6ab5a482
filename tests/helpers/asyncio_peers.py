"""Raw asyncio peers for tests of the asyncio runner, on asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gearproto import NEED_DATA, Connection, Side
from gearproto.server import JobServer
from gearproto.server.asyncio_runner import AsyncioRunner

LOOPS = ["asyncio", "uvloop"]

#: A test's ``loop_name`` and ``own_waits``: each loop, with the runner's own waits
#: (``JobServer(own_waits=...)``) off and on.
EACH_LOOP_AND_WAITS = pytest.mark.parametrize(
    ("loop_name", "own_waits"),
    [(loop, waits) for loop in LOOPS for waits in (False, True)],
    ids=[f"{loop}-{'own' if waits else 'loop'}-waits" for loop in LOOPS for waits in (False, True)],
)


def run(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop_factory: Any = asyncio.new_event_loop
    if loop_name == "uvloop":
        loop_factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


class Peer:
    """A raw client connection speaking through the sans-IO state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = Connection(Side.CLIENT)

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Peer:
        return cls(*await asyncio.open_connection(*address))

    async def send(self, *events: Any) -> None:
        self.writer.write(b"".join(self.conn.send(event) for event in events))
        await self.writer.drain()

    async def next_event(self) -> Any:
        for _ in range(100_000):
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(1 << 16), 10)
            if not data:
                raise ConnectionError("server closed the connection")
            self.conn.receive_data(data)
        raise AssertionError("no event after 100,000 reads")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def runner_of(server: JobServer) -> AsyncioRunner:
    runner = server._runner
    assert isinstance(runner, AsyncioRunner)
    return runner


async def wait_until(check: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")
