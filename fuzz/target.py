"""The server under test: liveness probes, its process, its memory, restarts.

A target is an address plus, optionally, the PID of its process (for crash detection
and RSS) and a command that starts it again (``--restart-cmd``).  Processes started
by that command belong to the fuzzer: it may kill them when they hang and it stops
them when the campaign ends.  A process the user started is only ever killed when the
user gave both its ``--pid`` and a ``--restart-cmd`` (that is the user saying "you may
replace it").
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gearproto import PacketType

from .address import Address

__all__ = ["Health", "Target", "TargetError", "probe_packet"]

_HEADER = struct.Struct(">4sII")


class TargetError(RuntimeError):
    """The target cannot be used (never came up, cannot be restarted, ...)."""


def probe_packet(token: bytes) -> bytes:
    """GET_STATUS for a made-up handle: every server must answer it with STATUS_RES.

    Used instead of ECHO_REQ because some servers (geard) do not implement ECHO.
    """
    return _HEADER.pack(b"\0REQ", PacketType.GET_STATUS, len(token)) + token


def _probe_answered(buf: bytes, token: bytes) -> bool:
    """True once ``buf`` holds a STATUS_RES for ``token`` (skipping other replies)."""
    pos = 0
    n = len(buf)
    while pos < n:
        if buf[pos] != 0:
            newline = buf.find(b"\n", pos)
            if newline < 0:
                return False
            pos = newline + 1
            continue
        if n - pos < 12:
            return False
        _magic, ptype, size = _HEADER.unpack_from(buf, pos)
        end = pos + 12 + size
        if end > n:
            return False
        if ptype == PacketType.STATUS_RES and buf[pos + 12 : end].split(b"\0", 1)[0] == token:
            return True
        pos = end
    return False


@dataclass(frozen=True, slots=True)
class Health:
    """Result of one liveness check on a fresh connection."""

    #: ``"ok"``, ``"refused"`` (nothing listens), ``"closed"`` (accepted, then closed
    #: without answering), ``"timeout"`` (accepted, never answered).
    state: str
    latency: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


class Target:
    """One server under test."""

    def __init__(
        self,
        address: Address,
        *,
        pid: int | None = None,
        restart_cmd: str | None = None,
        log_dir: Path | None = None,
        label: str = "target",
    ) -> None:
        self.address = address
        self.pid = pid
        self.label = label
        self.restart_argv = shlex.split(restart_cmd) if restart_cmd else None
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._probe_counter = 0
        self.last_log: Path | None = None
        #: The user said the process at ``pid`` may be replaced.
        self._may_kill_pid = pid is not None and restart_cmd is not None

    def __str__(self) -> str:
        return f"{self.label} {self.address}"

    # ----------------------------------------------------------------- connecting

    def connect(self, timeout: float = 2.0) -> socket.socket:
        sock = socket.socket(self.address.family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((self.address.host, self.address.port))
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def next_token(self, kind: str = "live") -> bytes:
        self._probe_counter += 1
        return b"fz-%s-%d-%d" % (kind.encode(), os.getpid(), self._probe_counter)

    def check(self, timeout: float = 2.0) -> Health:
        """Liveness: a fresh connection must answer GET_STATUS within ``timeout``."""
        start = time.monotonic()
        token = self.next_token()
        try:
            sock = self.connect(timeout)
        except ConnectionRefusedError:
            return Health("refused", time.monotonic() - start)
        except OSError as exc:
            return Health(
                "timeout" if isinstance(exc, TimeoutError) else "refused",
                time.monotonic() - start,
                str(exc),
            )
        try:
            sock.sendall(probe_packet(token))
            buf = b""
            deadline = start + timeout
            while not _probe_answered(buf, token):
                left = deadline - time.monotonic()
                if left <= 0:
                    return Health("timeout", time.monotonic() - start)
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    return Health("closed", time.monotonic() - start)
                buf += data
            return Health("ok", time.monotonic() - start)
        except TimeoutError:
            return Health("timeout", time.monotonic() - start)
        except OSError as exc:
            return Health("closed", time.monotonic() - start, str(exc))
        finally:
            _abort(sock)

    def wait_up(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            if self.check(1.0).ok:
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------- process

    @property
    def current_pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        return self.pid

    def process_alive(self) -> bool | None:
        """Whether the target's process runs (``None`` if no PID is known)."""
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return False
        # The state letter follows the command name in parentheses; Z = zombie.
        return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")

    def exit_status(self) -> str:
        """How the process ended, if we know (``"killed by SIGSEGV"``, ``"exit 1"``)."""
        if self.proc is None or self.proc.returncode is None:
            return "process gone" if self.pid is not None else "stopped accepting connections"
        code = self.proc.returncode
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def rss(self) -> int | None:
        """Resident memory of the target process in bytes (``None`` if unknown)."""
        pid = self.current_pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the log of the process we started last (crash backtraces)."""
        if self.last_log is None or not self.last_log.exists():
            return ""
        return self.last_log.read_bytes()[-limit:].decode("utf-8", "replace")

    @property
    def can_restart(self) -> bool:
        return self.restart_argv is not None

    def restart(self, timeout: float = 15.0) -> bool:
        """Start the target again with ``--restart-cmd``; True once it answers."""
        if self.restart_argv is None:
            return False
        self._stop_own(kill=True)
        if self._may_kill_pid and self.pid is not None and self.process_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait_gone(self.pid, 5.0)
        self.restarts += 1
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.last_log = self.log_dir / f"{self.label}-restart-{self.restarts}.log"
            out = open(self.last_log, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.restart_argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise TargetError(f"--restart-cmd failed to start: {exc}") from None
        finally:
            if not isinstance(out, int):
                out.close()
        self.pid = None
        self._may_kill_pid = False
        return self.wait_up(timeout)

    def kill_hung(self) -> bool:
        """Kill a hung target if it is ours to kill; True if it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self._stop_own(kill=True)
            return True
        if self._may_kill_pid and self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
            return self._wait_gone(self.pid, 5.0)
        return False

    def close(self) -> None:
        """Stop the process the fuzzer started, if any."""
        self._stop_own(kill=False)

    def _stop_own(self, *, kill: bool) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            saved, self.pid = self.pid, pid
            try:
                alive = self.process_alive()
            finally:
                self.pid = saved
            if not alive:
                return True
            time.sleep(0.05)
        return False


def _abort(sock: socket.socket) -> None:
    """Close with RST: probes must not leave thousands of TIME_WAIT sockets behind."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
