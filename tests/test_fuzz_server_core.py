"""A short run of the server core's fuzz target (fuzz/selftest_server.py), in CI.

The target drives ``ServerCore`` with several fake connections, valid and hostile
packet and admin streams, splits, a fake clock and a durable store, and checks its
invariants after every step.  Here: the seed corpus, a few hundred Hypothesis inputs,
cores with a planted defect (each must be caught), and the atheris entry point for a
few seconds.  Together with tests/test_fuzz_core_target.py this stays under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearproto.fuzz import selftest_server
from gearproto.fuzz.selftest_server import Failure
from gearproto.server import ServerCore, Transmit


@pytest.mark.parametrize("seed", selftest_server.SEEDS)
def test_seeds_pass(seed: bytes) -> None:
    selftest_server.check(seed)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=8, max_size=400))
def test_target_invariants_hold(data: bytes) -> None:
    selftest_server.check(data)


class _LosesJobs(ServerCore):
    """Drops a background job whose worker leaves instead of requeueing it."""

    def _take_back(self, job: Any, now: float) -> None:
        if job.background:
            self._remove(job)
            return
        super()._take_back(job, now)


class _Raises(ServerCore):
    """Crashes on an admin line."""

    def receive(self, conn_id: Any, data: bytes, now: float) -> bool:
        if b"\n" in data:
            raise ValueError("planted")
        return super().receive(conn_id, data, now)


class _Unsolicited(ServerCore):
    """Writes an ECHO_RES nobody asked for."""

    def drain(self) -> list[Transmit]:
        extra = b"\0RES\0\0\0\x11\0\0\0\0"
        return [Transmit(t.conn_id, [*t.chunks, extra], t.close) for t in super().drain()]


class _ForgetsHeldReplies(ServerCore):
    """Never releases a reply that waited for a store commit."""

    def _release_held(self) -> None:
        pass


@pytest.mark.parametrize(
    ("core_class", "message"),
    [
        (_LosesJobs, "(lost job)"),
        (_Raises, "the core raised ValueError: planted"),
        (_Unsolicited, "which is not allowed here"),
        (_ForgetsHeldReplies, "replies still held after every commit"),
    ],
)
def test_planted_defect_is_caught(core_class: type[ServerCore], message: str) -> None:
    failures = []
    for seed in selftest_server.SEEDS:
        try:
            selftest_server.check(seed, core_class=core_class)
        except Failure as exc:
            failures.append(str(exc))
    assert any(message in text for text in failures), failures


def test_explain_prints_the_operations(tmp_path: Path) -> None:
    path = tmp_path / "input"
    path.write_bytes(selftest_server.SEEDS[-1])
    result = subprocess.run(
        [sys.executable, "-m", "gearproto.fuzz.selftest_server", "--explain", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "SubmitJob(function=b'.'" in result.stdout
    assert result.stdout.rstrip().endswith("no failure")


def test_hypothesis_mode_runs_for_the_time_given() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gearproto.fuzz.selftest_server", "--hypothesis", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("inputs, no failure")


def test_atheris_smoke_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(selftest_server.SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gearproto.fuzz.selftest_server",
            "-runs=6000",
            "-max_len=400",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        # The Python server core, which atheris instruments (as long runs use it).
        env={**os.environ, "GEARPROTO_PURE_PYTHON": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 6000 runs" in result.stderr
