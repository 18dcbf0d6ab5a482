"""Run core tests against both implementations of the receive loops.

``gearproto.Connection`` parses with compiled loops (``gearproto._speedups``) when the
extension is built, else with the Python loops, which are the reference.  A test
module opts in with::

    from helpers.core_impl import core_impl  # noqa: F401  (the fixture)
    pytestmark = pytest.mark.usefixtures("core_impl")

and each of its tests then runs twice, ``[python]`` and ``[c]``.  The ``c`` run is
skipped when the extension is not built (tests/test_core_speedups.py fails instead
when a compiler was there to build it).
"""

from __future__ import annotations

import pytest

from gearproto import _connection

IMPLEMENTATIONS = ("python", "c")


def compiled_available() -> bool:
    """Whether the compiled loops were imported (and not disabled by the environment)."""
    return _connection.IMPLEMENTATION == "c"


@pytest.fixture(params=IMPLEMENTATIONS)
def core_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """New connections use the implementation named by the parameter."""
    name: str = request.param
    if name == "python":
        monkeypatch.setattr(_connection, "_speedups", None)
        # Subprocesses started by the test (demo, examples) use it too.
        monkeypatch.setenv("GEARPROTO_PURE_PYTHON", "1")
    elif not compiled_available():
        pytest.skip("the compiled accelerator (gearproto._speedups) is not built")
    else:
        monkeypatch.delenv("GEARPROTO_PURE_PYTHON", raising=False)
    return name
