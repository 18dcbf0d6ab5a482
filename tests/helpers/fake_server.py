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
from gearproto.events import (
    CanDo,
    EchoReq,
    EchoRes,
    Error,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobCreated,
    NoJob,
    OptionReq,
    OptionRes,
    SubmitJob,
)


class FakeServer:
    """Listens on 127.0.0.1 (free port); ``behaviour`` is one of:

    ``"close-after-created"``, ``"garbage"``, ``"silent"``, ``"late:<seconds>"``, or
    ``"grab-job-only"`` (a server that knows neither GRAB_JOB_ALL nor GRAB_JOB_UNIQ:
    it answers them ERROR INVALID_COMMAND, and hands out one job of function ``fn`` to
    GRAB_JOB once ``fn`` is registered).
    """

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # the acceptor polls the stop flag
        self.port: int = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.requests: list[object] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # Clients reconnect on their own (backoff after a fault), so a connection
            # can arrive while close() runs: register it under the lock, or drop it.
            with self._lock:
                if self._stop.is_set():
                    sock.close()
                    return
                self._socks.append(sock)
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = Connection(Side.SERVER)
        handles = 0
        abilities: set[bytes] = set()
        # Every socket call is inside: close() only closes a socket after its thread
        # ended, but a peer's reset must not end the thread with an exception either.
        with contextlib.suppress(OSError):
            sock.settimeout(0.05)
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
                    elif isinstance(event, GrabJobAll | GrabJobUniq):
                        reply = conn.send(Error(b"INVALID_COMMAND", b"Invalid command"))
                    elif isinstance(event, CanDo):
                        abilities.add(event.function)
                    elif isinstance(event, GrabJob):
                        if b"fn" in abilities and not handles:
                            handles += 1
                            reply = conn.send(JobAssign(b"H:fake:1", b"fn", b"old server"))
                        else:
                            reply = conn.send(NoJob())
                    if behaviour.startswith("late:"):
                        self._stop.wait(float(behaviour[5:]))
                    sock.sendall(reply)
                    if behaviour == "close-after-created" and isinstance(event, SubmitJob):
                        sock.close()
                        return

    def close(self) -> None:
        """Stop accepting, let every connection thread end, then close the sockets.

        The order matters: a socket closed under a thread still using it makes that
        thread fail with EBADF (an unhandled thread exception fails the test).
        """
        self._stop.set()
        self._acceptor.join(5)
        self.listener.close()
        with self._lock:
            threads, socks = list(self._threads), list(self._socks)
        for thread in threads:
            thread.join(5)  # each one polls the stop flag every 0.05 s
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def fake_server(behaviour: str) -> Iterator[FakeServer]:
    server = FakeServer(behaviour)
    try:
        yield server
    finally:
        server.close()
