"""The campaign loop: generate, run, judge, minimise, save, restart, report progress."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .address import Address
from .case import Case
from .differential import compare
from .execute import Observation, Timeouts, execute
from .findings import Finding, FindingStore
from .generators import FAMILIES, Family, case_for
from .minimize import Minimizer
from .oracles import DEFAULT_RSS_LIMIT, judge, server_state
from .peer import learn_target
from .target import Target, TargetError
from .values import GenContext
from .verdict import FindingClass, Verdict

__all__ = ["Campaign", "CampaignConfig", "CampaignResult"]

#: Classes whose reproduction does not depend on the exact key (the key describes the
#: case, and minimising changes the case).
_LOOSE = {FindingClass.CRASH, FindingClass.HANG, FindingClass.MEMORY}


@dataclass
class CampaignConfig:
    target: Address
    target2: Address | None = None
    restart_cmd: str | None = None
    restart_cmd2: str | None = None
    pid: int | None = None
    pid2: int | None = None
    budget: float = 600.0
    max_cases: int | None = None
    seed: int = 0
    out: Path | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    rss_limit: int | None = DEFAULT_RSS_LIMIT
    #: Longest time spent shrinking one new finding.
    minimize_time: float = 30.0
    #: Most of the budget that shrinking may take in total; past it, new findings are
    #: saved as found (still replayed to confirm them), so generation keeps going.
    shrink_share: float = 0.3
    #: Share of the budget spent in the stateful engine (job invariants).
    stateful_share: float = 0.3
    families: tuple[str, ...] | None = None
    destructive: bool = False
    max_fill: int = 48 << 20
    progress: TextIO | None = None


@dataclass
class CampaignResult:
    cases: int
    stateful_runs: int
    seconds: float
    findings: list[Finding]
    restarts: int
    stopped: str | None = None
    #: Seconds spent shrinking and confirming new findings.
    shrink_seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.findings:
            out[finding.cls.value] = out.get(finding.cls.value, 0) + 1
        return out


class _TargetDown(Exception):
    """The target is down and cannot be restarted: the campaign must stop."""


class Progress:
    """One status line: in place on a terminal, every few seconds otherwise."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._last = 0.0

    def update(self, text: str, *, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        interval = 0.5 if self.tty else 10.0
        if not force and now - self._last < interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, text: str) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()


class Campaign:
    """A fuzzing campaign against one target (or two, in differential mode)."""

    def __init__(self, config: CampaignConfig) -> None:
        self.config = config
        logs = config.out / "logs" if config.out is not None else None
        self.target = Target(
            config.target,
            pid=config.pid,
            restart_cmd=config.restart_cmd,
            log_dir=logs,
            label="target",
        )
        self.target2 = (
            Target(
                config.target2,
                pid=config.pid2,
                restart_cmd=config.restart_cmd2,
                log_dir=logs,
                label="target2",
            )
            if config.target2 is not None
            else None
        )
        self.store = FindingStore(config.out)
        self.progress = Progress(config.progress)
        self.cases = 0
        self.stateful_runs = 0
        self.start = time.monotonic()
        self.info: dict[str, dict[str, Any]] = {}
        families = FAMILIES
        if config.families:
            families = tuple(f for f in FAMILIES if _selected(f, config.families))
        self.families: tuple[Family, ...] = families
        self.ctx = GenContext(destructive=config.destructive, max_fill=config.max_fill)
        self.stopped: str | None = None
        self.shrink_spent = 0.0
        #: In differential mode, which target is gearproto's server (see _ours_side).
        self.ours_side: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def _targets(self) -> list[Target]:
        return [self.target] + ([self.target2] if self.target2 is not None else [])

    def _bring_up(self, target: Target) -> None:
        if target.check(self.config.timeouts.liveness).ok:
            return
        if target.can_restart:
            if target.restart():
                return
            raise TargetError(f"{target}: --restart-cmd did not bring the server up")
        raise TargetError(
            f"{target} does not answer (is the server running? pass --restart-cmd to let"
            " the fuzzer start it)"
        )

    def run(self) -> CampaignResult:
        cfg = self.config
        for target in self._targets():
            self._bring_up(target)
        tag = b"fz%x" % (cfg.seed & 0xFFFFFF)
        self.ctx.prefix = tag + b"_"
        for target in self._targets():
            self.info[target.label] = learn_target(target, self.ctx.prefix)
        self.ours_side = self._ours_side()
        handle_prefix = self.info["target"].get("handle_prefix")
        if handle_prefix:
            self.ctx.handle_prefix = handle_prefix.encode("latin-1")
        deadline = self.start + cfg.budget
        stateful_spent = 0.0
        try:
            while time.monotonic() < deadline:
                if cfg.max_cases is not None and self.cases >= cfg.max_cases:
                    break
                elapsed = time.monotonic() - self.start
                if cfg.stateful_share > 0 and stateful_spent < cfg.stateful_share * elapsed:
                    began = time.monotonic()
                    self._stateful_batch(deadline)
                    stateful_spent += time.monotonic() - began
                    continue
                case = case_for(cfg.seed, self.cases, self.ctx, self.families)
                self.cases += 1
                self._one_case(case)
                self._show()
        except _TargetDown as exc:
            self.stopped = str(exc)
            self.progress.note(f"stopping: {exc}")
        finally:
            for target in self._targets():
                target.close()
        result = CampaignResult(
            self.cases,
            self.stateful_runs,
            time.monotonic() - self.start,
            list(self.store.findings),
            sum(t.restarts for t in self._targets()),
            self.stopped,
            self.shrink_spent,
        )
        self.progress.done(self._status_line())
        if cfg.out is not None:
            self._write_summary(result)
        return result

    # ---------------------------------------------------------------- single case

    def _run(self, case: Case, target: Target) -> tuple[Observation, list[Verdict]]:
        """Run a case on a target, judge it, and repair the target if it broke."""
        if not target.check(self.config.timeouts.liveness).ok:
            self._recover(target, "down before the case")
        obs = execute(case, target, self.config.timeouts)
        state = server_state(target, self.config.timeouts)
        crash_log = target.log_tail() if state.state == "crashed" else ""
        verdicts = judge(obs, state, rss_limit=self.config.rss_limit, crash_log=crash_log)
        if state.state != "up":
            self._recover(target, state.detail)
        return obs, verdicts

    def _recover(self, target: Target, why: str) -> None:
        if not target.can_restart:
            raise _TargetDown(f"{target} is {why} and there is no --restart-cmd")
        target.kill_hung()
        if not target.restart():
            raise _TargetDown(f"{target} did not come back after --restart-cmd")

    def _one_case(self, case: Case) -> None:
        obs1, verdicts = self._run(case, self.target)
        for verdict in verdicts:
            self._handle(verdict, case, self.target)
        if self.target2 is not None:
            obs2, verdicts2 = self._run(case, self.target2)
            for verdict in verdicts2:
                self._handle(verdict, case, self.target2)
            if any(v.cls in _DEATHS for v in verdicts + verdicts2):
                return  # a server died during the case: that is the finding, not its replies
            for verdict in compare(obs1, obs2, ("target", "target2"), self.ours_side):
                self._handle(verdict, case, None)

    def _verdicts_for(self, case: Case, target: Target | None) -> list[Verdict]:
        if target is not None:
            return self._run(case, target)[1]
        assert self.target2 is not None
        obs1, _ = self._run(case, self.target)
        obs2, _ = self._run(case, self.target2)
        return compare(obs1, obs2, ("target", "target2"), self.ours_side)

    def _handle(self, verdict: Verdict, case: Case, target: Target | None) -> None:
        label = target.label if target is not None else "target vs target2"
        raw = f"{label}|{verdict.signature}"
        if self.store.seen(raw) is not None:
            self.store.note_occurrence(raw)
            return
        matched: list[Verdict] = []

        def same(v: Verdict) -> bool:
            return v.cls is verdict.cls and (v.key == verdict.key or v.cls in _LOOSE)

        # A close races with the replies written just before it: demand two hits.
        runs = 2 if verdict.cls is FindingClass.UNEXPECTED_CLOSE else 1

        def fails(candidate: Case) -> bool:
            for _ in range(runs):
                hits = [v for v in self._verdicts_for(candidate, target) if same(v)]
                if not hits:
                    return False
                matched[:] = hits[:1]
            return True

        began = time.monotonic()
        window = self._shrink_window(self.config.minimize_time)
        if verdict.details.get("deviation"):
            window = 0.0  # a documented deviation: its case is kept as found
        deadline = min(began + window, self.start + self.config.budget + window)
        self.progress.note(
            f"new {verdict.cls.value}: {verdict.summary[:100]} — "
            + (f"minimising (up to {window:.0f}s)" if window >= 1 else "shrink budget spent")
        )
        minimal = Minimizer(fails, deadline=deadline).minimize(case) if window >= 1 else case
        runs = 1
        hits = sum(fails(minimal) for _ in range(3))
        best = matched[0] if matched else verdict
        reproducer = minimal
        if hits < 2 and minimal is not case:
            # Minimising may have kept a candidate that failed by chance.
            original_hits = sum(fails(case) for _ in range(2))
            if original_hits > hits:
                reproducer, hits, best = case, original_hits, matched[0] if matched else verdict
        evidence: dict[str, Any] = {}
        if target is not None:
            evidence["server"] = self.info.get(target.label, {})
        finding = Finding(
            number=len(self.store.findings) + 1,
            verdict=best,
            target=f"{label} {target.address if target else ''}".strip(),
            case=reproducer,
            origin=case.case_id,
            reproduced=f"{hits}/3" if reproducer is minimal else f"{hits}/2 (unminimised)",
            seconds_in=time.monotonic() - self.start,
            evidence=evidence,
        )
        self.shrink_spent += time.monotonic() - began
        stored = self.store.add(finding, raw)
        if stored is finding:
            self.progress.note(
                f"finding {finding.number}: {best.cls.value}: {best.summary[:110]}"
                f" [{len(reproducer.steps)} steps, reproduced {finding.reproduced}]"
            )

    # -------------------------------------------------------------------- stateful

    def _stateful_batch(self, deadline: float) -> None:
        try:
            from .stateful import run_batch
        except ImportError as exc:
            # The stateful engine needs Hypothesis (the ``fuzz`` extra).
            self.progress.note(f"stateful engine disabled: {exc} (pip install 'gearproto[fuzz]')")
            self.config.stateful_share = 0.0
            return

        for finding in run_batch(
            self.target,
            seed=self.config.seed,
            batch=self.stateful_runs,
            deadline=deadline,
            timeouts=self.config.timeouts,
            destructive=self.config.destructive,
            prefix=self.ctx.prefix,
            # Each stateful finding is shrunk twice (Hypothesis, then delta debugging):
            # a shorter window keeps batches coming.
            shrink_time=self._shrink_window(min(self.config.minimize_time, 20.0)),
            recover=lambda why: self._recover(self.target, why),
            on_progress=self._show,
            known=lambda signature: self.store.seen(f"target|{signature}") is not None,
            on_known=lambda violation: self.store.note_occurrence(f"target|{violation.signature}"),
            on_shrink=self._count_shrink,
        ):
            raw = f"target|{finding.verdict.signature}"
            if self.store.seen(raw) is not None:
                self.store.note_occurrence(raw)
                continue
            finding.number = len(self.store.findings) + 1
            finding.target = f"target {self.target.address}"
            finding.seconds_in = time.monotonic() - self.start
            finding.evidence.setdefault("server", self.info.get("target", {}))
            stored = self.store.add(finding, raw)
            if stored is finding:
                self.progress.note(
                    f"finding {finding.number}: {finding.cls.value}:"
                    f" {finding.verdict.summary[:110]}"
                    f" [{len(finding.actions or [])} actions, reproduced {finding.reproduced}]"
                )
        self.stateful_runs += 1

    # ------------------------------------------------------------------- shrinking

    def _ours_side(self) -> int | None:
        """Which target is gearproto's server when the other one is not (differential
        mode): divergences are then checked against the documented deviations."""
        if self.target2 is None:
            return None
        sides = [
            index
            for index, target in enumerate(self._targets())
            if str(self.info.get(target.label, {}).get("version") or "").startswith("gearproto")
        ]
        return sides[0] if len(sides) == 1 else None

    def _shrink_window(self, wanted: float) -> float:
        """Seconds the next finding may be shrunk for: ``wanted``, unless the campaign's
        shrink allowance (``shrink_share`` of the budget) has less left."""
        allowance = self.config.shrink_share * self.config.budget - self.shrink_spent
        return max(0.0, min(wanted, allowance))

    def _count_shrink(self, seconds: float) -> None:
        self.shrink_spent += seconds

    # -------------------------------------------------------------------- reporting

    def _status_line(self) -> str:
        elapsed = time.monotonic() - self.start
        counts = self.store.counts()
        classes = " ".join(f"{cls.value} {counts[cls]}" for cls in FindingClass if counts.get(cls))
        rate = self.cases / elapsed if elapsed > 0 else 0.0
        restarts = sum(t.restarts for t in self._targets())
        return (
            f"fuzz {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}"
            f" | cases {self.cases} ({rate:.0f}/s) stateful {self.stateful_runs}"
            f" | findings {len(self.store.findings)}"
            + (f" ({classes})" if classes else "")
            + f" | restarts {restarts} | shrinking {self.shrink_spent:.0f}s"
        )

    def _show(self) -> None:
        self.progress.update(self._status_line())

    def _write_summary(self, result: CampaignResult) -> None:
        out = self.config.out
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        ordered = sorted(result.findings, key=lambda f: (f.cls.severity, f.number))
        data = {
            "seed": self.config.seed,
            "budget_seconds": self.config.budget,
            "seconds": round(result.seconds, 1),
            "cases": result.cases,
            "stateful_runs": result.stateful_runs,
            "restarts": result.restarts,
            "shrink_seconds": round(result.shrink_seconds, 1),
            "stopped": result.stopped,
            "targets": {
                t.label: {"address": str(t.address), **self.info.get(t.label, {})}
                for t in self._targets()
            },
            "counts": result.counts,
            "findings": [
                {
                    "number": f.number,
                    "class": f.cls.value,
                    "summary": f.verdict.summary,
                    "target": f.target,
                    "occurrences": f.occurrences,
                    "reproduced": f.reproduced,
                    "directory": str(f.directory.relative_to(out)) if f.directory else None,
                    **_deviation_field(f),
                }
                for f in ordered
            ],
        }
        if self.ours_side is not None:
            data["unexplained_divergences"] = sum(1 for f in ordered if _unexplained(f))
        (out / "campaign.json").write_text(json.dumps(data, indent=1) + "\n")
        lines = [
            "# Fuzz campaign summary",
            "",
            f"- Seed {self.config.seed}, {result.cases} cases and {result.stateful_runs}"
            f" stateful batches in {result.seconds:.0f} s ({result.shrink_seconds:.0f} s"
            f" shrinking), {result.restarts} restart(s)",
        ]
        for t in self._targets():
            version = self.info.get(t.label, {}).get("version") or "unknown version"
            lines.append(f"- {t.label}: {t.address} ({version})")
        if result.stopped:
            lines.append(f"- Stopped early: {result.stopped}")
        lines += [
            "",
            "| # | class | summary | seen | reproduced | files |",
            "|---|---|---|---|---|---|",
        ]
        for f in ordered:
            directory = str(f.directory.relative_to(out)) if f.directory else ""
            summary = f.verdict.summary.replace("|", "\\|")[:150]
            lines.append(
                f"| {f.number} | {f.cls.value} | {summary} | {f.occurrences} | {f.reproduced}"
                f" | {directory} |"
            )
        if not ordered:
            lines.append("| - | - | no findings | - | - | - |")
        if self.ours_side is not None:
            lines += _triage_lines(ordered)
        (out / "summary.md").write_text("\n".join(lines) + "\n")


_DEATHS = frozenset({FindingClass.CRASH, FindingClass.HANG})


def _deviation_field(finding: Finding) -> dict[str, Any]:
    if finding.cls is not FindingClass.DIVERGENCE or "deviation" not in finding.verdict.details:
        return {}
    return {"deviation": finding.verdict.details["deviation"]}


def _unexplained(finding: Finding) -> bool:
    return finding.cls is FindingClass.DIVERGENCE and not finding.verdict.details.get("deviation")


def _triage_lines(findings: list[Finding]) -> list[str]:
    """The differential triage: divergences per documented deviation, then the rest."""
    explained: dict[str, list[int]] = {}
    for f in findings:
        anchor = f.verdict.details.get("deviation") if f.cls is FindingClass.DIVERGENCE else None
        if anchor:
            explained.setdefault(anchor, []).append(f.number)
    unexplained = [f for f in findings if _unexplained(f)]
    lines = ["", "## Divergences explained by docs/deviations.md", ""]
    for anchor, numbers in sorted(explained.items()):
        lines.append(f"- docs/deviations.md#{anchor}: findings {numbers}")
    if not explained:
        lines.append("- none")
    lines += ["", f"## Unexplained divergences ({len(unexplained)})", ""]
    for f in unexplained:
        lines.append(f"- {f.number}: {f.verdict.summary[:200]}")
    if not unexplained:
        lines.append("- none")
    return lines


def _selected(family: Family, wanted: tuple[str, ...]) -> bool:
    return any(family.name == w or family.name.startswith(w + ".") for w in wanted)


def run_campaign(config: CampaignConfig) -> CampaignResult:
    return Campaign(config).run()
