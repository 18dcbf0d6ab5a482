"""Differential mode: the same case against two servers, differences classified.

Each connection's reaction is reduced to what a spec can judge: the sequence of reply
types (ERROR with its code, admin replies as ``OK`` / ``ERR <code>`` / ``listing``),
the contents of replies whose contents the request determines (echo data, option
names, status by unique id), and the connection's fate.  Handles, error texts, admin
listing rows and job payloads depend on server state and naming, so they are left
out, and so are the contents of STATUS_RES (a byte case can only guess a handle, and
the same handle names different jobs on two servers) and of STATUS_RES_UNIQUE about
jobs the case did not submit (they depend on what each server was sent before).
NOOP is unsolicited and may come before or after a reply the same read produced, so
NOOPs are compared by number only.  When several connections send requests, which of
them a job goes to depends on the order the server reads them in, which the case does
not fix: GRAB and status replies are then compared as "a reply came" and NOOPs not at
all (the single-server oracles check that no job is lost or doubled).  The same holds
for a connection that registered a function the case does not own (the empty name,
say): earlier cases may have left jobs for it.
A difference is then one of:

* ``close-vs-reply`` — one server closed (or went silent) where the other answered;
* ``error-code`` — one answered ERROR (or ``ERR``) with another code, or an error
  where the other did not;
* ``ordering`` — the same replies in another order;
* ``content`` — the same reply types with different contents.

When one of the two servers is gearproto's and the other gearmand, each divergence is
looked up in :data:`.deviations.KNOWN_DEVIATIONS`: an explained one is reported with
the ``docs/deviations.md`` anchor that explains it (``details["deviation"]``) and
deduplicated per deviation, so the report's unexplained entries are what is left to
triage.
"""

from __future__ import annotations

from collections import Counter

from gearproto import PacketType
from gearproto import events as ev

from .case import Send
from .deviations import Divergence, explain
from .execute import PROBE_LABEL, ConnObservation, Observation
from .verdict import FindingClass, Verdict

__all__ = ["Reaction", "compare", "reaction"]

_T = PacketType
Reaction = tuple[list[tuple[str, str]], str]
_CONTENT_TYPES = {
    _T.ECHO_RES: slice(0, None),
    _T.OPTION_RES: slice(0, None),
    _T.STATUS_RES_UNIQUE: slice(0, 5),
}


def case_ids(observation: Observation) -> frozenset[bytes]:
    """Unique ids of the jobs the case itself submitted, and that only it uses (they
    carry its name prefix: GET_STATUS_UNIQUE ignores the function, and a short unique
    such as ``u1`` may belong to a job an earlier case left queued)."""
    prefix = str(observation.case.notes.get("prefix") or "").encode("latin-1")
    ids: set[bytes] = set()
    if not prefix:
        return frozenset()
    for obs in observation.conns.values():
        for request in obs.requests:
            event = request.event
            if isinstance(event, _SUBMITS) and prefix in event.unique:
                ids.add(event.unique)
    return frozenset(ids)


_SUBMITS = (ev.SubmitJob, ev.SubmitJobEpoch, ev.SubmitJobSched, ev.SubmitReduceJob)


_GRAB_REPLIES = frozenset({_T.JOB_ASSIGN, _T.JOB_ASSIGN_UNIQ, _T.JOB_ASSIGN_ALL, _T.NO_JOB})


def reaction(
    obs: ConnObservation, own: frozenset[bytes] | None = None, shared: bool = False
) -> Reaction:
    """``([(kind, content), ...], fate)`` for one connection.

    With ``own`` (see :func:`case_ids`), the contents of STATUS_RES_UNIQUE about
    other jobs are left out.  NOOPs are counted in a last
    ``("NOOPs", count)`` item; with ``shared`` (other connections of the case send
    requests too) they are left out, GRAB replies become ``grab-reply`` and status
    contents are left out.
    """
    items: list[tuple[str, str]] = []
    noops = 0
    in_listing = False
    for reply in obs.replies:
        if reply.kind == "line":
            line = reply.line
            if in_listing:
                in_listing = line != b"."
                continue
            if line == b"OK" or line.startswith(b"OK "):
                items.append(("OK", ""))
            elif line.startswith(b"ERR "):
                items.append(("ERR " + line[4:].split(b" ", 1)[0].decode("latin-1"), ""))
            else:
                items.append(("listing", ""))
                in_listing = line != b"."
            continue
        if reply.problem:
            items.append(("malformed", reply.problem[:40]))
            continue
        if (
            reply.ptype == _T.STATUS_RES
            and reply.fields
            and reply.fields[0].startswith(b"fz-sync-")
        ):
            continue  # the sync probe's own answer
        if reply.ptype == _T.ERROR:
            items.append(("ERROR " + reply.fields[0].decode("latin-1"), ""))
            continue
        if reply.ptype == _T.NOOP:
            noops += 1
            continue
        if shared and reply.ptype in _GRAB_REPLIES:
            items.append(("grab-reply", ""))
            continue
        part = _CONTENT_TYPES.get(_T(reply.ptype)) if 0 < reply.ptype <= 42 else None
        if (
            part is not None
            and reply.ptype == _T.STATUS_RES_UNIQUE
            and (shared or own is None or not reply.fields or reply.fields[0] not in own)
        ):
            # About a job of another case (server history), or of one that another
            # connection of this case submits or runs (the servers' reading order).
            part = None
        content = b"\0".join(reply.fields[part]).decode("latin-1")[:80] if part else ""
        items.append((reply.name, content))
    if noops and not shared:
        items.append(("NOOPs", str(noops)))
    if obs.probe == "answered":
        fate = "in-sync"
    elif obs.probe == "unanswered":
        fate = "silent"
    elif obs.fate in ("eof", "reset") or obs.probe == "closed":
        fate = "closed"
    else:
        fate = "open"
    return items, fate


def _first_request(obs: ConnObservation, index: int) -> str:
    owed = [r for r in obs.requests if r.owes_reply and r.label != PROBE_LABEL]
    if index < len(owed):
        return owed[index].label
    return owed[-1].label if owed else "none"


def compare(
    a: Observation, b: Observation, names: tuple[str, str], ours: int | None = None
) -> list[Verdict]:
    """Divergence verdicts between two runs of the same case.

    ``ours`` says which run (0: ``a``, 1: ``b``) was gearproto's server when the other
    was gearmand: divergences are then checked against the documented deviations.
    """
    verdicts: list[Verdict] = []
    own = case_ids(a)
    several = sum(1 for obs in a.conns.values() if obs.requests) > 1
    prefix = str(a.case.notes.get("prefix") or "").encode("latin-1")
    for conn, obs_a in a.conns.items():
        obs_b = b.conns.get(conn)
        if obs_b is None or "unread" in (obs_a.fate, obs_b.fate):
            continue
        if "closed" in (obs_a.fate, obs_b.fate):
            continue  # the case itself hung up: what arrived before is a matter of timing
        # The two runs read the same bytes: one shadow decides for both.
        loose = several or _foreign_worker(obs_a, prefix)
        (items_a, fate_a), (items_b, fate_b) = (
            reaction(obs_a, own, loose),
            reaction(obs_b, own, loose),
        )
        if "open" in (fate_a, fate_b):
            continue  # no sync point (unfinished input): how much arrived is timing too
        kinds_a = [k for k, _ in items_a]
        kinds_b = [k for k, _ in items_b]
        sub, where = _classify(items_a, items_b, kinds_a, kinds_b, fate_a, fate_b)
        if sub is None:
            continue
        request = _first_request(obs_a, where)
        shown_a = " ".join(kinds_a[where : where + 2]) or fate_a
        shown_b = " ".join(kinds_b[where : where + 2]) or fate_b
        key = f"{sub}:{request}:{_short(shown_a)}|{_short(shown_b)}"
        summary = (
            f"connection {conn}, reply {where + 1} (to {request}): {names[0]} gave"
            f" {shown_a} ({fate_a}), {names[1]} gave {shown_b} ({fate_b})"
        )
        details: dict[str, object] = {
            "kind": sub,
            names[0]: {"replies": items_a[:20], "fate": fate_a},
            names[1]: {"replies": items_b[:20], "fate": fate_b},
        }
        if ours is not None:
            mine, theirs = (obs_a, obs_b) if ours == 0 else (obs_b, obs_a)
            (my_items, my_fate), (their_items, their_fate) = (
                ((items_a, fate_a), (items_b, fate_b))
                if ours == 0
                else ((items_b, fate_b), (items_a, fate_a))
            )
            known = explain(
                Divergence(
                    sub, where, my_items, my_fate, their_items, their_fate,
                    mine.shadow.requests, mine.half_closed or theirs.half_closed,
                    _sent(a, conn),
                )
            )  # fmt: skip
            details["deviation"] = known.anchor if known is not None else None
            if known is not None:
                # One finding per deviation and kind: the report lists what is explained
                # once, and keeps the detailed keys for what is not.
                key = f"deviation:{known.anchor}:{sub}"
                summary = f"[deviation: {known.heading}] {summary}"
        verdicts.append(Verdict(FindingClass.DIVERGENCE, key, summary, details))
    return verdicts


def _sent(observation: Observation, conn: int) -> bytes:
    return b"".join(
        step.data for step in observation.case.steps if isinstance(step, Send) and step.conn == conn
    )


def _foreign_worker(obs: ConnObservation, prefix: bytes) -> bool:
    """The connection registered a function the case does not own (no name prefix, such
    as the empty name): what it is assigned depends on jobs earlier cases left."""
    functions = [
        r.event.function for r in obs.requests if isinstance(r.event, ev.CanDo | ev.CanDoTimeout)
    ]
    return any(not (prefix and prefix in function) for function in functions)


def _short(text: str) -> str:
    return text[:40]


def _classify(
    items_a: list[tuple[str, str]],
    items_b: list[tuple[str, str]],
    kinds_a: list[str],
    kinds_b: list[str],
    fate_a: str,
    fate_b: str,
) -> tuple[str | None, int]:
    for index, (x, y) in enumerate(zip(kinds_a, kinds_b, strict=False)):
        if x != y:
            if Counter(kinds_a) == Counter(kinds_b):
                return "ordering", index
            if _is_error(x) or _is_error(y):
                return "error-code", index
            return "content", index
    if len(kinds_a) != len(kinds_b):
        index = min(len(kinds_a), len(kinds_b))
        if fate_a != fate_b:
            return "close-vs-reply", index
        longer = kinds_a if len(kinds_a) > len(kinds_b) else kinds_b
        return ("error-code" if _is_error(longer[index]) else "close-vs-reply"), index
    if fate_a != fate_b and "open" not in (fate_a, fate_b):
        return "close-vs-reply", len(kinds_a)
    for index, (item_a, item_b) in enumerate(zip(items_a, items_b, strict=False)):
        if item_a[1] != item_b[1]:
            return "content", index
    return None, 0


def _is_error(kind: str) -> bool:
    return kind.startswith(("ERROR", "ERR "))
