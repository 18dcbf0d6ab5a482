"""gearmand's own tools against our server process: the ``gearman`` client and
``gearman -w`` worker (libgearman), and ``gearadmin``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.procs import GEARADMIN, GEARMAN, ServerProcess, start_process

pytestmark = [pytest.mark.gearmand, pytest.mark.timeout(60)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    if GEARMAN is None or GEARADMIN is None:
        pytest.skip("gearman-tools are not installed")
    argv = [sys.executable, "-m", "gearproto.server", "-L", "{host}", "-p", "{port}"]
    argv += ["--libsqlite3-db", str(tmp_path / "queue.sqlite")]  # the durable default
    proc = start_process(argv, log=tmp_path / "server.log")
    try:
        yield proc
    finally:
        proc.stop()


def gearman(server: ServerProcess, *args: str, stdin: bytes = b"") -> bytes:
    assert GEARMAN is not None
    result = subprocess.run(
        [GEARMAN, "-h", server.host, "-p", str(server.port), *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def gearadmin(server: ServerProcess, *args: str) -> str:
    assert GEARADMIN is not None
    result = subprocess.run(
        [GEARADMIN, "-h", server.host, "-p", str(server.port), *args],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout.decode()


def test_gearman_worker_and_client(server: ServerProcess) -> None:
    assert GEARMAN is not None
    worker = subprocess.Popen(
        [GEARMAN, "-h", server.host, "-p", str(server.port), "-w", "-c", "3", "-f", "rev", "rev"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert gearman(server, "-f", "rev", "hello") == b"olleh"
        assert gearman(server, "-f", "rev", "-I", "-u", "u1", "high") == b"hgih"
        assert gearman(server, "-f", "rev", "-s", "-L", "low") == b"wol"
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_gearman_background_jobs_and_gearadmin_listings(server: ServerProcess) -> None:
    gearman(server, "-f", "bg", "-b", "one")
    gearman(server, "-f", "bg", "-b", "-u", "the-unique", "two")
    assert "bg\t2\t0\t0\n." in gearadmin(server, "--status")
    assert "bg\t0\t2\t0\t0\n." in gearadmin(server, "--priority-status")
    jobs = gearadmin(server, "--show-jobs").splitlines()
    assert len(jobs) == 3
    assert jobs[-1] == "."
    assert all(row.endswith("\t0\t0\t1") for row in jobs[:-1])
    assert "the-unique" in gearadmin(server, "--show-unique-jobs").splitlines()
    handle = jobs[0].split("\t")[0]
    assert gearadmin(server, "--cancel-job", handle).strip() == "OK"
    assert "bg\t1\t0\t0\n." in gearadmin(server, "--status")


def test_gearadmin_commands(server: ServerProcess) -> None:
    assert gearadmin(server, "--server-version").startswith("gearproto-")
    assert gearadmin(server, "--server-verbose").strip() == "ERROR"
    assert gearadmin(server, "--getpid").strip() == str(server.pid)
    assert gearadmin(server, "--create-function", "made").strip() == "OK"
    assert "made\t0\t0\t0" in gearadmin(server, "--status")
    assert gearadmin(server, "--drop-function", "made").strip() == "OK"
    assert "made" not in gearadmin(server, "--status")
    workers = gearadmin(server, "--workers").splitlines()
    assert workers[-1] == "."
    assert workers[0].split(" ")[1:] == ["127.0.0.1", "-", ":"]
