"""Benchmark of the protocol core: typed events per second, against a bare struct loop.

Builds two streams of mixed small packets (at least ``--mb`` MB together, 10 by
default): what a job server reads from its peers (submissions, grabs, work results,
echoes, registrations, status queries) and what clients and workers read back (job
handles, work results, assignments, NOOP/NO_JOB, echoes).  Each stream is fed to a
``Connection`` in 64 KiB chunks, as a socket read would deliver it, and every packet
becomes a typed event -- once with the compiled receive loops (``[c]``, when
gearproto._speedups is built) and once with the Python ones (``[python]``), which
behave identically.  In the same process, over the same bytes, two bare loops give
the yardstick:

* ``bare``: ``struct`` unpacks each header and skips the body -- framing only;
* ``bare+slice``: the same, also slicing out each body (the least any parser that
  hands the body on must do);
* ``typed, unchecked``: split each body and build its event class, with no check and
  no state -- the ceiling for a parser into typed events written in Python.

Every figure is the best of ``--repeat`` runs, runs of all variants interleaved, so
that a noisy machine hurts them alike.  The target of the mixed stream: at least
1.0 M typed events/s (goal 1.5 M) and at least 0.35 of the bare loop.  Also measured:
``Connection.send`` (the encoder) against a bare ``struct.pack`` loop.

    python bench/bench_core.py [--mb 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from gearproto import NEED_DATA, PACKETS, Connection, PacketType, Side, _connection
from gearproto import events as ev

CHUNK = 65536
HEADER = struct.Struct(">4sII")
TARGET = 1.0e6
GOAL = 1.5e6
TARGET_OF_BARE = 0.35


def implementations() -> list[str]:
    """The receive loops to measure: the compiled ones first, when built."""
    return ["c", "python"] if _connection._speedups is not None else ["python"]


def with_loops(factory: Callable[[], Connection], implementation: str) -> Callable[[], Connection]:
    """``factory``, making connections that parse with ``implementation``."""
    if implementation == "c":
        return factory

    def python() -> Connection:
        # Primed with the default loops; switching is safe while nothing is buffered.
        conn = factory()
        assert conn.buffered == 0
        return _connection._use_python_loops(conn)

    return python


def python_path_types() -> tuple[list[str], list[str]]:
    """Packet types whose packets the compiled loops hand to the Python code.

    (requests a server reads, replies a client reads); beyond these, any packet whose
    body is 64 KiB or more, admin text lines, and packets the inline checks refuse
    (errors, replies out of turn) take the same Python path.
    """
    requests = [t for t in PacketType if PACKETS[t].may_send_request and t != PacketType.UNUSED]
    replies = [t for t in PacketType if PACKETS[t].may_send_response]
    server = [t.name for t in requests if not _connection._SERVER_BRANCH[t]]
    client = [t.name for t in replies if not _connection._CLIENT_BRANCH[t]]
    return server, client


def server_stream(target: int) -> tuple[bytes, int, Callable[[], Connection]]:
    """Requests a server reads: (bytes, packets, factory of a primed server view)."""
    held = [b"H:w:%d" % i for i in range(64)]
    client = Connection(Side.CLIENT)

    def prime(view: Connection) -> None:
        # The worker role holds 64 jobs, so its WORK_* packets are legitimate.
        worker = Connection(Side.CLIENT)
        view.receive_data(b"".join(worker.send(ev.GrabJob()) for _ in held))
        view.next_events()
        for handle in held:
            view.send(ev.JobAssign(handle, b"resize", b""))
        client._worker_handles.update(held)  # the encoder below plays that worker

    prime(Connection(Side.SERVER))
    cycle: list[Any] = []
    for i in range(16):
        handle = held[i % len(held)]
        cycle += [
            ev.SubmitJob(b"resize", b"img-%d" % i, b"0123456789abcdef"),
            ev.WorkData(handle, b"chunk of data"),
            ev.WorkStatus(handle, i, 16),
            ev.GrabJobUniq(),
            ev.SubmitJob(b"thumb", b"", b"payload", background=True),
            ev.WorkData(handle, b"more data"),
            ev.PreSleep(),
            ev.EchoReq(b"ping"),
            ev.CanDo(b"resize"),
            ev.GetStatus(handle),
        ]
    one = b"".join(client.send(e) for e in cycle)
    repeat = -(-target // len(one))

    def factory() -> Connection:
        view = Connection(Side.SERVER)
        prime(view)
        return view

    return one * repeat, len(cycle) * repeat, factory


def client_stream(target: int) -> tuple[bytes, int, Callable[[], Connection]]:
    """Replies a client/worker reads, and a factory of a client that sent the requests."""
    server = Connection(Side.SERVER)
    requests: list[Any] = []
    replies: list[bytes] = []
    count = 0
    size = 0
    job = 0
    while size < target:
        step: list[tuple[Any, Any]] = []
        for _ in range(8):
            job += 1
            handle = b"H:srv:%d" % job
            step += [
                (ev.SubmitJob(b"resize", b"", b"x"), ev.JobCreated(handle)),
                (None, ev.WorkData(handle, b"partial result")),
                (None, ev.WorkComplete(handle, b"final result")),
                (ev.PreSleep(), ev.Noop()),
                (ev.GrabJobUniq(), ev.JobAssignUniq(b"H:a:%d" % job, b"resize", b"u", b"work")),
                (ev.GrabJob(), ev.NoJob()),
                (ev.EchoReq(b"ping"), ev.EchoRes(b"ping")),
            ]
        for request, reply in step:
            if request is not None:
                requests.append(request)
                # Keep the server view's reply queue in step with the client's.
                server.receive_data(Connection(Side.CLIENT).send(request))
                server.next_events()
            wire = server.send(reply)
            replies.append(wire)
            size += len(wire)
            count += 1

    def factory() -> Connection:
        client = Connection(Side.CLIENT)
        for request in requests:
            client.send(request)
        return client

    return b"".join(replies), count, factory


def bare(data: bytes) -> int:
    unpack = HEADER.unpack_from
    pos = 0
    n = len(data)
    count = 0
    while pos < n:
        _magic, _ptype, size = unpack(data, pos)
        pos += 12 + size
        count += 1
    return count


def bare_slice(data: bytes) -> int:
    unpack = HEADER.unpack_from
    pos = 0
    n = len(data)
    count = 0
    while pos < n:
        _magic, _ptype, size = unpack(data, pos)
        start = pos + 12
        pos = start + size
        _body = data[start:pos]
        count += 1
    return count


def typed_unchecked(data: bytes) -> int:
    """The least a parser into typed events can do: split each body, build its event.

    No validation, no state, numbers left as bytes -- not a usable parser, the
    ceiling for one written in Python.
    """
    unpack = struct.Struct(">II").unpack_from
    classes = [None] + [ev.EVENT_CLASSES[t] for t in sorted(ev.EVENT_CLASSES)]
    empty = [cls() if cls is not None and not cls._fields else None for cls in classes]
    new = tuple.__new__
    out: list[Any] = []
    emit = out.append
    pos = 0
    n = len(data)
    while pos < n:
        ptype, size = unpack(data, pos + 4)
        end = pos + 12 + size
        if size:
            emit(new(classes[ptype], data[pos + 12 : end].split(b"\0")))
        else:
            emit(empty[ptype])
        pos = end
    return len(out)


def core_next_event(conn: Connection, data: bytes) -> int:
    count = 0
    next_event = conn.next_event
    receive = conn.receive_data
    for i in range(0, len(data), CHUNK):
        receive(data[i : i + CHUNK])
        while next_event() is not NEED_DATA:
            count += 1
    return count


def core_next_events(conn: Connection, data: bytes) -> int:
    count = 0
    receive = conn.receive_data
    drain = conn.next_events
    for i in range(0, len(data), CHUNK):
        receive(data[i : i + CHUNK])
        count += len(drain())
    return count


def encode_events(events: list[Any]) -> Callable[[], int]:
    def run() -> int:
        client = Connection(Side.CLIENT)
        send = client.send
        total = 0
        for event in events:
            total += len(send(event))
        return len(events)

    return run


def encode_bare(events: list[Any]) -> Callable[[], int]:
    pack = HEADER.pack
    bodies = [(int(ev.packet_type(e)), b"\0".join(e[:2])) for e in events]

    def run() -> int:
        total = 0
        for ptype, body in bodies:
            total += len(pack(b"\0REQ", ptype, len(body)) + body)
        return len(bodies)

    return run


Variant = tuple[Callable[[], Any], Callable[[Any], int]]


def untimed_setup(run: Callable[[], int]) -> Variant:
    return (lambda: None), (lambda _state: run())


#: What a run's time is measured with: process CPU time by default, so that other
#: processes on a shared machine do not count (``--clock wall`` for elapsed time).
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def best_of(repeat: int, variants: dict[str, Variant]) -> dict[str, tuple[float, int]]:
    """Best time of each variant; setup (building a primed Connection) is not timed."""
    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeat):
        for name, (setup, run) in variants.items():
            state = setup()
            gc.collect()
            start = clock()
            count = run(state)
            elapsed = clock() - start
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, count)
    return best


def report(
    title: str, size: int, best: dict[str, tuple[float, int]], base: str
) -> dict[str, float]:
    rates = {name: count / elapsed for name, (elapsed, count) in best.items()}
    print(f"\n{title} ({size / 1e6:.1f} MB, {best[base][1]} packets)")
    for name, rate in rates.items():
        ratios = "  ".join(
            f"{rate / rates[b]:.2f} of {b}" for b in ("bare", "bare+slice") if b in rates
        )
        print(f"  {name:22} {rate / 1e6:6.3f} M/s   {ratios}")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=10.0, help="total MB of packets (>= 10)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant; best counts")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time or wall time"
    )
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    half = int(args.mb * 1e6 / 2)
    sdata, scount, sview = server_stream(half)
    cdata, ccount, cview = client_stream(half)
    print(
        f"Python {sys.version.split()[0]}; best of {args.repeat} interleaved runs,"
        f" {args.clock} time; gearproto.IMPLEMENTATION = {_connection.IMPLEMENTATION!r}"
    )

    def variants(data: bytes, factory: Callable[[], Connection]) -> dict[str, Variant]:
        found: dict[str, Variant] = {
            "bare": untimed_setup(lambda: bare(data)),
            "bare+slice": untimed_setup(lambda: bare_slice(data)),
            "typed, unchecked": untimed_setup(lambda: typed_unchecked(data)),
        }
        for impl in implementations():
            made = with_loops(factory, impl)
            found[f"next_event() [{impl}]"] = (made, lambda conn: core_next_event(conn, data))
            found[f"next_events() [{impl}]"] = (made, lambda conn: core_next_events(conn, data))
        return found

    srates = report(
        "server side: requests -> typed events",
        len(sdata),
        best_of(args.repeat, variants(sdata, sview)),
        "bare",
    )
    crates = report(
        "client side: replies -> typed events",
        len(cdata),
        best_of(args.repeat, variants(cdata, cview)),
        "bare",
    )
    # Both streams together: total packets over total best times.
    total = scount + ccount
    print(f"\nmixed, both sides ({(len(sdata) + len(cdata)) / 1e6:.1f} MB, {total} packets)")
    mixed: dict[str, float] = {}
    base = total / (scount / srates["bare"] + ccount / crates["bare"])
    for name in srates:
        rate = mixed[name] = total / (scount / srates[name] + ccount / crates[name])
        based = total / (scount / srates["bare+slice"] + ccount / crates["bare+slice"])
        print(
            f"  {name:22} {rate / 1e6:6.3f} M/s   {rate / base:.2f} of bare"
            f"  {rate / based:.2f} of bare+slice"
        )
    print(
        f"\ntarget (mixed): >= {TARGET / 1e6:.1f} M events/s (goal {GOAL / 1e6:.1f} M)"
        f" and >= {TARGET_OF_BARE:.2f} of bare"
    )
    for impl in implementations():
        for call in ("next_event()", "next_events()"):
            rate = mixed[f"{call} [{impl}]"]
            met = rate >= TARGET and rate / base >= TARGET_OF_BARE
            verdict = "met" if met else "NOT met"
            if met and rate >= GOAL:
                verdict += ", goal reached"
            print(
                f"  {call:14} [{impl:6}] {rate / 1e6:6.3f} M/s"
                f"  {rate / base:.2f} of bare  {verdict}"
            )
    if "c" in implementations():
        for call in ("next_event()", "next_events()"):
            speedup = mixed[f"{call} [c]"] / mixed[f"{call} [python]"]
            print(f"  compiled / python, {call:14} {speedup:.1f}x")
    else:
        print("  (gearproto._speedups is not built: Python loops only)")
    server_types, client_types = python_path_types()
    print("\nhanded to the Python code by the compiled loops (rare or refused packets):")
    print(f"  requests: {', '.join(server_types)}")
    print(f"  replies:  {', '.join(client_types)}")
    print("  and any body of 64 KiB or more, admin text lines, packets a check refuses")

    events: list[Any] = (
        [ev.SubmitJob(b"resize", b"img-%d" % i, b"0123456789abcdef") for i in range(20000)]
        + [ev.EchoReq(b"ping")] * 20000
        + [ev.CanDo(b"resize")] * 20000
    )
    encode = best_of(
        args.repeat,
        {
            "bare pack": untimed_setup(encode_bare(events)),
            "core send()": untimed_setup(encode_events(events)),
        },
    )
    rates = {name: count / elapsed for name, (elapsed, count) in encode.items()}
    print(f"\nencoder ({len(events)} events)")
    for name, rate in rates.items():
        print(f"  {name:22} {rate / 1e6:6.3f} M/s   {rate / rates['bare pack']:.2f} of bare pack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
