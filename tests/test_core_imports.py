"""The core is sans-IO: importing it loads no I/O, concurrency or clock module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.core_impl import core_impl  # noqa: F401  (the fixture)

import gearproto

pytestmark = pytest.mark.usefixtures("core_impl")

FORBIDDEN = ("socket", "select", "selectors", "asyncio", "trio", "threading", "ssl", "time")

_PROBE = """
import json, sys
before = set(sys.modules)
import gearproto, gearproto.admin, gearproto.events, gearproto.errors
loaded = sorted(set(sys.modules) - before)
public = sorted(n for n in dir(gearproto) if not n.startswith("_"))
print(json.dumps([loaded, public]))
"""


def test_importing_the_core_loads_no_io_module(core_impl: str) -> None:  # noqa: F811
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, check=True
    )
    loaded, _ = json.loads(result.stdout)
    assert "gearproto._connection" in loaded  # the probe did import the core
    # GEARPROTO_PURE_PYTHON=1 keeps the compiled module from being imported at all.
    assert ("gearproto._speedups" in loaded) is (core_impl == "c")
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN or m.startswith("_socket")]
    assert bad == []
    # The core's own modules do not come from the bindings, server or fuzzer either.
    assert not [m for m in loaded if m.startswith(("gearproto.bindings", "gearproto.server"))]


def test_public_names_are_exported() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, check=True
    )
    _, public = json.loads(result.stdout)
    for name in gearproto.__all__:
        assert hasattr(gearproto, name), name
    # Everything public at the top level is in __all__, except the submodules.
    assert set(public) - set(gearproto.__all__) <= {"admin", "events", "errors"}
    for module in (gearproto.admin, gearproto.events, gearproto.errors):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
