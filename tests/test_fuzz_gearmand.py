"""Short fuzz campaigns against the real gearmand, started by the test.

The campaigns use ``--restart-cmd`` (gearmand 1.1.20 dies on a packet type at or above
2**31, so restarts are certain), write reproducers, and every kind of reproducer is
replayed against a fresh gearmand with ``gearproto fuzz replay``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.procs import GEARMAND, ServerProcess, gearmand

pytestmark = [pytest.mark.gearmand, pytest.mark.slow, pytest.mark.timeout(240)]


def _restart_cmd(server: ServerProcess, tmp_path: Path) -> str:
    assert GEARMAND is not None
    return (
        f"{GEARMAND} -L 127.0.0.1 -p {server.port} -l stderr --verbose ERROR"
        f" --job-handle-prefix H:test -P {tmp_path / 'restarted.pid'}"
    )


def _directory(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return directory


def _fuzz(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearproto", "fuzz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _replay(finding: Path, server: ServerProcess) -> subprocess.CompletedProcess[str]:
    return _fuzz(
        "replay",
        str(finding),
        "--target",
        f"127.0.0.1:{server.port}",
        "--pid",
        str(server.pid),
        "--probe-timeout",
        "1s",
        timeout=90,
    )


def _campaign(
    server: ServerProcess, tmp_path: Path, out: Path, *args: str
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    result = _fuzz(
        "--target",
        f"127.0.0.1:{server.port}",
        "--pid",
        str(server.pid),
        "--restart-cmd",
        _restart_cmd(server, tmp_path),
        "--out",
        str(out),
        "--probe-timeout",
        "1s",
        "--json",
        *args,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    return json.loads(result.stdout), result


def test_byte_campaign_against_gearmand(gearmand_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report, result = _campaign(
        gearmand_server,
        tmp_path,
        out,
        "--families",
        "frames",
        "--seed",
        "6",
        "--budget",
        "45s",
        "--max-cases",
        "120",
        "--stateful-share",
        "0",
        "--minimize-time",
        "6s",
    )
    classes = {f["class"] for f in report["findings"]}
    # gearmand 1.1.20 dies on a packet type >= 2**31 (a signed comparison), closes the
    # connection on malformed packets instead of answering ERROR, and waits for
    # arguments beyond the declared body when a NUL is missing.
    assert "crash" in classes
    assert classes & {"unexpected-close", "desync", "missing-reply"}
    summary = json.loads((out / "campaign.json").read_text())
    assert summary["restarts"] >= 1
    assert summary["cases"] == 120  # the campaign went on after every crash
    assert "1.1.20" in (summary["targets"]["target"]["version"] or "")
    assert "findings" in result.stderr  # the progress line
    for finding in report["findings"]:
        directory = Path(finding["directory"])
        assert {p.name for p in directory.iterdir()} >= {
            "reproducer.json",
            "finding.json",
            "report.md",
            "reproduce.py",
        }
        saved = json.loads((directory / "finding.json").read_text())
        assert saved["class"] == finding["class"]
        assert saved["summary"]
    crash = next(Path(f["directory"]) for f in report["findings"] if f["class"] == "crash")
    steps = json.loads((crash / "reproducer.json").read_text())["steps"]
    assert len(steps) <= 3  # minimised: connect and one write
    other = next(
        Path(f["directory"])
        for f in report["findings"]
        if f["class"] != "crash"
        and json.loads((Path(f["directory"]) / "finding.json").read_text())[
            "reproduced"
        ].startswith("3/")
    )
    for finding in (crash, other):
        with gearmand(_directory(tmp_path, f"replay-{finding.name}")) as fresh:
            replay = _replay(finding, fresh)
        assert replay.returncode == 1, replay.stdout + replay.stderr
        assert "REPRODUCED" in replay.stdout


def test_stateful_campaign_against_gearmand(gearmand_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report, _ = _campaign(
        gearmand_server,
        tmp_path,
        out,
        "--seed",
        "5",
        "--budget",
        "30s",
        "--stateful-share",
        "1",
        "--minimize-time",
        "8s",
    )
    classes = {f["class"] for f in report["findings"]}
    # 64-byte uniques are truncated to 63 bytes and shift the payload; names with
    # control characters break the admin listings.
    assert classes & {"job-mixup", "duplicate-job", "forged-rows", "lost-job"}
    finding = Path(report["findings"][0]["directory"])
    reproducer = json.loads((finding / "reproducer.json").read_text())
    assert reproducer["format"] == "gearproto-fuzz-stateful/1"
    assert reproducer["actions"]
    with gearmand(_directory(tmp_path, "replay")) as fresh:
        replay = _replay(finding, fresh)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "REPRODUCED" in replay.stdout
