"""Both ends of a connection keep the same view of it, whatever the conversation.

A hypothesis state machine plays a client/worker and a server on one connection,
sending legal requests, replies, errors and work results in any order the protocol
allows (chosen from what each side's Connection says is owed), and checks after every
step that the two Connections agree on the replies owed, the jobs the client follows,
the jobs the worker holds and the worker's state, and that every event arrives intact.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers.core_impl import compiled_available
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gearproto import NEED_DATA, Connection, Side, admin
from gearproto import events as ev
from gearproto._connection import _use_python_loops

REQUESTS: list[Any] = [
    ev.SubmitJob(b"f", b"", b"fg"),
    ev.SubmitJob(b"f", b"same", b"fg"),
    ev.SubmitJob(b"f", b"", b"bg", background=True),
    ev.SubmitReduceJob(b"f", b"", b"r", b"", b"x"),
    ev.SubmitJobEpoch(b"f", b"", 0, b"later"),
    ev.GrabJob(),
    ev.GrabJobUniq(),
    ev.GrabJobAll(),
    ev.GetStatus(b"H:1"),
    ev.GetStatusUnique(b"u"),
    ev.EchoReq(b"e"),
    ev.OptionReq(b"exceptions"),
    ev.CanDo(b"f"),
    ev.CantDo(b"f"),
    ev.PreSleep(),
    ev.SetClientId(b"me"),
    ev.ResetAbilities(),
    admin.Status(),
    admin.Version(),
    admin.ShowUniqueJobs(),
]


class Conversation(RuleBasedStateMachine):
    #: Parse with the Python loops (the reference) rather than the compiled ones.
    python_loops = True

    def __init__(self) -> None:
        super().__init__()
        self.client = self._connection(Side.CLIENT)
        self.server = self._connection(Side.SERVER)
        self.received: list[Any] = []  # requests the server read, not yet answered
        self.handles = 0

    def _connection(self, side: Side) -> Connection:
        conn = Connection(side)
        return _use_python_loops(conn) if self.python_loops else conn

    def _to_server(self, event: Any) -> None:
        self.server.receive_data(self.client.send(event))
        got = self.server.next_event()
        assert got == event
        assert self.server.next_event() is NEED_DATA

    def _to_client(self, event: Any) -> Any:
        self.client.receive_data(self.server.send(event))
        got = self.client.next_event()
        assert got == event
        answered = self.client.answered
        assert self.client.next_event() is NEED_DATA
        return answered

    def _new_handle(self) -> bytes:
        self.handles += 1
        return b"H:%d" % self.handles

    @rule(request=st.sampled_from(REQUESTS))
    def send_request(self, request: Any) -> None:
        self._to_server(request)
        if type(request) not in (
            ev.CanDo,
            ev.CantDo,
            ev.PreSleep,
            ev.SetClientId,
            ev.ResetAbilities,
        ):
            self.received.append(request)

    @precondition(lambda self: self.received)
    @rule(data=st.data())
    def answer_oldest(self, data: st.DataObject) -> None:
        request = self.received.pop(0)
        reply: Any
        match request:
            case ev.SubmitJob() | ev.SubmitReduceJob() | ev.SubmitJobEpoch():
                reply = ev.JobCreated(self._new_handle())
            case ev.GrabJob():
                reply = data.draw(
                    st.sampled_from([ev.NoJob(), ev.JobAssign(self._new_handle(), b"f", b"")])
                )
            case ev.GrabJobUniq():
                reply = ev.JobAssignUniq(self._new_handle(), b"f", b"u", b"")
            case ev.GrabJobAll():
                reply = ev.JobAssignAll(self._new_handle(), b"f", b"u", b"r", b"")
            case ev.GetStatus(handle=handle):
                reply = ev.StatusRes(handle, False, False, 0, 0)
            case ev.GetStatusUnique(unique=unique):
                reply = ev.StatusResUnique(unique, True, False, 1, 2, 0)
            case ev.EchoReq(data=echoed):
                reply = ev.EchoRes(echoed)
            case ev.OptionReq(option=option):
                reply = ev.OptionRes(option)
            case admin.Status():
                reply = admin.StatusReply((admin.StatusRow(b"f", 1, 0, 1),))
            case admin.Version():
                reply = admin.AdminOk(b"1")
            case admin.ShowUniqueJobs():
                reply = admin.ShowUniqueJobsReply((b"", b"u"))
        admin_command = type(request) in admin.COMMAND_CLASSES
        if not admin_command and data.draw(st.booleans()):
            reply = ev.Error(b"QUEUE_ERROR", b"refused")  # any request may be refused
        answered = self._to_client(reply)
        assert answered is not None
        assert answered == request

    @precondition(lambda self: self.client.client_handles)
    @rule(data=st.data())
    def server_reports_work(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.client.client_handles)))
        kind = data.draw(st.sampled_from([ev.WorkData, ev.WorkComplete, ev.WorkException]))
        self._to_client(kind(handle, b"r"))

    @precondition(lambda self: self.client.assigned_handles)
    @rule(data=st.data())
    def worker_reports_work(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.client.assigned_handles)))
        event = data.draw(
            st.sampled_from(
                [
                    ev.WorkStatus(handle, 1, 2),
                    ev.WorkData(handle, b"d"),
                    ev.WorkComplete(handle, b"c"),
                    ev.WorkFail(handle),
                ]
            )
        )
        self._to_server(event)

    @rule()
    def server_wakes_the_worker(self) -> None:
        self._to_client(ev.Noop())

    @invariant()
    def both_sides_agree(self) -> None:
        client, server = self.client, self.server
        assert client.pending_replies == server.pending_replies == len(self.received)
        assert client.client_handles == server.client_handles
        assert client.assigned_handles == server.assigned_handles
        assert client.worker_state is server.worker_state


class CompiledConversation(Conversation):
    """The same conversations, parsed by the compiled accelerator."""

    python_loops = False


_SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None)
Conversation.TestCase.settings = _SETTINGS
CompiledConversation.TestCase.settings = _SETTINGS
TestConversation = Conversation.TestCase
TestCompiledConversation = pytest.mark.skipif(
    not compiled_available(), reason="the compiled accelerator is not built"
)(CompiledConversation.TestCase)
