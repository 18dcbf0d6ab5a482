"""Replies written straight to a plain socket (asyncio runner) keep their order and
bytes when the kernel takes only part of them and the transport carries the rest."""

from __future__ import annotations

import socket
import threading

import pytest

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import EchoReq, EchoRes
from gearproto.server import JobServer

pytestmark = pytest.mark.timeout(60)

# Sizes that mix lone replies (written by the direct path) with joined ones and with
# batches over the join limit (written through the transport).
SIZES = [1, 700, 20_000, 64, 50_000, 3, 120_000, 9_000]


def payload(index: int) -> bytes:
    size = SIZES[index % len(SIZES)]
    return (b"%06d:" % index + bytes(range(256)) * (size // 256 + 1))[:size]


def test_echoes_arrive_in_order_through_partial_writes() -> None:
    count = 200  # about 5 MB of replies: more than the sockets' buffers hold
    with JobServer() as server:
        sock = socket.create_connection(server.address)
        # No reading at first: the server's writes fill the socket, come back
        # partial, and the transport queues what is left.
        client = Connection(Side.CLIENT)
        requests = b"".join(client.send(EchoReq(payload(i))) for i in range(count))
        sent_error: list[BaseException] = []

        def send_all() -> None:
            try:
                sock.sendall(requests)
            except OSError as exc:  # pragma: no cover - reported by the assertion
                sent_error.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        sender.join(0.5)  # let unread replies pile up in the socket and transport
        sock.settimeout(30)
        received: list[bytes] = []
        while len(received) < count:
            event = client.next_event()
            if event is NEED_DATA:
                data = sock.recv(1 << 16)
                assert data, "the server closed the connection"
                client.receive_data(data)
                continue
            assert isinstance(event, EchoRes)
            received.append(event.data)
        sender.join(10)
        sock.close()
    assert not sent_error
    assert len(received) == count
    for index, data in enumerate(received):
        assert data == payload(index), index
