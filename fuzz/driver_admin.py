"""Admin side of the stateful driver: listings checked against the job model.

``status``, ``prioritystatus`` and ``workers`` are read over a raw admin connection
(the rows go to the forged-rows oracle before anything parses them) and compared with
the model; ``cancel job``, ``drop function`` and ``maxqueue`` change what the model
expects.  :class:`AdminChecks` is mixed into :class:`~gearproto.fuzz.driver.Driver`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from gearproto import admin

from .listings import Ownership, forged_rows
from .model import Job, JobState, Model, Range
from .peer import Peer, PeerClosed, PeerTimeout
from .verdict import FindingClass, Violation

__all__ = ["WEIRD", "AdminChecks", "AdminLink", "ClientPeer", "WorkerPeer"]

#: Characters that break line- and column-based admin output.
WEIRD = (b"\n", b"\t", b" ", b"\r\n")


@dataclass
class ClientPeer:
    """A client connection of the stateful driver."""

    cid: int
    peer: Peer
    exceptions: bool = False
    #: Terminal packets received, per handle.
    results: dict[bytes, list[tuple[str, bytes]]] = field(default_factory=dict)


@dataclass
class WorkerPeer:
    """A worker connection of the stateful driver."""

    wid: int
    peer: Peer
    client_id: bytes
    functions: dict[bytes, int] = field(default_factory=dict)
    held: list[bytes] = field(default_factory=list)
    sleeping: bool = False
    woken: int = 0


class AdminLink:
    """A raw admin connection: rows are checked by the oracle, not parsed by the core."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.buf = b""

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout("admin: no reply")
            if not self.peer.wait_readable(left):
                continue
            try:
                data = self.peer.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                raise PeerClosed("admin: connection closed by the server")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line[:-1] if line.endswith(b"\r") else line

    def command(self, command: admin.AdminCommand, timeout: float) -> tuple[str, list[bytes]]:
        """``("listing", rows)``, ``("ok", [value])`` or ``("err", [line])``."""
        self.peer.write(admin.format_command(command))
        deadline = time.monotonic() + timeout
        first = self._line(deadline)
        if type(command) in admin.LISTING_COMMANDS:
            if first.startswith(b"ERR "):
                return "err", [first]
            rows: list[bytes] = []
            line = first
            while line != b".":
                rows.append(line)
                line = self._line(deadline)
            return "listing", rows
        if first.startswith(b"OK"):
            return "ok", [first[3:]]
        return "err", [first]


class AdminChecks:
    """Admin actions and listing checks; needs the driver's state (declared below)."""

    prefix: bytes
    functions: list[bytes]
    names: set[bytes]
    ids: set[bytes]
    model: Model
    workers: list[WorkerPeer]
    ghosts: dict[bytes, int]
    maxqueue: dict[bytes, int]
    unsupported: set[str]

    def _admin_cmd(self, command: admin.AdminCommand) -> tuple[str, list[bytes]]:
        raise NotImplementedError

    def _job(self, index: int) -> Job | None:
        raise NotImplementedError

    def _await_gone(self, client_id: bytes) -> bool:
        """Poll ``workers`` until ``client_id`` is gone (the server saw the close)."""
        if "workers" in self.unsupported:
            return False
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            kind, rows = self._admin_cmd(admin.Workers())
            if kind != "listing":
                self.unsupported.add("workers")
                return False
            if not any(f" {client_id.decode('latin-1')} :".encode("latin-1") in r for r in rows):
                return True
            time.sleep(0.01)
        return False

    def _owner(self) -> Ownership:
        return Ownership((self.prefix,), set(self.names), set(self.ids))

    def _do_admin(self, action: dict[str, Any]) -> None:
        what = action["what"]
        if what in self.unsupported:
            return
        commands: dict[str, admin.AdminCommand] = {
            "status": admin.Status(),
            "prioritystatus": admin.PriorityStatus(),
            "workers": admin.Workers(),
        }
        command = commands[what]
        kind, rows = self._admin_cmd(command)
        if kind != "listing":
            self.unsupported.add(what)
            return
        problems = forged_rows(type(command), rows, self._owner())
        if problems:
            raise Violation(
                FindingClass.FORGED_ROWS,
                f"{what}",
                f"{what}: {problems[0]}",
                {"problems": problems[:10], "rows": [r[:120] for r in rows[-20:]]},
            )
        if what == "status":
            self._check_status(rows)
        elif what == "prioritystatus":
            self._check_priority(rows)
        else:
            self._check_workers(rows)

    def _parsed(self, command: type[Any], rows: list[bytes]) -> dict[bytes, Any]:
        out: dict[bytes, Any] = {}
        for row in rows:
            if not row.startswith(self.prefix):
                continue
            with contextlib.suppress(admin.AdminParseError):
                reply = admin.parse_listing(command, [row])
                if isinstance(reply, admin.StatusReply | admin.PriorityStatusReply):
                    out[reply.rows[0].function] = reply.rows[0]
        return out

    def _registrations(self, fn: bytes) -> Range:
        holders = [w.functions[fn] for w in self.workers if fn in w.functions]
        return Range(len(holders), sum(holders) + self.ghosts.get(fn, 0))

    def _check_status(self, rows: list[bytes]) -> None:
        table = self._parsed(admin.Status, rows)
        for fn in self.functions:
            counts = self.model.counts(fn)
            workers = self._registrations(fn)
            row = table.get(fn)
            if row is None:
                if counts["total"].low or workers.low:
                    raise Violation(
                        FindingClass.STATUS_MISMATCH,
                        "status-missing-row",
                        f"status has no row for {fn!r}, which has {counts['total']} job(s)"
                        f" and {workers} worker(s)",
                    )
                continue
            for name, value, expected in (
                ("total", row.total, counts["total"]),
                ("running", row.running, counts["running"]),
                ("workers", row.workers, workers),
            ):
                if value not in expected:
                    raise Violation(
                        FindingClass.STATUS_MISMATCH,
                        f"status-{name}",
                        f"status shows {name}={value} for {fn!r}; the model allows {expected}",
                        {"row": repr(row), "jobs": self._job_table(fn)},
                    )

    def _check_priority(self, rows: list[bytes]) -> None:
        table = self._parsed(admin.PriorityStatus, rows)
        for fn in self.functions:
            row = table.get(fn)
            if row is None:
                continue
            ranges = self.model.queued_by_priority(fn)
            for name, value, expected in zip(
                ("high", "normal", "low"), (row.high, row.normal, row.low), ranges, strict=True
            ):
                if value not in expected:
                    raise Violation(
                        FindingClass.STATUS_MISMATCH,
                        f"prioritystatus-{name}",
                        f"prioritystatus shows {name}={value} queued for {fn!r};"
                        f" the model allows {expected}",
                        {"row": repr(row), "jobs": self._job_table(fn)},
                    )

    def _check_workers(self, rows: list[bytes]) -> None:
        by_id: dict[bytes, admin.WorkerRow] = {}
        for row in rows:
            with contextlib.suppress(admin.AdminParseError):
                reply = admin.parse_listing(admin.Workers, [row])
                if isinstance(reply, admin.WorkersReply):
                    by_id[reply.rows[0].client_id] = reply.rows[0]
        for worker in self.workers:
            if any(c in worker.client_id for c in WEIRD):
                continue
            listed = by_id.get(worker.client_id)
            if listed is None:
                raise Violation(
                    FindingClass.STATUS_MISMATCH,
                    "workers-missing-row",
                    f"workers does not list worker {worker.wid} ({worker.client_id!r})",
                )
            registered = {f for f in worker.functions if not any(c in f for c in WEIRD)}
            shown = set(listed.functions)
            if not registered <= shown:
                raise Violation(
                    FindingClass.STATUS_MISMATCH,
                    "workers-functions",
                    f"workers lists {sorted(shown)!r} for worker {worker.wid}, which"
                    f" registered {sorted(registered)!r}",
                )

    def _job_table(self, fn: bytes) -> list[tuple[int, str, bool, bool]]:
        return [
            (j.seq, j.state.value, j.in_doubt, j.requeue_pending)
            for j in self.model.jobs
            if j.function == fn
        ]

    def _do_cancel(self, action: dict[str, Any]) -> None:
        job = self._job(action["job"])
        if job is None or "cancel" in self.unsupported:
            return
        kind, rows = self._admin_cmd(admin.CancelJob(job.handle))
        line = rows[0] if rows else b""
        if kind == "ok":
            if job.state is JobState.QUEUED:
                job.state = JobState.CANCELLED
            job.cancelled = True
            return
        if b"UNKNOWN_JOB" in line:
            if job.certain and not job.requeue_pending:
                raise Violation(
                    FindingClass.STATUS_MISMATCH,
                    "cancel-unknown",
                    f"cancel job says UNKNOWN_JOB for job {job.seq}, which is {job.state.value}",
                )
            return
        self.unsupported.add("cancel")

    def _do_drop_function(self, action: dict[str, Any]) -> None:
        fn = self.functions[action["fn"] % 3]
        kind, _rows = self._admin_cmd(admin.DropFunction(fn))
        if kind != "ok":
            return
        for job in self.model.jobs:
            if job.function == fn and job.state is JobState.QUEUED:
                job.dropped = True

    def _do_maxqueue(self, action: dict[str, Any]) -> None:
        fn = self.functions[action["fn"] % 3]
        size = action["size"]
        kind, _rows = self._admin_cmd(admin.MaxQueue(fn, (size,)))
        if kind == "ok":
            self.maxqueue[fn] = size
