"""Every fuzz oracle fires on a deliberately faulty toy server, and stays quiet on a
correct one.

The toy server below is a small, correct Gearman server built on the sans-IO core;
``--fault NAME`` plants one bug.  It runs as a separate process (``python
tests/test_fuzz_oracles.py --port P --fault NAME``) so that crashes, hangs and memory
growth are real.  Each test aims the matching part of the fuzzer at it: a replayed
byte case, a stateful action list, a differential comparison, or a short campaign.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearproto import (
    NEED_DATA,
    REQ,
    RES,
    Connection,
    LocalProtocolError,
    RemoteProtocolError,
    Side,
    admin,
    events,
    packet_type,
    raw_packet,
)

# ============================================================== the toy server


@dataclass
class _Job:
    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    clients: list[int] = field(default_factory=list)
    worker: int | None = None
    reducer: bytes = b""
    priority: int = 1


@dataclass
class _Peer:
    cid: int
    sock: socket.socket
    conn: Connection
    client_id: bytes = b"-"
    functions: list[bytes] = field(default_factory=list)
    held: set[bytes] = field(default_factory=set)
    sleeping: bool = False
    stalled: bool = False


def _escape(name: bytes) -> bytes:
    return b"".join(b"%%%02X" % c if c <= 0x20 or c == 0x25 else bytes([c]) for c in name)


class ToyServer:
    """A single-threaded Gearman server with one optional planted fault."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.sel = selectors.DefaultSelector()
        self.peers: dict[int, _Peer] = {}
        self.jobs: dict[bytes, _Job] = {}
        self.queue: dict[bytes, deque[bytes]] = {}
        self.uniques: dict[tuple[bytes, bytes], bytes] = {}
        self.counter = 0
        self.ids = 0
        self.hoard: list[bytearray] = []

    # ------------------------------------------------------------ plumbing

    def serve(self, port: int) -> None:
        listener = socket.create_server(("127.0.0.1", port), backlog=512)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, None)
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    sock, _addr = listener.accept()
                    sock.setblocking(True)
                    self.ids += 1
                    peer = _Peer(self.ids, sock, Connection(Side.SERVER))
                    self.peers[peer.cid] = peer
                    self.sel.register(sock, selectors.EVENT_READ, peer.cid)
                else:
                    self._readable(self.peers[key.data])

    def _readable(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
            return
        if peer.stalled:
            return  # the desync fault: this connection is never served again
        peer.conn.receive_data(data)
        while peer.cid in self.peers and not peer.stalled:
            try:
                event = peer.conn.next_event()
            except RemoteProtocolError as exc:
                if exc.hint is not None:
                    self._send(peer, exc.hint)
                if exc.fatal:
                    self._drop(peer)
                    return
                continue
            if event is NEED_DATA:
                return
            self._handle(peer, event)

    def _send(self, peer: _Peer, event: Any) -> None:
        # Replies go through the core (it tracks assignments and owed replies); the
        # faults need replies it refuses to produce, and those are encoded by hand.
        try:
            data = peer.conn.send(event)
        except LocalProtocolError:
            if type(event) in _ADMIN_REPLIES:
                data = admin.format_reply(event)
            else:
                data = raw_packet(RES, packet_type(event), list(_fields(event)))
        self._write(peer, data)

    def _write(self, peer: _Peer, data: bytes) -> None:
        try:
            peer.sock.sendall(data)
        except OSError:
            self._drop(peer)

    def _drop(self, peer: _Peer) -> None:
        if self.peers.pop(peer.cid, None) is None:
            return
        self.sel.unregister(peer.sock)
        peer.sock.close()
        for handle in peer.held:
            job = self.jobs.get(handle)
            if job is not None:
                job.worker = None
                self.queue.setdefault(job.function, deque()).append(handle)
                self._wake(job.function)
        for job in self.jobs.values():
            job.clients = [c for c in job.clients if c != peer.cid]

    def _wake(self, function: bytes) -> None:
        if self.fault == "no-noop":
            return
        for other in list(self.peers.values()):
            if other.sleeping and function in other.functions:
                other.sleeping = False
                self._send(other, events.Noop())

    # ------------------------------------------------------------- requests

    def _handle(self, peer: _Peer, event: Any) -> None:
        fault = self.fault
        match event:
            case events.EchoReq(data=data):
                if fault == "crash" and data == b"crash":
                    os.abort()
                if fault == "hang" and data == b"hang":
                    time.sleep(3600)
                if fault == "desync" and data == b"desync":
                    peer.stalled = True
                    return
                if fault == "leak" and data == b"leak":
                    self.hoard.append(bytearray(b"x" * (96 << 20)))
                if fault == "bad-reply" and data == b"bad":
                    self._write(peer, raw_packet(REQ, 17, [data]))  # ECHO_RES, request magic
                    return
                self._send(peer, events.EchoRes(data))
            case events.GetStatus(handle=handle):
                job = self.jobs.get(handle)
                known = job is not None
                self._send(peer, events.StatusRes(handle, known, bool(job and job.worker), 0, 0))
            case events.GetStatusUnique(unique=unique):
                if fault == "no-reply":
                    return
                found = any(u == unique for (_f, u) in self.uniques)
                self._send(peer, events.StatusResUnique(unique, found, False, 0, 0, 0))
            case events.OptionReq(option=option):
                if fault == "close" and option == b"close":
                    self._drop(peer)
                    return
                if option.lower() == b"exceptions":
                    self._send(peer, events.OptionRes(option))
                else:
                    code = b"OTHER_CODE" if fault == "other-code" else b"UNKNOWN_OPTION"
                    self._send(peer, events.Error(code, b"Server does not recognize given option"))
            case events.CanDo(function=function) | events.CanDoTimeout(function=function):
                peer.functions.append(function)
            case events.CantDo(function=function):
                peer.functions = [f for f in peer.functions if f != function]
            case events.ResetAbilities():
                peer.functions = []
            case events.SetClientId(client_id=client_id):
                peer.client_id = client_id
            case events.PreSleep():
                peer.sleeping = True
                if any(self.queue.get(f) for f in peer.functions):
                    self._wake(peer.functions[0])
            case events.SubmitJobSched() if fault == "crash-sched":
                os.abort()
            case events.SubmitJob() | events.SubmitJobEpoch() | events.SubmitReduceJob():
                self._submit(peer, event)
            case events.GrabJob() | events.GrabJobUniq() | events.GrabJobAll():
                self._grab(peer, event)
            case (
                events.WorkComplete()
                | events.WorkFail()
                | events.WorkException()
                | events.WorkData()
                | events.WorkWarning()
                | events.WorkStatus()
            ):
                self._work(peer, event)
            case admin.Status() | admin.Workers() | admin.PriorityStatus():
                self._listing(peer, event)
            case admin.Version():
                self._send(peer, admin.AdminOk(b"toy"))
            case admin.AdminBadCommand(reply=reply):
                self._send(peer, reply)
            case _:
                if type(event) in _ADMIN:
                    self._send(peer, admin.AdminError(b"UNKNOWN_COMMAND", b"Unsupported"))
                elif isinstance(event, events.SubmitJobSched | events.AllYours | events.Unused):
                    self._send(peer, events.Error(b"INVALID_COMMAND", b"Command not expected"))

    def _submit(self, peer: _Peer, event: Any) -> None:
        background = isinstance(event, events.SubmitJobEpoch) or bool(
            getattr(event, "background", False)
        )
        key = (event.function, event.unique)
        handle = self.uniques.get(key) if event.unique not in (b"", b"-") else None
        if handle is None:
            self.counter += 1
            handle = b"T:%d" % self.counter
            job = _Job(handle, event.function, event.unique, event.data)
            job.priority = int(getattr(event, "priority", 1))
            if isinstance(event, events.SubmitReduceJob):
                job.reducer = event.reducer
            self.jobs[handle] = job
            if event.unique not in (b"", b"-"):
                self.uniques[key] = handle
            if not (self.fault == "lose" and event.data == b"d1"):
                self.queue.setdefault(event.function, deque()).append(handle)
        if not background:
            self.jobs[handle].clients.append(peer.cid)
        self._send(peer, events.JobCreated(handle))
        self._wake(event.function)

    def _grab(self, peer: _Peer, event: Any) -> None:
        peer.sleeping = False
        for function in peer.functions:
            queue = self.queue.get(function)
            if not queue:
                continue
            handle = queue[0] if self.fault == "duplicate" else queue.popleft()
            job = self.jobs[handle]
            job.worker = peer.cid
            peer.held.add(handle)
            data = job.data[::-1] if self.fault == "mixup" else job.data
            if isinstance(event, events.GrabJob):
                reply: Any = events.JobAssign(handle, function, data)
            elif isinstance(event, events.GrabJobAll) and job.reducer:
                reply = events.JobAssignAll(handle, function, job.unique, job.reducer, data)
            else:
                reply = events.JobAssignUniq(handle, function, job.unique, data)
            self._send(peer, reply)
            return
        self._send(peer, events.NoJob())

    def _work(self, peer: _Peer, event: Any) -> None:
        job = self.jobs.get(event.handle)
        if job is None:
            return
        terminal = isinstance(event, events.WorkComplete | events.WorkFail | events.WorkException)
        targets = list(self.peers) if self.fault == "broadcast" else job.clients
        for cid in targets:
            other = self.peers.get(cid)
            if other is None:
                continue
            self._send(other, event)
        if terminal:
            peer.held.discard(job.handle)
            del self.jobs[job.handle]
            self.uniques.pop((job.function, job.unique), None)

    def _listing(self, peer: _Peer, command: Any) -> None:
        raw = self.fault == "forged"
        if isinstance(command, admin.Workers):
            rows = [
                b"%d 127.0.0.1 %s : %s"
                % (
                    p.cid,
                    p.client_id if raw else _escape(p.client_id),
                    b" ".join(f if raw else _escape(f) for f in p.functions),
                )
                for p in self.peers.values()
            ]
        else:
            functions = {f for p in self.peers.values() for f in p.functions} | set(self.queue)
            rows = []
            for function in sorted(functions):
                total = sum(1 for j in self.jobs.values() if j.function == function)
                running = sum(1 for j in self.jobs.values() if j.function == function and j.worker)
                workers = sum(p.functions.count(function) for p in self.peers.values())
                if self.fault == "miscount":
                    total += 1
                name = function if raw else _escape(function)
                if isinstance(command, admin.Status):
                    rows.append(b"%s\t%d\t%d\t%d" % (name, total, running, workers))
                else:
                    queued = [
                        sum(1 for h in self.queue.get(function, ()) if self.jobs[h].priority == p)
                        for p in (0, 1, 2)
                    ]
                    high, normal, low = queued
                    rows.append(b"%s\t%d\t%d\t%d\t%d" % (name, high, normal, low, workers))
        # The rows may hold raw names (the forged fault), which the core refuses to
        # format: settle the owed reply with an empty listing, write the rows by hand.
        empty: admin.AdminReply = admin.StatusReply(())
        if isinstance(command, admin.Workers):
            empty = admin.WorkersReply(())
        elif isinstance(command, admin.PriorityStatus):
            empty = admin.PriorityStatusReply(())
        with contextlib.suppress(LocalProtocolError):
            peer.conn.send(empty)
        self._write(peer, b"".join(r + b"\n" for r in rows) + b".\n")


_ADMIN = {
    admin.MaxQueue,
    admin.ShowJobs,
    admin.ShowUniqueJobs,
    admin.CancelJob,
    admin.CreateFunction,
    admin.DropFunction,
    admin.GetPid,
    admin.Verbose,
    admin.Shutdown,
}
_ADMIN_REPLIES = {admin.AdminOk, admin.AdminError}


def _fields(event: Any) -> Iterator[bytes]:
    for value in event:
        if isinstance(value, bool):
            yield b"1" if value else b"0"
        else:
            yield value if isinstance(value, bytes) else b"%d" % value


def _serve_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault", default="none")
    args = parser.parse_args()
    ToyServer(args.fault).serve(args.port)


if __name__ == "__main__":
    _serve_main()
    sys.exit(0)


# ===================================================================== the tests

import json  # noqa: E402 - the tests need nothing above when run as the server
import subprocess  # noqa: E402

import pytest  # noqa: E402
from helpers.procs import ServerProcess, start_process  # noqa: E402

from gearproto.fuzz.address import Address  # noqa: E402
from gearproto.fuzz.case import Case, Connect, Pause, Send  # noqa: E402
from gearproto.fuzz.differential import compare  # noqa: E402
from gearproto.fuzz.execute import Timeouts, execute  # noqa: E402
from gearproto.fuzz.oracles import judge, server_state  # noqa: E402
from gearproto.fuzz.stateful import replay_actions, run_batch  # noqa: E402
from gearproto.fuzz.target import Target  # noqa: E402
from gearproto.fuzz.verdict import FindingClass, Verdict  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TOY = Path(__file__).resolve()
FAST = Timeouts(probe=0.5, liveness=1.0, crash_wait=2.0, settle=0.05, settle_max=0.3)


def _toy_argv(fault: str) -> list[str]:
    return [sys.executable, str(TOY), "--port", "{port}", "--fault", fault]


@contextlib.contextmanager
def toy(tmp_path: Path, fault: str = "none") -> Iterator[ServerProcess]:
    server = start_process(_toy_argv(fault), log=tmp_path / f"toy-{fault}.log")
    try:
        yield server
    finally:
        server.stop(timeout=5)


def _target(server: ServerProcess) -> Target:
    return Target(Address(server.host, server.port), pid=server.pid)


def _req(ptype: int, *fields: bytes) -> bytes:
    return raw_packet(REQ, ptype, list(fields))


def _judge(target: Target, *sends: bytes, rss_limit: int | None = 32 << 20) -> list[Verdict]:
    steps: list[Any] = [Connect(0), *(Send(0, data) for data in sends)]
    observation = execute(Case(tuple(steps), "test"), target, FAST)
    return judge(observation, server_state(target, FAST), rss_limit=rss_limit)


def _classes(verdicts: list[Verdict]) -> set[FindingClass]:
    return {v.cls for v in verdicts}


ECHO = 16


# ----------------------------------------------------------- byte-level oracles


def test_crash_oracle_sees_the_process_die(tmp_path: Path) -> None:
    with toy(tmp_path, "crash") as server:
        target = _target(server)
        assert _judge(target, _req(ECHO, b"harmless")) == []
        verdicts = _judge(target, _req(ECHO, b"crash"))
    assert [v.cls for v in verdicts] == [FindingClass.CRASH]
    assert "process gone" in verdicts[0].summary or "SIGABRT" in verdicts[0].summary


def test_hang_oracle_sees_the_server_stop_answering(tmp_path: Path) -> None:
    with toy(tmp_path, "hang") as server:
        verdicts = _judge(_target(server), _req(ECHO, b"hang"))
    assert FindingClass.HANG in _classes(verdicts)
    assert FindingClass.CRASH not in _classes(verdicts)


def test_desync_oracle_sees_a_connection_that_stopped_answering(tmp_path: Path) -> None:
    with toy(tmp_path, "desync") as server:
        target = _target(server)
        verdicts = _judge(target, _req(ECHO, b"desync"))
        # Only that connection is stuck: the server still serves others.
        assert target.check(1.0).ok
    assert _classes(verdicts) == {FindingClass.DESYNC}


def test_protocol_oracle_rejects_a_reply_with_the_request_magic(tmp_path: Path) -> None:
    with toy(tmp_path, "bad-reply") as server:
        verdicts = _judge(_target(server), _req(ECHO, b"bad"))
    assert FindingClass.PROTOCOL_VIOLATION in _classes(verdicts)
    assert any("request magic" in v.summary for v in verdicts)


def test_missing_reply_oracle_sees_a_skipped_answer(tmp_path: Path) -> None:
    with toy(tmp_path, "no-reply") as server:
        verdicts = _judge(_target(server), _req(41, b"some-unique") + _req(ECHO, b"after"))
    assert [(v.cls, v.key) for v in verdicts] == [(FindingClass.MISSING_REPLY, "GET_STATUS_UNIQUE")]


def test_unexpected_close_oracle(tmp_path: Path) -> None:
    with toy(tmp_path, "close") as server:
        verdicts = _judge(_target(server), _req(26, b"close"))
    assert [(v.cls, v.key) for v in verdicts] == [(FindingClass.UNEXPECTED_CLOSE, "OPTION_REQ")]


def test_memory_oracle_needs_a_pid_and_sees_growth(tmp_path: Path) -> None:
    with toy(tmp_path, "leak") as server:
        target = _target(server)
        verdicts = _judge(target, _req(ECHO, b"leak"))
        assert [v.cls for v in verdicts] == [FindingClass.MEMORY]
        without_pid = Target(target.address)
        assert _judge(without_pid, _req(ECHO, b"leak")) == []


def test_forged_rows_oracle_on_raw_listings(tmp_path: Path) -> None:
    name = b"fzcase_f1\nfzcase_fake\t9\t9\t9"
    payload = _req(1, name) + b"status\r\n"
    steps = (Connect(0), Send(0, payload))
    case = Case(steps, "test", notes={"prefix": "fzcase_"})
    with toy(tmp_path, "forged") as server:
        target = _target(server)
        verdicts = judge(execute(case, target, FAST), server_state(target, FAST))
    assert _classes(verdicts) == {FindingClass.FORGED_ROWS}
    with toy(tmp_path, "none") as server:
        target = _target(server)
        assert judge(execute(case, target, FAST), server_state(target, FAST)) == []


def test_wrong_client_oracle_on_bytes(tmp_path: Path) -> None:
    # The toy's handles are predictable (T:1, T:2, ...), so a byte case can finish a job.
    steps = (
        Connect(0),
        Connect(1),
        Connect(2),
        Send(0, _req(1, b"fn")),
        Send(1, _req(7, b"fn", b"", b"work")),
        Send(2, _req(ECHO, b"bystander")),
        Pause(50),
        Send(0, _req(9)),
        Pause(50),
        Send(0, _req(13, b"T:1", b"result")),
    )
    with toy(tmp_path, "broadcast") as server:
        target = _target(server)
        verdicts = judge(execute(Case(steps, "test"), target, FAST), server_state(target, FAST))
    wrong = [v for v in verdicts if v.cls is FindingClass.WRONG_CLIENT]
    assert wrong
    assert all("connection 1" not in v.summary for v in wrong)


def test_differential_classifies_error_codes_and_closes(tmp_path: Path) -> None:
    case_code = Case((Connect(0), Send(0, _req(26, b"nonsense"))), "test")
    case_close = Case((Connect(0), Send(0, _req(26, b"close"))), "test")
    with toy(tmp_path, "none") as good, toy(tmp_path, "other-code") as odd:
        a, b = _target(good), _target(odd)
        diffs = compare(execute(case_code, a, FAST), execute(case_code, b, FAST), ("a", "b"))
        same = compare(execute(case_code, a, FAST), execute(case_code, a, FAST), ("a", "a"))
    assert [v.details["kind"] for v in diffs] == ["error-code"]
    assert same == []
    with toy(tmp_path, "none") as good, toy(tmp_path, "close") as closer:
        a, b = _target(good), _target(closer)
        diffs = compare(execute(case_close, a, FAST), execute(case_close, b, FAST), ("a", "b"))
    assert [v.details["kind"] for v in diffs] == ["close-vs-reply"]


# ------------------------------------------------------------ job-model oracles

SUBMIT_BG_D1: dict[str, Any] = {
    "rule": "submit",
    "client": 0,
    "fn": 0,
    "unique": 0,
    "data": 1,
    "priority": 1,
    "background": True,
}
SUBMIT_FG: dict[str, Any] = {
    "rule": "submit",
    "client": 0,
    "fn": 0,
    "unique": 0,
    "data": 2,
    "priority": 1,
    "background": False,
}
JOB_ACTIONS: dict[str, tuple[list[dict[str, Any]], FindingClass]] = {
    # fault: (actions, expected class)
    "lose": ([{"rule": "client"}, SUBMIT_BG_D1], FindingClass.LOST_JOB),
    "duplicate": (
        [
            {"rule": "client"},
            {"rule": "worker"},
            {"rule": "worker"},
            {"rule": "can_do", "worker": 0, "fn": 0},
            {"rule": "can_do", "worker": 1, "fn": 0},
            SUBMIT_BG_D1,
            {"rule": "grab", "worker": 0, "kind": 1},
            {"rule": "grab", "worker": 1, "kind": 1},
        ],
        FindingClass.DUPLICATE_JOB,
    ),
    "broadcast": (
        [
            {"rule": "client"},
            {"rule": "client"},
            {"rule": "worker"},
            {"rule": "can_do", "worker": 0, "fn": 0},
            SUBMIT_FG,
            {"rule": "grab", "worker": 0, "kind": 0},
            {"rule": "work", "worker": 0, "which": 0, "what": "complete"},
        ],
        FindingClass.WRONG_CLIENT,
    ),
    "mixup": (
        [
            {"rule": "client"},
            {"rule": "worker"},
            {"rule": "can_do", "worker": 0, "fn": 0},
            SUBMIT_BG_D1,
            {"rule": "grab", "worker": 0, "kind": 1},
        ],
        FindingClass.JOB_MIXUP,
    ),
    "miscount": (
        [{"rule": "client"}, SUBMIT_BG_D1, {"rule": "admin", "what": "status"}],
        FindingClass.STATUS_MISMATCH,
    ),
    "forged": (
        [
            {"rule": "worker"},
            {"rule": "weird_name", "worker": 0, "kind": 0, "id": False},
            {"rule": "admin", "what": "status"},
        ],
        FindingClass.FORGED_ROWS,
    ),
    "no-noop": (
        [
            {"rule": "client"},
            {"rule": "worker"},
            {"rule": "can_do", "worker": 0, "fn": 0},
            {"rule": "sleep", "worker": 0},
            SUBMIT_BG_D1,
        ],
        FindingClass.MISSED_WAKEUP,
    ),
}


@pytest.mark.parametrize("fault", sorted(JOB_ACTIONS))
def test_job_oracles_fire_on_the_faulty_toy_and_not_on_the_correct_one(
    tmp_path: Path, fault: str
) -> None:
    actions, expected = JOB_ACTIONS[fault]
    with toy(tmp_path, fault) as server:
        hit = replay_actions(_target(server), actions, timeouts=FAST)
    assert hit is not None, f"{fault}: no violation"
    assert hit.cls is expected, hit.message
    with toy(tmp_path, "none") as server:
        assert replay_actions(_target(server), actions, timeouts=FAST) is None


def test_stateful_engine_shrinks_a_lost_job_to_a_short_reproducer(tmp_path: Path) -> None:
    with toy(tmp_path, "lose") as server:
        target = _target(server)
        findings = list(
            run_batch(
                target,
                seed=3,
                batch=0,
                deadline=time.monotonic() + 60,
                timeouts=FAST,
                shrink_time=5,
                examples=15,
                steps=15,
            )
        )
        lost = [f for f in findings if f.cls is FindingClass.LOST_JOB]
        assert lost, [f.verdict.summary for f in findings]
        actions = lost[0].actions or []
        # Minimal: a client and one submission with the payload the toy drops.
        assert len(actions) <= 3
        assert any(a["rule"] == "submit" and a["data"] % 4 == 1 for a in actions)
        assert replay_actions(target, actions, timeouts=FAST) is not None


def test_stateful_engine_finds_nothing_on_the_correct_toy(tmp_path: Path) -> None:
    with toy(tmp_path, "none") as server:
        findings = list(
            run_batch(
                _target(server),
                seed=5,
                batch=0,
                deadline=time.monotonic() + 60,
                timeouts=FAST,
                shrink_time=10,
                examples=25,
                steps=25,
            )
        )
    assert [f.verdict.summary for f in findings] == []


# ------------------------------------------------------------- whole campaigns


def test_campaign_finds_restarts_and_replays_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with toy(tmp_path, "crash-sched") as server:
        restart = " ".join(_toy_argv("crash-sched")).format(port=server.port)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gearproto",
                "fuzz",
                "--target",
                f"127.0.0.1:{server.port}",
                "--pid",
                str(server.pid),
                "--restart-cmd",
                restart,
                "--budget",
                "60s",
                "--max-cases",
                "150",
                "--seed",
                "1",
                "--out",
                str(out),
                "--minimize-time",
                "10s",
                "--stateful-share",
                "0",
                "--probe-timeout",
                "0.5s",
                "--families",
                "valid.sequence",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=110,
        )
        assert result.returncode == 1, result.stderr[-2000:]
        report = json.loads(result.stdout)
        summary = json.loads((out / "campaign.json").read_text())
        assert summary["restarts"] >= 1
        # The campaign went on after the first crash.
        assert summary["cases"] > 50
        crashes = [f for f in report["findings"] if f["class"] == "crash"]
        assert len(crashes) == 1
        finding = Path(crashes[0]["directory"])
        assert {p.name for p in finding.iterdir()} >= {
            "reproducer.json",
            "finding.json",
            "report.md",
            "reproduce.py",
        }
        reproducer = json.loads((finding / "reproducer.json").read_text())
        sent = "".join(s.get("data", "") for s in reproducer["steps"])
        assert "\x00REQ\x00\x00\x00#" in sent  # SUBMIT_JOB_SCHED (type 35) is the trigger
        assert "progress" not in result.stdout
        assert "findings" in (out / "summary.md").read_text()
    # Replay against a fresh instance of the faulty server: it crashes again.
    with toy(tmp_path, "crash-sched") as server:
        replay = subprocess.run(
            [
                sys.executable,
                "-m",
                "gearproto",
                "fuzz",
                "replay",
                str(finding),
                "--target",
                f"127.0.0.1:{server.port}",
                "--pid",
                str(server.pid),
                "--probe-timeout",
                "0.5s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "REPRODUCED" in replay.stdout
    assert "crash" in replay.stdout
    with toy(tmp_path, "none") as server:
        clean = subprocess.run(
            [
                sys.executable,
                "-m",
                "gearproto",
                "fuzz",
                "replay",
                str(finding),
                "--target",
                f"127.0.0.1:{server.port}",
                "--probe-timeout",
                "0.5s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "not reproduced" in clean.stdout


def test_campaign_on_the_correct_toy_finds_nothing(tmp_path: Path) -> None:
    with toy(tmp_path, "none") as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gearproto",
                "fuzz",
                "--target",
                f"127.0.0.1:{server.port}",
                "--pid",
                str(server.pid),
                "--budget",
                "25s",
                "--max-cases",
                "300",
                "--seed",
                "2",
                "--out",
                str(tmp_path / "out"),
                "--probe-timeout",
                "0.5s",
                "--families",
                "valid,admin,split,mutate",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "out" / "campaign.json").read_text())
    assert summary["findings"] == []
    assert summary["cases"] > 0
