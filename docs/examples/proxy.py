"""A transparent, logging Gearman proxy built on the protocol core alone.

Every accepted connection gets a connection to the upstream server and two
``gearproto.Connection`` objects: a server-side one that reads what the peer sends,
and a client-side one that speaks to the upstream server.  Events are relayed as
events, each logged on the way, so everything the core checks (framing, reply order,
job handles, limits) is checked for both directions:

    peer --bytes--> Connection(SERVER) --events--> Connection(CLIENT) --bytes--> upstream
    peer <--bytes-- Connection(SERVER) <--events-- Connection(CLIENT) <--bytes-- upstream

A request the core refuses (a malformed packet, WORK_* for a job the peer does not
hold, an admin line gearmand would refuse) is answered by the proxy itself with
gearmand's reply (``RemoteProtocolError.hint``, ``AdminBadCommand.reply``).  Replies
must keep their order, so when the upstream still owes replies the proxy sends an
ECHO_REQ marker upstream and answers the refused request when the marker comes back.

    python docs/examples/proxy.py --listen 127.0.0.1:4731 --upstream 127.0.0.1:4730

It prints ``listening on HOST:PORT`` once ready and logs to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gearproto import (
    NEED_DATA,
    Connection,
    LocalProtocolError,
    RemoteProtocolError,
    Side,
    admin,
)
from gearproto import events as ev

log = logging.getLogger("gearproto.proxy")
_ids = itertools.count(1)


class Relay:
    """One proxied connection: the peer's side and the upstream side."""

    def __init__(
        self,
        peer: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.name = f"#{next(_ids)}"
        self.peer_reader, self.peer_writer = peer
        self.up_reader, self.up_writer = upstream
        self.down = Connection(Side.SERVER)  # our view of the peer
        self.up = Connection(Side.CLIENT)  # our client of the upstream server
        # Marker echoes sent upstream, each standing for a reply the proxy owes.
        self.markers: dict[int, Any] = {}

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.pump(self.peer_reader, self.from_peer)),
            asyncio.create_task(self.pump(self.up_reader, self.from_upstream)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (self.peer_writer, self.up_writer):
                writer.close()
            log.info("%s closed", self.name)

    async def pump(self, reader: asyncio.StreamReader, handle: Any) -> None:
        """Read chunks until EOF or a fatal error; ``handle`` feeds one chunk."""
        while True:
            data = await reader.read(65536)
            if not handle(data):
                return
            await self.peer_writer.drain()
            await self.up_writer.drain()

    # ------------------------------------------------------------------- peer

    def from_peer(self, data: bytes) -> bool:
        down = self.down
        if data:
            down.receive_data(data)
        else:
            down.receive_eof()
        while True:
            try:
                event = down.next_event()
            except RemoteProtocolError as exc:
                log.warning("%s peer broke the protocol: %s", self.name, exc)
                if exc.hint is not None:
                    self.answer_locally(exc.hint, fatal=exc.fatal)
                if exc.fatal:
                    return False
                continue
            if event is NEED_DATA:
                return True
            if type(event) is ev.ConnectionClosed:
                log.info("%s peer closed", self.name)
                return False
            log.info("%s peer -> server %r", self.name, event)
            if type(event) is admin.AdminBadCommand:
                self.answer_locally(event.reply, fatal=False)
                continue
            try:
                self.up_writer.write(self.up.send(event))
            except LocalProtocolError as exc:  # e.g. over the upstream's limits
                log.warning("%s cannot relay %r: %s", self.name, event, exc)
                return False

    def answer_locally(self, reply: Any, *, fatal: bool) -> None:
        """Send ``reply`` to the peer in its turn among the upstream's replies."""
        if fatal or not self.up.pending_replies:
            self.peer_writer.write(self.down.send(reply))
            log.info("%s proxy -> peer %r", self.name, reply)
            return
        marker = ev.EchoReq(b"gearproto-proxy-%d" % len(self.markers))
        self.markers[id(marker)] = (marker, reply)
        self.up_writer.write(self.up.send(marker))

    # --------------------------------------------------------------- upstream

    def from_upstream(self, data: bytes) -> bool:
        up = self.up
        if data:
            up.receive_data(data)
        else:
            up.receive_eof()
        while True:
            try:
                event = up.next_event()
            except RemoteProtocolError as exc:
                log.warning("%s server broke the protocol: %s", self.name, exc)
                if exc.fatal:
                    return False
                continue
            if event is NEED_DATA:
                return True
            if type(event) is ev.ConnectionClosed:
                log.info("%s server closed", self.name)
                return False
            owed = self.markers.pop(id(up.answered), None)
            if owed is not None and owed[0] is up.answered:
                event = owed[1]  # the marker's turn: answer the refused request
                log.info("%s proxy -> peer %r", self.name, event)
            else:
                log.info("%s server -> peer %r", self.name, event)
            self.peer_writer.write(self.down.send(event))


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up = await asyncio.open_connection(*upstream)
        except OSError as exc:
            log.error("cannot reach the upstream server %s:%d: %s", *upstream, exc)
            writer.close()
            return
        relay = Relay((reader, writer), up)
        log.info("%s accepted %s", relay.name, writer.get_extra_info("peername"))
        with contextlib.suppress(ConnectionError):
            await relay.run()

    server = await asyncio.start_server(accepted, *listen)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A transparent, logging Gearman proxy.")
    parser.add_argument("--listen", type=address, default=("127.0.0.1", 4731))
    parser.add_argument("--upstream", type=address, default=("127.0.0.1", 4730))
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
