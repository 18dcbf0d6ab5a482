"""Oracles for byte-level cases: crash, hang, desync, protocol, missing reply, memory.

:func:`judge` turns one :class:`~gearproto.fuzz.execute.Observation` plus the
server's health after the case into verdicts.  Job invariants (lost, duplicated,
misdelivered jobs, admin counts, forged rows) need a model of the server's state and
live in :mod:`gearproto.fuzz.model` and :mod:`gearproto.fuzz.driver`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from gearproto import PacketType

from .case import Case
from .execute import PROBE_LABEL, ConnObservation, Observation, Timeouts
from .expect import ReplyMatcher
from .listings import Ownership
from .shadow import Request
from .target import Health, Target
from .verdict import FindingClass, Verdict, normalise

__all__ = ["ServerState", "judge", "judge_connection", "server_state"]

#: gearmand's receive buffer; fields and lines beyond it are one class of problem.
BUFFER_SIZE = 8192
#: Default RSS growth during one case that counts as a memory finding.
DEFAULT_RSS_LIMIT = 32 << 20


@dataclass(frozen=True, slots=True)
class ServerState:
    """The server after a case: ``"up"``, ``"crashed"`` or ``"hung"``."""

    state: str
    detail: str = ""
    health: Health | None = None


def server_state(target: Target, timeouts: Timeouts) -> ServerState:
    """Check liveness; tell a crash (process gone) from a hang (alive, silent).

    A dying server can take a moment to print its backtrace and exit, so a failed
    check is followed by watching the process for ``crash_wait`` seconds.
    """
    health = target.check(timeouts.liveness)
    if health.ok:
        return ServerState("up", health=health)
    deadline = time.monotonic() + timeouts.crash_wait
    while True:
        alive = target.process_alive()
        if alive is False:
            return ServerState("crashed", target.exit_status(), health)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
        if alive is None:
            again = target.check(min(1.0, timeouts.liveness))
            if again.ok:
                return ServerState("up", health=again)
            health = again
    if alive is None and health.state == "refused":
        # No PID to look at: nothing listens any more, which is what a crash looks like.
        return ServerState("crashed", "stopped accepting connections", health)
    again = target.check(timeouts.liveness)
    if again.ok:
        return ServerState("up", health=again)
    return ServerState("hung", f"liveness probe {again.state} after {again.latency:.1f}s", again)


def _size(count: int) -> str:
    if count >= 1 << 20:
        return f"{count / (1 << 20):.0f} MiB"
    if count >= 1 << 10:
        return f"{count / (1 << 10):.0f} KiB"
    return f"{count} bytes"


def _label(request: Request) -> str:
    if request.oversize > BUFFER_SIZE:
        # Beyond a typical receive buffer the packet type hardly matters.
        return "field-or-line>8KiB"
    return request.label + ("(oversize)" if request.oversize else "")


def ownership(case: Case, observation: Observation) -> Ownership:
    """What ``case`` registered, for the forged-rows oracle."""
    names: set[bytes] = set()
    for obs in observation.conns.values():
        names |= obs.shadow.names
    prefix = case.notes.get("prefix")
    if isinstance(prefix, str) and prefix:
        prefixes: tuple[bytes, ...] = (prefix.encode("latin-1"),)
    else:
        # A hand-made case: its names' stems (up to the first control byte) will do.
        stems = {_stem(n) for n in names}
        prefixes = tuple(s for s in stems if len(s) >= 3)
    return Ownership.from_names(prefixes, names)


def _stem(name: bytes) -> bytes:
    for index, byte in enumerate(name):
        if byte < 0x21 or byte > 0x7E:
            return name[:index]
    return name


def judge_connection(obs: ConnObservation, owner: Ownership | None = None) -> list[Verdict]:
    """Verdicts about one connection's replies and fate."""
    if obs.fate in ("refused", "unread"):
        return []
    verdicts: list[Verdict] = []
    matcher = ReplyMatcher(obs.requests, owner)
    result = matcher.run(obs.replies)
    conn = obs.conn
    if result.violations:
        violation = result.violations[0]
        verdicts.append(
            Verdict(
                FindingClass.PROTOCOL_VIOLATION,
                normalise(violation),
                f"connection {conn}: {violation}",
                {"violations": result.violations[:10]},
            )
        )
    if obs.partial_reply and obs.fate in ("eof", "reset"):
        verdicts.append(
            Verdict(
                FindingClass.PROTOCOL_VIOLATION,
                "closed mid-reply",
                f"connection {conn}: the server closed the connection in the middle of a"
                f" reply ({obs.partial_reply} bytes of it received)",
            )
        )
    if result.forged:
        problem = result.forged[0]
        verdicts.append(
            Verdict(
                FindingClass.FORGED_ROWS,
                problem.split(" ", 1)[0]
                + (" unparseable" if "does not parse" in problem else " unregistered"),
                f"connection {conn}: {problem}",
                {"problems": result.forged[:10]},
            )
        )
    if result.wrong_client:
        message = result.wrong_client[0]
        verdicts.append(
            Verdict(
                FindingClass.WRONG_CLIENT,
                normalise(message.split(" for ", 1)[0]),
                f"connection {conn}: {message}",
            )
        )
    missing = [r for r in result.missing if r.label != PROBE_LABEL]
    if missing:
        first = missing[0]
        verdicts.append(
            Verdict(
                FindingClass.MISSING_REPLY,
                _label(first),
                f"connection {conn}: {first.label} was never answered, but later requests were"
                + (" (a field is over the protocol's size limit)" if first.oversize else ""),
                {"unanswered": [_label(r) for r in missing]},
            )
        )
    if obs.probe == "unanswered":
        owed = [r for r in matcher.unanswered if r.label != PROBE_LABEL]
        last = obs.shadow.requests[-1] if obs.shadow.requests else None
        key = _label(owed[0]) if owed else (_label(last) if last else "empty")
        verdicts.append(
            Verdict(
                FindingClass.DESYNC,
                key,
                f"connection {conn}: a GET_STATUS sent after the case was never answered"
                " and the connection stayed open"
                + (f"; still owed: {', '.join(_label(r) for r in owed[:5])}" if owed else ""),
                {"owed": [_label(r) for r in owed]},
            )
        )
    elif obs.probe == "closed":
        owed = [r for r in matcher.unanswered if r.label != PROBE_LABEL]
        culprit = _close_culprit(obs, matcher)
        if culprit is not None and _refused(culprit, matcher):
            # The server said no (ERROR / ERR) and hung up: a legitimate refusal.
            return verdicts
        key = _label(culprit) if culprit else "empty"
        if culprit is None:
            what = "closed the connection after an empty case"
        elif culprit.kind == "error":
            what = f"closed the connection instead of answering ERROR for {culprit.label}"
        elif culprit.owes_reply and culprit in owed:
            what = f"closed the connection without answering {culprit.label}"
        else:
            what = f"closed the connection after {culprit.label}"
        if culprit is not None and culprit.oversize:
            what += " (a field is over the protocol's size limit)"
        if owed and (culprit is None or owed[0] is not culprit):
            what += f"; unanswered: {', '.join(_label(r) for r in owed[:4])}"
        verdicts.append(
            Verdict(
                FindingClass.UNEXPECTED_CLOSE,
                key,
                f"connection {conn}: the server {what}",
                {"owed": [_label(r) for r in owed]},
            )
        )
    return verdicts


def _oddness(request: Request) -> int:
    """How likely a request is to make a server hang up (0: not at all)."""
    if request.label == "admin:too-many-tokens" or request.oversize > BUFFER_SIZE:
        return 4
    if request.oversize:
        return 3
    if request.kind == "error":
        return 2
    if request.label.startswith("admin:bad"):
        return 1
    return 0


def _refused(request: Request, matcher: ReplyMatcher) -> bool:
    for answered, reply in matcher.answered:
        if answered is request:
            return (
                reply.kind == "packet" and reply.ptype == PacketType.ERROR
            ) or reply.line.startswith(b"ERR ")
    return False


def _close_culprit(obs: ConnObservation, matcher: ReplyMatcher) -> Request | None:
    """The request that most likely made the server close the connection.

    Replies written just before a close are often lost (the close resets the
    connection), so the first unanswered request is not necessarily the cause: prefer
    the first odd request (rejected, oversize, malformed admin line) after the last
    answered one.
    """
    requests = [r for r in obs.requests if r.label != PROBE_LABEL]
    answered = {id(r) for r, _ in matcher.answered}
    last = max((i for i, r in enumerate(requests) if id(r) in answered), default=-1)
    after = requests[last + 1 :]
    if after:
        odd = max(after, key=_oddness)
        return odd if _oddness(odd) else after[0]
    return requests[-1] if requests else None


def judge(
    observation: Observation,
    state: ServerState,
    *,
    rss_limit: int | None = DEFAULT_RSS_LIMIT,
    crash_log: str = "",
) -> list[Verdict]:
    """Every verdict about one case run (server-wide ones first).

    ``crash_log`` is the end of the server's log, if the fuzzer started the server
    (used to tell crashes apart).
    """
    case = observation.case
    family = case.generator.split(".", 1)[0]
    verdicts: list[Verdict] = []
    if state.state == "crashed":
        verdicts.append(
            Verdict(
                FindingClass.CRASH,
                crash_signature(crash_log, state.detail),
                f"the target died {_last_words(observation)}({state.detail})",
                {"exit": state.detail, **({"log": crash_log[-3000:]} if crash_log else {})},
            )
        )
        return verdicts
    if state.state == "hung":
        verdicts.append(
            Verdict(
                FindingClass.HANG,
                family,
                f"the target stopped answering new connections ({state.detail})",
            )
        )
    if (
        rss_limit is not None
        and observation.rss_before is not None
        and observation.rss_peak is not None
        and observation.rss_peak - observation.rss_before > rss_limit
    ):
        grew = observation.rss_peak - observation.rss_before
        verdicts.append(
            Verdict(
                FindingClass.MEMORY,
                family,
                f"resident memory grew by {_size(grew)} during one case"
                f" that sent {_size(case.total_bytes)}",
                {"rss_before": observation.rss_before, "rss_peak": observation.rss_peak},
            )
        )
    if state.state == "hung":
        return verdicts
    owner = ownership(case, observation)
    for obs in observation.conns.values():
        verdicts.extend(judge_connection(obs, owner))
    return verdicts


def _last_words(observation: Observation) -> str:
    """What the case had just sent when the server died, for the summary."""
    for obs in reversed(list(observation.conns.values())):
        if obs.shadow.fatal:
            return f"after a malformed frame ({obs.shadow.fatal[:80]}) "
        requests = [r for r in obs.shadow.requests if r.label != PROBE_LABEL]
        if requests:
            return f"after {_label(requests[-1])} "
    return "during the case "


_FRAME = re.compile(r"in (\S+)\((\+0x[0-9a-f]+)\)")
_PY_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def crash_signature(log: str, exit_detail: str) -> str:
    """Tell crashes apart by where they happened, when the server's log says so.

    gearmand prints a backtrace of ``binary(+offset)`` frames on a fatal signal; the
    first two frames are its own signal handler, and frames in libc (the signal
    trampoline, ``abort``, ``__snprintf_chk``) say little, so the key is the next
    three frames in the server's own binary.  A Python server prints a traceback.
    Without either, the exit status is all there is.
    """
    frames = _FRAME.findall(log)
    if len(frames) >= 4:
        binary = frames[0][0]
        own = [offset for path, offset in frames[2:] if path == binary]
        chosen = own[:3] if own else [offset for _, offset in frames[2:5]]
        return "bt:" + ",".join(chosen)
    py = _PY_FRAME.findall(log)
    if py:
        path, line = py[-1]
        error = log.strip().splitlines()[-1].split(":", 1)[0][:40]
        return f"py:{path.rsplit('/', 1)[-1]}:{line}:{error}"
    return normalise(exit_detail, 40)
