"""Differential triage: gearmand vs gearproto's server, every difference explained.

``gearproto.fuzz.deviations`` maps divergence signatures to the headings of
docs/deviations.md.  These tests check the table against the document, each rule on
a hand-built divergence, and run a short differential campaign between gearmand
1.1.20 and our server that must leave no divergence unexplained.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.procs import GEARMAND, ServerProcess, start_process

from gearproto import REQ, raw_packet
from gearproto import events as ev
from gearproto.fuzz.deviations import KNOWN_DEVIATIONS, Divergence, anchor_of, explain
from gearproto.fuzz.shadow import Request, shadow_parse

DOC = Path(__file__).resolve().parent.parent / "docs" / "deviations.md"


def _headings() -> list[str]:
    return [line[3:].strip() for line in DOC.read_text().splitlines() if line.startswith("## ")]


def test_every_known_deviation_is_a_heading_of_the_document() -> None:
    headings = _headings()
    assert len(set(headings)) == len(headings)
    for known in KNOWN_DEVIATIONS:
        assert known.heading in headings, known.heading
        assert known.anchor == anchor_of(known.heading)


def test_anchor_follows_markdown_heading_rules() -> None:
    assert anchor_of("A new PRE_SLEEP re-arms wake-ups") == "a-new-pre_sleep-re-arms-wake-ups"
    assert anchor_of("--job-retries semantics") == "--job-retries-semantics"


def _divergence(
    ours: list[str],
    theirs: list[str],
    *,
    where: int = 0,
    ours_fate: str = "in-sync",
    theirs_fate: str = "in-sync",
    requests: tuple[Request, ...] = (),
    half_closed: bool = False,
) -> Divergence:
    return Divergence(
        "close-vs-reply",
        where,
        [(kind, "") for kind in ours],
        ours_fate,
        [(kind, "") for kind in theirs],
        theirs_fate,
        requests,
        half_closed,
    )


def _explained(divergence: Divergence) -> str | None:
    known = explain(divergence)
    return known.anchor if known is not None else None


def test_refusal_where_gearmand_hung_up_is_explained() -> None:
    divergence = _divergence(["NO_JOB", "ERROR INVALID_MAGIC"], [], theirs_fate="closed")
    assert _explained(divergence) == "protocol-errors-are-always-answered"


def test_answers_before_a_half_close_are_explained_only_for_a_half_close() -> None:
    replies = _divergence(["JOB_CREATED"], [], ours_fate="closed", theirs_fate="closed")
    assert _explained(replies) is None
    half = _divergence(
        ["JOB_CREATED"], [], ours_fate="closed", theirs_fate="closed", half_closed=True
    )
    assert _explained(half) == "requests-sent-before-a-half-close-are-answered"


def test_out_of_range_timeout_is_explained_by_the_timeout_section() -> None:
    request = Request("CAN_DO_TIMEOUT", "silent", event=ev.CanDoTimeout(b"f", 2**31))
    divergence = _divergence(["ERROR INVALID_ARGUMENT"], [], requests=(request,))
    assert _explained(divergence) == "can_do_timeout-is-timed-per-job"
    in_range = Request("CAN_DO_TIMEOUT", "silent", event=ev.CanDoTimeout(b"f", 5))
    assert _explained(_divergence(["ERROR INVALID_ARGUMENT"], [], requests=(in_range,))) is None


def test_a_different_job_assignment_is_not_explained() -> None:
    divergence = _divergence(["JOB_ASSIGN"], ["NO_JOB"])
    assert _explained(divergence) is None


SERVER = [sys.executable, "-m", "gearproto.server", "-p", "{port}", "-q", "builtin",
          "--job-handle-prefix", "H:fuzz"]  # fmt: skip
GEARMAND_ARGV = [str(GEARMAND), "-L", "127.0.0.1", "-p", "{port}", "-l", "stderr",
                 "--verbose", "ERROR", "--job-handle-prefix", "H:fuzz"]  # fmt: skip


@pytest.mark.gearmand
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_short_differential_run_leaves_nothing_unexplained(tmp_path: Path) -> None:
    if GEARMAND is None:
        pytest.skip("gearmand is not installed")
    servers: list[ServerProcess] = []
    try:
        servers.append(start_process(GEARMAND_ARGV, log=tmp_path / "gearmand.log"))
        servers.append(start_process(SERVER, log=tmp_path / "ours.log"))
        gearmand, ours = servers
        argv = [sys.executable, "-m", "gearproto", "fuzz", "--budget", "40s", "--seed", "7",
                "--out", str(tmp_path / "out"), "--minimize-time", "5s", "--probe-timeout",
                "1s", "--stateful-share", "0", "--json"]  # fmt: skip
        for suffix, server, template in (("", gearmand, GEARMAND_ARGV), ("2", ours, SERVER)):
            restart = " ".join(template).format(port=server.port)
            argv += [f"--target{suffix}", f"127.0.0.1:{server.port}", f"--pid{suffix}",
                     str(server.pid), f"--restart-cmd{suffix}", restart]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=150, check=False)
    finally:
        for server in servers:
            server.stop()
    assert result.returncode in (0, 1), result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "campaign.json").read_text())
    assert summary["cases"] > 50
    divergences = [f for f in summary["findings"] if f["class"] == "divergence"]
    unexplained = [f["summary"] for f in divergences if not f.get("deviation")]
    assert summary["unexplained_divergences"] == len(unexplained)
    assert unexplained == []
    anchors = {anchor_of(heading) for heading in _headings()}
    explained = {f["deviation"] for f in divergences}
    assert explained, "the run should meet at least one documented deviation"
    assert explained <= anchors
    triage = (tmp_path / "out" / "summary.md").read_text()
    assert re.search(r"## Unexplained divergences \(0\)", triage)


def test_empty_create_function_is_explained_and_a_named_one_is_not() -> None:
    empty = shadow_parse(b"create function \r\n").requests
    divergence = _divergence(["ERR INVALID_ARGUMENTS"], ["OK"], requests=tuple(empty))
    assert _explained(divergence) == "create-function-keeps-the-whole-name"
    named = shadow_parse(b"create function abc\r\n").requests
    assert _explained(_divergence(["ERR INVALID_ARGUMENTS"], ["OK"], requests=tuple(named))) is None


def test_long_number_field_is_explained_only_when_it_is_long() -> None:
    long_timeout = raw_packet(REQ, 23, [b"f", b"1500" + b"z" * 125])
    requests = tuple(shadow_parse(long_timeout).requests)
    divergence = _divergence([], [], theirs_fate="closed", requests=requests)
    assert _explained(divergence) is None  # the raw field is not known
    assert _explained(dataclasses.replace(divergence, sent_bytes=long_timeout)) == (
        "every-field-is-held-to-its-limit"
    )
    short = raw_packet(REQ, 23, [b"f", b"1500"])
    assert _explained(dataclasses.replace(divergence, sent_bytes=short)) is None


def test_split_listing_does_not_hide_what_follows() -> None:
    # gearmand split its listing in two, then closed on a six-token line.
    lines = b"status\n drop \nstatus a b c d e f\n"
    requests = tuple(shadow_parse(lines).requests)
    divergence = _divergence(
        ["listing", "ERR UNKNOWN_COMMAND", "ERR INVALID_ARGUMENTS"],
        ["listing", "listing"],
        where=1,
        theirs_fate="closed",
        requests=requests,
    )
    assert _explained(divergence) == "admin-lines-with-too-many-tokens-get-an-err-line"
