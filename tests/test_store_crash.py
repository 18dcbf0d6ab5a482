"""kill -9 a process that is committing batches: every acknowledged batch survives, whole.

A child process applies batches to a real SQLiteStore as fast as it can and prints
each batch number once ``apply()`` has returned (its acknowledgement).  The test kills
it with SIGKILL at random points (also while it opens the store or is inside a
commit), reopens the file, and checks the exact set of stored job ids: every acked
batch is there, the batch in flight is there entirely or not at all, and removals
are applied exactly when their batch is.  The process is restarted on the same file
for the next cycle, so recovery itself is exercised again and again.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gearproto.server.sqlite_store import SQLiteStore

WRITER = """
import sys
from gearproto import Priority
from gearproto.server.sqlite_store import SQLiteStore
from gearproto.server.storage import StoreBatch, StoredJob

path, batch = sys.argv[1], int(sys.argv[2])
store = SQLiteStore(path)
store.load()
print("ready", flush=True)
while True:
    added = [
        StoredJob(batch * 10 + k, b"f", b"", b"%d" % (batch * 10 + k), Priority(k % 3))
        for k in range(1, 11)
    ]
    removed = [(batch - 3) * 10 + k for k in range(1, 11)] if batch % 2 == 0 else []
    store.apply(StoreBatch(batch, added=added, removed=removed))
    print(batch, flush=True)
    batch += 1
"""

CYCLES = 20


def added_ids(batch: int) -> set[int]:
    return {batch * 10 + k for k in range(1, 11)}


def removed_ids(batch: int) -> set[int]:
    return added_ids(batch - 3) if batch % 2 == 0 else set()


def expected_ids(applied: list[int]) -> set[int]:
    present: set[int] = set()
    for batch in sorted(applied):
        present |= added_ids(batch)
        present -= removed_ids(batch)
    return present


def run_cycle(path: Path, script: Path, first: int, rng: random.Random) -> list[int]:
    """Start the writer at batch ``first``, SIGKILL it at a random point; its acks."""
    child = subprocess.Popen(
        [sys.executable, str(script), str(path), str(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    seen: list[str] = []
    try:
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.3))  # kill during start-up / open / load
        else:
            for _ in range(rng.randint(1, 40)):
                line = child.stdout.readline()
                if not line:
                    break
                seen.append(line)
            time.sleep(rng.uniform(0, 0.003))
    finally:
        child.send_signal(signal.SIGKILL)
        output, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, errors
    # Everything printed before the kill was acknowledged, including lines not read yet.
    lines = "".join(seen).split("\n")[:-1] + output.split("\n")[:-1]
    return [int(line) for line in lines if line != "ready"]


@pytest.mark.timeout(240)
def test_kill9_during_commits_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(20240611)
    applied: list[int] = []
    next_batch = 1
    in_flight_applied = in_flight_missing = 0
    for cycle in range(CYCLES):
        acked = run_cycle(path, script, next_batch, rng)
        assert acked == list(range(next_batch, next_batch + len(acked))), cycle
        applied += acked
        in_flight = next_batch + len(acked)  # may or may not have committed
        with SQLiteStore(path) as store:
            present = {job.job_id for job in store.load()}
        in_flight_part = present & added_ids(in_flight)
        assert in_flight_part in (set(), added_ids(in_flight)), f"torn batch {in_flight}"
        if in_flight_part:
            applied.append(in_flight)
            in_flight_applied += 1
        else:
            in_flight_missing += 1
        expected = expected_ids(applied)
        lost = expected - present
        unexpected = present - expected
        assert not lost, f"cycle {cycle}: acknowledged jobs lost: {sorted(lost)[:20]}"
        assert not unexpected, f"cycle {cycle}: unexpected jobs: {sorted(unexpected)[:20]}"
        next_batch = in_flight + 1
    # The kills landed at varied points: some batches were acked, and the test saw at
    # least one kill between the commit and its acknowledgement or before a commit.
    assert len(applied) > CYCLES
    assert in_flight_applied + in_flight_missing == CYCLES
