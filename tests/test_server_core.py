"""The sans-IO ServerCore, rule by rule, with a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

import pytest
from conformance.core_harness import Harness

from gearproto import Priority
from gearproto.admin import Status, StatusReply, StatusRow
from gearproto.events import (
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    JobCreated,
    NoJob,
    Noop,
    OptionReq,
    OptionRes,
    PreSleep,
    ResetAbilities,
    SetClientId,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
)
from gearproto.server import MemoryStore, ServerConfig, StoredJob

H, N, L = Priority.HIGH, Priority.NORMAL, Priority.LOW


def harness(**settings: object) -> Harness:
    settings.setdefault("job_handle_prefix", b"H:t")
    return Harness(ServerConfig(**settings))  # type: ignore[arg-type]


def created(h: Harness, cid: int) -> list[bytes]:
    return [e.handle for e in h.events(cid) if type(e) is JobCreated]


def grab(h: Harness, cid: int) -> JobAssignUniq | NoJob:
    h.send(cid, GrabJobUniq())
    events = h.events(cid)
    assert len(events) == 1, events
    result = events[0]
    assert type(result) in (JobAssignUniq, NoJob)
    return result  # type: ignore[no-any-return]


# ------------------------------------------------------------------ coalescing


def test_same_function_and_unique_coalesce_onto_one_handle() -> None:
    h = harness()
    h.connect(1)
    h.connect(2)
    h.send(1, SubmitJob(b"f", b"u", b"a"))
    h.send(2, SubmitJob(b"f", b"u", b"other payload", H))
    h.send(2, SubmitJob(b"g", b"u", b"a"))
    assert created(h, 1) == [b"H:t:1"]
    assert created(h, 2) == [b"H:t:1", b"H:t:2"]
    # The coalesced submission's payload and priority are discarded.
    h.connect(3)
    h.send(3, CanDo(b"f"))
    assert grab(h, 3) == JobAssignUniq(b"H:t:1", b"f", b"u", b"a")
    h.send(3, WorkComplete(b"H:t:1", b"done"))
    assert h.events(1) == [WorkComplete(b"H:t:1", b"done")]
    assert h.events(2) == [WorkComplete(b"H:t:1", b"done")]
    # The unique is free again once the job finished.
    h.send(1, SubmitJob(b"f", b"u", b"a"))
    assert created(h, 1) == [b"H:t:3"]


def test_empty_unique_never_coalesces() -> None:
    h = harness()
    h.connect(1)
    h.send(1, SubmitJob(b"f", b"", b"a"), SubmitJob(b"f", b"", b"a"))
    assert created(h, 1) == [b"H:t:1", b"H:t:2"]


def test_dash_unique_coalesces_by_payload() -> None:
    h = harness()
    h.connect(1)
    h.send(
        1,
        SubmitJob(b"f", b"-", b"same"),
        SubmitJob(b"f", b"-", b"same"),
        SubmitJob(b"f", b"-", b"different"),
        SubmitJob(b"f", b"-", b""),
        SubmitJob(b"f", b"-", b""),
    )
    assert created(h, 1) == [b"H:t:1", b"H:t:1", b"H:t:2", b"H:t:3", b"H:t:4"]


def test_coalescing_onto_a_running_job_delivers_future_results_only() -> None:
    h = harness()
    h.connect(1)
    h.connect(2)
    h.connect(9)
    h.send(9, CanDo(b"f"))
    h.send(1, SubmitJob(b"f", b"u", b"a"))
    grab(h, 9)
    h.send(9, WorkData(b"H:t:1", b"early"))
    h.send(2, SubmitJob(b"f", b"u", b"a"))
    assert created(h, 2) == [b"H:t:1"]
    h.send(9, WorkData(b"H:t:1", b"late"), WorkComplete(b"H:t:1", b"r"))
    assert h.events(1)[1:] == [
        WorkData(b"H:t:1", b"early"),
        WorkData(b"H:t:1", b"late"),
        WorkComplete(b"H:t:1", b"r"),
    ]
    assert h.events(2) == [WorkData(b"H:t:1", b"late"), WorkComplete(b"H:t:1", b"r")]


def test_same_connection_coalescing_twice_gets_results_twice() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"u", b"a"), SubmitJob(b"f", b"u", b"a"))
    h.send(9, CanDo(b"f"))
    grab(h, 9)
    h.send(9, WorkComplete(b"H:t:1", b"r"))
    events = h.events(1)
    assert events.count(WorkComplete(b"H:t:1", b"r")) == 2


def test_foreground_onto_background_job_gets_the_result() -> None:
    h = harness()
    h.connect(1)
    h.connect(2)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"u", b"a", background=True))
    h.send(2, SubmitJob(b"f", b"u", b"a"))
    assert created(h, 2) == [b"H:t:1"]
    h.send(9, CanDo(b"f"))
    grab(h, 9)
    h.send(9, WorkComplete(b"H:t:1", b"r"))
    assert h.events(2) == [WorkComplete(b"H:t:1", b"r")]
    assert created(h, 1) == [b"H:t:1"]  # the background submitter gets nothing more


def test_background_onto_foreground_job_survives_the_client_leaving() -> None:
    h = harness()
    h.connect(1)
    h.connect(2)
    h.send(1, SubmitJob(b"f", b"u", b"a"))
    h.send(2, SubmitJob(b"f", b"u", b"a", background=True))
    h.disconnect(1)
    h.connect(9)
    h.send(9, CanDo(b"f"))
    assert grab(h, 9) == JobAssignUniq(b"H:t:1", b"f", b"u", b"a")


def test_foreground_job_whose_clients_left_is_dropped_while_queued() -> None:
    h = harness()
    h.connect(1)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.disconnect(1)
    assert h.core.job_count == 0
    h.connect(9)
    h.send(9, CanDo(b"f"))
    assert grab(h, 9) == NoJob()


def test_abandoned_running_job_results_are_accepted_and_discarded() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(9, CanDo(b"f"))
    h.send(1, SubmitJob(b"f", b"", b"a"))
    grab(h, 9)
    h.disconnect(1)
    h.send(9, WorkData(b"H:t:1", b"x"), WorkComplete(b"H:t:1", b"r"))
    assert h.events(9) == []
    assert h.core.job_count == 0


# -------------------------------------------------------------------- priority


def test_priorities_are_served_high_normal_low_fifo_within_each() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    for prio, data in [(L, b"l1"), (N, b"n1"), (H, b"h1"), (L, b"l2"), (H, b"h2"), (N, b"n2")]:
        h.send(1, SubmitJob(b"f", b"", data, prio, background=True))
    h.send(9, CanDo(b"f"))
    order = []
    for _ in range(6):
        job = grab(h, 9)
        assert isinstance(job, JobAssignUniq)
        order.append(job.data)
    assert order == [b"h1", b"h2", b"n1", b"n2", b"l1", b"l2"]


def test_priority_is_global_across_a_workers_functions() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"b", b"", b"b-high", H, background=True))
    h.send(1, SubmitJob(b"a", b"", b"a-normal", N, background=True))
    h.send(1, SubmitJob(b"a", b"", b"a-low", L, background=True))
    h.send(9, CanDo(b"a"), CanDo(b"b"))
    got = [grab(h, 9) for _ in range(3)]
    assert [j.data for j in got if isinstance(j, JobAssignUniq)] == [
        b"b-high",
        b"a-normal",
        b"a-low",
    ]


def test_fair_rotation_across_functions_of_equal_priority() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    for i in range(3):
        h.send(1, SubmitJob(b"a", b"", b"a%d" % i, background=True))
        h.send(1, SubmitJob(b"b", b"", b"b%d" % i, background=True))
    h.send(9, CanDo(b"a"), CanDo(b"b"))
    got = [grab(h, 9) for _ in range(6)]
    functions = [j.function for j in got if isinstance(j, JobAssignUniq)]
    assert functions == [b"b", b"a", b"b", b"a", b"b", b"a"]  # newest registration first


# ---------------------------------------------------------------- requeue/retry


@pytest.mark.parametrize("how", ["disconnect", "cant_do", "reset"])
def test_job_taken_back_from_worker_is_requeued_and_counted(how: str) -> None:
    h = harness()
    h.connect(1)
    h.connect(8)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.send(8, CanDo(b"f"))
    assert isinstance(grab(h, 8), JobAssignUniq)
    if how == "disconnect":
        h.disconnect(8)
    elif how == "cant_do":
        h.send(8, CantDo(b"f"))
    else:
        h.send(8, ResetAbilities())
    assert h.events(1) == [JobCreated(b"H:t:1")]  # the client is not told
    assert h.admin(1, b"show jobs\n") == b"H:t:1\t1\t0\t0\n.\n"
    h.send(9, CanDo(b"f"))
    assert grab(h, 9) == JobAssignUniq(b"H:t:1", b"f", b"", b"a")
    if how != "disconnect":
        # The old worker's late result is refused.
        h.send_raw(8, h.clients[9].send(WorkComplete(b"H:t:1", b"late")))
        assert h.events(8)[-1] == Error(b"JOB_NOT_FOUND", b"Job given in work result not found")


def test_retry_limit_drops_the_job_with_work_fail() -> None:
    h = harness(job_retries=2)
    h.connect(1)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.events(1)
    for attempt in range(2):
        worker = 10 + attempt
        h.connect(worker)
        h.send(worker, CanDo(b"f"))
        assert isinstance(grab(h, worker), JobAssignUniq)
        h.disconnect(worker)
    assert h.events(1) == [WorkFail(b"H:t:1")]
    assert h.take_raw(1).endswith(b"\0RES\0\0\0\x0e\0\0\0\x05H:t:1")
    assert h.core.job_count == 0


@pytest.mark.parametrize("retries", [0, -1])
def test_retry_limit_zero_or_negative_means_unlimited(retries: int) -> None:
    h = harness(job_retries=retries)
    h.connect(1)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    for attempt in range(20):
        worker = 10 + attempt
        h.connect(worker)
        h.send(worker, CanDo(b"f"))
        assert isinstance(grab(h, worker), JobAssignUniq)
        h.disconnect(worker)
    assert h.admin(1, b"show jobs\n") == b"H:t:1\t20\t0\t0\n.\n"


# ------------------------------------------------------------- CAN_DO_TIMEOUT


def test_can_do_timeout_is_per_job_and_survives_pre_sleep() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"one"), SubmitJob(b"f", b"", b"two"))
    h.send(9, CanDoTimeout(b"f", 1500))
    assert isinstance(grab(h, 9), JobAssignUniq)
    h.advance(0.5)
    assert isinstance(grab(h, 9), JobAssignUniq)
    h.send(9, PreSleep())  # gearmand would cancel its one timer here
    h.advance(0.99)
    assert h.admin(1, b"status\n") == b"f\t2\t2\t1\n.\n"
    h.advance(0.02)  # the first job passes 1.5 s
    assert h.admin(1, b"status\n") == b"f\t2\t1\t1\n.\n"
    h.advance(0.5)  # and the second
    assert h.admin(1, b"status\n") == b"f\t2\t0\t1\n.\n"
    assert h.admin(1, b"show jobs\n").count(b"\t1\t0\t0\n") == 2
    h.send(9, WorkComplete(b"H:t:1", b"late"))
    assert h.events(9)[-1] == Error(b"JOB_NOT_FOUND", b"Job given in work result not found")


def test_can_do_timeout_below_one_second_is_raised_to_one_second() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.send(9, CanDoTimeout(b"f", 10))
    grab(h, 9)
    h.advance(0.9)
    assert h.admin(1, b"status\n") == b"f\t1\t1\t1\n.\n"
    h.advance(0.2)
    assert h.admin(1, b"status\n") == b"f\t1\t0\t1\n.\n"


def test_finished_job_timer_does_nothing() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.send(9, CanDoTimeout(b"f", 1000))
    grab(h, 9)
    h.send(9, WorkComplete(b"H:t:1", b"r"))
    h.advance(5)
    assert h.events(1) == [JobCreated(b"H:t:1"), WorkComplete(b"H:t:1", b"r")]
    assert h.core.job_count == 0


def test_can_do_timeout_expiry_counts_against_the_retry_limit() -> None:
    h = harness(job_retries=2)
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.send(9, CanDoTimeout(b"f", 1500))
    grab(h, 9)
    h.advance(1.6)
    grab(h, 9)
    h.advance(1.6)
    assert h.events(1)[-1] == WorkFail(b"H:t:1")


# ------------------------------------------------------------------ epoch jobs


def test_epoch_job_wakes_the_sleeping_worker_when_due() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    due = int(h.now) + 3
    h.send(9, CanDo(b"f"), PreSleep())
    h.send(1, SubmitJobEpoch(b"f", b"", due, b"later"))
    assert created(h, 1) == [b"H:t:1"]
    assert h.events(9) == []
    assert h.admin(1, b"prioritystatus\n") == b"f\t0\t1\t0\t1\n.\n"
    h.advance(2.9)
    assert h.events(9) == []
    assert grab(h, 9) == NoJob()
    h.send(9, PreSleep())
    h.advance(0.2)
    assert h.events(9) == [Noop()]
    assert grab(h, 9) == JobAssignUniq(b"H:t:1", b"f", b"", b"later")


def test_epoch_job_in_the_past_runs_at_once() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJobEpoch(b"f", b"", 5, b"past"))
    h.send(9, CanDo(b"f"))
    assert grab(h, 9) == JobAssignUniq(b"H:t:1", b"f", b"", b"past")


def test_future_epoch_job_does_not_hide_lower_priorities() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJobEpoch(b"f", b"", int(h.now) + 100, b"later"))
    h.send(1, SubmitJob(b"f", b"", b"low", L, background=True))
    h.send(9, CanDo(b"f"))
    assert grab(h, 9) == JobAssignUniq(b"H:t:2", b"f", b"", b"low")


# ----------------------------------------------------------------- reduce jobs


def test_reduce_jobs_are_assigned_with_their_reducer_to_grab_job_all() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitReduceJob(b"map", b"u1", b"reduce", b"", b"data"))
    h.send(1, SubmitJob(b"map", b"u2", b"plain"))
    h.send(9, CanDo(b"map"), GrabJobAll(), GrabJobAll())
    assert h.events(9) == [
        JobAssignAll(b"H:t:1", b"map", b"u1", b"reduce", b"data"),
        JobAssignUniq(b"H:t:2", b"map", b"u2", b"plain"),
    ]


def test_reduce_job_to_a_plain_grab_is_a_plain_assignment() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitReduceJob(b"map", b"", b"reduce", b"", b"data", background=True))
    h.send(9, CanDo(b"map"), GrabJob())
    assert h.events(9) == [JobAssign(b"H:t:1", b"map", b"data")]


# ------------------------------------------------------------- NOOP/PRE_SLEEP


def test_worker_wakeup_limit_wakes_that_many_sleepers() -> None:
    h = harness(worker_wakeup=1)
    h.connect(1)
    for worker in (7, 8, 9):
        h.connect(worker)
        h.send(worker, CanDo(b"f"), PreSleep())
    h.send(1, SubmitJob(b"f", b"", b"a", background=True))
    woken = [w for w in (7, 8, 9) if h.events(w) == [Noop()]]
    assert len(woken) == 1


def test_all_sleepers_are_woken_by_default_and_noop_is_sent_once() -> None:
    h = harness()
    h.connect(1)
    for worker in (8, 9):
        h.connect(worker)
        h.send(worker, CanDo(b"f"), PreSleep())
    h.send(1, SubmitJob(b"f", b"", b"a", background=True))
    assert h.events(8) == [Noop()]
    assert h.events(9) == [Noop()]
    h.send(1, SubmitJob(b"f", b"", b"b", background=True))
    assert h.events(8) == []  # at most one NOOP until the worker acts


def test_pre_sleep_with_a_job_waiting_gets_noop_at_once() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a", background=True))
    h.send(9, CanDo(b"f"), PreSleep())
    assert h.events(9) == [Noop()]


def test_pre_sleep_again_after_an_unanswered_noop_rearms_wakeups() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(9, CanDo(b"f"), PreSleep())
    h.send(1, SubmitJob(b"f", b"", b"a", background=True))
    assert h.events(9) == [Noop()]
    h.connect(8)
    h.send(8, CanDo(b"f"))
    grab(h, 8)  # someone else takes the job
    h.send(9, PreSleep())  # back to sleep without grabbing
    h.send(1, SubmitJob(b"f", b"", b"b", background=True))
    assert h.events(9) == [Noop()]  # gearmand would never wake it again


def test_grab_with_no_abilities_gets_no_job() -> None:
    h = harness()
    h.connect(9)
    h.send(9, GrabJob(), GrabJobUniq(), GrabJobAll())
    assert h.events(9) == [NoJob(), NoJob(), NoJob()]


# ------------------------------------------------------------------ exceptions


def test_exceptions_go_only_to_opted_in_clients_others_get_work_fail() -> None:
    h = harness()
    for cid in (1, 2, 9):
        h.connect(cid)
    h.send(1, OptionReq(b"EXCEPTIONS"))
    assert h.events(1) == [OptionRes(b"EXCEPTIONS")]
    h.send(1, SubmitJob(b"f", b"u", b"a"))
    h.send(2, SubmitJob(b"f", b"u", b"a"))
    h.send(9, CanDo(b"f"))
    grab(h, 9)
    h.send(9, WorkException(b"H:t:1", b"boom"))
    assert h.events(1)[-1] == WorkException(b"H:t:1", b"boom")
    assert h.events(2)[-1] == WorkFail(b"H:t:1")
    # No trailing NUL (gearmand sends "handle\0").
    assert h.take_raw(2).endswith(b"\x0e\0\0\0\x05H:t:1")


def test_exceptions_setting_opts_every_connection_in() -> None:
    h = harness(exceptions=True)
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.send(9, CanDo(b"f"))
    grab(h, 9)
    h.send(9, WorkException(b"H:t:1", b"boom"))
    assert h.events(1)[-1] == WorkException(b"H:t:1", b"boom")


def test_unknown_option_is_refused() -> None:
    h = harness()
    h.connect(1)
    h.send(1, OptionReq(b"foo"))
    assert h.events(1) == [Error(b"UNKNOWN_OPTION", b"Server does not recognize given option")]


# -------------------------------------------------------------------- maxqueue


def test_maxqueue_refuses_new_jobs_but_not_coalesced_ones() -> None:
    h = harness()
    h.connect(1)
    h.connect(5)
    h.send(1, SubmitJob(b"f", b"u", b"a"))
    assert h.admin(5, b"maxqueue f 1\r\n") == b"OK\r\n"
    h.send(1, SubmitJob(b"f", b"v", b"b"), SubmitJob(b"f", b"u", b"a"))
    assert h.events(1) == [
        JobCreated(b"H:t:1"),
        Error(b"QUEUE_ERROR", b"Job queue is full"),
        JobCreated(b"H:t:1"),
    ]


def test_maxqueue_is_per_priority() -> None:
    h = harness()
    h.connect(1)
    h.connect(5)
    h.send(1, CanDo(b"f"))
    assert h.admin(5, b"maxqueue f 3 1 0\r\n") == b"OK\r\n"
    h.send(1, SubmitJob(b"f", b"", b"n1"), SubmitJob(b"f", b"", b"n2"))
    h.send(1, SubmitJob(b"f", b"", b"h1", H), SubmitJob(b"f", b"", b"l1", L))
    kinds = [type(e).__name__ for e in h.events(1)]
    assert kinds == ["JobCreated", "Error", "JobCreated", "JobCreated"]


# --------------------------------------------------------- status and friends


def test_get_status_and_get_status_unique_with_client_count() -> None:
    h = harness()
    for cid in (1, 2, 9):
        h.connect(cid)
    h.send(1, SubmitJob(b"f", b"uu", b"a"))
    h.send(2, SubmitJob(b"f", b"uu", b"a"))
    h.send(9, CanDo(b"f"))
    grab(h, 9)
    h.send(9, WorkStatus(b"H:t:1", 3, 10))
    h.events(1)
    h.send(1, GetStatus(b"H:t:1"), GetStatusUnique(b"uu"), GetStatus(b"H:t:99"))
    assert h.events(1) == [
        StatusRes(b"H:t:1", True, True, 3, 10),
        StatusResUnique(b"uu", True, True, 3, 10, 2),
        StatusRes(b"H:t:99", False, False, 0, 0),
    ]
    h.send(1, GetStatusUnique(b"nope"))
    assert h.events(1) == [StatusResUnique(b"nope", False, False, 0, 0, 0)]


def test_work_status_numbers_are_kept_as_uint32() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(1, SubmitJob(b"f", b"", b"a"))
    h.send(9, CanDo(b"f"))
    grab(h, 9)
    h.send_raw(9, b"\0REQ\0\0\0\x0c\0\0\0\x0cH:t:1\0-1\x0012a")
    assert h.events(1)[-1] == WorkStatus(b"H:t:1", 4294967295, 12)
    h.send(1, GetStatus(b"H:t:1"))
    assert h.events(1) == [StatusRes(b"H:t:1", True, True, 4294967295, 12)]


def test_echo_keeps_every_byte() -> None:
    h = harness()
    h.connect(1)
    payload = bytes(range(256)) * 10
    h.send(1, EchoReq(payload))
    assert h.events(1) == [EchoRes(payload)]


def test_unimplemented_request_types_are_answered_invalid_command() -> None:
    h = harness()
    h.connect(1)
    for ptype in (5, 24):
        h.send_raw(1, b"\0REQ" + ptype.to_bytes(4, "big") + b"\0\0\0\0")
    assert h.events(1) == [Error(b"INVALID_COMMAND", b"Command not expected")] * 2


# ----------------------------------------------------------------------- admin


def test_admin_listings_escape_names_so_no_row_can_be_forged() -> None:
    h = harness()
    h.connect(1)
    h.send(1, SetClientId(b"evil id\n1 2 3 :"))
    h.send(1, CanDo(b"x\n.\nfake\t9\t9\t9"))
    h.send(1, SubmitJob(b"a b", b".", b"", background=True))
    h.connect(2)
    status = h.admin(2, b"status\n")
    rows = status.split(b"\n")
    assert rows[-2:] == [b".", b""]
    assert all(row.count(b"\t") == 3 for row in rows[:-2])
    assert b"x%0A.%0Afake%099%099%099\t0\t0\t1" in status
    assert b"a%20b\t1\t0\t0" in status
    workers = h.admin(2, b"workers\n")
    assert b" evil%20id%0A1%202%203%20: : x%0A.%0Afake%099%099%099\n" in workers
    assert h.admin(2, b"show unique jobs\n") == b"%2E\n.\n"


def test_admin_commands_reply_like_gearmand() -> None:
    h = harness()
    h.connect(1)
    assert h.admin(1, b"version\n") == b"OK " + h.core.config.version + b"\n"
    assert h.admin(1, b"verbose\n") == b"OK ERROR\n"
    assert h.admin(1, b"getpid\n") == b"OK %d\n" % h.core.config.pid
    assert h.admin(1, b"bogus\r\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    assert h.admin(1, b"show things\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert h.admin(1, b"cancel job H:t:404\n") == b"ERR UNKNOWN_JOB\r\n"
    assert h.admin(1, b"create function abc\n") == b"OK\r\n"
    assert h.admin(1, b"status\n") == b"abc\t0\t0\t0\n.\n"  # gearmand creates "ab"
    assert h.admin(1, b"drop function ABC\n") == b"OK\r\n"
    assert h.admin(1, b"drop function abc\n") == b"ERR function not found\r\n"
    assert h.admin(1, b"maxqueue\n") == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        b"maxqueue\r\n"
    )


def test_drop_function_refused_while_workers_running_or_queued_jobs() -> None:
    h = harness()
    h.connect(1)
    h.connect(9)
    h.send(9, CanDo(b"f"))
    busy = b"ERR there are still connected workers or executing clients\r\n"
    assert h.admin(1, b"drop function f\n") == busy
    h.send(9, ResetAbilities())
    h.send(1, SubmitJob(b"f", b"", b"a", background=True))
    assert h.admin(1, b"drop function f\n") == b"ERR there are still queued jobs\r\n"


def test_cancel_job_fails_queued_job_and_detaches_running_job() -> None:
    h = harness()
    for cid in (1, 5, 9):
        h.connect(cid)
    h.send(1, SubmitJob(b"f", b"", b"a"), SubmitJob(b"f", b"", b"b"))
    h.send(9, CanDo(b"f"))
    grab(h, 9)  # H:t:1 runs
    assert h.admin(5, b"cancel job H:t:2\n") == b"OK\r\n"
    assert h.admin(5, b"cancel job H:t:2\n") == b"ERR UNKNOWN_JOB\r\n"
    assert h.admin(5, b"cancel job H:t:1\n") == b"OK\r\n"
    assert h.admin(5, b"show jobs\n") == b"H:t:1\t0\t1\t0\n.\n"
    h.send(9, WorkComplete(b"H:t:1", b"r"))
    assert h.events(9) == []
    assert h.events(1)[2:] == [WorkFail(b"H:t:2"), WorkFail(b"H:t:1")]  # no result afterwards
    assert h.core.job_count == 0


def test_shutdown_is_only_accepted_from_loopback() -> None:
    h = harness()
    h.connect(1, host="10.0.0.1")
    h.connect(2)
    assert h.admin(1, b"shutdown\n").startswith(b"ERR PERMISSION_DENIED")
    assert h.core.stop_requested is None
    assert h.admin(2, b"shutdown graceful\n") == b"OK\r\n"
    assert h.core.stop_requested == "graceful"


def test_workers_lists_every_connection_newest_first() -> None:
    h = harness()
    h.connect(1)
    h.connect(2)
    h.send(2, CanDo(b"f"), CanDo(b"f"), SetClientId(b"w2"))
    assert h.admin(1, b"workers\n") == (b"102 127.0.0.1 w2 : f f\n101 127.0.0.1 - :\n.\n")
    assert h.admin(1, b"status\n") == b"f\t0\t0\t2\n.\n"


# --------------------------------------------------------------- durable store


def test_background_job_created_is_held_until_its_batch_commits() -> None:
    h = Harness(ServerConfig(job_handle_prefix=b"H:t", durable=True))
    h.connect(1)
    h.connect(2)
    h.connect(9)
    h.send(9, CanDo(b"f"), PreSleep())
    h.send(1, SubmitJob(b"f", b"", b"a", background=True), EchoReq(b"after"))
    h.send(2, SubmitJob(b"f", b"u", b"b", H, background=True))
    assert h.events(1) == []  # the echo waits behind the held JOB_CREATED
    assert h.events(9) == []  # not runnable before it is durable
    batch = h.commit_store()
    assert batch is not None
    assert [(j.function, j.data, j.priority) for j in batch.added] == [
        (b"f", b"a", N),
        (b"f", b"b", H),
    ]
    assert h.events(1) == [JobCreated(b"H:t:1"), EchoRes(b"after")]
    assert h.events(2) == [JobCreated(b"H:t:2")]
    assert h.events(9) == [Noop()]
    assert grab(h, 9) == JobAssignUniq(b"H:t:2", b"f", b"u", b"b")
    h.send(9, WorkComplete(b"H:t:2", b""))
    removal = h.commit_store()
    assert removal is not None
    assert list(removal.removed) == [batch.added[1].job_id]


def test_failed_batch_answers_queue_error_and_the_job_does_not_exist() -> None:
    h = Harness(ServerConfig(job_handle_prefix=b"H:t", durable=True))
    h.connect(1)
    h.send(1, SubmitJob(b"f", b"", b"a", background=True))
    batch = h.core.take_store_batch()
    assert batch is not None
    h.core.store_failed(batch.batch_id, b"QUEUE_ERROR", h.now)
    h._pump()
    assert h.events(1) == [Error(b"QUEUE_ERROR", b"QUEUE_ERROR")]
    assert h.core.job_count == 0


def test_load_replays_stored_jobs_in_order_with_epochs() -> None:
    h = harness()
    store = MemoryStore()
    now = int(h.now)
    jobs = [
        StoredJob(3, b"f", b"c", b"third", N),
        StoredJob(1, b"f", b"a", b"first", N),
        StoredJob(2, b"f", b"b", b"later", N, when=now + 10),
        StoredJob(4, b"f", b"d", b"high", H),
    ]
    for job in jobs:
        store.jobs[job.job_id] = job
    assert h.core.load(store.load(), h.now) == 4
    h.connect(9)
    h.send(9, CanDo(b"f"))
    got = [grab(h, 9) for _ in range(4)]
    assert [j.data for j in got if isinstance(j, JobAssignUniq)] == [b"high", b"first", b"third"]
    assert grab(h, 9) == NoJob()
    h.advance(11)
    assert grab(h, 9) == JobAssignUniq(b"H:t:2", b"f", b"b", b"later")


# ------------------------------------------------------------------- malformed


def test_malformed_packets_are_answered_and_other_connections_unaffected() -> None:
    h = harness()
    h.connect(1)
    h.connect(2)
    h.connect(3)
    h.send_raw(1, b"\0RES\0\0\0\x10\0\0\0\x02hi")  # response magic: ERROR, stays open
    assert h.events(1) == [Error(b"INVALID_MAGIC", b"Request magic expected")]
    h.send_raw(2, b"\0REQ\0\0\0\x07\0\0\0\x03abc")  # SUBMIT_JOB without its NULs
    assert type(h.events(2)[0]) is Error
    h.send_raw(3, b"\0XYZ\0\0\0\x01\0\0\0\x00")  # bad magic: ERROR then close
    assert 3 in h.closed
    h.send(1, EchoReq(b"still fine"))
    h.send(2, EchoReq(b"still fine"))
    assert h.events(1) == [EchoRes(b"still fine")]
    assert h.events(2) == [EchoRes(b"still fine")]


def test_oversized_declared_body_is_refused_before_buffering() -> None:
    h = harness()
    h.connect(1)
    h.send_raw(1, b"\0REQ\0\0\0\x10\xff\xff\xff\xff")
    assert 1 in h.closed
    assert b"ARGUMENT_TOO_LARGE" in h.raw[1]


def test_unique_over_64_bytes_is_refused() -> None:
    h = harness()
    h.connect(1)
    h.send_raw(1, b"\0REQ\0\0\0\x07" + (3 + 65).to_bytes(4, "big") + b"f\0" + b"u" * 65 + b"\0")
    assert h.events(1) == [Error(b"ARGUMENT_TOO_LARGE", b"Unique value too large")]
    h.send(1, SubmitJob(b"f", b"u" * 64, b"a"), GetStatusUnique(b"u" * 64))
    events = h.events(1)
    assert events[1] == StatusResUnique(b"u" * 64, True, False, 0, 0, 1)


def test_split_packets_and_lines_are_reassembled() -> None:
    h = harness()
    h.connect(1)
    data = h.clients[1].send(SubmitJob(b"f", b"", b"x" * 100)) + h.clients[1].send(Status())
    for byte in data:
        h.core.receive(1, bytes([byte]), h.now)
    h._pump()
    assert h.events(1) == [JobCreated(b"H:t:1"), StatusReply((StatusRow(b"f", 1, 0, 0),))]


def test_timers_of_finished_jobs_do_not_pile_up() -> None:
    h = harness(idle_timeout=0)  # the client sits idle through the hour below
    h.connect(1)
    h.connect(9)
    h.send(9, CanDoTimeout(b"f", 3_600_000))  # an hour: no timer falls due here
    for i in range(5000):
        h.send(1, SubmitJob(b"f", b"", b"%d" % i, background=True))
        job = grab(h, 9)
        assert isinstance(job, JobAssignUniq)
        h.send(9, WorkComplete(job.handle, b""))
    assert len(h.core._timeouts) <= 2048
    # A running job's timer survives compaction and still fires.
    h.send(1, SubmitJob(b"f", b"", b"last", background=True))
    grab(h, 9)
    h.advance(3601)
    assert h.admin(1, b"status\n") == b"f\t1\t0\t1\n.\n"


def test_cancelled_queued_jobs_do_not_pile_up_in_the_queue() -> None:
    h = harness()
    h.connect(5)
    for i in range(3000):
        h.connect(100 + i)
        h.send(100 + i, SubmitJob(b"f", b"", b"%d" % i))
        h.disconnect(100 + i)  # its foreground job is dropped
    h.connect(1)
    h.send(1, SubmitJob(b"f", b"", b"kept", background=True))
    function = next(iter(h.core.functions()))
    assert len(function.queues[N]) <= 130
    h.connect(9)
    h.send(9, CanDo(b"f"))
    assert grab(h, 9) == JobAssignUniq(b"H:t:3001", b"f", b"", b"kept")
