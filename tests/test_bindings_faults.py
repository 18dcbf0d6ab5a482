"""Faults on every binding: each ends in a typed error or outcome, bounded in time."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from helpers.bindings import Harness, wait_until
from helpers.fake_server import fake_server
from helpers.procs import ServerProcess, free_port

from gearproto import RemoteProtocolError
from gearproto.bindings._outcomes import (
    ConnectError,
    ConnectionLost,
    Disconnected,
    JobDisconnected,
    RequestTimeout,
    TimedOut,
)

pytestmark = pytest.mark.timeout(60)


def test_server_closing_mid_job(harness: Harness) -> None:
    with fake_server("close-after-created") as server:
        client = harness.client(server.address)
        started = time.monotonic()
        outcome = client.submit("fn", b"x").wait()
        assert isinstance(outcome, Disconnected)
        assert outcome.acknowledged is True
        assert "lost" in outcome.reason
        assert time.monotonic() - started < 5
        with pytest.raises(JobDisconnected):
            client.call("fn", b"y")


def test_gearmand_killed_mid_job(harness: Harness, job_server: ServerProcess) -> None:
    started = threading.Event()

    def stuck(job: Any) -> bytes:
        started.set()
        time.sleep(0.2)
        return b"never delivered"

    address = f"{job_server.host}:{job_server.port}"
    worker = harness.worker(address, {"stuck": stuck}).start()
    client = harness.client(address)
    job = client.submit("stuck", b"")
    assert started.wait(10)
    job_server.kill()
    outcome = job.wait()
    assert isinstance(outcome, Disconnected)
    assert outcome.acknowledged
    worker.stop()


def test_garbage_from_the_server(harness: Harness) -> None:
    with fake_server("garbage") as server:
        client = harness.client(server.address)
        outcome = client.submit("fn", b"x").wait()
        assert isinstance(outcome, Disconnected)
        assert outcome.acknowledged is False
        # The garbage answered the OPTION_REQ sent on connect: the job either rode on
        # that connection or found the server already marked down because of it.
        cause = outcome.cause
        if isinstance(cause, ConnectError):
            (cause,) = cause.causes.values()
        assert isinstance(cause, RemoteProtocolError)
    with fake_server("garbage") as server:
        client = harness.client(server.address, exceptions=False)
        with pytest.raises(ConnectionLost, match="lost"):
            client.echo(b"hello", timeout=5)
        admin = harness.admin(server.address)
        with pytest.raises(ConnectionLost):
            admin.status()


def test_server_that_never_answers(harness: Harness) -> None:
    with fake_server("silent") as server:
        client = harness.client(server.address, created_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            client.echo(b"anyone?", timeout=0.3)
        outcome = client.submit("fn", b"x").wait()
        assert outcome == TimedOut("created", 0.3)
        assert time.monotonic() - started < 5
        admin = harness.admin(server.address, timeout=0.3)
        with pytest.raises(RequestTimeout):
            admin.version()


def test_created_timeouts_out_of_order(harness: Harness) -> None:
    # A job with a shorter created_timeout than the one written before it: its
    # deadline comes first and must be kept all the same.
    with fake_server("silent") as server:
        client = harness.client(server.address, created_timeout=30, max_attempts=1)
        started = time.monotonic()
        patient = client.submit("fn", b"a")
        hasty = client.submit("fn", b"b", created_timeout=0.3)
        assert hasty.wait() == TimedOut("created", 0.3)
        # The silent server is then treated as dead: the other job cannot stay on it.
        outcome = patient.wait()
        assert isinstance(outcome, Disconnected)
        assert "no JOB_CREATED within 0.3 s" in outcome.reason
        assert time.monotonic() - started < 10


def test_dns_failure(harness: Harness) -> None:
    client = harness.client("no-such-host.invalid:4730")
    outcome = client.submit("fn", b"x").wait()
    assert isinstance(outcome, Disconnected)
    assert not outcome.acknowledged
    assert isinstance(outcome.cause, ConnectError)
    (cause,) = outcome.cause.causes.values()
    assert isinstance(cause, socket.gaierror)
    with pytest.raises(ConnectError, match=r"no-such-host\.invalid"):
        client.echo(b"x")


def test_connection_refused(harness: Harness) -> None:
    port = free_port()
    client = harness.client(f"127.0.0.1:{port}")
    outcome = client.submit("fn", b"x").wait()
    assert isinstance(outcome, Disconnected)
    assert isinstance(outcome.cause, ConnectError)
    assert isinstance(next(iter(outcome.cause.causes.values())), ConnectionRefusedError)
    with pytest.raises(JobDisconnected, match="ConnectionRefusedError"):
        client.call("fn", b"y")
    admin = harness.admin(f"127.0.0.1:{port}")
    with pytest.raises(ConnectError):
        admin.status()
    wait_until(lambda: client.statistics()["jobs"] == 0)
