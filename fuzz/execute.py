"""Running one case against a live target and recording what came back.

Every connection's replies are read continuously (except for connections that play a
reader that never reads).  When the steps are done, every connection that is still
open and whose bytes were whole, well-framed requests gets a *sync probe* — a
GET_STATUS for a made-up handle — and the run waits until the probe is answered, the
server closes, or the probe timeout passes.  Because replies come in request order,
an answered probe proves every earlier reply has arrived, so most cases finish in
about a round trip instead of a fixed wait.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gearproto import PacketType, events

from .case import Case, Close, Connect, Pause, Send
from .shadow import Request, ShadowConn, shadow_parse
from .target import Target, probe_packet
from .wire import Reply, ReplyReader

__all__ = ["ConnObservation", "Observation", "Timeouts", "execute"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long to wait for things; the defaults suit a loopback server."""

    #: Sync probe on a connection (a well-framed request must be answered by then).
    probe: float = 2.0
    #: Liveness check on a fresh connection.
    liveness: float = 3.0
    #: Quiet time that ends the wait on connections that cannot be probed.
    settle: float = 0.1
    #: Longest wait on connections that cannot be probed.
    settle_max: float = 0.5
    #: A single blocked write (a server that stopped reading).
    write: float = 5.0
    #: How long a dying server may take to exit before we call it hung.
    crash_wait: float = 3.0


@dataclass
class ConnObservation:
    """What one connection of a case saw."""

    conn: int
    shadow: ShadowConn
    replies: list[Reply] = field(default_factory=list)
    #: ``"open"``, ``"eof"`` (server closed), ``"reset"``, ``"refused"`` (connect
    #: failed), ``"closed"`` (the case closed it) or ``"unread"`` (never read).
    fate: str = "open"
    #: ``"answered"``, ``"unanswered"``, ``"closed"`` (server closed first) or
    #: ``"skipped"`` (not probed: incomplete tail, fatal framing, closed by the case).
    probe: str = "skipped"
    #: Why a write or the connect failed, if one did.
    write_error: str | None = None
    #: Bytes of an unfinished reply when the connection ended.
    partial_reply: int = 0
    #: Seconds from the probe until its answer.
    probe_latency: float | None = None
    #: The shadow requests, plus the probe if one was sent.
    requests: list[Request] = field(default_factory=list)
    #: The case shut down its write side (so no probe can be sent).
    half_closed: bool = False


@dataclass
class Observation:
    """Everything a case run produced."""

    case: Case
    conns: dict[int, ConnObservation]
    duration: float
    rss_before: int | None = None
    rss_peak: int | None = None


PROBE_LABEL = "sync-probe"
_PROBE_REPLY = frozenset({PacketType.STATUS_RES})


def _probe_request(token: bytes | None) -> Request:
    event = events.GetStatus(token) if token is not None else None
    return Request(PROBE_LABEL, "packet", _PROBE_REPLY, event=event)


class _Live:
    __slots__ = ("obs", "reader", "sent_at", "sock", "token")

    def __init__(self, sock: socket.socket, obs: ConnObservation) -> None:
        self.sock = sock
        self.obs = obs
        self.reader = ReplyReader()
        self.token: bytes | None = None
        self.sent_at = 0.0


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def execute(case: Case, target: Target, timeouts: Timeouts | None = None) -> Observation:
    """Run ``case`` against ``target``; never raises for anything the target does."""
    t = timeouts or Timeouts()
    start = time.monotonic()
    sel = selectors.DefaultSelector()
    live: dict[int, _Live] = {}
    conns: dict[int, ConnObservation] = {}
    rss_before = target.rss()
    rss_peak = rss_before

    def sample_rss() -> None:
        nonlocal rss_peak
        value = target.rss()
        if value is not None and (rss_peak is None or value > rss_peak):
            rss_peak = value

    def pump(timeout: float) -> None:
        """Read whatever arrives within ``timeout`` on the reading connections."""
        for key, _ in sel.select(timeout):
            lv: _Live = key.data
            _read_some(lv, sel)

    try:
        for step in case.steps:
            if isinstance(step, Connect):
                obs = ConnObservation(step.conn, shadow_parse(case.sent_by(step.conn)))
                conns[step.conn] = obs
                try:
                    sock = target.connect(t.write)
                except OSError as exc:
                    obs.fate = "refused"
                    obs.write_error = str(exc)
                    continue
                sock.setblocking(False)
                lv = _Live(sock, obs)
                live[step.conn] = lv
                if step.read:
                    sel.register(sock, selectors.EVENT_READ, lv)
                else:
                    obs.fate = "unread"
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            elif isinstance(step, Send):
                lv_send = live.get(step.conn)
                if lv_send is None or lv_send.obs.fate not in ("open", "unread"):
                    continue
                # A reader that never reads makes a well-behaved server stop reading
                # too: give up on its writes quickly.
                limit = t.write if lv_send.obs.fate == "open" else min(t.write, 0.5)
                for chunk in step.chunks():
                    if not _write(lv_send, chunk, limit, pump):
                        break
                if step.fill_count:
                    sample_rss()
                pump(0)
            elif isinstance(step, Pause):
                deadline = time.monotonic() + step.ms / 1000
                while (left := deadline - time.monotonic()) > 0:
                    pump(left)
            elif isinstance(step, Close):
                lv_close = live.get(step.conn)
                if lv_close is None:
                    continue
                if step.how == "half":
                    with contextlib.suppress(OSError):
                        lv_close.sock.shutdown(socket.SHUT_WR)
                    lv_close.obs.half_closed = True
                    continue
                _read_some(lv_close, sel)
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(lv_close.sock)
                if step.how == "rst":
                    _abort(lv_close.sock)
                else:
                    lv_close.sock.close()
                if lv_close.obs.fate in ("open", "unread"):
                    lv_close.obs.fate = "closed"
                del live[step.conn]
        sample_rss()
        _finish(live, sel, target, t, pump)
        sample_rss()
    finally:
        for lv in live.values():
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(lv.sock)
            _abort(lv.sock)
        sel.close()
    for obs in conns.values():
        if not obs.requests:
            obs.requests = list(obs.shadow.requests)
    return Observation(case, conns, time.monotonic() - start, rss_before, rss_peak)


def _write(lv: _Live, data: bytes, timeout: float, pump: Callable[[float], None]) -> bool:
    """Write all of ``data``, reading meanwhile so neither side's buffers deadlock."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            sent = lv.sock.send(view)
            view = view[sent:]
            continue
        except BlockingIOError:
            pass
        except OSError as exc:
            lv.obs.write_error = str(exc)
            if lv.obs.fate in ("open", "unread"):
                lv.obs.fate = "reset"
            if lv.obs.fate != "unread":
                # The server hung up while we were still writing (a refusal and a
                # close).  What it wrote before that is still in our receive queue
                # (a reset does not take back delivered bytes): read it, or an answered
                # ERROR would look like a silent close.
                _drain_after_failure(lv)
            return False
        if time.monotonic() > deadline:
            lv.obs.write_error = f"write blocked for {timeout:.1f}s (server stopped reading)"
            return False
        pump(0.01)
    return True


def _read_some(lv: _Live, sel: selectors.BaseSelector) -> None:
    """Drain the socket's receive buffer into the reply list."""
    obs = lv.obs
    while True:
        try:
            data = lv.sock.recv(262144)
        except BlockingIOError:
            return
        except InterruptedError:
            continue
        except OSError:
            obs.fate = "reset"
            break
        if not data:
            if obs.fate == "open":
                obs.fate = "eof"
            break
        obs.replies.extend(lv.reader.feed(data))
        if lv.token is not None and obs.probe == "unanswered" and _has_probe(obs, lv.token):
            obs.probe = "answered"
            obs.probe_latency = time.monotonic() - lv.sent_at
    obs.partial_reply = lv.reader.pending
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(lv.sock)


def _drain_after_failure(lv: _Live) -> None:
    """Read what arrived on a connection whose write just failed (fate already set)."""
    obs = lv.obs
    for _ in range(1024):  # bounded: a reset socket has a finite receive queue
        try:
            data = lv.sock.recv(262144)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
        obs.replies.extend(lv.reader.feed(data))
    obs.partial_reply = lv.reader.pending


def _has_probe(obs: ConnObservation, token: bytes) -> bool:
    for reply in reversed(obs.replies):
        if (
            reply.kind == "packet"
            and reply.ptype == PacketType.STATUS_RES
            and reply.fields
            and reply.fields[0] == token
        ):
            return True
    return False


def _finish(
    live: dict[int, _Live],
    sel: selectors.BaseSelector,
    target: Target,
    t: Timeouts,
    pump: Callable[[float], None],
) -> None:
    """Probe every framed open connection; let the others settle."""
    probed: list[_Live] = []
    for lv in live.values():
        obs = lv.obs
        if obs.fate in ("eof", "reset") and obs.shadow.framed and not obs.half_closed:
            # Closed by the server while the case was still running.
            obs.requests = [*obs.shadow.requests, _probe_request(None)]
            obs.probe = "closed"
            continue
        if obs.fate != "open" or not obs.shadow.framed or obs.half_closed:
            continue
        token = target.next_token("sync")
        lv.token = token
        obs.requests = [*obs.shadow.requests, _probe_request(token)]
        obs.probe = "unanswered"
        lv.sent_at = time.monotonic()
        if not _write(lv, probe_packet(token), t.write, pump):
            obs.probe = "closed"
            continue
        probed.append(lv)
    deadline = time.monotonic() + t.probe
    settle_deadline = time.monotonic() + t.settle_max
    last_data = time.monotonic()
    while True:
        waiting = [lv for lv in probed if lv.obs.probe == "unanswered" and lv.obs.fate == "open"]
        others_open = [
            lv
            for lv in live.values()
            if lv.token is None and lv.obs.fate == "open" and lv.sock in sel.get_map()
        ]
        now = time.monotonic()
        settling = bool(others_open) and now < settle_deadline and now - last_data < t.settle
        if not waiting and not settling:
            break
        if now >= deadline:
            break
        before = sum(lv.reader.total for lv in live.values())
        pump(min(0.05, deadline - now))
        if sum(lv.reader.total for lv in live.values()) != before:
            last_data = time.monotonic()
    for lv in probed:
        if lv.obs.probe != "answered" and lv.obs.fate in ("eof", "reset"):
            lv.obs.probe = "closed"
