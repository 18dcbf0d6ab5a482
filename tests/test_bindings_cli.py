"""``gearproto submit | worker | admin`` against a real job server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.procs import GEARMAN, ServerProcess, free_port

pytestmark = pytest.mark.timeout(60)


def run(*argv: str, stdin: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gearproto", *argv],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def test_submit_and_worker_round_trip(job_server: ServerProcess) -> None:
    port = str(job_server.port)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gearproto",
            "worker",
            "-p",
            port,
            "-f",
            "upper",
            "-c",
            "2",
            "--",
            "tr",
            "a-z",
            "A-Z",
        ]
    )
    try:
        out = run("submit", "-p", port, "-f", "upper", "hello", "there")
        assert (out.returncode, out.stdout) == (0, b"HELLO THERE")
        out = run("submit", "-p", port, "-f", "upper", stdin=b"from stdin")
        assert (out.returncode, out.stdout) == (0, b"FROM STDIN")
        assert worker.wait(20) == 0  # -c 2: exits after two jobs
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)


def test_our_worker_serves_the_gearman_tool(job_server: ServerProcess) -> None:
    assert GEARMAN is not None
    port = str(job_server.port)
    worker = subprocess.Popen(
        [sys.executable, "-m", "gearproto", "worker", "-p", port, "-f", "echo", "-c", "1"]
    )
    try:
        out = subprocess.run(
            [GEARMAN, "-h", "127.0.0.1", "-p", port, "-f", "echo", "same bytes"],
            capture_output=True,
            timeout=20,
            check=True,
        )
        assert out.stdout == b"same bytes"
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)


def test_submit_errors_are_clear(job_server: ServerProcess) -> None:
    port = str(job_server.port)
    out = run("submit", "-p", port, "-f", "nobody", "-b", "x")
    assert out.returncode == 0
    assert out.stdout.startswith(b"Task created: H:")
    out = run("submit", "-p", port, "-f", "nobody", "-t", "0.3", "x")
    assert out.returncode == 4
    assert b"timed out after 0.3 s" in out.stderr
    out = run("submit", "-p", str(free_port()), "-f", "nobody", "x")
    assert out.returncode == 3
    assert b"ConnectionRefusedError" in out.stderr
    out = run("submit", "-s", "no-such-host.invalid:4730", "-f", "fn", "x")
    assert out.returncode == 3
    assert b"gaierror" in out.stderr
    out = run("submit", "-p", port, "x")
    assert out.returncode == 2
    assert b"-f/--function" in out.stderr
    out = run("submit", "-p", port, "-f", "fn", "-u", "u" * 65, "x")
    assert out.returncode == 2
    assert b"unique" in out.stderr
    assert b"Traceback" not in out.stderr


def test_admin_commands(job_server: ServerProcess) -> None:
    port = str(job_server.port)
    assert run("submit", "-p", port, "-f", "queued", "-b", "x").returncode == 0
    out = run("admin", "-p", port, "--status")
    assert (out.returncode, out.stdout) == (0, b"queued\t1\t0\t0\n.\n")
    out = run("admin", "-p", port, "--getpid")
    assert out.stdout == b"%d\n" % job_server.pid
    out = run("admin", "-p", port, "--create-function", "made", "--max-queue", "made", "3")
    assert (out.returncode, out.stdout) == (0, b"OK\nOK\n")
    out = run("admin", "-p", port, "--cancel-job", "H:nope:1")
    assert out.returncode == 1
    assert b"UNKNOWN_JOB" in out.stderr
    out = run("admin", "-p", port)
    assert out.returncode == 2
    out = run("admin", "-p", port, "--drop-function", "has space")
    assert out.returncode == 2
    assert b"cannot carry" in out.stderr
    out = run("admin", "-p", str(free_port()), "--status")
    assert out.returncode == 3
    assert b"ConnectionRefusedError" in out.stderr
