"""``gearproto server`` / ``python -m gearproto.server``: options, errors, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.procs import free_port, start_process

from gearproto import NEED_DATA, Connection, Side
from gearproto.events import JobCreated, SubmitJob
from gearproto.server.cli import default_queue_file, main
from gearproto.server.sqlite_store import SQLiteStore

pytestmark = pytest.mark.timeout(60)

SERVER = [sys.executable, "-m", "gearproto.server"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-j", "x"], "'x' is not a whole number"),
        (["-p", "70000"], "70000 is not in 0..65535"),
        (["-w", "-3"], "is not in 0..2147483647"),
        (["--verbose", "LOUD"], "unknown level 'LOUD'"),
        (["-q", "mysql"], "unknown queue type 'mysql'"),
        (["-q", "builtin", "--libsqlite3-db", "x.db"], "--libsqlite3-db needs -q libsqlite3"),
        (["--max-packet-size", "12Q"], "'12Q' is not a size"),
        (["--max-unique-size", "0"], "0 is not in 1..1048576 bytes"),
        (["--idle-timeout", "soon"], "'soon' is not a number of seconds"),
        (["--max-connections", "-1"], "-1 is not in 0..2147483647"),
        (["--max-output-size", "1M"], "--max-output-size (1048576) must be at least"),
        (["--admin-allow", "10.0.0.300"], "--admin-allow: '10.0.0.300' is not an IP address"),
        (["--admin-read-allow", "none,any"], "'none' cannot be combined"),
        (["--job-handle-prefix", "a b"], "must not contain spaces"),
        (["-l", "/nonexistent/dir/log"], "cannot open log file"),
    ],
)
def test_bad_options_give_a_clear_message_and_status_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_cli("-p", str(busy.getsockname()[1]))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_gearmand_options_are_accepted() -> None:
    assert main(["--check-args", "-t", "4", "-R", "--hashtable-buckets", "99", "-b", "64",
                 "--keepalive", "--keepalive-idle", "30", "-j", "-1", "-w", "2",
                 "--exceptions", "--verbose", "info", "-l", "none",
                 "--job-handle-prefix", "H:x"]) == 0  # fmt: skip
    version = run_cli("-V")
    assert version.returncode == 0
    assert version.stdout.startswith("gearproto server ")


def test_gearproto_server_subcommand_serves(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "gearproto", "server", "-p", "{port}", "--job-handle-prefix",
            "H:cli", "-P", str(tmp_path / "pid"), "-q", "builtin"]  # fmt: skip
    server = start_process(argv, log=tmp_path / "log")
    try:
        assert server.host == "127.0.0.1"
        with socket.create_connection(server.address, timeout=5) as sock:
            conn = Connection(Side.CLIENT)
            sock.sendall(conn.send(SubmitJob(b"f", b"", b"x", background=True)))
            while (event := conn.next_event()) is NEED_DATA:
                conn.receive_data(sock.recv(100))
            assert event == JobCreated(b"H:cli:1")
        assert (tmp_path / "pid").read_text().strip() == str(server.pid)
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert not (tmp_path / "pid").exists()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "trio"])
def test_sigint_and_sigterm_stop_on_every_loop(tmp_path: Path, loop: str) -> None:
    argv = [*SERVER, "-p", "{port}", "--loop", loop, "-q", "builtin"]
    server = start_process(argv, log=tmp_path / "log")
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_sigusr1_waits_for_queued_jobs(tmp_path: Path) -> None:
    argv = [*SERVER, "-p", "{port}", "--libsqlite3-db", str(tmp_path / "q.sqlite")]
    server = start_process(argv, log=tmp_path / "log")
    try:
        with socket.create_connection(server.address, timeout=5) as client:
            client.sendall(
                Connection(Side.CLIENT).send(SubmitJob(b"f", b"", b"x", background=True))
            )
            assert client.recv(100).startswith(b"\0RES\0\0\0\x08")
            worker = socket.create_connection(server.address, timeout=5)
            server.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            assert server.proc.poll() is None  # a job is still queued
            # New connections are refused now.
            with pytest.raises(OSError):
                socket.create_connection(server.address, timeout=1).close()
            worker.sendall(b"\0REQ\0\0\0\x01\0\0\0\x01f" + b"\0REQ\0\0\0\x1e\0\0\0\x00")
            data = worker.recv(1000)
            assert data[4:8] == (31).to_bytes(4, "big")  # JOB_ASSIGN_UNIQ
            handle = data[12:].split(b"\0")[0]
            worker.sendall(
                b"\0REQ\0\0\0\x0d" + (len(handle) + 1).to_bytes(4, "big") + handle + b"\0"
            )
            assert server.proc.wait(10) == 0
            worker.close()
    finally:
        server.stop()


def test_port_from_environment_and_the_default_durable_queue(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, GEARMAND_PORT=str(port), XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.Popen([*SERVER], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("the server did not listen on $GEARMAND_PORT")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    # With no queue option the durable SQLite queue is used, one file per port.
    queue = tmp_path / "state" / "gearproto" / f"queue-{port}.sqlite"
    with SQLiteStore(queue) as store:
        assert store.load() == []


def test_default_queue_file_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_queue_file(4730) == tmp_path / "gearproto" / "queue-4730.sqlite"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the spec: absolute only
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "gearproto" / "queue-7003.sqlite"
    assert default_queue_file(7003) == expected


def test_memory_queue_and_port_zero_need_no_file(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    for args in (["-q", "builtin", "-p", "0"], ["-p", "0"]):
        proc = subprocess.Popen([*SERVER, *args, "-l", "none"], env=env)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(10) == 0
    assert not (tmp_path / "state").exists()


def test_unusable_queue_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    env = dict(os.environ, XDG_STATE_HOME=str(blocker))
    result = subprocess.run([*SERVER, "-p", str(free_port())], env=env, capture_output=True,
                            text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "cannot create the queue directory" in result.stderr
    assert "Traceback" not in result.stderr
