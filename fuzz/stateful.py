"""The stateful engine: a Hypothesis ``RuleBasedStateMachine`` over the driver's actions.

Hypothesis draws sequences of actions (clients and workers joining, submitting,
grabbing, finishing, dying, admin commands), runs them against the live target
through :class:`~gearproto.fuzz.driver.Driver`, and shrinks any sequence that breaks
an invariant.  Its shrinking is followed by a delta-debugging pass that replays
candidate action lists directly (network timing makes Hypothesis's own final replay
flaky now and then), and the result is re-run three times before it is reported.

Isolation: every example uses function names and uniques with a fresh prefix, so
examples never see each other's jobs and the server is only restarted after a crash.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from .driver import Driver, Violation
from .execute import Timeouts
from .findings import Finding
from .minimize import ddmin
from .target import Target
from .verdict import FindingClass, Verdict

__all__ = ["ACTIONS", "replay_actions", "run_batch"]

_i = st.integers(0, 7)
_fn = st.integers(0, 2)


def _rule(name: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"rule": st.just(name), **fields})


_SUBMIT = _rule(
    "submit",
    client=_i,
    fn=_fn,
    unique=st.integers(0, 4),
    data=st.integers(0, 3),
    priority=st.integers(0, 2),
    background=st.booleans(),
)
_GRAB = _rule("grab", worker=_i, kind=st.integers(0, 2))
_WORK = _rule(
    "work",
    worker=_i,
    which=_i,
    what=st.sampled_from(["complete", "fail", "exception", "data", "warning", "status"]),
)
#: Every action the engine draws; frequent ones are listed more than once.
ACTIONS: st.SearchStrategy[dict[str, Any]] = st.one_of(
    _SUBMIT,
    _GRAB,
    _WORK,
    _rule("can_do", worker=_i, fn=_fn),
    _SUBMIT,
    _GRAB,
    _WORK,
    _rule("client"),
    _rule("worker"),
    _rule("sleep", worker=_i),
    _rule("drop_worker", worker=_i, how=st.sampled_from(["fin", "rst", "mid"])),
    _rule("drop_client", client=_i, how=st.sampled_from(["fin", "rst"])),
    _rule("admin", what=st.sampled_from(["status", "prioritystatus", "workers"])),
    _rule("get_status", client=_i, job=_i),
    _rule("get_status_unique", client=_i, job=_i),
    _rule(
        "submit_epoch",
        client=_i,
        fn=_fn,
        unique=st.integers(0, 4),
        when=st.sampled_from(["zero", "past", "future"]),
    ),
    _rule("submit_reduce", client=_i, fn=_fn, unique=st.integers(0, 4), background=st.booleans()),
    _rule("cant_do", worker=_i, fn=_fn),
    _rule("reset", worker=_i),
    _rule("option", client=_i),
    _rule("cancel", job=_i),
    _rule("drop_function", fn=_fn),
    _rule("maxqueue", fn=_fn, size=st.integers(0, 3)),
    _rule("weird_name", worker=_i, kind=st.integers(0, 3), id=st.booleans()),
)

_LOOSE = {FindingClass.CRASH, FindingClass.HANG}


def _same(a: Violation, b: Violation) -> bool:
    return a.cls is b.cls and (a.key == b.key or a.cls in _LOOSE)


_REPLAYS = 0


def _fresh_prefix(base: bytes) -> bytes:
    global _REPLAYS
    _REPLAYS += 1
    return base + b"r%d_" % _REPLAYS


def replay_actions(
    target: Target,
    actions: list[dict[str, Any]],
    *,
    prefix: bytes | None = None,
    timeouts: Timeouts | None = None,
    destructive: bool = False,
) -> Violation | None:
    """Run an action list (and the end-of-run checks); the violation it hits, if any."""
    base = prefix if prefix is not None else b"fzr%s_" % os.urandom(3).hex().encode()
    driver = Driver(target, _fresh_prefix(base), timeouts=timeouts, destructive=destructive)
    try:
        for action in actions:
            driver.do(action)
        driver.finish()
    except Violation as exc:
        return exc
    finally:
        driver.close()
    return None


@dataclass
class _Batch:
    """State shared by every example of one Hypothesis run."""

    target: Target
    prefix: bytes
    timeouts: Timeouts
    destructive: bool
    deadline: float
    shrink_time: float
    recover: Callable[[str], None]
    on_progress: Callable[[], None]
    #: Signatures the campaign already has a minimal reproducer for: hitting one again
    #: ends the example quietly (counted, never shrunk again).
    known: Callable[[str], bool] = lambda signature: False
    on_known: Callable[[Violation], None] = lambda violation: None
    examples: int = 0
    first_failure: float | None = None
    #: Per signature: the violation and the shortest action list that hit it.
    found: dict[str, tuple[Violation, list[dict[str, Any]]]] = field(default_factory=dict)

    def stopped(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            return True
        return self.first_failure is not None and now >= self.first_failure + self.shrink_time

    def record(self, violation: Violation, log: list[dict[str, Any]]) -> None:
        if self.first_failure is None:
            self.first_failure = time.monotonic()
        known = self.found.get(violation.signature)
        if known is None or len(log) < len(known[1]):
            self.found[violation.signature] = (violation, list(log))
        if violation.cls in _LOOSE:
            self.recover(violation.message)


class _Machine(RuleBasedStateMachine):
    batch: ClassVar[_Batch]

    def __init__(self) -> None:
        super().__init__()
        batch = self.batch
        batch.examples += 1
        self.driver: Driver | None = None
        if batch.stopped():
            return
        if not batch.target.check(batch.timeouts.liveness).ok:
            batch.recover("down before a stateful example")
        self.driver = Driver(
            batch.target,
            batch.prefix + b"e%d_" % batch.examples,
            timeouts=batch.timeouts,
            destructive=batch.destructive,
        )
        self._guarded(lambda d: d.do({"rule": "client"}))
        self._guarded(lambda d: d.do({"rule": "worker"}))

    def _guarded(self, step: Callable[[Driver], None]) -> None:
        driver = self.driver
        batch = self.batch
        if driver is None or batch.stopped():
            return
        try:
            step(driver)
        except Violation as exc:
            if batch.known(exc.signature):
                # Already minimised earlier in the campaign: count it and let the
                # example end as a pass, so Hypothesis does not spend the batch
                # shrinking it again.
                batch.on_known(exc)
                if exc.cls in _LOOSE:
                    batch.recover(exc.message)
                self.driver = None
                driver.close()
                return
            batch.record(exc, driver.log)
            raise

    @rule(action=ACTIONS)
    def act(self, action: dict[str, Any]) -> None:
        self._guarded(lambda d: d.do(action))
        self.batch.on_progress()

    def teardown(self) -> None:
        driver = self.driver
        if driver is None:
            return
        try:
            self._guarded(lambda d: d.finish())
        finally:
            driver.close()


def run_batch(
    target: Target,
    *,
    seed: int,
    batch: int,
    deadline: float,
    timeouts: Timeouts,
    destructive: bool = False,
    prefix: bytes = b"fz_",
    shrink_time: float = 60.0,
    examples: int = 10,
    steps: int = 30,
    recover: Callable[[str], None] | None = None,
    on_progress: Callable[[], None] | None = None,
    known: Callable[[str], bool] | None = None,
    on_known: Callable[[Violation], None] | None = None,
    on_shrink: Callable[[float], None] | None = None,
) -> Iterator[Finding]:
    """One Hypothesis run of ``examples`` examples; yields its shrunk findings.

    ``known(signature)`` says whether the campaign already holds a finding with that
    signature: such violations are reported to ``on_known`` and never shrunk again.
    ``shrink_time`` bounds the shrinking of each new finding (Hypothesis's phase, then
    delta debugging); ``on_shrink(seconds)`` is told the time each shrink took.
    """
    nonce = os.urandom(2).hex().encode()
    state = _Batch(
        target,
        prefix + b"s%s%d_" % (nonce, batch),
        timeouts,
        destructive,
        deadline,
        shrink_time,
        recover or (lambda why: None),
        on_progress or (lambda: None),
    )
    if known is not None:
        state.known = known
    if on_known is not None:
        state.on_known = on_known
    machine = type("GearmanJobs", (_Machine,), {"batch": state})
    machine = hypothesis_seed((seed * 1000003 + batch) & 0xFFFFFFFF)(machine)
    config = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
    )
    # Every failure is already in state.found; Hypothesis's own report (or its Flaky
    # error when a network replay did not fail again) adds nothing.
    with contextlib.suppress(Exception):
        run_state_machine_as_test(machine, settings=config)  # type: ignore[no-untyped-call, unused-ignore]
    count_shrink = on_shrink or (lambda seconds: None)
    if state.first_failure is not None:
        # Hypothesis's own shrinking ran from the first failure to here.
        count_shrink(time.monotonic() - state.first_failure)
    for signature, (violation, actions) in state.found.items():
        if state.known(signature):
            state.on_known(violation)  # found meanwhile by an earlier shrink
            continue
        began = time.monotonic()
        finding = _shrink(state, signature, violation, actions, seed, batch)
        count_shrink(time.monotonic() - began)
        yield finding


def _shrink(
    state: _Batch,
    signature: str,
    violation: Violation,
    actions: list[dict[str, Any]],
    seed_value: int,
    batch: int,
) -> Finding:
    deadline = time.monotonic() + state.shrink_time
    attempts = 0
    last = [violation]

    def fails(candidate: list[dict[str, Any]]) -> bool:
        nonlocal attempts
        if attempts >= 60 or time.monotonic() >= deadline:
            return False
        attempts += 1
        if not state.target.check(state.timeouts.liveness).ok:
            state.recover("down before a replay")
        hit = replay_actions(
            state.target,
            candidate,
            prefix=state.prefix,
            timeouts=state.timeouts,
            destructive=state.destructive,
        )
        if hit is not None and hit.cls in _LOOSE:
            state.recover(hit.message)
        if hit is not None and _same(hit, violation):
            last[0] = hit
            return True
        return False

    minimal = ddmin(actions, fails) if len(actions) > 1 else actions
    # Three confirmation runs, whatever the shrink window left.
    attempts = 0
    deadline = time.monotonic() + max(10.0, state.shrink_time)
    hits = sum(fails(minimal) for _ in range(3))
    best = last[0]
    return Finding(
        number=0,
        verdict=Verdict(best.cls, best.key, best.message, best.details),
        target="",
        actions=minimal,
        origin=f"stateful/{seed_value}/{batch}",
        reproduced=f"{hits}/3",
    )
