"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.procs import GEARMAND, ServerProcess, gearmand


@pytest.fixture
def gearmand_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh real gearmand (1.1.20 on Debian) on a free 127.0.0.1 port."""
    if GEARMAND is None:
        if os.environ.get("GEARPROTO_REQUIRE_GEARMAND"):
            pytest.fail("gearmand is required (GEARPROTO_REQUIRE_GEARMAND is set) but missing")
        pytest.skip("gearmand is not installed")
    with gearmand(tmp_path) as server:
        yield server
