"""A user's application tested with the ``gearproto_server`` fixture (the shipped
pytest plugin): the app's worker runs in a thread, its client code submits jobs."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from gearproto import NEED_DATA, Connection, Side
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
    WorkFail,
)
from gearproto.server import JobServer

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------ "the application"


class WordCounter:
    """The app's worker: counts words, fails on empty input."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address)
        self.conn = Connection(Side.CLIENT)
        self.stopping = False

    def _event(self) -> Any:
        while (event := self.conn.next_event()) is NEED_DATA:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.conn.receive_data(data)
        return event

    def run(self, jobs: int) -> None:
        self.sock.sendall(self.conn.send(CanDo(b"count_words")))
        while jobs:
            self.sock.sendall(self.conn.send(GrabJobUniq()))
            event = self._event()
            if isinstance(event, NoJob):
                self.sock.sendall(self.conn.send(PreSleep()))
                assert isinstance(self._event(), Noop)
                continue
            assert isinstance(event, JobAssignUniq)
            words = len(event.data.split())
            if words:
                reply: Any = WorkComplete(event.handle, b"%d" % words)
            else:
                reply = WorkFail(event.handle)
            self.sock.sendall(self.conn.send(reply))
            jobs -= 1
        self.sock.close()


def count_words(address: tuple[str, int], text: bytes) -> int | None:
    """The app's client call."""
    with socket.create_connection(address) as sock:
        conn = Connection(Side.CLIENT)
        sock.sendall(conn.send(SubmitJob(b"count_words", b"", text)))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, JobCreated):
                continue
            elif isinstance(event, WorkComplete):
                return int(event.data)
            else:
                assert isinstance(event, WorkFail)
                return None


# ------------------------------------------------------------------------ tests


def test_app_counts_words_through_the_fixture_server(gearproto_server: JobServer) -> None:
    worker = WordCounter(gearproto_server.address)
    thread = threading.Thread(target=worker.run, args=(3,))
    thread.start()
    assert count_words(gearproto_server.address, b"the quick brown fox") == 4
    assert count_words(gearproto_server.address, b"") is None
    assert count_words(gearproto_server.address, b"one") == 1
    thread.join(10)
    assert not thread.is_alive()


def test_each_test_gets_a_fresh_server(gearproto_server: JobServer) -> None:
    assert gearproto_server.core is not None
    assert gearproto_server.core.job_count == 0
    assert list(gearproto_server.core.functions()) == []


@pytest.mark.gearproto_server(job_retries=1, job_handle_prefix=b"H:app")
def test_marker_configures_the_server(gearproto_server: JobServer) -> None:
    assert gearproto_server.config.job_retries == 1
    with socket.create_connection(gearproto_server.address) as sock:
        conn = Connection(Side.CLIENT)
        sock.sendall(conn.send(SubmitJob(b"f", b"", b"x", background=True)))
        conn.receive_data(sock.recv(100))
        assert conn.next_event() == JobCreated(b"H:app:1")
