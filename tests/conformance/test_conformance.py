"""The differential conformance suite: every scenario against gearmand and our server.

Both servers are real processes on free loopback ports, started fresh for each
scenario with ``--job-handle-prefix H:test`` (and the scenario's options), and the
scenario is played against both at the same time.  Transcripts must be identical
byte for byte (listings compared row-sorted, fds masked) unless the scenario names
a deliberate deviation, which must then be listed in docs/deviations.md.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from helpers.procs import GEARMAND, ServerProcess, gearmand, start_process

from .dsl import Scenario, Transcript, run, sort_listings
from .scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
DEVIATIONS = ROOT / "docs" / "deviations.md"

pytestmark = [pytest.mark.gearmand, pytest.mark.timeout(60)]


@contextmanager
def ours(tmp_path: Path, *args: str) -> Iterator[ServerProcess]:
    # The memory queue, as gearmand's default: a durable store would hold each
    # background JOB_CREATED back until its commit, and scenarios compare replies step
    # by step.
    argv = [sys.executable, "-m", "gearproto.server", "-L", "{host}", "-p", "{port}"]
    argv += ["-q", "builtin", "--job-handle-prefix", "H:test", *args]
    server = start_process(argv, log=tmp_path / "ours.log")
    try:
        yield server
    finally:
        server.stop()


def _normalized(scenario: Scenario, transcript: Transcript) -> Transcript:
    if scenario.normalize is not None:
        transcript = scenario.normalize(transcript)
    return sort_listings(transcript)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario, tmp_path: Path) -> None:
    if GEARMAND is None:
        pytest.skip("gearmand is not installed")
    (tmp_path / "g").mkdir()
    (tmp_path / "o").mkdir()
    with ExitStack() as stack:
        theirs_server = stack.enter_context(
            gearmand(
                tmp_path / "g", *scenario.args, *scenario.gearmand_args, handle_prefix="H:test"
            )
        )
        ours_server = stack.enter_context(ours(tmp_path / "o", *scenario.args))
        with ThreadPoolExecutor(2) as pool:
            theirs_future = pool.submit(run, scenario, theirs_server.address)
            ours_future = pool.submit(run, scenario, ours_server.address)
            theirs = _normalized(scenario, theirs_future.result())
            mine = _normalized(scenario, ours_future.result())
    if scenario.deviation is None:
        assert mine == theirs
        return
    assert scenario.check is not None
    scenario.check(mine, theirs)
    assert f"## {scenario.deviation}" in DEVIATIONS.read_text(), (
        f"docs/deviations.md must list {scenario.deviation!r}"
    )


def test_every_rule_and_admin_command_is_covered() -> None:
    rules = {s.rule for s in SCENARIOS}
    required = [
        "unique-id coalescing keyed by (function, unique)",
        "unique '-' coalesces by payload",
        "coalescing onto running jobs",
        "foreground submissions coalesce onto background jobs",
        "priority HIGH > NORMAL > LOW with FIFO inside each",
        "fair rotation across a worker's functions",
        "requeue on worker disconnect",
        "requeue on CANT_DO",
        "requeue on RESET_ABILITIES",
        "CAN_DO_TIMEOUT expiry requeues the job",
        "retry limit -j",
        "a per-job CAN_DO_TIMEOUT timer",
        "SUBMIT_JOB_EPOCH jobs wake sleeping workers when due",
        "SUBMIT_REDUCE_JOB with GRAB_JOB_ALL / JOB_ASSIGN_ALL",
        "NOOP/PRE_SLEEP",
        "worker-wakeup limit -w",
        "exceptions forwarded only to connections that asked, otherwise WORK_FAIL",
        "--exceptions",
        "maxqueue per function and priority answered with ERROR QUEUE_ERROR",
        "ERROR packets with gearmand's codes and texts",
        "ECHO",
        "OPTION_REQ",
        "SET_CLIENT_ID",
        "GET_STATUS",
        "GET_STATUS_UNIQUE with a real client count",
        "workers",
        "status",
        "prioritystatus",
        "show jobs",
        "show unique jobs",
        "cancel job",
        "create function",
        "drop function",
        "getpid",
        "verbose",
        "version",
        "unknown -> ERR UNKNOWN_COMMAND",
        "function names and client ids escaped in listings",
    ]
    missing = [rule for rule in required if rule not in rules]
    assert not missing
