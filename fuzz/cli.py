"""``gearproto fuzz``: run a campaign against a server, or replay a reproducer.

Exit status: 0 nothing found (or the replayed bug is gone), 1 findings (or the
replayed bug is still there), 2 bad command line or reproducer, 3 the target cannot
be used (not running and no ``--restart-cmd``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .address import AddressError, parse_address
from .case import CaseFormatError
from .execute import Timeouts
from .target import Target, TargetError

__all__ = ["main", "parse_duration"]

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE, EXIT_TARGET = 0, 1, 2, 3

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"1.5h"``, ``"250ms"`` or plain seconds -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} (use e.g. 90s, 10m, 1h or a number of seconds)"
        )
    value = (
        float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    )
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the seed must not be negative")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("the share must be between 0 and 1")
    return value


def _pid(text: str) -> int:
    pid = _positive_int(text)
    if not os.path.exists(f"/proc/{pid}"):
        raise argparse.ArgumentTypeError(f"no process with PID {pid}")
    return pid


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", required=True, metavar="HOST:PORT", help="the server under test"
    )
    parser.add_argument("--pid", type=_pid, help="PID of the target (crash detection, RSS)")
    parser.add_argument(
        "--restart-cmd",
        metavar="CMD",
        help="command that starts the target again after a crash or hang (split like a"
        " shell would, run without a shell)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow targets that are not on this machine (never point this at production)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=parse_duration,
        default=2.0,
        metavar="DURATION",
        help="how long a well-formed request may take to be answered (default 2s)",
    )


def _campaign_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gearproto fuzz",
        description="Fuzz-test a Gearman server: crashes, hangs, desyncs, protocol"
        " violations, lost or misdelivered jobs, forged admin output. Every finding is"
        " saved as a minimal reproducer. Use only on servers you own, never in production."
        " Replay a finding with: gearproto fuzz replay FILE --target HOST:PORT",
    )
    _common(parser)
    parser.add_argument("--target2", metavar="HOST:PORT", help="second server (differential mode)")
    parser.add_argument("--pid2", type=_pid, help="PID of the second server")
    parser.add_argument(
        "--restart-cmd2", metavar="CMD", help="restart command of the second server"
    )
    parser.add_argument(
        "--budget",
        type=parse_duration,
        default=600.0,
        metavar="DURATION",
        help="how long to fuzz (default 10m)",
    )
    parser.add_argument(
        "--max-cases", type=_positive_int, metavar="N", help="stop after N generated cases"
    )
    parser.add_argument(
        "--seed", type=_seed, help="seed of the case sequence (default: random, printed)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where findings go (default ./gearproto-fuzz-SEED)",
    )
    parser.add_argument(
        "--minimize-time",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="longest time spent shrinking one new finding (default 30s)",
    )
    parser.add_argument(
        "--shrink-share",
        type=_share,
        default=0.3,
        metavar="FRACTION",
        help="most of the budget that shrinking may take in total (default 0.3); later"
        " findings are saved as found. Findings already known are never shrunk again",
    )
    parser.add_argument(
        "--stateful-share",
        type=_share,
        default=0.3,
        metavar="FRACTION",
        help="share of the time spent in the stateful job engine (default 0.3; 0 disables)",
    )
    parser.add_argument(
        "--families",
        metavar="LIST",
        help="comma-separated generator families (default all): valid, frames, admin,"
        " mutate, split, multi, memory",
    )
    parser.add_argument(
        "--rss-limit",
        type=_positive_int,
        default=32,
        metavar="MIB",
        help="RSS growth during one case that counts as a finding (default 32, needs --pid)",
    )
    parser.add_argument(
        "--max-fill",
        type=_positive_int,
        default=48,
        metavar="MIB",
        help="largest body a memory case streams (default 48)",
    )
    parser.add_argument(
        "--destructive",
        action="store_true",
        help="also send commands that affect the whole server (shutdown)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    return parser


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gearproto fuzz replay",
        description="Replay saved reproducers against a server and judge the result."
        " Exit status 1 means the finding reproduced (the bug is still there), 0 that it"
        " did not.",
    )
    parser.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="reproducer.json files or finding directories",
    )
    _common(parser)
    parser.add_argument(
        "--target2",
        metavar="HOST:PORT",
        help="also replay against a second server and report differences",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="replay each file N times (flaky findings)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "replay":
        return _replay_main(args[1:])
    return _campaign_main(args)


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(args)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


def _campaign_main(args: list[str]) -> int:
    from .campaign import Campaign, CampaignConfig

    parser = _campaign_parser()
    ns = _parse(parser, args)
    if isinstance(ns, int):
        return ns
    try:
        target = parse_address(ns.target, allow_remote=ns.allow_remote)
        target2 = parse_address(ns.target2, allow_remote=ns.allow_remote) if ns.target2 else None
    except AddressError as exc:
        print(f"gearproto fuzz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if target2 is not None and target2 == target:
        print("gearproto fuzz: --target2 must be a different server", file=sys.stderr)
        return EXIT_USAGE
    families = (
        tuple(f.strip() for f in ns.families.split(",") if f.strip()) if ns.families else None
    )
    if families:
        from .generators import FAMILIES

        known = {f.name.split(".")[0] for f in FAMILIES} | {f.name for f in FAMILIES}
        unknown = [f for f in families if f not in known]
        if unknown:
            print(
                f"gearproto fuzz: unknown famil{'y' if len(unknown) == 1 else 'ies'}"
                f" {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                file=sys.stderr,
            )
            return EXIT_USAGE
    seed = ns.seed if ns.seed is not None else int.from_bytes(os.urandom(4), "big")
    out = ns.out if ns.out is not None else Path(f"gearproto-fuzz-{seed}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"gearproto fuzz: cannot create --out {out}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = None if ns.quiet else sys.stderr
    if progress is not None:
        print(f"gearproto fuzz: seed {seed}, findings in {out}/", file=progress)
    config = CampaignConfig(
        target=target,
        target2=target2,
        restart_cmd=ns.restart_cmd,
        restart_cmd2=ns.restart_cmd2,
        pid=ns.pid,
        pid2=ns.pid2,
        budget=ns.budget,
        max_cases=ns.max_cases,
        seed=seed,
        out=out,
        timeouts=Timeouts(probe=ns.probe_timeout),
        rss_limit=ns.rss_limit << 20,
        minimize_time=ns.minimize_time,
        shrink_share=ns.shrink_share,
        stateful_share=ns.stateful_share,
        families=families,
        destructive=ns.destructive,
        max_fill=ns.max_fill << 20,
        progress=progress,
    )
    try:
        result = Campaign(config).run()
    except TargetError as exc:
        print(f"gearproto fuzz: {exc}", file=sys.stderr)
        return EXIT_TARGET
    except KeyboardInterrupt:
        print("gearproto fuzz: interrupted", file=sys.stderr)
        return EXIT_FOUND
    if ns.json:
        print(
            json.dumps(
                {
                    "seed": seed,
                    "out": str(out),
                    "cases": result.cases,
                    "stateful_runs": result.stateful_runs,
                    "shrink_seconds": round(result.shrink_seconds, 1),
                    "counts": result.counts,
                    "stopped": result.stopped,
                    "findings": [
                        {
                            "class": f.cls.value,
                            "summary": f.verdict.summary,
                            "directory": str(f.directory) if f.directory else None,
                            **(
                                {"deviation": f.verdict.details["deviation"]}
                                if "deviation" in f.verdict.details
                                else {}
                            ),
                        }
                        for f in result.findings
                    ],
                },
                indent=1,
            )
        )
    else:
        for finding in sorted(result.findings, key=lambda f: (f.cls.severity, f.number)):
            print(f"{finding.cls.value:18} {finding.verdict.summary[:110]}  [{finding.directory}]")
    if result.stopped and not result.findings:
        return EXIT_TARGET
    return EXIT_FOUND if result.findings else EXIT_CLEAN


def _replay_main(args: list[str]) -> int:
    from .replay import load_reproducer, replay

    ns = _parse(_replay_parser(), args)
    if isinstance(ns, int):
        return ns
    try:
        address = parse_address(ns.target, allow_remote=ns.allow_remote)
        address2 = parse_address(ns.target2, allow_remote=ns.allow_remote) if ns.target2 else None
    except AddressError as exc:
        print(f"gearproto fuzz replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        reproducers = [load_reproducer(path) for path in ns.files]
    except CaseFormatError as exc:
        print(f"gearproto fuzz replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    timeouts = Timeouts(probe=ns.probe_timeout)
    target = Target(address, pid=ns.pid, restart_cmd=ns.restart_cmd)
    target2 = Target(address2, label="target2") if address2 is not None else None
    if not target.check(timeouts.liveness).ok and not (target.can_restart and target.restart()):
        print(f"gearproto fuzz replay: {target} does not answer", file=sys.stderr)
        return EXIT_TARGET
    reproduced_any = False
    results = []
    try:
        for reproducer in reproducers:
            for attempt in range(ns.repeat):
                if not target.check(timeouts.liveness).ok and target.can_restart:
                    target.kill_hung()
                    target.restart()
                result = replay(reproducer, target, target2=target2, timeouts=timeouts)
                hit = result.matches(reproducer)
                reproduced_any |= hit
                results.append(
                    {
                        "file": str(reproducer.path),
                        "attempt": attempt + 1,
                        "expected": reproducer.expect_class,
                        "reproduced": hit,
                        "verdicts": [
                            {"class": v.cls.value, "key": v.key, "summary": v.summary}
                            for v in result.verdicts
                        ],
                    }
                )
                if not ns.json:
                    status = "REPRODUCED" if hit else "not reproduced"
                    expected = (
                        f" (expected {reproducer.expect_class})" if reproducer.expect_class else ""
                    )
                    print(f"{reproducer.path}: {status}{expected}")
                    for v in result.verdicts:
                        print(f"  {v.cls.value:18} {v.summary}")
    finally:
        target.close()
    if ns.json:
        print(json.dumps(results, indent=1))
    return EXIT_FOUND if reproduced_any else EXIT_CLEAN
