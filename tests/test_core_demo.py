"""The README's first Quick start command runs the core demo."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("core_impl")


def test_demo_runs_one_job_through_the_core() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gearproto.demo"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "WorkComplete(handle=b'H:demo:1', data=b'olleh')" in result.stdout
    assert "b'reverse\\t0\\t0\\t1\\n.\\n'" in result.stdout
    assert result.stdout.rstrip().endswith("client waits for 0 job(s); worker is idle")


def test_demo_is_a_gearproto_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gearproto", "demo"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "WorkComplete(handle=b'H:demo:1', data=b'olleh')" in result.stdout
