"""A TLS-terminating relay in front of a plaintext job server (for the TLS tests).

It accepts TLS on a free 127.0.0.1 port with a context from
:func:`gearproto.server.tls.server_context` (mutual TLS when that context requires
client certificates), opens a plain connection to the job server for each client and
copies bytes both ways.  One thread per connection does the blocking handshake (so a
refused client gets the TLS alert that says why) and then both directions, so that
the TLS socket is only ever used by one thread.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any


class TLSRelay:
    """Relays TLS clients on :attr:`port` to ``backend`` (host, port) in plaintext."""

    def __init__(self, backend: tuple[str, int], context: ssl.SSLContext) -> None:
        self.backend = backend
        self.context = context
        #: The subject of each client certificate seen (mutual TLS), in order.
        self.peer_subjects: list[Any] = []
        #: TLS sessions established (handshake done).
        self.sessions = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # the acceptor polls the stop flag
        self.port: int = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._stop.is_set():
                    raw.close()
                    return
                thread = threading.Thread(target=self._session, args=(raw,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _session(self, raw: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(raw)
            raw.settimeout(5)
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
            except OSError:
                return  # handshake refused (OpenSSL already sent the alert)
            stack.enter_context(tls)
            self.sessions += 1
            self.peer_subjects.append((tls.getpeercert() or {}).get("subject"))
            try:
                backend = socket.create_connection(self.backend, timeout=5)
            except OSError:
                return
            stack.enter_context(backend)
            self._pump(tls, backend)

    def _pump(self, tls: ssl.SSLSocket, backend: socket.socket) -> None:
        while not self._stop.is_set():
            ready: list[socket.socket]
            if tls.pending():
                ready = [tls]  # decrypted bytes that select() cannot see
            else:
                ready, _, _ = select.select([tls, backend], [], [], 0.05)
            for sock in ready:
                other = backend if sock is tls else tls
                try:
                    data = sock.recv(65536)
                    if data:
                        other.sendall(data)
                except OSError:
                    return
                if not data:
                    return

    def close(self) -> None:
        """Stop accepting, then let each connection thread close its own sockets."""
        self._stop.set()
        self._acceptor.join(5)
        self.listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(10)


@contextlib.contextmanager
def tls_relay(backend: tuple[str, int], context: ssl.SSLContext) -> Iterator[TLSRelay]:
    relay = TLSRelay(backend, context)
    try:
        yield relay
    finally:
        relay.close()
