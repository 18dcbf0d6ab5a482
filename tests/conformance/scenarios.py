"""The scenarios of the differential suite: one or more per server rule and admin command.

Each runs against gearmand 1.1.20 and against ``gearproto server`` (both with
``--job-handle-prefix H:test``) and the transcripts must be identical, unless the
scenario names a deviation (docs/deviations.md), in which case ``check`` states
what each server does.
"""

from __future__ import annotations

import time

from .dsl import CLOSED, LINE, LISTING, MAYBE, PACKET, SILENCE, Scenario, Step, Transcript, req, res

P, L, LS, S = PACKET, LINE, LISTING, SILENCE

# Packet type numbers.
CAN_DO, CANT_DO, RESET, PRE_SLEEP, UNUSED, NOOP = 1, 2, 3, 4, 5, 6
SUBMIT, CREATED, GRAB, NO_JOB, ASSIGN = 7, 8, 9, 10, 11
WORK_STATUS, COMPLETE, FAIL, GET_STATUS, ECHO, ECHO_RES, SUBMIT_BG = 12, 13, 14, 15, 16, 17, 18
ERROR, STATUS_RES, SUBMIT_HIGH, SET_ID, CAN_DO_TIMEOUT = 19, 20, 21, 22, 23
EXCEPTION, OPTION, WORK_DATA, WORK_WARNING, GRAB_UNIQ, ASSIGN_UNIQ = 25, 26, 28, 29, 30, 31
SUBMIT_HIGH_BG, SUBMIT_LOW, SUBMIT_LOW_BG, SUBMIT_EPOCH = 32, 33, 34, 36
SUBMIT_REDUCE, GRAB_ALL, ASSIGN_ALL, GET_STATUS_UNIQUE, STATUS_UNIQUE = 37, 39, 40, 41, 42


def h(n: int) -> bytes:
    return b"H:test:%d" % n


def created(n: int) -> bytes:
    return res(CREATED, h(n))


def _replies(transcript: Transcript, conn: str) -> list[bytes]:
    return [data for c, data in transcript if c == conn]


SCENARIOS: list[Scenario] = []


def scenario(*args: object, **kwargs: object) -> None:
    SCENARIOS.append(Scenario(*args, **kwargs))  # type: ignore[arg-type]


# ------------------------------------------------------------------ coalescing

scenario(
    "coalesce_same_unique",
    "unique-id coalescing keyed by (function, unique)",
    [
        Step("c1", req(SUBMIT, b"f", b"u1", b"a"), [P]),
        Step("c2", req(SUBMIT, b"f", b"u1", b"b"), [P]),
        Step("c2", req(SUBMIT, b"g", b"u1", b"a"), [P]),
        Step("adm", b"status\r\n", [LS]),
    ],
)
scenario(
    "coalesce_empty_unique_never",
    "an empty unique never coalesces",
    [Step("c1", req(SUBMIT_BG, b"f", b"", b"a") + req(SUBMIT_BG, b"f", b"", b"a"), [P, P])],
)
scenario(
    "coalesce_dash_by_payload",
    "unique '-' coalesces by payload",
    [
        Step(
            "c1",
            req(SUBMIT_BG, b"f", b"-", b"same")
            + req(SUBMIT_BG, b"f", b"-", b"same")
            + req(SUBMIT_BG, b"f", b"-", b"other")
            + req(SUBMIT_BG, b"f", b"-", b""),
            [P, P, P, P],
        ),
        Step("adm", b"show unique jobs\r\n", [LS]),
    ],
)
scenario(
    "coalesce_onto_running_job",
    "coalescing onto running jobs",
    [
        Step("w", req(CAN_DO, b"f")),
        Step("c1", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("w", req(GRAB_UNIQ), [P]),
        Step("c2", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("w", req(WORK_DATA, h(1), b"part") + req(COMPLETE, h(1), b"done")),
        Step("c1", b"", [P, P]),
        Step("c2", b"", [P, P]),
    ],
)
scenario(
    "coalesce_fg_onto_bg",
    "foreground submissions coalesce onto background jobs",
    [
        Step("c1", req(SUBMIT_BG, b"f", b"u", b"a"), [P]),
        Step("c2", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(COMPLETE, h(1), b"r")),
        Step("c2", b"", [P]),
        Step("c1", b"", [S]),
    ],
)

# -------------------------------------------------------------------- priority

scenario(
    "priority_fifo_within_priority",
    "priority HIGH > NORMAL > LOW with FIFO inside each",
    [
        Step(
            "c",
            req(SUBMIT_LOW_BG, b"f", b"", b"l1")
            + req(SUBMIT_BG, b"f", b"", b"n1")
            + req(SUBMIT_HIGH_BG, b"f", b"", b"h1")
            + req(SUBMIT_LOW_BG, b"f", b"", b"l2")
            + req(SUBMIT_HIGH_BG, b"f", b"", b"h2")
            + req(SUBMIT_BG, b"f", b"", b"n2"),
            [P] * 6,
        ),
        Step("adm", b"prioritystatus\r\n", [LS]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ) * 6, [P] * 6),
    ],
)


def _global_priority(ours: Transcript, theirs: Transcript) -> None:
    assigned = [d for c, d in ours if c == "w"]
    assert assigned[0].endswith(b"b-high"), assigned
    # gearmand 1.1.20 serves the most recently registered function first.
    assert _replies(theirs, "w")[0].endswith(b"a-normal")


scenario(
    "priority_global_across_functions",
    "global priority across a worker's functions",
    [
        Step("c", req(SUBMIT_HIGH_BG, b"b", b"", b"b-high"), [P]),
        Step("c", req(SUBMIT_BG, b"a", b"", b"a-normal"), [P]),
        Step("w", req(CAN_DO, b"b") + req(CAN_DO, b"a") + req(GRAB_UNIQ) * 2, [P, P]),
    ],
    deviation="Priority is global across a worker's functions",
    check=_global_priority,
)
scenario(
    "fair_rotation_across_functions",
    "fair rotation across a worker's functions",
    [
        Step(
            "c",
            req(SUBMIT_BG, b"a", b"", b"a1")
            + req(SUBMIT_BG, b"a", b"", b"a2")
            + req(SUBMIT_BG, b"b", b"", b"b1")
            + req(SUBMIT_BG, b"b", b"", b"b2"),
            [P] * 4,
        ),
        Step("w", req(CAN_DO, b"a") + req(CAN_DO, b"b") + req(GRAB_UNIQ) * 4, [P] * 4),
    ],
    gearmand_args=("-R",),
)

# ---------------------------------------------------------------- requeue/retry

_REQUEUE_TAIL = [
    Step("adm", b"show jobs\r\n", [LS]),
    Step("w2", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
    Step("c", b"", [S]),
]
scenario(
    "requeue_on_worker_disconnect",
    "requeue on worker disconnect",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w1", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w1", close=True),
        Step("adm", b"", wait=0.2),
        *_REQUEUE_TAIL,
    ],
)
scenario(
    "requeue_on_cant_do",
    "requeue on CANT_DO",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w1", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w1", req(CANT_DO, b"f") + req(ECHO, b"sync"), [P]),
        *_REQUEUE_TAIL,
        Step("w1", req(COMPLETE, h(1), b"late"), [P]),
    ],
)
scenario(
    "requeue_on_reset_abilities",
    "requeue on RESET_ABILITIES",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w1", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w1", req(RESET) + req(ECHO, b"sync"), [P]),
        *_REQUEUE_TAIL,
    ],
)
scenario(
    "retry_limit_drops_job",
    "retry limit -j",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w1", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w1", close=True),
        Step("w2", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P], wait=0.2),
        Step("w2", close=True),
        Step("c", b"", [P], wait=0.2),
        Step("adm", b"status\r\n", [LS]),
    ],
    args=("-j", "2"),
)

# ------------------------------------------------------------- CAN_DO_TIMEOUT

scenario(
    "can_do_timeout_requeues",
    "CAN_DO_TIMEOUT expiry requeues the job",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w1", req(CAN_DO_TIMEOUT, b"f", b"1000") + req(GRAB_UNIQ), [P]),
        Step("adm", b"status\r\n", [LS], wait=1.6),
        Step("adm", b"show jobs\r\n", [LS]),
        Step("w1", req(COMPLETE, h(1), b"late"), [P]),
        Step("c", b"", [S]),
    ],
)


def _per_job_timeout(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm")[0] == b"f\t2\t0\t1\n.\n"  # both jobs taken back
    # gearmand's one timer per connection is re-armed for the second job only.
    assert _replies(theirs, "adm")[0] == b"f\t2\t1\t1\n.\n"


scenario(
    "can_do_timeout_is_per_job",
    "a per-job CAN_DO_TIMEOUT timer",
    [
        Step("c", req(SUBMIT_BG, b"f", b"", b"a") + req(SUBMIT_BG, b"f", b"", b"b"), [P, P]),
        Step("w1", req(CAN_DO_TIMEOUT, b"f", b"1000") + req(GRAB_UNIQ), [P]),
        Step("w1", req(GRAB_UNIQ), [P], wait=0.3),
        Step("adm", b"status\r\n", [LS], wait=1.6),
    ],
    deviation="CAN_DO_TIMEOUT is timed per job",
    check=_per_job_timeout,
)

# ------------------------------------------------------------------ epoch jobs


def _epoch_wakeup(ours: Transcript, theirs: Transcript) -> None:
    # We wake the worker when the job falls due (not before: it could not run it).
    assert _replies(ours, "w")[-2:] == [b"<silence>", res(NOOP)]
    # gearmand 1.1.20 wakes it at submission, when there is nothing to run, and
    # never again.
    assert _replies(theirs, "w")[-2:] == [res(NOOP), b"<silence>"]


scenario(
    "epoch_job_wakes_sleeping_worker",
    "SUBMIT_JOB_EPOCH jobs wake sleeping workers when due",
    [
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(PRE_SLEEP)),
        Step("c", lambda: req(SUBMIT_EPOCH, b"f", b"", b"%d" % (time.time() + 2), b"x"), [P]),
        Step("w", b"", [MAYBE]),
        Step("w", b"", [MAYBE], wait=2.2),
    ],
    deviation="Epoch jobs wake sleeping workers when they fall due",
    check=_epoch_wakeup,
    tags=("epoch",),
)
scenario(
    "epoch_job_in_the_past_runs_now",
    "SUBMIT_JOB_EPOCH in the past is runnable at once",
    [
        Step("c", req(SUBMIT_EPOCH, b"f", b"", b"1000", b"x"), [P]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
    ],
)

# ----------------------------------------------------------------- reduce jobs

scenario(
    "reduce_job_grab_all",
    "SUBMIT_REDUCE_JOB with GRAB_JOB_ALL / JOB_ASSIGN_ALL",
    [
        Step("c", req(SUBMIT_REDUCE, b"map", b"u1", b"red", b"", b"data"), [P]),
        Step("c", req(SUBMIT, b"map", b"u2", b"plain"), [P]),
        Step("w", req(CAN_DO, b"map") + req(GRAB_ALL) + req(GRAB_ALL), [P, P]),
        Step("w", req(COMPLETE, h(1), b"r1")),
        Step("c", b"", [P]),
    ],
)

# ------------------------------------------------------------- NOOP/PRE_SLEEP

scenario(
    "noop_wakes_sleeping_worker_once",
    "NOOP/PRE_SLEEP",
    [
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(PRE_SLEEP), [S]),
        Step("c", req(SUBMIT_BG, b"f", b"", b"a"), [P]),
        Step("w", b"", [P]),
        Step("c", req(SUBMIT_BG, b"f", b"", b"b"), [P]),
        Step("w", b"", [S]),
        Step("w", req(GRAB_UNIQ) + req(GRAB_UNIQ) + req(GRAB_UNIQ), [P, P, P]),
    ],
)
scenario(
    "pre_sleep_with_pending_job",
    "PRE_SLEEP with a runnable job gets NOOP at once",
    [
        Step("c", req(SUBMIT_BG, b"f", b"", b"a"), [P]),
        Step("w", req(CAN_DO, b"f") + req(PRE_SLEEP), [P]),
    ],
)


def _count_noops(transcript: Transcript) -> Transcript:
    noops = sum(1 for c, d in transcript if c.startswith("w") and d == res(NOOP))
    rest = [(c, d) for c, d in transcript if not c.startswith("w")]
    return [*rest, ("workers", b"NOOPs: %d" % noops)]


scenario(
    "worker_wakeup_limit",
    "worker-wakeup limit -w",
    [
        Step("w1", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w2", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w3", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w1", req(PRE_SLEEP)),
        Step("w2", req(PRE_SLEEP)),
        Step("w3", req(PRE_SLEEP) + req(ECHO, b"sync"), [P]),
        Step("c", req(SUBMIT_BG, b"f", b"", b"a"), [P]),
        Step("w1", b"", [S]),
        Step("w2", b"", [S]),
        Step("w3", b"", [S]),
    ],
    args=("-w", "1"),
    normalize=_count_noops,
)

# ------------------------------------------------------------------ exceptions


def _exceptions(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "c1")[-1] == res(EXCEPTION, h(1), b"boom")
    assert _replies(theirs, "c1")[-1] == res(EXCEPTION, h(1), b"boom")
    assert _replies(ours, "c2")[-1] == res(FAIL, h(1))
    assert _replies(theirs, "c2")[-1] == res(FAIL, h(1) + b"\0")  # issue #108


scenario(
    "exceptions_only_to_opted_in_clients",
    "exceptions forwarded only to connections that asked, otherwise WORK_FAIL",
    [
        Step("c1", req(OPTION, b"exceptions"), [P]),
        Step("c1", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("c2", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(EXCEPTION, h(1), b"boom")),
        Step("c1", b"", [P]),
        Step("c2", b"", [P]),
    ],
    deviation="WORK_FAIL instead of an exception has no trailing NUL",
    check=_exceptions,
)
scenario(
    "exceptions_option_for_everyone",
    "--exceptions",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(EXCEPTION, h(1), b"boom")),
        Step("c", b"", [P]),
    ],
    args=("--exceptions",),
)

# -------------------------------------------------------------------- maxqueue

scenario(
    "maxqueue_queue_error",
    "maxqueue per function and priority answered with ERROR QUEUE_ERROR",
    [
        Step("c", req(SUBMIT_BG, b"f", b"u1", b"a"), [P]),
        Step("adm", b"maxqueue f 1\r\n", [L]),
        Step("c", req(SUBMIT_BG, b"f", b"u2", b"b"), [P]),
        Step("c", req(SUBMIT_BG, b"f", b"u1", b"a"), [P]),  # coalesced: accepted
        Step("adm", b"maxqueue f 5 5 1\r\n", [L]),
        Step(
            "c", req(SUBMIT_LOW_BG, b"f", b"u3", b"c") + req(SUBMIT_BG, b"f", b"u4", b"d"), [P, P]
        ),
        Step("adm", b"maxqueue f\r\n", [L]),
        Step("c", req(SUBMIT_LOW_BG, b"f", b"u5", b"e"), [P]),
        Step("adm", b"maxqueue nosuchfunction 3\r\n", [L]),
        Step("adm", b"maxqueue\r\n", [L]),
    ],
)

# --------------------------------------------------------- errors and the rest

scenario(
    "error_packets",
    "ERROR packets with gearmand's codes and texts",
    [
        Step("c", b"\0RES" + (16).to_bytes(4, "big") + b"\0\0\0\0", [P]),
        Step("c", req(UNUSED), [P]),
        Step("c", req(NOOP), [P]),
        Step("c", req(24), [P]),
        Step("c", req(OPTION, b"foo"), [P]),
        Step("c", req(COMPLETE, b"H:test:99", b"x"), [P]),
        Step("c", req(WORK_DATA, b"H:test:99", b"x"), [P]),
        Step("c", req(EXCEPTION, b"H:test:99", b"x"), [P]),
        Step("c", req(FAIL, b"H:test:99"), [P]),
        Step("c", req(ECHO, b"alive"), [P]),
    ],
)
scenario(
    "echo",
    "ECHO",
    [Step("c", req(ECHO, b"hello\0world") + req(ECHO, b"") + req(ECHO, b"x" * 70000), [P, P, P])],
)
scenario(
    "option_req",
    "OPTION_REQ",
    [Step("c", req(OPTION, b"EXCEPTIONS") + req(OPTION, b"exceptions"), [P, P])],
)
scenario(
    "set_client_id",
    "SET_CLIENT_ID",
    [
        Step("w", req(SET_ID, b"my-worker") + req(CAN_DO, b"f") + req(ECHO, b"s"), [P]),
        Step("adm", b"workers\r\n", [LS]),
    ],
)
scenario(
    "get_status",
    "GET_STATUS",
    [
        Step("c", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("c", req(GET_STATUS, h(1)), [P]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(WORK_STATUS, h(1), b"3", b"10")),
        Step("c", b"", [P]),
        Step("c", req(GET_STATUS, h(1)) + req(GET_STATUS, b"H:test:404"), [P, P]),
        Step("w", req(COMPLETE, h(1), b"") + req(ECHO, b"sync"), [P]),
        Step("c", req(GET_STATUS, h(1)), [P, P]),
    ],
)


scenario(
    "get_status_unique",
    "GET_STATUS_UNIQUE with a real client count",
    [
        Step("c1", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("c2", req(SUBMIT, b"f", b"u", b"a"), [P]),
        Step("c1", req(GET_STATUS_UNIQUE, b"nope"), [P]),
        Step("c1", req(GET_STATUS_UNIQUE, b"u"), [P]),
    ],
)
scenario(
    "work_results_forwarded",
    "WORK_DATA, WORK_WARNING, WORK_STATUS, WORK_FAIL forwarded to clients",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("w", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),
        Step("w", req(WORK_DATA, h(1), b"d") + req(WORK_WARNING, h(1), b"w")),
        Step("w", req(WORK_STATUS, h(1), b"1", b"2") + req(FAIL, h(1))),
        Step("c", b"", [P, P, P, P]),
    ],
)

# ----------------------------------------------------------------------- admin

scenario(
    "admin_workers",
    "workers",
    [
        Step("w", req(CAN_DO, b"a") + req(CAN_DO, b"b") + req(CAN_DO, b"a") + req(ECHO, b""), [P]),
        Step("adm", b"workers\r\n", [LS]),
    ],
)
scenario(
    "admin_status",
    "status",
    [
        Step("w", req(CAN_DO, b"f") + req(CAN_DO, b"f"), []),
        Step("c", req(SUBMIT_BG, b"f", b"", b"a") + req(SUBMIT_BG, b"g", b"", b"b"), [P, P]),
        Step("w", req(GRAB_UNIQ), [P]),
        Step("adm", b"status\r\n", [LS]),
    ],
)
scenario(
    "admin_prioritystatus",
    "prioritystatus",
    [
        Step(
            "c", req(SUBMIT_HIGH_BG, b"f", b"", b"a") + req(SUBMIT_LOW_BG, b"f", b"", b"b"), [P, P]
        ),
        Step("w", req(CAN_DO, b"f") + req(ECHO, b""), [P]),
        Step("adm", b"prioritystatus\r\n", [LS]),
    ],
)
scenario(
    "admin_show_jobs",
    "show jobs",
    [
        Step("c", req(SUBMIT_BG, b"f", b"u", b"a") + req(SUBMIT, b"f", b"", b"b"), [P, P]),
        Step("adm", b"show jobs\r\n", [LS]),
    ],
)
scenario(
    "admin_show_unique_jobs",
    "show unique jobs",
    [
        Step("c", req(SUBMIT_BG, b"f", b"u1", b"a") + req(SUBMIT_BG, b"g", b"u1", b"b"), [P, P]),
        Step("c", req(SUBMIT_BG, b"f", b"", b"a"), [P]),
        Step("adm", b"show unique jobs\r\n", [LS]),
    ],
)
scenario(
    "admin_cancel_job",
    "cancel job",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("adm", b"cancel job H:test:1\r\n", [L]),
        Step("c", b"", [P]),
        Step("adm", b"cancel job H:test:404\r\n", [L]),
        Step("adm", b"cancel\r\n", [L]),
        Step("adm", b"cancel foo bar\r\n", [L]),
    ],
)


def _cancel_twice(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm") == [b"OK\r\n", b"ERR UNKNOWN_JOB\r\n", b".\n"]
    assert _replies(theirs, "adm") == [b"OK\r\n", b"OK\r\n", b"H:test:1\t0\t1\t0\n.\n"]


scenario(
    "admin_cancel_job_removes_it",
    "cancel job",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("adm", b"cancel job H:test:1\r\n", [L]),
        Step("adm", b"cancel job H:test:1\r\n", [L]),
        Step("adm", b"show jobs\r\n", [LS]),
    ],
    deviation="A cancelled job is gone at once",
    check=_cancel_twice,
)
scenario(
    "admin_create_function",
    "create function",
    [
        Step("adm", b"create function abc\r\n", [L]),
        Step("adm", b"create function\r\n", [L]),
        Step("adm", b"status\r\n", [LS]),
    ],
)


def _create_lf(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm")[-1] == b"abc\t0\t0\t0\n.\n"
    assert _replies(theirs, "adm")[-1] == b"ab\t0\t0\t0\n.\n"


scenario(
    "admin_create_function_lf",
    "create function",
    [Step("adm", b"create function abc\n", [L]), Step("adm", b"status\n", [LS])],
    deviation="create function keeps the whole name",
    check=_create_lf,
)
scenario(
    "admin_drop_function",
    "drop function",
    [
        Step("adm", b"create function abc\r\n", [L]),
        Step("adm", b"drop function nope\r\n", [L]),
        Step("w", req(CAN_DO, b"abc") + req(ECHO, b""), [P]),
        Step("adm", b"drop function abc\r\n", [L]),
        Step("w", req(RESET) + req(ECHO, b""), [P]),
        Step("adm", b"drop function ABC\r\n", [L]),
        Step("adm", b"status\r\n", [LS]),
        Step("adm", b"drop function\r\n", [L]),
    ],
)


def _getpid(transcript: Transcript) -> Transcript:
    return [
        (c, b"OK <pid>\n" if d.startswith(b"OK ") and d[3:-1].isdigit() else d)
        for c, d in transcript
    ]


scenario("admin_getpid", "getpid", [Step("adm", b"getpid\r\n", [L])], normalize=_getpid)
scenario("admin_verbose", "verbose", [Step("adm", b"verbose\r\n", [L])])


def _version(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm")[0].startswith(b"OK gearproto-")
    assert _replies(theirs, "adm")[0] == b"OK 1.1.20+ds\n"


scenario(
    "admin_version",
    "version",
    [Step("adm", b"version\r\n", [L])],
    deviation="version names gearproto",
    check=_version,
)
scenario(
    "admin_unknown_commands",
    "unknown -> ERR UNKNOWN_COMMAND",
    [
        Step("adm", b"frobnicate\r\n", [L]),
        Step("adm", b"\r\n", [L]),
        Step("adm", b"show\r\n", [L]),
        Step("adm", b"show foo\r\n", [L]),
        Step("adm", b"STATUS\r\n", [LS]),
        Step("adm", b"verbose\n" + req(ECHO, b"mixed"), [L, P]),
    ],
)


def _shutdown(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm") == [
        b"ERR PERMISSION_DENIED shutdown+is+only+allowed+from+loopback\r\n"
    ] or _replies(ours, "adm") == [b"OK\r\n", b"<closed>"]
    assert _replies(theirs, "adm")[0] == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"


scenario(
    "admin_shutdown",
    "shutdown (removed from gearmand)",
    [Step("adm", b"shutdown\r\n", [L, CLOSED])],
    deviation="The shutdown admin command exists, loopback only",
    check=_shutdown,
)


def _too_many_tokens(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm")[0].startswith(b"ERR INVALID_ARGUMENTS")
    assert _replies(theirs, "adm")[0] == b"<closed>"


scenario(
    "admin_six_tokens",
    "admin line with more than five tokens",
    [Step("adm", b"a b c d e f\r\n", [CLOSED])],
    deviation="Admin lines with too many tokens get an ERR line",
    check=_too_many_tokens,
)


def _escaped(ours: Transcript, theirs: Transcript) -> None:
    listing = _replies(ours, "adm")[0]
    assert listing.count(b"\n") == 2, listing  # one row and the "."
    assert b"a%0Ab%09c%20d\t0\t0\t1\n" in listing
    assert _replies(theirs, "adm")[0].count(b"\n") == 3  # gearmand's row is split


scenario(
    "listing_names_escaped",
    "function names and client ids escaped in listings",
    [
        Step("w", req(CAN_DO, b"a\nb\tc d") + req(ECHO, b""), [P]),
        Step("adm", b"status\r\n", [LS]),
    ],
    deviation="Listings escape names and ids",
    check=_escaped,
)


# --------------------------------------------------- more deliberate deviations


def _bad_magic(ours: Transcript, theirs: Transcript) -> None:
    assert (
        _replies(ours, "c")[0] == res(ERROR, b"INVALID_MAGIC", b"Invalid magic value") + b"<closed>"
    )
    assert _replies(theirs, "c")[0] == b"<closed>"


scenario(
    "bad_magic_is_answered_then_closed",
    "ERROR packets with gearmand's codes and texts",
    [Step("c", b"\0XYZ" + b"\0" * 8, [CLOSED])],
    deviation="Protocol errors are always answered",
    check=_bad_magic,
)


def _long_handle(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "c")[0] == res(ERROR, b"ARGUMENT_TOO_LARGE", b"Job handle too large")
    assert _replies(theirs, "c")[0] == b"<silence>"


scenario(
    "get_status_with_an_over_long_handle",
    "GET_STATUS",
    [Step("c", req(GET_STATUS, b"H" * 70), [MAYBE])],
    deviation="Protocol errors are always answered",
    check=_long_handle,
)


def _unique_64(ours: Transcript, theirs: Transcript) -> None:
    first, second, status = _replies(ours, "c")
    assert first == second  # coalesced
    assert status == res(STATUS_UNIQUE, b"u" * 64, b"1", b"0", b"0", b"0", b"0")
    first, second, status = _replies(theirs, "c")
    assert first != second  # gearmand stored 63 bytes: two jobs
    assert status == b"<silence>"  # and does not answer about a 64-byte unique


scenario(
    "unique_of_exactly_64_bytes",
    "unique-id coalescing keyed by (function, unique)",
    [
        Step(
            "c",
            req(SUBMIT_BG, b"f", b"u" * 64, b"a") + req(SUBMIT_BG, b"f", b"u" * 64, b"a"),
            [P, P],
        ),
        Step("c", req(GET_STATUS_UNIQUE, b"u" * 64), [MAYBE]),
    ],
    deviation="Unique ids of exactly 64 bytes work",
    check=_unique_64,
)


def _abandoned(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm")[-1] == b"f\t0\t0\t0\n.\n"
    assert _replies(theirs, "adm")[-1] == b"f\t1\t0\t0\n.\n"  # kept until a worker comes


scenario(
    "foreground_job_of_a_departed_client",
    "requeue on worker disconnect",
    [
        Step("c", req(SUBMIT, b"f", b"", b"a"), [P]),
        Step("c", close=True),
        Step("adm", b"status\r\n", [LS], wait=0.3),
    ],
    deviation="Foreground jobs nobody waits for are dropped at once",
    check=_abandoned,
)


def _pre_sleep_rearms(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "w1")[-1] == res(NOOP)
    assert _replies(theirs, "w1")[-1] == b"<silence>"


scenario(
    "pre_sleep_after_an_unanswered_noop",
    "NOOP/PRE_SLEEP",
    [
        Step("w1", req(CAN_DO, b"f") + req(PRE_SLEEP) + req(ECHO, b""), [P]),
        Step("c", req(SUBMIT_BG, b"f", b"", b"a"), [P]),
        Step("w1", b"", [P]),  # NOOP
        Step("w2", req(CAN_DO, b"f") + req(GRAB_UNIQ), [P]),  # someone else takes it
        Step("w1", req(PRE_SLEEP) + req(ECHO, b""), [P]),  # back to sleep, no GRAB
        Step("c", req(SUBMIT_BG, b"f", b"", b"b"), [P]),
        Step("w1", b"", [MAYBE]),
    ],
    deviation="A new PRE_SLEEP re-arms wake-ups",
    check=_pre_sleep_rearms,
)


def _drop_queued(ours: Transcript, theirs: Transcript) -> None:
    assert _replies(ours, "adm") == [b"ERR there are still queued jobs\r\n", b"f\t1\t0\t0\n.\n"]
    assert _replies(theirs, "adm")[0] == b"OK\r\n"


scenario(
    "drop_function_with_queued_jobs",
    "drop function",
    [
        Step("c", req(SUBMIT_BG, b"f", b"", b"a"), [P]),
        Step("adm", b"drop function f\r\n", [L]),
        Step("adm", b"status\r\n", [LS]),
    ],
    deviation="drop function refuses while jobs are queued",
    check=_drop_queued,
)
