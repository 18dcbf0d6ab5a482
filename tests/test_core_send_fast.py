"""The client's SubmitJob fast path sends exactly what the general path sends.

``Connection.send`` takes a short path for a client's SubmitJob whose fields plainly
pass every check; anything else goes through the general, table-driven path.  Both
must agree on the bytes, on what is refused (and with which message), and on the
state left behind (the JOB_CREATED that is now owed).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gearproto import Connection, Limits, LocalProtocolError, Priority, Side
from gearproto import events as ev
from gearproto._codec import HEADER

LIMITS = Limits(max_function=8, max_unique=6, max_packet_size=64)


def general_path(conn: Connection, event: Any) -> bytes:
    """What send() produces without its fast path."""
    ptype, fields, size = conn._prepare_packet(event)
    return HEADER.pack(b"\0REQ", ptype, size) + b"\0".join(fields)


def outcome(send: Any, event: Any) -> tuple[str, object]:
    try:
        return "bytes", send(event)
    except LocalProtocolError as exc:
        return "refused", str(exc)


field = st.binary(max_size=12) | st.sampled_from([b"", b"fn", b"a\0b", b"\0"])
priorities = st.sampled_from([0, 1, 2, 3, -1, True, False, 1.0, [1], *Priority])
backgrounds = st.sampled_from([False, True, 0, 1, None, [True]])  # a list is unhashable


@given(field, field, st.binary(max_size=70), priorities, backgrounds)
def test_fast_and_general_paths_agree(
    function: bytes, unique: bytes, data: bytes, priority: Any, background: Any
) -> None:
    event = ev.SubmitJob(function, unique, data, priority, background)
    fast, general = Connection(Side.CLIENT, limits=LIMITS), Connection(Side.CLIENT, limits=LIMITS)
    fast_outcome = outcome(fast.send, event)
    assert fast_outcome == outcome(lambda e: general_path(general, e), event)
    assert list(fast._pending) == list(general._pending)
    parts = Connection(Side.CLIENT, limits=LIMITS)
    parts_outcome = outcome(parts.send_parts, event)
    if fast_outcome[0] == "bytes":
        assert parts_outcome[0] == "bytes"
        assert b"".join(parts_outcome[1]) == fast_outcome[1]  # type: ignore[arg-type]
    else:
        assert parts_outcome == fast_outcome


def test_a_fast_submission_is_answered_like_any_other() -> None:
    client = Connection(Side.CLIENT)
    server = Connection(Side.SERVER)
    submit = ev.SubmitJob(b"reverse", b"u-1", b"payload", Priority.HIGH, True)
    server.receive_data(client.send(submit))
    assert server.next_event() == submit
    client.receive_data(server.send(ev.JobCreated(b"H:1")))
    assert client.next_event() == ev.JobCreated(b"H:1")
    assert client.answered == submit


def worker_holding(handles: list[bytes]) -> Connection:
    """A worker connection that was assigned ``handles`` by a server."""
    worker = Connection(Side.CLIENT, limits=LIMITS)
    server = Connection(Side.SERVER, limits=LIMITS)
    for handle in handles:
        server.receive_data(worker.send(ev.GrabJobUniq()))
        assert server.next_event() == ev.GrabJobUniq()
        worker.receive_data(server.send(ev.JobAssignUniq(handle, b"fn", b"", b"")))
        assert worker.next_event() == ev.JobAssignUniq(handle, b"fn", b"", b"")
    return worker


work_classes = st.sampled_from([ev.WorkComplete, ev.WorkException, ev.WorkData, ev.WorkWarning])
held = st.lists(st.sampled_from([b"H:1", b"H:2", b"H:long-handle"]), unique=True, max_size=3)


@given(held, st.lists(st.tuples(work_classes, field, st.binary(max_size=70)), max_size=6))
def test_fast_and_general_paths_agree_on_work_updates(
    handles: list[bytes], updates: list[tuple[Any, bytes, bytes]]
) -> None:
    fast, general = worker_holding(handles), worker_holding(handles)
    for cls, handle, data in [(c, h if h else b"H:1", d) for c, h, d in updates]:
        event = cls(handle, data)
        assert outcome(fast.send, event) == outcome(lambda e: general_path(general, e), event)
        assert list(fast._pending) == list(general._pending)
        assert fast._worker_handles == general._worker_handles
