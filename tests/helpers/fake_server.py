"""A tiny misbehaving Gearman server for fault tests (real sockets, one thread).

It reads whole request packets with the sans-IO core (server side) and answers each
with what its ``behaviour`` says: close right after JOB_CREATED, send garbage, never
answer, or answer late.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import EchoReq, EchoRes, JobCreated, OptionReq, OptionRes, SubmitJob


class FakeServer:
    """Listens on 127.0.0.1 (free port); ``behaviour`` is one of:

    ``"close-after-created"``, ``"garbage"``, ``"silent"``, ``"late:<seconds>"``.
    """

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.requests: list[object] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        conn = Connection(Side.SERVER)
        sock.settimeout(0.05)
        handles = 0
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                conn.receive_data(data)
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        break
                    self.requests.append(event)
                    reply = b""
                    behaviour = self.behaviour
                    if behaviour == "silent":
                        continue
                    if behaviour == "garbage":
                        sock.sendall(b"\0RES\0\0\0\x63garbage that is no packet")
                        continue
                    if isinstance(event, OptionReq):
                        reply = conn.send(OptionRes(event.option))
                    elif isinstance(event, EchoReq):
                        reply = conn.send(EchoRes(event.data))
                    elif isinstance(event, SubmitJob):
                        handles += 1
                        reply = conn.send(JobCreated(b"H:fake:%d" % handles))
                    if behaviour.startswith("late:"):
                        self._stop.wait(float(behaviour[5:]))
                    sock.sendall(reply)
                    if behaviour == "close-after-created" and isinstance(event, SubmitJob):
                        sock.close()
                        return

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(2)


@contextlib.contextmanager
def fake_server(behaviour: str) -> Iterator[FakeServer]:
    server = FakeServer(behaviour)
    try:
        yield server
    finally:
        server.close()
