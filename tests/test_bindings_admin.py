"""Admin commands on every binding, and interop with gearmand's own tools."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

import pytest
from helpers.bindings import Harness, wait_until
from helpers.procs import GEARADMIN, GEARMAN, ServerProcess

from gearproto import admin
from gearproto.bindings._outcomes import Accepted, AdminCommandError

pytestmark = pytest.mark.timeout(60)


def addr(server: ServerProcess) -> str:
    return f"{server.host}:{server.port}"


def test_every_admin_command(
    harness: Harness, job_server: ServerProcess, job_server_kind: str
) -> None:
    client = harness.client(addr(job_server))
    bg = client.submit("adm", b"x", unique="adm-u", priority="high", background=True)
    assert isinstance(bg.wait(), Accepted)
    a = harness.admin(addr(job_server))
    assert a.status() == admin.StatusReply((admin.StatusRow(b"adm", 1, 0, 0),))
    assert a.priority_status() == admin.PriorityStatusReply(
        (admin.PriorityStatusRow(b"adm", 1, 0, 0, 0),)
    )
    jobs = a.show_jobs().rows
    assert [row.handle for row in jobs] == [bg.handle]
    assert a.show_unique_jobs().uniques == (b"adm-u",)
    assert a.getpid() == job_server.pid
    # Our server names itself (docs/deviations.md); gearmand gives its release.
    assert a.version().startswith(b"1.1" if job_server_kind == "gearmand" else b"gearproto-")
    assert a.verbose() == b"ERROR"
    assert a.create_function("made") == admin.AdminOk()
    assert any(r.function == b"made" for r in a.status().rows)
    assert a.drop_function("made") == admin.AdminOk()
    assert a.max_queue("adm", 5) == admin.AdminOk()
    assert a.cancel_job(bg.handle) == admin.AdminOk()
    assert isinstance(a.workers(), admin.WorkersReply)
    with pytest.raises(AdminCommandError, match="UNKNOWN_JOB"):
        a.cancel_job("H:none:1")
    assert a.command(admin.Version()).value == a.version()
    if job_server_kind == "gearmand":
        with pytest.raises(AdminCommandError, match="UNKNOWN_COMMAND"):
            a.shutdown()  # removed from gearmand in 1.1.15
    else:
        # Back in our server, from loopback only (docs/deviations.md): it stops.
        assert a.shutdown() == admin.AdminOk()
        assert job_server.proc.wait(10) == 0


def test_gearman_tool_as_client_against_our_worker(
    harness: Harness, job_server: ServerProcess
) -> None:
    assert GEARMAN is not None
    harness.worker(addr(job_server), {"rev": lambda job: job.data[::-1]}).start()
    base = [GEARMAN, "-h", job_server.host, "-p", str(job_server.port), "-f", "rev"]
    out = subprocess.run([*base, "hello world"], capture_output=True, timeout=20, check=True)
    assert out.stdout == b"dlrow olleh"
    out = subprocess.run(base, input=b"from stdin", capture_output=True, timeout=20, check=True)
    assert out.stdout == b"nidts morf"


def test_gearman_tool_as_worker_for_our_client(harness: Harness, job_server: ServerProcess) -> None:
    assert GEARMAN is not None
    argv = [GEARMAN, "-h", job_server.host, "-p", str(job_server.port), "-w", "-f", "upper"]
    proc = subprocess.Popen([*argv, "--", "tr", "a-z", "A-Z"])
    try:
        client = harness.client(addr(job_server))
        assert client.call("upper", b"shout this", timeout=20) == b"SHOUT THIS"
    finally:
        proc.terminate()
        proc.wait(10)


def test_gearadmin_status_matches_our_parse(harness: Harness, job_server: ServerProcess) -> None:
    assert GEARADMIN is not None
    release = threading.Event()

    def hold(job: Any) -> bytes:
        release.wait(20)
        return b""

    harness.worker(addr(job_server), {"held": hold}).start()
    client = harness.client(addr(job_server))
    for i in range(3):
        client.submit("held", b"%d" % i, background=True).wait()
        client.submit("other", b"%d" % i, background=True).wait()
    a = harness.admin(addr(job_server))
    wait_until(lambda: any(r.function == b"held" and r.running == 1 for r in a.status().rows))
    ours = a.status()
    tool = subprocess.run(
        [GEARADMIN, "-h", job_server.host, "-p", str(job_server.port), "--status"],
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout
    release.set()
    lines = tool.split(b"\n")
    assert lines[-2:] == [b".", b""]
    theirs = set()
    for line in lines[:-2]:
        function, total, running, workers = line.split(b"\t")
        theirs.add(admin.StatusRow(function, int(total), int(running), int(workers)))
    assert set(ours.rows) == theirs
    assert admin.StatusRow(b"held", 3, 1, 1) in theirs
    assert admin.StatusRow(b"other", 3, 0, 0) in theirs
