"""Fuzz target for the job server's sans-IO core (:class:`gearproto.server.ServerCore`).

One input drives one core through a sequence of operations decoded from its bytes:
fake connections open and close (FIN, EOF, dropped by the runner), send requests,
admin lines, malformed frames and byte-level mutations, split anywhere (big packets
take the runner's large-frame path), the clock moves (epoch jobs, CAN_DO_TIMEOUT,
partial-packet and idle timeouts), and durable-store batches are committed or fail.
The configuration (limits, timeouts, connection and queue caps, retries, a durable
store, handle style) is drawn from the input too.

After every operation the target checks:

* no exception comes out of the core (it documents none for peer input);
* every byte written decodes as ``\\0RES`` packets and admin replies that the core
  library accepts at that point, on the server's side of the connection and, for
  connections that only sent valid requests, on the client's (see
  :mod:`.selftest_peer`); a refused frame gets its ERROR, a fatal one its ERROR and
  the close, and no connection is closed without a reason (EOF, a fatal frame, a
  timeout that was due, the connection limit);
* every request is answered once the store has committed what it waits for;
* the tables agree with themselves (:func:`.selftest_tables.check_tables`), and
  ``status`` / ``prioritystatus`` / ``workers`` / ``show jobs`` listings agree with them;
* no job is lost: an acknowledged background job stays queued, scheduled or running
  until a worker ends it, it is cancelled or runs out of retries (and stays in the
  durable store meanwhile); a client waiting for a foreground job stays on its list;
  a sleeping worker is woken for work it can do; a GRAB gets the oldest runnable job
  of the highest priority, and NO_JOB only when nothing is runnable;
* memory stays bounded: buffers by the limits, jobs and bytes by the queue caps.

Run it with atheris for long runs (the Python server core, so that atheris gets
coverage feedback from it: the compiled one has no Python functions to instrument)::

    GEARPROTO_PURE_PYTHON=1 python -m gearproto.fuzz.selftest_server -max_total_time=600 corpus/

``--explain FILE`` replays one input and prints its operations and the failure;
without atheris, ``--hypothesis SECONDS`` drives :func:`check` with Hypothesis.  A
short run is part of the test suite (``tests/test_fuzz_server_core.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from gearproto import REQ, Limits, LocalProtocolError, Priority, admin
from gearproto import events as ev
from gearproto._codec import encode
from gearproto.server import MemoryStore, PeerInfo, ServerConfig, ServerCore, StoreBatch
from gearproto.server._state import JobState

from .selftest_peer import Failure, FakeConn, StepNotes
from .selftest_tables import check_tables, expected_listing, ready_heads

__all__ = ["SEEDS", "Failure", "Harness", "check", "main"]

MAX_CONNS = 6
MAX_STEPS = 160
START = 1_700_000_000.0

SMALL = Limits(
    max_packet_size=200,
    max_function=12,
    max_unique=16,
    max_handle=24,
    max_line=64,
    max_text=64,
    max_number=12,
)


class Source:
    """Choices read from the fuzzer's bytes (zeros once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def below(self, n: int) -> int:
        """An int in ``range(n)``."""
        if n <= 1:
            return 0
        if n <= 256:
            return self.byte() % n
        return (self.byte() << 8 | self.byte()) % n

    def pick(self, options: Any) -> Any:
        return options[self.below(len(options))]

    def chance(self, eighths: int) -> bool:
        return self.byte() % 8 < eighths

    def blob(self, limit: int) -> bytes:
        n = self.below(limit + 1)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


# ----------------------------------------------------------------- configuration


def make_config(src: Source) -> ServerConfig:
    flags = src.byte()
    limits = SMALL if flags & 1 else Limits()
    return ServerConfig(
        limits=limits,
        durable=bool(flags & 2),
        job_handle_prefix=None if flags & 4 and not flags & 8 else b"H:fz",
        partial_timeout=src.pick((0.0, 5.0, 60.0)),
        idle_timeout=src.pick((0.0, 30.0, 300.0)),
        max_connections=src.pick((0, 0, 3)),
        max_queued_jobs=src.pick((0, 0, 4)),
        max_queued_bytes=src.pick((0, 0, 64)),
        job_retries=src.pick((0, 0, 1, 2)),
        worker_wakeup=src.pick((0, 0, 1)),
        exceptions=bool(flags & 16),
    )


# ------------------------------------------------------------------------ values


@dataclass
class Pools:
    """Field values at and around the configured limits."""

    limits: Limits
    functions: tuple[bytes, ...] = ()
    uniques: tuple[bytes, ...] = ()
    payloads: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        lim = self.limits
        self.functions = (
            b"f0", b"f1", b"f2", b"F0", b"f\tx", b"a b", b"n\n.", b"%41", b".",
            b"q" * lim.max_function, b"q" * (lim.max_function + 1), b"",
        )  # fmt: skip
        self.uniques = (
            b"", b"", b"u0", b"u1", b"-", b".", b"ERR X", b"sp ace",
            b"U" * lim.max_unique, b"U" * (lim.max_unique + 1),
        )  # fmt: skip
        self.payloads = (b"", b"d0", b"d1", b"\0\0", b"x" * 40, b"y" * 150)


_NUMBERS = (0, 1, 7, 100, -1, 2**31 - 1, 2**31, 2**32 + 5, 2**63, 2**64)
_TIMEOUTS = (0, 1, 500, 1500, 40_000, 2**31 - 1, 2**31, -5)


#: Server defects the target recognises by name (each was found by this target and is
#: fixed, with a test in ``tests/test_server_core_regressions.py``).  A run can be told
#: to tolerate some (``check(data, tolerate=...)``), so that a known defect that waits
#: for its fix does not hide the others.
KNOWN_DEFECTS: dict[str, str] = {
    "output-after-disconnect": "drain() hands out output (and a close) for a connection the"
    " runner already disconnected: a worker following its own foreground job disconnects"
    " with --job-retries set, and the WORK_FAIL goes to the departed connection",
    "stale-activity-clock": "store_committed(), store_failed() and handle_timer() do not"
    " advance the core's clock, so the output they release is dated with the last"
    " receive() time: a connection whose JOB_CREATED waited for a slow commit can be closed"
    " as idle sooner than idle_timeout after that reply",
    "sched-fields-unchecked": "SUBMIT_JOB_SCHED is answered INVALID_COMMAND even when a"
    " field is over its limit or a NUL is missing, where the core library (which the server"
    " says defines what is malformed) answers ARGUMENT_TOO_LARGE or INVALID_PACKET",
    "refused-frame-buffered": "a \\0REQ header with a packet type the server refuses (0, 43"
    " and up) is answered only after its whole declared body (up to the 64 MiB packet"
    " limit) has arrived and been buffered; the core library refuses it at the header",
}


@dataclass
class Harness:
    """One run of the fuzz target over one input."""

    data: bytes
    tolerate: frozenset[str] = frozenset()
    #: The core under test (a subclass lets tests plant a defect).
    core_class: type[ServerCore] = ServerCore
    src: Source = field(init=False)
    core: ServerCore = field(init=False)
    trace: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.src = Source(self.data)
        self.config = make_config(self.src)
        self.core = self.core_class(self.config)
        self.limits = self.config.limits
        self.pools = Pools(self.limits)
        self.now = START
        self.conns: list[FakeConn | None] = [None] * MAX_CONNS
        self.by_id: dict[int, FakeConn] = {}
        self.next_id = 0
        self.handles: list[bytes] = [b"H:fz:1", b"H:fz:2", b"nope"]
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.inflight: list[StoreBatch] = []
        self.next_batch = 1
        self.store = MemoryStore()
        self.grabbed = False
        self.timer_closed: set[int] = set()
        self.trace.append(f"config {self.config!r}")

    # ------------------------------------------------------------------ driving

    def run(self) -> None:
        src = self.src
        steps = 0
        try:
            while not src.exhausted and steps < MAX_STEPS:
                steps += 1
                op = src.pick(_OPS)
                getattr(self, "op_" + op)()
                self.after_step()
            self.finish()
        except Failure as exc:
            raise Failure(f"{exc}\n--- operations:\n" + "\n".join(self.trace[-60:])) from None
        except Exception as exc:
            raise Failure(
                f"the core raised {type(exc).__name__}: {exc}\n--- operations:\n"
                + "\n".join(self.trace[-60:])
            ) from exc

    def defect(self, defect: str, message: str) -> None:
        """A known server defect: raise unless this run tolerates it."""
        if defect not in self.tolerate:
            failure = Failure(f"[{defect}] {message}")
            failure.defect = defect
            raise failure

    def log(self, text: str) -> None:
        self.trace.append(f"t+{self.now - START:g} {text}")

    def slot(self) -> FakeConn | None:
        return self.conns[self.src.below(MAX_CONNS)]

    def open_conn(self) -> FakeConn | None:
        """A connection that can still send (the core reads nothing from one it is
        closing, e.g. after a timeout, while held replies wait for a commit)."""
        conn = self.slot()
        if conn is None or conn.closed or conn.eof_sent or conn.refused:
            return None
        peer = self.core.peer(conn.conn_id)
        if peer is None or peer.closing:
            return None
        return conn

    # ------------------------------------------------------------- operations

    def op_connect(self) -> None:
        index = self.src.below(MAX_CONNS)
        if self.conns[index] is not None:
            return
        strict = self.src.chance(5)
        local = not self.src.chance(1)
        self.next_id += 1
        conn = FakeConn(
            self.next_id, self.limits, strict=strict, local=local, on_defect=self.defect
        )
        conn.last_active = conn.last_input = self.now
        info = PeerInfo("127.0.0.1" if local else "192.0.2.7", 40000 + self.next_id, -1)
        self.conns[index] = conn
        self.by_id[conn.conn_id] = conn
        self.log(f"connect #{conn.conn_id} ({'strict' if strict else 'rogue'}"
                 f"{'' if local else ', remote'})")  # fmt: skip
        ok = self.core.connect(conn.conn_id, info, self.now)
        live = sum(1 for c in self.by_id.values() if not c.closed)
        limit = self.config.max_connections
        if ok != (not limit or live <= limit):
            raise Failure(f"connect() returned {ok} with {live} connections (limit {limit})")
        conn.refused = not ok

    def op_disconnect(self) -> None:
        conn = self.slot()
        if conn is None or conn.closed:
            return
        self.log(f"disconnect #{conn.conn_id}")
        self.core.disconnect(conn.conn_id, self.now)
        self._forget(conn)

    def op_eof(self) -> None:
        conn = self.open_conn()
        if conn is None:
            return
        self.log(f"eof #{conn.conn_id}")
        conn.eof()
        if conn.frame is not None:
            conn.frame = None
        self.core.receive(conn.conn_id, b"", self.now)

    def op_request(self) -> None:
        conn = self.open_conn()
        if conn is None:
            return
        event = self.request(conn)
        if event is None:
            return
        self.send_event(conn, event)

    def op_admin(self) -> None:
        conn = self.open_conn()
        if conn is None:
            return
        if conn.strict:
            command = self.admin_command()
            assert conn.client is not None
            try:
                data = conn.client.send(command)
            except LocalProtocolError:
                return
            self.log(f"#{conn.conn_id} admin {data!r}")
        else:
            data = self.admin_line()
            self.log(f"#{conn.conn_id} admin line {data[:100]!r}")
        self.give(conn, data)

    def op_raw(self) -> None:
        conn = self.open_conn()
        if conn is None or conn.strict:
            return
        src = self.src
        if src.chance(4):
            data = src.blob(48)
        else:
            ptype = src.pick((0, 5, 6, 8, 11, 19, 42, 43, 255, 0x7FFFFFFF, 0xFFFFFFFF))
            magic = src.pick((REQ, REQ, b"\0RES", b"\0REX", b"REQ\0"))
            body = src.blob(24)
            size = len(body)
            if src.chance(2):
                size = src.pick((0, size + 1, size + 100, self.limits.max_packet_size + 1,
                                 0xFFFFFFFF))  # fmt: skip
            data = magic + ptype.to_bytes(4, "big") + size.to_bytes(4, "big") + body
        self.log(f"#{conn.conn_id} raw {data[:100]!r}")
        self.give(conn, data)

    def op_mutate(self) -> None:
        conn = self.open_conn()
        if conn is None or conn.strict:
            return
        event = self.request(conn, rogue=True)
        if event is None:
            return
        data = bytearray(encode(event, REQ))
        src = self.src
        how = src.below(5)
        if how == 0 and data:
            data[src.below(len(data))] ^= 1 << src.below(8)
        elif how == 1:
            size = src.pick((0, 1, max(len(data) - 13, 0), len(data) + 5, 2**31))
            data[8:12] = size.to_bytes(4, "big")
        elif how == 2:
            nul = data.find(b"\0", 12)
            if nul >= 0:
                del data[nul]
                data[8:12] = (len(data) - 12).to_bytes(4, "big")
        elif how == 3:
            data = data[: src.below(len(data) + 1)]
        else:
            data[4:8] = src.pick((0, 5, 43, 2**31, 2**32 - 1)).to_bytes(4, "big")
        self.log(f"#{conn.conn_id} mutated {type(event).__name__}: {bytes(data[:100])!r}")
        self.give(conn, bytes(data))

    def op_flush(self) -> None:
        conn = self.open_conn()
        if conn is None or not conn.unsent:
            return
        self.log(f"#{conn.conn_id} flush {len(conn.unsent)} bytes")
        self.give(conn, b"")

    def op_tick(self) -> None:
        pt, it = self.config.partial_timeout, self.config.idle_timeout
        dt = self.src.pick((0.001, 0.4, 1.0, 2.5, pt or 1.0, it / 2 or 3.0, it or 7.0, 3600.0))
        self.now += dt
        due = self.core.next_deadline()
        force = self.src.chance(2)
        self.log(f"tick +{dt:g}" + (" (timers)" if force or (due and due <= self.now) else ""))
        if not (force or (due is not None and due <= self.now)):
            return
        before = {c.conn_id for c in self.by_id.values() if self._closing(c)}
        self.core.handle_timer(self.now)
        self._check_timer_closes(before)

    def op_store_take(self) -> None:
        batch = self.core.take_store_batch()
        if batch is None:
            return
        if not self.config.durable:
            raise Failure(f"a store batch without a durable store: {batch!r}")
        if batch.batch_id != self.next_batch:
            raise Failure(f"store batch {batch.batch_id}, expected {self.next_batch}")
        self.next_batch += 1
        self.inflight.append(batch)
        self.log(f"store take batch {batch.batch_id}: +{len(batch.added)} -{len(batch.removed)}")

    def op_store_done(self) -> None:
        if not self.inflight:
            return
        batch = self.inflight.pop(0)
        if self.src.chance(6):
            self.log(f"store commit {batch.batch_id}")
            self.store.apply(batch)
            self.core.store_committed(batch.batch_id, self.now)
        else:
            self.log(f"store FAIL {batch.batch_id}")
            self.core.store_failed(batch.batch_id, b"disk full", self.now)

    def op_listing(self) -> None:
        conn = self.open_conn()
        if conn is None or not conn.strict or conn.unsent or conn.tail or conn.frame:
            return
        peer = self.core.peer(conn.conn_id)
        if peer is None or peer.closing or peer.held:
            return  # the reply would wait behind a held one
        command = self.src.pick(
            (admin.Status(), admin.PriorityStatus(), admin.Workers(), admin.ShowJobs(),
             admin.ShowUniqueJobs())
        )  # fmt: skip
        assert conn.client is not None
        data = conn.client.send(command)
        self.log(f"#{conn.conn_id} listing check {data!r}")
        conn.sending(data, self.now)
        self.core.receive(conn.conn_id, data, self.now)
        expected = expected_listing(self.core, command)
        self.after_step()
        for _cid, reply, request in conn.notes.answers:
            if request is command:
                if isinstance(reply, admin.AdminError):
                    return
                if reply != expected:
                    raise Failure(
                        f"{type(command).__name__} listing disagrees with the tables:\n"
                        f"  sent     {reply!r}\n  expected {expected!r}"
                    )
                return
        raise Failure(f"no reply to {command!r} on connection {conn.conn_id}")

    def op_grab_alone(self) -> None:
        conn = self.open_conn()
        if conn is None or not conn.strict or conn.unsent or conn.tail or conn.frame:
            return
        peer = self.core.peer(conn.conn_id)
        if peer is None or peer.closing or peer.held:
            return
        heads = {job.handle for job in ready_heads(peer)}
        grab = self.src.pick((ev.GrabJob(), ev.GrabJobUniq(), ev.GrabJobAll()))
        assert conn.client is not None
        data = conn.client.send(grab)
        self.log(f"#{conn.conn_id} grab check {type(grab).__name__} (runnable {sorted(heads)})")
        conn.sending(data, self.now)
        self.core.receive(conn.conn_id, data, self.now)
        self.after_step()
        for _cid, reply, request in conn.notes.answers:
            if request is not grab:
                continue
            if type(reply) is ev.NoJob and heads:
                raise Failure(f"NO_JOB on connection {conn.conn_id} while {sorted(heads)}"
                              " were runnable (lost job)")  # fmt: skip
            handle = getattr(reply, "handle", None)
            if handle is not None and handle not in heads:
                raise Failure(
                    f"{type(reply).__name__} {handle!r} on connection {conn.conn_id}; the"
                    f" oldest runnable jobs of the highest priority were {sorted(heads)}"
                )
            return
        raise Failure(f"no reply to {grab!r} on connection {conn.conn_id}")

    def op_large(self) -> None:
        conn = self.open_conn()
        if conn is None or self.limits.max_packet_size < 1 << 17:
            return
        size = self.core.LARGE_FRAME + self.src.below(4096)
        payload = bytes([self.src.byte()]) * size
        kind = self.src.below(3)
        event: Any
        if kind == 0:
            event = ev.SubmitJob(self.src.pick(self.pools.functions[:3]), b"", payload,
                                 background=self.src.chance(4))  # fmt: skip
        elif kind == 1:
            event = ev.EchoReq(payload)
        else:
            handles = sorted(conn.mirror.assigned_handles)
            if not handles:
                return
            event = ev.WorkComplete(self.src.pick(handles), payload)
        self.log(f"#{conn.conn_id} large {type(event).__name__} ({size} bytes)")
        self.send_event(conn, event)

    # ------------------------------------------------------------ generation

    def request(self, conn: FakeConn, *, rogue: bool = False) -> Any:
        src = self.src
        pools = self.pools
        kind = src.below(26)
        fn = src.pick(pools.functions)
        unique = src.pick(pools.uniques)
        data = src.pick(pools.payloads)
        if 11 <= kind <= 16:
            handles = sorted(conn.mirror.assigned_handles)
            if conn.strict and not rogue:
                if not handles:
                    return None
                handle = src.pick(handles)
            else:
                handle = src.pick(handles + self.handles)
        else:
            handle = src.pick(self.handles)
        match kind:
            case 0 | 1:
                return ev.SubmitJob(fn, unique, data, Priority(src.below(3)), src.chance(4))
            case 2:
                return ev.CanDo(fn)
            case 3:
                return ev.CanDoTimeout(fn, src.pick(_TIMEOUTS))
            case 4:
                return ev.CantDo(fn)
            case 5:
                return ev.ResetAbilities()
            case 6:
                return ev.PreSleep()
            case 7 | 8:
                self.grabbed = True
                return src.pick((ev.GrabJob(), ev.GrabJobUniq(), ev.GrabJobAll()))
            case 9:
                return ev.SetClientId(src.pick((b"c1", b"c 2", b"x" * 30, b"")))
            case 10:
                return ev.SubmitJobEpoch(
                    fn, unique, src.pick((0, int(self.now) - 5, int(self.now) + 2,
                                         int(self.now) + 90, -1, 2**63, 2**64)), data
                )  # fmt: skip
            case 11:
                return ev.WorkComplete(handle, data)
            case 12:
                return ev.WorkFail(handle)
            case 13:
                return ev.WorkException(handle, data)
            case 14:
                return ev.WorkData(handle, data)
            case 15:
                return ev.WorkWarning(handle, data)
            case 16:
                return ev.WorkStatus(handle, src.pick(_NUMBERS), src.pick(_NUMBERS))
            case 17:
                return ev.GetStatus(handle)
            case 18:
                return ev.GetStatusUnique(unique)
            case 19:
                return ev.EchoReq(data)
            case 20:
                return ev.OptionReq(src.pick((b"exceptions", b"EXCEPTIONS", b"nope", b"")))
            case 21:
                return ev.SubmitReduceJob(fn, unique, src.pick((b"r", b"R" * 17)), b"", data,
                                          src.chance(4))  # fmt: skip
            case 22:
                return ev.SubmitJobSched(fn, unique, b"1", b"2", b"3", b"4", b"5", data)
            case 23:
                return ev.AllYours()
            case 24:
                return ev.Unused()
            case _:
                return ev.SubmitJob(fn, unique, data, Priority.NORMAL, True)

    def admin_command(self) -> Any:
        src = self.src
        fn = src.pick(self.pools.functions)
        handle = src.pick(self.handles)
        return src.pick(
            (
                admin.Status(), admin.PriorityStatus(), admin.Workers(), admin.ShowJobs(),
                admin.ShowUniqueJobs(), admin.GetPid(), admin.Verbose(), admin.Version(),
                admin.CancelJob(handle), admin.CreateFunction(fn), admin.DropFunction(fn),
                admin.MaxQueue(fn, src.pick(((), (0,), (1,), (2, 1), (1, 1, 0)))),
                admin.Shutdown(src.chance(4)),
            )
        )  # fmt: skip

    def admin_line(self) -> bytes:
        src = self.src
        words = [
            b"status", b"workers", b"prioritystatus", b"show", b"jobs", b"unique",
            b"cancel", b"job", b"maxqueue", b"create", b"drop", b"function", b"getpid",
            b"version", b"verbose", b"shutdown", b"graceful", b"1", b"-1", b"99999999999",
            *self.pools.functions[:6], *self.handles[:4],
        ]  # fmt: skip
        tokens: list[bytes] = [src.pick(words) for _ in range(src.below(8))]
        separator: bytes = src.pick((b" ", b" ", b"\t", b"  "))
        line = separator.join(tokens)
        if src.chance(1):
            line += b"\0tail"
        if src.chance(1):
            line += b"z" * (self.limits.max_line + src.below(3) - 1)
        if src.chance(1):
            return line  # never terminated
        end: bytes = src.pick((b"\n", b"\r\n", b"\r\r\n", b"\n\n"))
        return line + end

    # --------------------------------------------------------------- sending

    def send_event(self, conn: FakeConn, event: Any) -> None:
        # Gearman has no request ids: an ERROR with a code that requests without a
        # reply may also draw (INVALID_COMMAND, INVALID_ARGUMENT, ...) cannot be told
        # apart from a refusal of a CAN_DO or WORK_* sent just before.  An ECHO first
        # settles those, so the checks know what each ERROR answers.
        events = [ev.EchoReq(b"barrier"), event] if type(event) in _AMBIGUOUS else [event]
        data = b""
        for item in events:
            if conn.strict:
                assert conn.client is not None
                try:
                    data += conn.client.send(item)
                except LocalProtocolError:
                    break  # not a valid request: what the client did send still goes
            else:
                data += encode(item, REQ)
            self.log(f"#{conn.conn_id} {_show_event(item)}")
        self.give(conn, data)

    def give(self, conn: FakeConn, data: bytes) -> None:
        """Send ``conn``'s unsent bytes and ``data``, maybe keeping a tail for later."""
        data = conn.unsent + data
        conn.unsent = b""
        if data and self.src.chance(2):
            cut = self.src.below(len(data) + 1)
            data, conn.unsent = data[:cut], data[cut:]
        if not data:
            return
        conn.sending(data, self.now)
        core = self.core
        cid = conn.conn_id
        while data:
            frame = conn.frame
            if frame is not None:
                room = len(frame) - conn.frame_filled
                piece = data[:room]
                frame[conn.frame_filled : conn.frame_filled + len(piece)] = piece
                conn.frame_filled += len(piece)
                data = data[len(piece) :]
                if conn.frame_filled == len(frame):
                    conn.frame = None
                    core.receive_frame(cid, frame, self.now)
                continue
            big = core.receive(cid, data, self.now)
            data = b""
            if big:
                large = core.take_large_frame(cid)
                if large is not None:
                    conn.frame, conn.frame_filled = large

    # ------------------------------------------------------------- checking

    def _closing(self, conn: FakeConn) -> bool:
        peer = self.core.peer(conn.conn_id)
        return peer is None or peer.closing

    def _check_timer_closes(self, before: set[int]) -> None:
        """Connections the timers closed must have been due; due ones must close."""
        pt, it = self.config.partial_timeout, self.config.idle_timeout
        for conn in list(self.by_id.values()):
            peer = self.core.peer(conn.conn_id)
            if conn.closed or conn.conn_id in before or peer is None:
                continue
            partial_due = (
                pt > 0 and conn.partial_since is not None and conn.partial_since + pt <= self.now
            )
            if peer.closing:
                idle_ok = (
                    it > 0
                    and self.now - conn.last_active >= it
                    and not (peer.funcs or peer.working or peer.following or peer.held)
                    # An unfinished frame keeps a connection busy only while the
                    # partial-packet timeout is on (it then ends it first).
                    and (pt == 0 or conn.partial_since is None)
                    and not conn.mirror.client_handles
                )
                idle_ok_by_input = (
                    it > 0
                    and self.now - conn.last_input >= it
                    and not (peer.funcs or peer.working or peer.following or peer.held)
                )
                if not (partial_due or idle_ok) and idle_ok_by_input:
                    self.defect(
                        "stale-activity-clock",
                        f"connection {conn.conn_id} was closed as idle"
                        f" {self.now - conn.last_active:g}s"
                        f" after the server last wrote to it (limit {it}s): output released by a"
                        " store commit is dated with the last receive() time",
                    )
                elif not (partial_due or idle_ok):
                    raise Failure(
                        f"the timers closed connection {conn.conn_id}, which was neither"
                        f" idle for {it}s nor {pt}s into an unfinished packet (last active"
                        f" t+{conn.last_active - START:g}, partial since {conn.partial_since})"
                    )
                self.timer_closed.add(conn.conn_id)
            elif partial_due and not conn.eof_sent:
                raise Failure(
                    f"connection {conn.conn_id} has sent an unfinished packet or line since"
                    f" t+{conn.partial_since - START if conn.partial_since else 0:g}, more than"
                    f" the partial timeout of {pt}s, and is still open"
                )

    def after_step(self) -> None:
        core = self.core
        notes = StepNotes()
        closed: list[FakeConn] = []
        for conn in self.by_id.values():
            conn.notes = notes
        for transmit in core.drain():
            target = self.by_id.get(transmit.conn_id)
            if target is None or target.closed:
                self.defect(
                    "output-after-disconnect",
                    f"drain() gave {transmit!r} for connection {transmit.conn_id}, which the"
                    " runner had disconnected",
                )
                continue
            target.received(b"".join(bytes(chunk) for chunk in transmit.chunks), self.now)
            if transmit.close:
                closed.append(target)
        for conn in self.by_id.values():
            conn.pull_all()
        for conn in closed:
            self._closed(conn)
        for conn in list(self.by_id.values()):
            if not conn.closed:
                self._check_conn(conn)
        check_tables(core)
        self._check_jobs(notes)
        self.grabbed = False

    def _closed(self, conn: FakeConn) -> None:
        if conn.refused or conn.eof_sent or conn.conn_id in self.timer_closed:
            pass
        elif conn.fatal is not None:
            if not conn.fatal_answered:
                raise conn.fail(f"closed after a fatal frame without answering {conn.fatal!r}")
        else:
            raise conn.fail("the server closed the connection for no reason")
        if self.core.peer(conn.conn_id) is not None:
            raise conn.fail("closed by drain() but still in the core's tables")
        self.log(f"closed by the server #{conn.conn_id}")
        self._forget(conn)

    def _forget(self, conn: FakeConn) -> None:
        conn.closed = True
        for index, slot in enumerate(self.conns):
            if slot is conn:
                self.conns[index] = None
        self.by_id.pop(conn.conn_id, None)

    def _check_conn(self, conn: FakeConn) -> None:
        if conn.out or conn.listing is not None:
            raise conn.fail(f"a reply was left half-written: {bytes(conn.out[:80])!r}")
        peer = self.core.peer(conn.conn_id)
        if peer is None:
            raise conn.fail("the core forgot the connection without closing it")
        mirror = conn.mirror
        if conn.fatal is not None and not conn.eof_sent and not peer.held and not peer.closing:
            if not conn.tail:
                raise conn.fail(f"still open after a fatal frame ({conn.fatal!r})")
            self.defect(
                "refused-frame-buffered",
                f"connection {conn.conn_id}: the core waits for the declared body of a frame"
                f" it will refuse ({conn.fatal!r}); {len(conn.tail)} bytes buffered so far",
            )
            return
        if peer.held or peer.closing or conn.fatal is not None or conn.unsure:
            return
        if mirror.pending_replies:
            raise conn.fail(f"{mirror.pending_replies} request(s) left unanswered")
        client = conn.client
        working = {job.handle for job in peer.working}
        assigned = mirror.assigned_handles
        if not working <= assigned:
            raise conn.fail(f"the core says it runs {sorted(working - assigned)} without a"
                            " JOB_ASSIGN for it")  # fmt: skip
        for handle in assigned - working:
            mirror.forget_assignment(handle)  # taken back: timeout, CANT_DO, retries
            if client is not None:
                client.forget_assignment(handle)
        following = {job.handle for job in peer.following}
        waiting = mirror.client_handles
        if not waiting <= following:
            raise conn.fail(
                f"waits for foreground job(s) {sorted(waiting - following)} that the server"
                " dropped without WORK_FAIL (lost)"
            )
        if self.config.worker_wakeup == 0 and mirror.worker_state.value == "sleeping":
            ready = [f.name for f in peer.funcs if f.ready]
            if ready and not peer.noop_sent:
                raise conn.fail(f"sleeps with runnable jobs for {ready} and got no NOOP")

    def _check_jobs(self, notes: StepNotes) -> None:
        """Acknowledged background jobs stay until ended; durable ones stay stored."""
        jobs = self.core._jobs
        for _cid, handle in notes.created:
            job = jobs.get(handle)
            if handle not in self.handles and len(self.handles) < 24:
                self.handles.append(handle)
            if job is not None and job.background and job.state is not JobState.PENDING:
                self.acked[handle] = (job.retries, job.state)
        retries_limit = self.config.job_retries
        for handle, (_retries, state) in list(self.acked.items()):
            job = jobs.get(handle)
            if job is not None:
                if job.state is JobState.PENDING:
                    raise Failure(f"acknowledged job {handle!r} went back to PENDING")
                if not job.background:
                    del self.acked[handle]  # cancelled while running: results discarded
                    continue
                self.acked[handle] = (job.retries, job.state)
                if (
                    self.config.durable
                    and job.store_id
                    # A foreground job turned background by a coalesced submission is
                    # acknowledged before its store batch commits.
                    and job.batch <= self.core._committed
                    and job.store_id not in self.store.jobs
                ):
                    raise Failure(f"acknowledged job {handle!r} is not in the durable store")
                continue
            del self.acked[handle]
            if handle in notes.ended or handle in notes.cancelled:
                continue
            if retries_limit and (state is JobState.RUNNING or self.grabbed):
                continue  # taken back once too often: WORK_FAIL, gone
            raise Failure(
                f"acknowledged background job {handle!r} ({state}) vanished: no worker ended"
                " it and nobody cancelled it (lost job)"
            )

    # ------------------------------------------------------------- the end

    def finish(self) -> None:
        """Commit what the store holds, check every reply came, then hang up all."""
        self.log("finish: commit everything")
        for _ in range(64):
            if self.inflight:
                batch = self.inflight.pop(0)
                self.store.apply(batch)
                self.core.store_committed(batch.batch_id, self.now)
                self.after_step()
                continue
            taken = self.core.take_store_batch()
            if taken is None:
                break
            self.next_batch += 1
            self.inflight.append(taken)
        for conn in list(self.by_id.values()):
            peer = self.core.peer(conn.conn_id)
            if peer is not None and peer.held:
                raise conn.fail(f"{peer.held} replies still held after every commit")
        self.log("finish: every connection hangs up")
        for conn in list(self.by_id.values()):
            self.core.disconnect(conn.conn_id, self.now)
            self._forget(conn)
        self.after_step()
        core = self.core
        if core.connection_count or core._holding or core._partial:
            raise Failure("connections left in the core's tables after every disconnect")
        for job in core.jobs():
            if not job.background:
                raise Failure(f"foreground job {job!r} outlived every client")
            if job.state is JobState.RUNNING:
                raise Failure(f"job {job!r} still running with every worker gone")


_OPS: tuple[str, ...] = (
    ("connect",) * 3
    + ("request",) * 12
    + ("admin",) * 3
    + ("raw",) * 2
    + ("mutate",) * 2
    + ("flush",) * 2
    + ("tick",) * 3
    + ("eof",)
    + ("disconnect",) * 2
    + ("store_take",) * 2
    + ("store_done",) * 2
    + ("listing",) * 2
    + ("grab_alone",) * 2
    + ("large",)
)


#: Requests owed a reply that the server may refuse with a code requests without a
#: reply share.
_AMBIGUOUS = frozenset({ev.SubmitJobSched, ev.SubmitJobEpoch, ev.SubmitReduceJob, ev.Unused})


def _show_event(event: Any) -> str:
    text = repr(event)
    return text if len(text) <= 140 else text[:137] + "..."


def check(
    data: bytes,
    tolerate: frozenset[str] = frozenset(),
    core_class: type[ServerCore] = ServerCore,
) -> None:
    """The fuzz target: run one input; raises :class:`Failure` on a broken invariant.

    ``tolerate`` names :data:`KNOWN_DEFECTS` to let pass.
    """
    Harness(data, tolerate, core_class).run()


#: A starting corpus: small inputs (found by search, then shrunk), each reaching one
#: path the invariants guard; the tests plant a defect on each path and expect it
#: caught.
SEEDS: tuple[bytes, ...] = (
    # durable store: a background submission whose JOB_CREATED waits for the commit
    bytes([127, 46, 132, 243, 153, 233, 5, 118, 248, 136, 52, 229, 68, 67, 117, 5, 234, 173,
           65, 236, 6, 6, 155, 79, 76, 171, 14, 127, 250, 162, 119]),
    # a text connection: an empty admin line ending in CR CR LF
    bytes([248, 201, 157, 93, 93, 152, 49, 149, 117, 4, 14, 148, 93, 226, 232, 231, 129, 204,
           117, 246, 54]),
    # rogue connections: a mutated WORK_COMPLETE, an admin line, the clock past the idle
    # timeout, an empty raw write
    bytes([102, 37, 127, 144, 52, 70, 76, 148, 151, 214, 1, 80, 127, 254, 59, 8, 193, 140, 45,
           242, 152, 2, 253, 134, 164, 88, 134, 81, 81, 29, 172, 230, 167, 250, 64, 213, 51,
           234, 211, 191, 17, 19, 247]),
    # one connection submits a background job, registers, grabs it, and hangs up while
    # running it: the job must go back to its queue
    bytes([0] * 8) + bytes([199, 0, 0, 0, 0, 0, 137, 0, 203, 0, 0, 200, 0, 0, 0, 0, 0, 189, 88, 0,
                            158, 104, 0, 0, 0, 109, 153]),
)  # fmt: skip


_SERVER_MODULES = (
    "gearproto.server.core",
    "gearproto.server._admin",
    "gearproto.server._wire",
    "gearproto.server._state",
    "gearproto.server._handles",
    "gearproto.server.acl",
)


def _instrument(atheris: Any) -> None:
    """Coverage feedback from the server core only (the modules are already loaded)."""
    import importlib
    import inspect

    for name in _SERVER_MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            if getattr(obj, "__module__", None) != name:
                continue
            members = inspect.getmembers(obj) if inspect.isclass(obj) else [("", obj)]
            for _, member in members:
                func = getattr(member, "fget", member)
                if inspect.isfunction(func) and func.__module__ == name:
                    atheris.instrument_func(func)


def _explain(path: str) -> int:
    data = open(path, "rb").read()  # noqa: SIM115 - a short read of a small file
    harness = Harness(data)
    try:
        harness.run()
    except Failure as exc:
        print("\n".join(harness.trace[:1]))
        print(f"FAILURE: {exc}")
        return 1
    print("\n".join(harness.trace))
    print("no failure")
    return 0


def _hypothesis(seconds: float) -> int:
    import time

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.binary(min_size=8, max_size=600))
    def run(data: bytes) -> None:
        check(data)

    deadline = time.monotonic() + seconds
    runs = 0
    try:
        while time.monotonic() < deadline:
            run()  # a fresh random batch each time
            runs += 200
    except Failure as exc:
        print(f"FAILURE: {exc}", file=sys.stderr)
        return 1
    print(f"{runs} inputs, no failure")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``--explain FILE``, ``--hypothesis SECONDS``, or atheris (libFuzzer arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--explain"] and len(args) == 2:
        return _explain(args[1])
    if args[:1] == ["--hypothesis"] and len(args) == 2:
        return _hypothesis(float(args[1]))
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: use --hypothesis SECONDS", file=sys.stderr)
        return 2
    _instrument(atheris)
    atheris.Setup([sys.argv[0], *args], check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
