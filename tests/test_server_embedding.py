"""JobServer embedded in asyncio, in trio, in a background thread, and over the
in-memory transport: a worker and a client run a real job through it each time."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from gearproto import NEED_DATA, Connection, Side
from gearproto.admin import Status, StatusReply
from gearproto.events import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    Noop,
    PreSleep,
    SubmitJob,
    WorkComplete,
)
from gearproto.server import JobServer, ServerConfig

pytestmark = pytest.mark.timeout(30)

Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[bytes]]


async def next_event(conn: Connection, receive: Receive) -> Any:
    while True:
        event = conn.next_event()
        if event is not NEED_DATA:
            return event
        data = await receive()
        if not data:
            raise ConnectionError("server closed the connection")
        conn.receive_data(data)


async def reverse_worker(send: Send, receive: Receive, jobs: int) -> None:
    """A worker that reverses ``jobs`` payloads, sleeping when there is nothing."""
    conn = Connection(Side.CLIENT)
    await send(conn.send(CanDo(b"reverse")))
    done = 0
    while done < jobs:
        await send(conn.send(GrabJobUniq()))
        event = await next_event(conn, receive)
        if isinstance(event, NoJob):
            await send(conn.send(PreSleep()))
            assert isinstance(await next_event(conn, receive), Noop)
            continue
        assert isinstance(event, JobAssignUniq)
        await send(conn.send(WorkComplete(event.handle, event.data[::-1])))
        done += 1


async def submit(send: Send, receive: Receive, payload: bytes) -> bytes:
    conn = Connection(Side.CLIENT)
    await send(conn.send(SubmitJob(b"reverse", b"", payload)))
    created = await next_event(conn, receive)
    assert isinstance(created, JobCreated)
    result = await next_event(conn, receive)
    assert isinstance(result, WorkComplete)
    assert result.handle == created.handle
    return result.data


# ---------------------------------------------------------------------- asyncio


async def _asyncio_tcp(address: tuple[str, int]) -> tuple[Send, Receive, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def receive() -> bytes:
        return await reader.read(65536)

    return send, receive, writer


def test_asyncio_embedded_over_tcp() -> None:
    async def main() -> bytes:
        async with JobServer() as server:
            assert server.address[0] == "127.0.0.1"
            wsend, wrecv, wwriter = await _asyncio_tcp(server.address)
            csend, crecv, cwriter = await _asyncio_tcp(server.address)
            worker = asyncio.create_task(reverse_worker(wsend, wrecv, 1))
            result = await submit(csend, crecv, b"hello")
            await worker
            for writer in (wwriter, cwriter):
                writer.close()
                await writer.wait_closed()
            return result

    assert asyncio.run(main()) == b"olleh"


def test_asyncio_in_memory_transport_needs_no_socket() -> None:
    async def main() -> list[bytes]:
        async with JobServer(port=None) as server:
            with pytest.raises(RuntimeError):
                _ = server.address
            worker_stream = await server.connect_memory()
            client_stream = await server.connect_memory()
            worker = asyncio.create_task(
                reverse_worker(worker_stream.send_all, worker_stream.receive_some, 3)
            )
            results = [
                await submit(client_stream.send_all, client_stream.receive_some, p)
                for p in (b"abc", b"", b"x" * 100_000)
            ]
            await worker
            await worker_stream.aclose()
            await client_stream.aclose()
            return results

    assert asyncio.run(main()) == [b"cba", b"", b"x" * 100_000]


def test_asyncio_memory_stream_reads_admin_replies() -> None:
    async def main() -> Any:
        async with JobServer(port=None) as server:
            stream = await server.connect_memory()
            conn = Connection(Side.CLIENT)
            await stream.send_all(conn.send(CanDo(b"f")) + conn.send(Status()))
            return await next_event(conn, stream.receive_some)

    reply = asyncio.run(main())
    assert isinstance(reply, StatusReply)
    assert [(r.function, r.workers) for r in reply.rows] == [(b"f", 1)]


# ------------------------------------------------------------------------- trio


def test_trio_embedded_over_tcp_and_memory() -> None:
    async def main() -> list[bytes]:
        async with JobServer() as server:
            tcp = await trio.open_tcp_stream(*server.address)
            memory = await server.connect_memory()
            results: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reverse_worker, tcp.send_all, tcp.receive_some, 2)
                results.append(await submit(memory.send_all, memory.receive_some, b"trio"))
                results.append(await submit(memory.send_all, memory.receive_some, b"again"))
            await tcp.aclose()
            await memory.aclose()
            return results

    assert trio.run(main) == [b"oirt", b"niaga"]


# ----------------------------------------------------------------------- thread


def _blocking_roundtrip(address: tuple[str, int]) -> bytes:
    worker = socket.create_connection(address, timeout=10)
    client = socket.create_connection(address, timeout=10)
    wconn, cconn = Connection(Side.CLIENT), Connection(Side.CLIENT)
    worker.sendall(wconn.send(CanDo(b"reverse")))
    client.sendall(cconn.send(SubmitJob(b"reverse", b"", b"sync")))

    def read(sock: socket.socket, conn: Connection) -> Any:
        while (event := conn.next_event()) is NEED_DATA:
            conn.receive_data(sock.recv(65536))
        return event

    assert isinstance(read(client, cconn), JobCreated)
    worker.sendall(wconn.send(GrabJobUniq()))
    job = read(worker, wconn)
    assert isinstance(job, JobAssignUniq)
    worker.sendall(wconn.send(WorkComplete(job.handle, job.data[::-1])))
    result = read(client, cconn)
    worker.close()
    client.close()
    return result.data  # type: ignore[no-any-return]


def test_background_thread_from_sync_code() -> None:
    with JobServer(config=ServerConfig(job_retries=3)) as server:
        address = server.address
        assert server.server_string == f"127.0.0.1:{address[1]}"
        assert _blocking_roundtrip(address) == b"cnys"
        assert server.core is not None
        assert server.core.job_count == 0
    # Stopped: the port no longer accepts connections.
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=1).close()


def test_background_thread_reports_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError), JobServer(port=port):
            pass


def test_graceful_stop_finishes_queued_work_first() -> None:
    async def main() -> tuple[bool, float]:
        async with JobServer() as server:
            address = server.address
            csend, crecv, client_writer = await _asyncio_tcp(address)
            conn = Connection(Side.CLIENT)
            await csend(conn.send(SubmitJob(b"reverse", b"", b"late")))
            assert isinstance(await next_event(conn, crecv), JobCreated)
            server.stop(graceful=True)
            serving = asyncio.create_task(server.serve_forever())
            await asyncio.sleep(0.2)
            still_running = not serving.done()
            # New connections are refused, but the queued job still gets done.
            with pytest.raises(OSError):
                await asyncio.open_connection(*address)
            started = time.monotonic()
            wsend, wrecv, _ww = await _mem_worker(server)
            worker = asyncio.create_task(reverse_worker(wsend, wrecv, 1))
            assert isinstance(await next_event(conn, crecv), WorkComplete)
            await worker
            await asyncio.wait_for(serving, 5)
            client_writer.close()
            await client_writer.wait_closed()
            return still_running, time.monotonic() - started

    still_running, took = asyncio.run(main())
    assert still_running
    assert took < 5


async def _mem_worker(server: JobServer) -> tuple[Send, Receive, Any]:
    # After a graceful stop began only existing connections are served; an in-memory
    # connection stands for a worker that was already connected.
    assert server._runner is not None
    server._runner.closing = False
    stream = await server.connect_memory()
    return stream.send_all, stream.receive_some, stream


def test_stop_from_another_thread() -> None:
    server = JobServer()
    with server:
        stopper = threading.Timer(0.1, server.stop)
        stopper.start()
        stopper.join()
    assert server._thread is None


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_large_payloads_cross_intact_while_buffers_are_reused(loop_name: str) -> None:
    """Big packets take the zero-copy path (pooled receive buffers, the transport
    switched to a buffered protocol and back for each one): many of them in flight at
    once, of different sizes and contents, between small packets on the same
    connections, must all arrive unchanged, on asyncio's loop and on uvloop's."""
    loop_factory: Any = asyncio.new_event_loop
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop_factory = uvloop.new_event_loop

    async def main() -> None:
        async with JobServer() as server:
            wsend, wrecv, wwriter = await _asyncio_tcp(server.address)
            csend, crecv, cwriter = await _asyncio_tcp(server.address)
            payloads = [bytes([i]) * (70_000 + i * 300_000) + b"end%d" % i for i in range(8)]
            payloads.append(b"-" * 200_000)
            client = Connection(Side.CLIENT)
            for index, payload in enumerate(payloads):
                unique = b"-" if index == len(payloads) - 1 else b""
                await csend(client.send(SubmitJob(b"reverse", unique, payload)))
                await csend(client.send(SubmitJob(b"reverse", unique, payload)))  # twice
            handles = []
            for _ in range(2 * len(payloads)):
                event = await next_event(client, crecv)
                assert isinstance(event, JobCreated)
                handles.append(event.handle)
            assert handles[-1] == handles[-2]  # "-" coalesced the identical payloads
            worker = asyncio.create_task(reverse_worker(wsend, wrecv, 2 * len(payloads) - 1))
            results: dict[bytes, list[bytes]] = {}
            for _ in range(2 * len(payloads)):
                event = await next_event(client, crecv)
                assert isinstance(event, WorkComplete)
                results.setdefault(event.handle, []).append(event.data)
            await worker
            for index, payload in enumerate(payloads[:-1]):
                for handle in handles[2 * index : 2 * index + 2]:
                    assert results[handle] == [payload[::-1]]
            assert results[handles[-1]] == [payloads[-1][::-1]] * 2
            # The big packets did go through the pooled-buffer path.
            assert server.core is not None
            assert server.core._frame_pool
            for writer in (wwriter, cwriter):
                writer.close()
                await writer.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def test_tls_with_client_certificates_on_asyncio_and_trio() -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    ca.issue_cert("client@example.org", common_name="worker-7").configure_cert(client_context)

    def subject(peercert: Any) -> dict[str, str]:
        return {k: v for rdn in peercert["subject"] for k, v in rdn}

    async def asyncio_main() -> tuple[bytes, Any]:
        async with JobServer(ssl=server_context) as server:
            reader, writer = await asyncio.open_connection(
                *server.address, ssl=client_context, server_hostname="127.0.0.1"
            )
            writer.write(b"\0REQ\0\0\0\x10\0\0\0\x04ping")
            echoed = await reader.readexactly(16)
            assert server.core is not None
            (peer,) = list(server.core.peers())
            writer.close()
            await writer.wait_closed()
            return echoed, peer.info.peercert

    echoed, peercert = asyncio.run(asyncio_main())
    assert echoed == b"\0RES\0\0\0\x11\0\0\0\x04ping"
    assert subject(peercert)["commonName"] == "worker-7"

    async def trio_main() -> tuple[bytes, Any]:
        async with JobServer(ssl=server_context) as server:
            tcp = await trio.open_tcp_stream(*server.address)
            stream = trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1")
            await stream.send_all(b"\0REQ\0\0\0\x10\0\0\0\x04pong")
            echoed = b""
            while len(echoed) < 16:
                echoed += await stream.receive_some(100)
            assert server.core is not None
            (peer,) = list(server.core.peers())
            await stream.aclose()
            return echoed, peer.info.peercert

    echoed, peercert = trio.run(trio_main)
    assert echoed == b"\0RES\0\0\0\x11\0\0\0\x04pong"
    assert subject(peercert)["commonName"] == "worker-7"
