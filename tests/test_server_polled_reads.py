"""The asyncio runner reads plain sockets itself after their first read (one epoll
callback per loop iteration instead of the transport's per-read callbacks).

Each test runs on asyncio's loop and on uvloop's, over real loopback sockets, and
checks both what the peers see and that the runner's own reading was in use (or
handed back to the transport) at the moments that matter: pipelined jobs, a peer's
EOF or reset while polled, a peer that stops reading its replies, big packets.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from helpers.asyncio_peers import EACH_LOOP_AND_WAITS, Peer, run, runner_of, wait_until

from gearproto.events import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    Noop,
    PreSleep,
    SubmitJob,
    WorkComplete,
)
from gearproto.server import JobServer
from gearproto.server.asyncio_runner import _ServerProtocol

pytestmark = pytest.mark.timeout(60)


async def polled_peer(server: JobServer) -> tuple[Peer, _ServerProtocol]:
    """A new connection, after one echo: read by the runner (its only one)."""
    runner = runner_of(server)
    peer = await Peer.open(server.address)
    await peer.send(EchoReq(b"start"))
    assert await peer.next_event() == EchoRes(b"start")
    await wait_until(lambda: len(runner.polled) == 1, "the peer is polled")
    protocol = next(iter(runner.polled.values()))
    assert protocol.polled
    return peer, protocol


async def reverse_worker(worker: Peer, jobs: int) -> None:
    await worker.send(CanDo(b"reverse"))
    done = 0
    while done < jobs:
        await worker.send(GrabJobUniq())
        event = await worker.next_event()
        if isinstance(event, NoJob):
            await worker.send(PreSleep())
            assert isinstance(await worker.next_event(), Noop)
            continue
        assert isinstance(event, JobAssignUniq)
        await worker.send(WorkComplete(event.handle, event.data[::-1]))
        done += 1


@EACH_LOOP_AND_WAITS
def test_pipelined_jobs_run_through_the_runners_own_reads(loop_name: str, own_waits: bool) -> None:
    async def main() -> None:
        async with JobServer(own_waits=own_waits) as server:
            runner = runner_of(server)
            client = await Peer.open(server.address)
            worker = await Peer.open(server.address)
            count = 300
            payloads = [b"job %d " % i + bytes([i % 256]) * (i % 97) for i in range(count)]
            task = asyncio.create_task(reverse_worker(worker, count))
            # The first packet comes through the transport; then the runner reads.
            await client.send(SubmitJob(b"reverse", b"", payloads[0]))
            results: dict[bytes, bytes] = {}
            handles: list[bytes] = []
            while len(handles) < 1:
                event = await client.next_event()
                if isinstance(event, JobCreated):
                    handles.append(event.handle)
                else:
                    assert isinstance(event, WorkComplete)
                    results[event.handle] = event.data
            assert len(runner.polled) >= 1
            for protocol in runner.polled.values():
                assert protocol.polled
                assert protocol.transport is not None
                assert not protocol.transport.is_reading()
            # The rest pipelined, and each packet split over two writes.
            for payload in payloads[1:]:
                data = client.conn.send(SubmitJob(b"reverse", b"", payload))
                client.writer.write(data[:7])
                await client.writer.drain()
                client.writer.write(data[7:])
            await client.writer.drain()
            while len(handles) < count or len(results) < count:
                event = await client.next_event()
                if isinstance(event, JobCreated):
                    handles.append(event.handle)
                else:
                    assert isinstance(event, WorkComplete)
                    results[event.handle] = event.data
            await task
            for handle, payload in zip(handles, payloads, strict=True):
                assert results[handle] == payload[::-1]
            assert len(runner.polled) == 2  # both peers are read by the runner
            await client.close()
            await worker.close()

    run(loop_name, main)


@EACH_LOOP_AND_WAITS
def test_eof_and_reset_of_polled_peers_are_seen_and_others_keep_working(
    loop_name: str, own_waits: bool
) -> None:
    async def main() -> None:
        async with JobServer(own_waits=own_waits) as server:
            runner = runner_of(server)
            core = server.core
            assert core is not None
            steady = await Peer.open(server.address)
            await steady.send(EchoReq(b"first"))
            assert await steady.next_event() == EchoRes(b"first")
            for ending in ("eof", "reset"):
                peer = await Peer.open(server.address)
                await peer.send(EchoReq(b"hello"))
                assert await peer.next_event() == EchoRes(b"hello")
                await wait_until(lambda: len(runner.polled) == 2, "the peer is polled")
                if ending == "eof":
                    # A request and the write side's FIN together: the reply comes,
                    # then the server closes its side too.
                    await peer.send(EchoReq(b"last words"))
                    peer.writer.write_eof()
                    assert await peer.next_event() == EchoRes(b"last words")
                    assert await asyncio.wait_for(peer.reader.read(), 10) == b""
                    peer.writer.close()
                else:
                    sock = peer.writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    peer.writer.transport.abort()  # closed with a reset
                await wait_until(lambda: core.connection_count == 1, f"the {ending} is seen")
                await wait_until(lambda: len(runner.polled) == 1, "the peer is not polled")
                await steady.send(EchoReq(b"still here after " + ending.encode()))
                assert await steady.next_event() == EchoRes(b"still here after " + ending.encode())
            await steady.close()

    run(loop_name, main)


@EACH_LOOP_AND_WAITS
def test_a_peer_that_stops_reading_is_paused_then_polled_again(
    loop_name: str, own_waits: bool
) -> None:
    async def main() -> None:
        async with JobServer(own_waits=own_waits) as server:
            runner = runner_of(server)
            peer, protocol = await polled_peer(server)
            # Replies nobody reads: the socket and then the transport fill up, the
            # transport pauses, and the runner stops reading the peer.
            big = bytes(range(256)) * 1024
            count = 120
            payloads = [b"%04d" % i + big for i in range(count)]
            for payload in payloads:
                peer.writer.write(peer.conn.send(EchoReq(payload)))
            await wait_until(lambda: bool(runner.paused), "the peer's output is paused")
            assert not protocol.polled
            received: list[bytes] = []
            while len(received) < count:
                event = await peer.next_event()
                assert isinstance(event, EchoRes)
                received.append(event.data)
            assert received == payloads
            await peer.send(EchoReq(b"again"))
            assert await peer.next_event() == EchoRes(b"again")
            await wait_until(lambda: protocol.polled, "the peer is polled again")
            await peer.close()

    run(loop_name, main)


@EACH_LOOP_AND_WAITS
def test_big_packets_leave_the_poller_and_come_back(loop_name: str, own_waits: bool) -> None:
    async def main() -> None:
        async with JobServer(own_waits=own_waits) as server:
            peer, protocol = await polled_peer(server)
            for size in (70_000, 1 << 20, 200_000):
                payload = bytes([size % 251]) * size
                await peer.send(EchoReq(payload), EchoReq(b"after %d" % size))
                assert await peer.next_event() == EchoRes(payload)
                assert await peer.next_event() == EchoRes(b"after %d" % size)
                await peer.send(EchoReq(b"poll me"))
                assert await peer.next_event() == EchoRes(b"poll me")
                await wait_until(lambda: protocol.polled, "the peer is polled again")
            await peer.close()

    run(loop_name, main)
