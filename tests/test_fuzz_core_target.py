"""A short run of the core's parser fuzz target (fuzz/selftest_core.py), in CI.

The target's invariants (only events or RemoteProtocolError, split invariance,
bounded buffering) are driven here by hypothesis for a few hundred inputs, and the
atheris entry point is run for a few seconds so that the harness itself stays working.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearproto.fuzz import selftest_core


@pytest.mark.parametrize("seed", selftest_core.SEEDS)
def test_seeds_pass(seed: bytes) -> None:
    selftest_core.check(seed)


_PIECES = st.sampled_from(
    [
        b"\0REQ",
        b"\0RES",
        b"\0\0\0\x07",
        b"\0\0\0\x08",
        b"\0\0\0\x0d",
        b"\0\0\0\x00",
        b"\0\0\0\x03",
        b"\xff\xff\xff\xff",
        b"\0",
        b"\n",
        b"\r\n",
        b".\n",
        b"status",
        b"OK",
        b"ERR X y",
        b"\t1\t0\t0\n",
        b"H:1",
        b" ",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    options=st.integers(0, 3),
    pattern=st.integers(0, 255),
    stream=st.lists(st.one_of(_PIECES, st.binary(max_size=12)), max_size=30).map(b"".join),
)
def test_target_invariants_hold(options: int, pattern: int, stream: bytes) -> None:
    selftest_core.check(bytes([options, pattern]) + stream)


def test_atheris_smoke_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(selftest_core.SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gearproto.fuzz.selftest_core",
            "-runs=2000",
            "-max_len=256",
            "-seed=1",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 2000 runs" in result.stderr
