"""The admin text commands, run against a :class:`~gearproto.server.core.ServerCore`.

Replies are byte-compatible with gearmand 1.1.20 (the formats live in
:mod:`gearproto.admin`); names and ids that peers chose are escaped with
:func:`escape` so that no input can add, split or end a listing row.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gearproto import admin as _admin

from ._state import JobState, Peer

if TYPE_CHECKING:
    from .core import ServerCore

__all__ = ["AdminRunner", "escape"]

# Bytes shown as they are: printable ASCII but space and "%", and non-ASCII (UTF-8
# names stay readable).  Everything else is %XX.
_SAFE = re.compile(rb"[\x21-\x24\x26-\x7e\x80-\xff]*")


def escape(value: bytes) -> bytes:
    """``value`` with spaces, control bytes, DEL and ``%`` written as ``%XX``.

    Injective, and the result never holds a space, tab or line break, so a
    listing row stays one row with its columns intact.
    """
    if _SAFE.fullmatch(value):
        return value
    return b"".join(
        bytes([c]) if (0x21 <= c <= 0x7E and c != 0x25) or c >= 0x80 else b"%%%02X" % c
        for c in value
    )


def _unique_cell(unique: bytes) -> bytes:
    # A row of just "." would end the ``show unique jobs`` listing early.
    return b"%2E" if unique == b"." else escape(unique)


_DROP_BUSY = _admin.AdminError(b"there", b"are still connected workers or executing clients")
_DROP_QUEUED = _admin.AdminError(b"there", b"are still queued jobs")
_DROP_MISSING = _admin.AdminError(b"function", b"not found")


class AdminRunner:
    """Runs admin commands for one core."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def run(self, peer: Peer, command: Any, now: float) -> None:
        core = self.core
        refusal = core.config.admin_guard(peer.info, command)
        if refusal is not None and type(command) is not _admin.AdminBadCommand:
            core._out(peer, _admin.format_reply(refusal))
            return
        core._out(peer, _admin.format_reply(self.reply(peer, command)))

    def reply(self, peer: Peer, command: Any) -> _admin.AdminReply:
        core = self.core
        cls = type(command)
        if cls is _admin.Status:
            return _admin.StatusReply(
                tuple(
                    _admin.StatusRow(escape(f.name), f.total, f.running, f.registrations)
                    for f in core.functions()
                )
            )
        if cls is _admin.PriorityStatus:
            return _admin.PriorityStatusReply(
                tuple(
                    _admin.PriorityStatusRow(
                        escape(f.name), f.queued[0], f.queued[1], f.queued[2], f.registrations
                    )
                    for f in core.functions()
                )
            )
        if cls is _admin.Workers:
            rows = []
            # gearmand lists the newest connection first.
            for other in reversed(list(core.peers())):
                fd = other.info.fd
                if fd < 0:
                    fd = other.conn_id if type(other.conn_id) is int else -1
                rows.append(
                    _admin.WorkerRow(
                        fd,
                        escape(other.info.host.encode()),
                        escape(other.client_id),
                        tuple(escape(name) for name in other.abilities),
                    )
                )
            return _admin.WorkersReply(tuple(rows))
        if cls is _admin.ShowJobs:
            return _admin.ShowJobsReply(
                tuple(
                    _admin.JobRow(
                        escape(job.handle),
                        job.retries,
                        # A cancelled or abandoned job its worker still holds.
                        not job.clients and not job.background,
                        job.background,
                    )
                    for job in core.jobs()
                    if job.state is not JobState.PENDING
                )
            )
        if cls is _admin.ShowUniqueJobs:
            return _admin.ShowUniqueJobsReply(
                tuple(
                    _unique_cell(job.unique)
                    for job in core.jobs()
                    if job.state is not JobState.PENDING
                )
            )
        if cls is _admin.MaxQueue:
            function = core._functions.get(command.function)
            if function is not None:
                function.max_queue = [command.high, command.normal, command.low]
            return _admin.AdminOk()
        if cls is _admin.CancelJob:
            if core.cancel(command.handle):
                return _admin.AdminOk()
            return _admin.AdminError(b"UNKNOWN_JOB")
        if cls is _admin.CreateFunction:
            core._function(command.function)
            return _admin.AdminOk()
        if cls is _admin.DropFunction:
            return self._drop(command.function)
        if cls is _admin.GetPid:
            return _admin.AdminOk(b"%d" % core.config.pid)
        if cls is _admin.Verbose:
            return _admin.AdminOk(core.config.verbose)
        if cls is _admin.Version:
            return _admin.AdminOk(core.config.version)
        if cls is _admin.Shutdown:
            core.request_stop(graceful=command.graceful)
            return _admin.AdminOk()
        if cls is _admin.AdminBadCommand:
            reply: _admin.AdminError = command.reply
            return reply
        raise AssertionError(f"unhandled admin command {cls.__name__}")  # pragma: no cover

    def _drop(self, name: bytes) -> _admin.AdminReply:
        core = self.core
        function = core._functions.get(name)
        if function is None:
            # gearmand matches the name without regard to case.
            lowered = name.lower()
            function = next((f for f in core.functions() if f.name.lower() == lowered), None)
        if function is None:
            return _DROP_MISSING
        if function.registrations or function.running:
            return _DROP_BUSY
        if function.total:
            # Dropping would orphan queued jobs: refuse instead (gearmand frees the
            # function under them).
            return _DROP_QUEUED
        core.drop_function(function)
        return _admin.AdminOk()
