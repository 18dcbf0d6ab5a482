"""Replaying a saved reproducer against a target and judging the result again."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .case import CASE_FORMAT, Case, CaseFormatError, load_case_dict
from .differential import compare
from .execute import Observation, Timeouts, execute
from .findings import STATEFUL_FORMAT
from .oracles import DEFAULT_RSS_LIMIT, judge, server_state
from .target import Target
from .verdict import Verdict

__all__ = ["ReplayResult", "Reproducer", "load_reproducer", "replay"]


@dataclass
class Reproducer:
    """A loaded reproducer file: a byte case or a stateful action list."""

    path: Path
    case: Case | None = None
    actions: list[dict[str, Any]] | None = None
    expect_class: str | None = None
    expect_key: str | None = None


@dataclass
class ReplayResult:
    verdicts: list[Verdict] = field(default_factory=list)
    observation: Observation | None = None

    def matches(self, reproducer: Reproducer) -> bool:
        """Did the replay hit the finding the file was saved for?"""
        if reproducer.expect_class is None:
            return bool(self.verdicts)
        return any(v.cls.value == reproducer.expect_class for v in self.verdicts)


def load_reproducer(path: Path) -> Reproducer:
    """Read a reproducer file (or a finding directory holding ``reproducer.json``).

    Raises:
        CaseFormatError: the file is missing, not JSON, or not a reproducer.
    """
    if path.is_dir():
        path = path / "reproducer.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaseFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseFormatError(f"{path}: not a JSON reproducer ({exc})") from None
    if not isinstance(obj, dict):
        raise CaseFormatError(f"{path}: not a reproducer (expected a JSON object)")
    raw_expect = obj.get("expect")
    expect: dict[str, Any] = raw_expect if isinstance(raw_expect, dict) else {}
    expect_class = expect.get("class") if isinstance(expect.get("class"), str) else None
    expect_key = expect.get("key") if isinstance(expect.get("key"), str) else None
    if obj.get("format") == STATEFUL_FORMAT:
        actions = obj.get("actions")
        if not isinstance(actions, list) or not all(
            isinstance(a, dict) and isinstance(a.get("rule"), str) for a in actions
        ):
            raise CaseFormatError(f"{path}: 'actions' must be a list of objects with a 'rule'")
        return Reproducer(path, actions=actions, expect_class=expect_class, expect_key=expect_key)
    if obj.get("format") != CASE_FORMAT:
        raise CaseFormatError(
            f"{path}: unknown format {obj.get('format')!r}"
            f" (expected {CASE_FORMAT!r} or {STATEFUL_FORMAT!r})"
        )
    try:
        case = load_case_dict(obj)
    except CaseFormatError as exc:
        raise CaseFormatError(f"{path}: {exc}") from None
    return Reproducer(path, case=case, expect_class=expect_class, expect_key=expect_key)


def replay(
    reproducer: Reproducer,
    target: Target,
    *,
    target2: Target | None = None,
    timeouts: Timeouts | None = None,
    rss_limit: int | None = DEFAULT_RSS_LIMIT,
) -> ReplayResult:
    """Run the reproducer once and return every verdict it produces now."""
    t = timeouts or Timeouts()
    if reproducer.actions is not None:
        from .stateful import replay_actions

        hit = replay_actions(target, reproducer.actions, timeouts=t)
        if hit is None:
            return ReplayResult()
        return ReplayResult([Verdict(hit.cls, hit.key, hit.message, hit.details)])
    assert reproducer.case is not None
    observation = execute(reproducer.case, target, t)
    state = server_state(target, t)
    verdicts = judge(observation, state, rss_limit=rss_limit)
    if target2 is not None:
        observation2 = execute(reproducer.case, target2, t)
        state2 = server_state(target2, t)
        verdicts += [
            Verdict(v.cls, v.key, "target2: " + v.summary, v.details)
            for v in judge(observation2, state2, rss_limit=rss_limit)
        ]
        if state.state == "up" and state2.state == "up":
            verdicts += compare(observation, observation2, ("target", "target2"))
    verdicts.sort(key=lambda v: v.cls.severity)
    return ReplayResult(verdicts, observation)
