"""Start real server processes on free loopback ports, and stop them by PID.

Used by every test that talks to the real gearmand (``gearman-job-server``) or to our
own server as a separate process.  Ports come from the kernel (bind to port 0), never
from a fixed list; a process that fails to start is retried on another port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GEARMAND = shutil.which("gearmand", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
GEARMAN = shutil.which("gearman")
GEARADMIN = shutil.which("gearadmin")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll until ``host:port`` accepts connections; False if ``proc`` exited or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@dataclass
class ServerProcess:
    """A server process we started: its address, PID and captured stderr path."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the process (by PID) and wait for it; kill it if it does not exit."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        self.stop(signal.SIGKILL)


def start_process(
    argv_for_port: Sequence[str],
    *,
    log: Path,
    host: str = "127.0.0.1",
    attempts: int = 5,
    timeout: float = 10.0,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``argv_for_port`` (with ``{port}`` and ``{host}`` filled in) on a free port."""
    last_error = ""
    for _ in range(attempts):
        port = free_port(host)
        argv = [a.format(port=port, host=host) for a in argv_for_port]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        if wait_listening(host, port, proc, timeout):
            return ServerProcess(host, port, proc, log, argv)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        last_error = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"could not start {argv_for_port[0]}: {last_error}")


@contextlib.contextmanager
def gearmand(
    tmp_path: Path, *args: str, handle_prefix: str = "H:test", threads: int | None = None
) -> Iterator[ServerProcess]:
    """Run the real gearmand on a free loopback port for the duration of the block."""
    if GEARMAND is None:
        raise RuntimeError("gearmand is not installed (apt-get install gearman-job-server)")
    argv = [
        GEARMAND,
        "-L",
        "{host}",
        "-p",
        "{port}",
        "-l",
        "stderr",
        "--verbose",
        "ERROR",
        "--job-handle-prefix",
        handle_prefix,
        "-P",
        str(tmp_path / "gearmand.pid"),
    ]
    if threads is not None:
        argv += ["-t", str(threads)]
    argv += list(args)
    server = start_process(argv, log=tmp_path / "gearmand.log")
    try:
        yield server
    finally:
        server.stop()
