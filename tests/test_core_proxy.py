"""docs/examples/proxy.py between gearmand's own tools and a real gearmand."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)
from helpers.core_wire import CoreWire
from helpers.procs import GEARADMIN, GEARMAN, ServerProcess

from gearproto import admin, raw_packet
from gearproto import events as ev

PROXY = Path(__file__).resolve().parent.parent / "docs" / "examples" / "proxy.py"

pytestmark = [pytest.mark.usefixtures("core_impl"), pytest.mark.gearmand, pytest.mark.timeout(90)]


class Proxy:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture
def proxy(gearmand_server: ServerProcess, tmp_path: Path) -> Iterator[Proxy]:
    log = tmp_path / "proxy.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROXY),
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                f"{gearmand_server.host}:{gearmand_server.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line + log.read_text()
        yield Proxy(proc, int(line.rsplit(":", 1)[1]), log)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


UPPER = ["--", "tr", "a-z", "A-Z"]


def tool(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.skipif(GEARMAN is None, reason="the gearman tool is not installed")
def test_gearman_client_and_worker_through_the_proxy(proxy: Proxy) -> None:
    assert GEARMAN is not None
    port = str(proxy.port)
    worker = subprocess.Popen(
        [GEARMAN, "-h", "127.0.0.1", "-p", port, "-w", "-c", "2", "-f", "upper", *UPPER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = tool(GEARMAN, "-h", "127.0.0.1", "-p", port, "-f", "upper", "hello proxy")
        assert first.returncode == 0, first.stderr
        assert first.stdout == "HELLO PROXY"
        background = tool(GEARMAN, "-h", "127.0.0.1", "-p", port, "-b", "-f", "upper", "bg")
        assert background.returncode == 0, background.stderr
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    log = proxy.log.read_text()
    # Both directions were relayed as events, and logged.
    for seen in (
        "peer -> server SubmitJob(function=b'upper'",
        "server -> peer JobCreated(handle=b'H:test:",
        "peer -> server CanDo(function=b'upper')",
        "peer -> server WorkComplete(handle=b'H:test:",
        "server -> peer WorkComplete(handle=b'H:test:",
        "server -> peer JobAssign",
    ):
        assert seen in log, seen
    assert "broke the protocol" not in log


@pytest.mark.skipif(GEARADMIN is None, reason="gearadmin is not installed")
def test_gearadmin_sees_the_same_replies_through_the_proxy(
    proxy: Proxy, gearmand_server: ServerProcess
) -> None:
    assert GEARADMIN is not None
    with CoreWire(gearmand_server.address) as setup:
        setup.request(ev.SubmitJob(b"queued", b"", b"x", background=True))
        setup.request(admin.CreateFunction(b"empty"))
    for flag in ("--status", "--priority-status", "--show-unique-jobs", "--server-version"):
        direct = tool(GEARADMIN, "-h", "127.0.0.1", "-p", str(gearmand_server.port), flag)
        proxied = tool(GEARADMIN, "-h", "127.0.0.1", "-p", str(proxy.port), flag)
        assert proxied.returncode == direct.returncode == 0, proxied.stderr
        assert proxied.stdout == direct.stdout, flag
        assert proxied.stdout


def _exchange(address: tuple[str, int], data: bytes, until: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while not received.endswith(until):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        return received


def test_refused_requests_are_answered_like_gearmand_in_turn(
    proxy: Proxy, gearmand_server: ServerProcess
) -> None:
    """What the core refuses, the proxy answers itself: with gearmand's bytes, in turn."""
    stream = (
        raw_packet(b"\0REQ", 18, [b"f", b"same", b"x"])  # SUBMIT_JOB_BG
        + raw_packet(b"\0REQ", 28, [b"H:not-mine", b"x"])  # WORK_DATA, not held
        + b"frobnicate\r\n"
        + raw_packet(b"\0RES", 16, [b"wrong magic"])
        + raw_packet(b"\0REQ", 16, [b"last"])
    )
    through_proxy = _exchange(proxy.address, stream, until=b"last")
    direct = _exchange(gearmand_server.address, stream, until=b"last")
    assert through_proxy == direct
    assert b"Job does not exist on server" in direct
    log = proxy.log.read_text()
    assert "peer broke the protocol" in log
    for answer in (
        "proxy -> peer Error(code=b'JOB_NOT_FOUND'",
        "proxy -> peer AdminError(code=b'UNKNOWN_COMMAND'",
        "proxy -> peer Error(code=b'INVALID_MAGIC'",
    ):
        assert answer in log
