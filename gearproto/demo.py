"""``python -m gearproto.demo``: one job's life through the sans-IO core, in memory.

A client submits a job, a worker grabs and completes it, and an operator asks for the
server's status -- three client-side connections and the server's views of them, with
no network.  Every event is printed with the bytes that carried it.
"""

from __future__ import annotations

import sys
from typing import Any

from . import admin
from ._connection import Connection, Side
from .events import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    SubmitJob,
    WorkComplete,
    WorkStatus,
)

__all__ = ["main"]


def _hop(label: str, src: Connection, dst: Connection, event: Any) -> Any:
    wire = src.send(event)
    dst.receive_data(wire)
    got = dst.next_event()
    print(f"{label:18} {got!r}\n{'':18} {wire!r}")
    return got


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    client, client_view = Connection(Side.CLIENT), Connection(Side.SERVER)
    worker, worker_view = Connection(Side.CLIENT), Connection(Side.SERVER)
    operator, operator_view = Connection(Side.CLIENT), Connection(Side.SERVER)

    _hop("client -> server", client, client_view, SubmitJob(b"reverse", b"job-1", b"hello"))
    _hop("server -> client", client_view, client, JobCreated(b"H:demo:1"))
    print(f"{'':18} (answers the submission of {client.answered.unique!r})")
    _hop("worker -> server", worker, worker_view, CanDo(b"reverse"))
    _hop("worker -> server", worker, worker_view, GrabJobUniq())
    job = _hop(
        "server -> worker",
        worker_view,
        worker,
        JobAssignUniq(b"H:demo:1", b"reverse", b"job-1", b"hello"),
    )
    for event in (WorkStatus(job.handle, 1, 2), WorkComplete(job.handle, job.data[::-1])):
        relayed = _hop("worker -> server", worker, worker_view, event)
        _hop("server -> client", client_view, client, relayed)
    _hop("operator -> server", operator, operator_view, admin.Status())
    _hop(
        "server -> operator",
        operator_view,
        operator,
        admin.StatusReply((admin.StatusRow(b"reverse", 0, 0, 1),)),
    )
    waiting = len(client.client_handles)
    print(f"\nclient waits for {waiting} job(s); worker is {worker.worker_state.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
