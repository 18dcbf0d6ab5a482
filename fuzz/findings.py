"""Findings: deduplication, and the files each one is saved as.

Every finding gets a directory under ``OUT/findings/``::

    0003-missing-reply-GET_STATUS/
        reproducer.json   replay with: gearproto fuzz replay reproducer.json --target ...
        finding.json      class, signature, summary, evidence, provenance
        report.md         the same for people, with the bytes sent and what came back
        reproduce.py      (byte cases) a standalone script using only the socket module
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .case import Case, Close, Connect, Pause, Send
from .verdict import FindingClass, Verdict

__all__ = ["STATEFUL_FORMAT", "Finding", "FindingStore"]

STATEFUL_FORMAT = "gearproto-fuzz-stateful/1"


@dataclass
class Finding:
    """One distinct bug, with its minimal reproducer."""

    number: int
    verdict: Verdict
    target: str
    case: Case | None = None
    #: Actions of a stateful run (instead of ``case``).
    actions: list[dict[str, Any]] | None = None
    origin: str = ""
    occurrences: int = 1
    reproduced: str = ""
    seconds_in: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None

    @property
    def cls(self) -> FindingClass:
        return self.verdict.cls

    def slug(self) -> str:
        key = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.verdict.key).strip("-")[:40]
        return f"{self.number:04d}-{self.cls.value}" + (f"-{key}" if key else "")

    def reproducer(self) -> dict[str, Any]:
        expect = {"class": self.cls.value, "key": self.verdict.key}
        if self.actions is not None:
            return {
                "format": STATEFUL_FORMAT,
                "origin": self.origin,
                "expect": expect,
                "actions": self.actions,
            }
        assert self.case is not None
        return {**self.case.to_dict(), "expect": expect}

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "class": self.cls.value,
            "severity": self.cls.severity,
            "signature": self.verdict.signature,
            "summary": self.verdict.summary,
            "details": self.verdict.details,
            "target": self.target,
            "origin": self.origin,
            "occurrences": self.occurrences,
            "reproduced": self.reproduced,
            "seconds_into_campaign": round(self.seconds_in, 1),
            "evidence": self.evidence,
            "reproducer": "reproducer.json",
        }


class FindingStore:
    """Keeps findings, deduplicated by signature, and writes them under ``out``."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.findings: list[Finding] = []
        self._by_signature: dict[str, Finding] = {}
        self._raw_seen: dict[str, Finding] = {}

    def seen(self, signature: str) -> Finding | None:
        """The finding a raw (unminimised) signature already led to."""
        return self._raw_seen.get(signature) or self._by_signature.get(signature)

    def note_occurrence(self, signature: str) -> None:
        finding = self.seen(signature)
        if finding is not None:
            finding.occurrences += 1
            if finding.directory is not None:
                self._write_json(finding)

    def add(self, finding: Finding, raw_signature: str) -> Finding:
        """Record ``finding``; returns the existing one if its minimised signature is known."""
        existing = self._by_signature.get(finding.verdict.signature)
        if existing is not None:
            existing.occurrences += 1
            self._raw_seen[raw_signature] = existing
            return existing
        self.findings.append(finding)
        self._by_signature[finding.verdict.signature] = finding
        self._raw_seen[raw_signature] = finding
        if self.out is not None:
            self._save(finding)
        return finding

    def counts(self) -> dict[FindingClass, int]:
        out: dict[FindingClass, int] = {}
        for finding in self.findings:
            out[finding.cls] = out.get(finding.cls, 0) + 1
        return out

    # ----------------------------------------------------------------------- files

    def _save(self, finding: Finding) -> None:
        assert self.out is not None
        directory = self.out / "findings" / finding.slug()
        directory.mkdir(parents=True, exist_ok=True)
        finding.directory = directory
        (directory / "reproducer.json").write_text(
            json.dumps(finding.reproducer(), indent=1, ensure_ascii=True) + "\n"
        )
        self._write_json(finding)
        (directory / "report.md").write_text(report_markdown(finding))
        if finding.case is not None:
            (directory / "reproduce.py").write_text(standalone_script(finding))

    def _write_json(self, finding: Finding) -> None:
        assert finding.directory is not None
        (finding.directory / "finding.json").write_text(
            json.dumps(finding.to_json(), indent=1, default=str) + "\n"
        )


def describe_steps(case: Case, limit: int = 60) -> list[str]:
    """The steps of a case as readable lines."""
    lines = []
    for step in case.steps[:limit]:
        if isinstance(step, Connect):
            lines.append(f"connect #{step.conn}" + ("" if step.read else " (never reads)"))
        elif isinstance(step, Send):
            shown = repr(step.data[:160]) + ("..." if len(step.data) > 160 else "")
            fill = f" + {step.fill_count} x {bytes([step.fill_byte])!r}" if step.fill_count else ""
            lines.append(f"send #{step.conn}: {shown}{fill}")
        elif isinstance(step, Pause):
            lines.append(f"pause {step.ms} ms")
        elif isinstance(step, Close):
            lines.append(f"close #{step.conn} ({step.how})")
    if len(case.steps) > limit:
        lines.append(f"... {len(case.steps) - limit} more steps")
    return lines


def report_markdown(finding: Finding) -> str:
    verdict = finding.verdict
    parts = [
        f"# Finding {finding.number}: {verdict.cls.value}",
        "",
        f"**{verdict.summary}**",
        "",
        f"- Class: `{verdict.cls.value}` (severity {verdict.cls.severity}): {verdict.cls.meaning}",
        f"- Signature: `{verdict.signature}`",
        f"- Target: {finding.target}",
        f"- Found by: `{finding.origin}` after {finding.seconds_in:.0f} s;"
        f" seen {finding.occurrences} time(s)",
        f"- Minimised reproducer re-triggered: {finding.reproduced or 'not checked'}",
        "",
        "## Reproduce",
        "",
        "```",
        "gearproto fuzz replay reproducer.json --target HOST:PORT",
        "```",
        "",
    ]
    if finding.case is not None:
        parts += ["## Steps", "", "```", *describe_steps(finding.case), "```", ""]
        parts += ["Or run the standalone `reproduce.py HOST PORT` (standard library only).", ""]
    elif finding.actions is not None:
        parts += ["## Actions", "", "```"]
        parts += [json.dumps(a, ensure_ascii=True) for a in finding.actions]
        parts += ["```", ""]
    if verdict.details:
        parts += [
            "## Details",
            "",
            "```",
            json.dumps(verdict.details, indent=1, default=str),
            "```",
            "",
        ]
    if finding.evidence:
        parts += [
            "## Evidence",
            "",
            "```",
            json.dumps(finding.evidence, indent=1, default=str)[:6000],
            "```",
            "",
        ]
    return "\n".join(parts)


_SCRIPT_HEAD = """\
#!/usr/bin/env python3
# {title}
# Usage: reproduce.py HOST PORT -- sends the case, then prints what each connection got.
import socket
import struct
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
conns = {{}}


def connect(number):
    try:
        conns[number] = socket.create_connection((host, port), timeout=2)
    except OSError as exc:
        print(f"connection {{number}}: connect failed: {{exc}}")


def send(number, data):
    if number in conns:
        try:
            conns[number].sendall(data)
        except OSError as exc:
            print(f"connection {{number}}: send failed: {{exc}}")


def close(number, how):
    sock = conns.get(number)
    if sock is None:
        return
    if how == "half":
        sock.shutdown(socket.SHUT_WR)
        return
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    del conns[number]


"""

_SCRIPT_TAIL = """

time.sleep(0.5)
for number, sock in conns.items():
    sock.settimeout(0.5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        state = "closed by the server"
    except OSError:
        state = "still open"
    print(f"connection {number}: {state}; received {data[:2000]!r}")
try:
    socket.create_connection((host, port), timeout=2).close()
    print("the server still accepts connections")
except OSError as exc:
    print(f"the server does not accept connections: {exc}")
"""


def standalone_script(finding: Finding) -> str:
    """A dependency-free script that sends the case's bytes and prints the replies."""
    assert finding.case is not None
    body = []
    for step in finding.case.steps:
        if isinstance(step, Connect):
            body.append(f"connect({step.conn})")
        elif isinstance(step, Send):
            fill = f" + bytes([{step.fill_byte}]) * {step.fill_count}" if step.fill_count else ""
            body.append(f"send({step.conn}, {step.data!r}{fill})")
        elif isinstance(step, Pause):
            body.append(f"time.sleep({step.ms / 1000!r})")
        elif isinstance(step, Close):
            body.append(f"close({step.conn}, {step.how!r})")
    # The summary quotes peer bytes: keep it on one comment line, printable only.
    summary = "".join(c if c.isprintable() else "?" for c in finding.verdict.summary[:120])
    title = f"Finding {finding.number} ({finding.cls.value}): {summary}"
    return _SCRIPT_HEAD.format(title=title) + "\n".join(body) + _SCRIPT_TAIL
