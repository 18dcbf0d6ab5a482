"""The compiled server core (mypyc) behaves exactly like its Python source.

Differential tests: tests/server_core_trace.py feeds the same seeded random traffic
(every hot packet type, malformed and refused packets, admin lines, big packets
through the large-frame path, EOFs, disconnects, timers, splits at random bytes) to a
ServerCore and prints every output; the compiled and the Python implementation
(``GEARPROTO_PURE_PYTHON=1``) must print the same lines.  Also: the variable selects
the implementation, and a compiled module older than its source is not used.
"""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gearproto
import gearproto.server
from gearproto.server import _compiled

TESTS = Path(__file__).parent
TRACE = TESTS / "server_core_trace.py"

pytestmark = pytest.mark.timeout(300)


def _trace(seed: int, steps: int, pure: bool) -> list[str]:
    env = {**os.environ, "GEARPROTO_PURE_PYTHON": "1" if pure else "0"}
    out = subprocess.run(
        [sys.executable, str(TRACE), str(seed), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0] == ("python" if pure else gearproto.server.IMPLEMENTATION)
    return lines[1:]


def _needs_compiled() -> None:
    if gearproto.server.IMPLEMENTATION != "compiled":
        pytest.skip("the server core is not compiled in this installation")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_random_traffic_gets_the_same_answers(seed: int) -> None:
    _needs_compiled()
    compiled = _trace(seed, 3000, pure=False)
    python = _trace(seed, 3000, pure=True)
    for index, (got, want) in enumerate(zip(compiled, python, strict=True)):
        assert got == want, f"line {index}: compiled {got[:200]} != python {want[:200]}"


def test_the_trace_covers_what_it_claims() -> None:
    """The generated traffic reaches the paths the comparison is meant to cover."""
    lines = [json.loads(line) for line in _trace(1, 3000, pure=True)]
    outs = [line for line in lines if line[0] == "out"]
    assert len(outs) > 500
    assert any(line[4] for line in outs), "no connection was ever closed"
    assert any(len(line[3]) == 16 for line in outs), "no big output (large frames)"
    # JOB_ASSIGN_UNIQ, WORK_COMPLETE forwarded, ERROR, NOOP, admin text all appear.
    blobs = "".join(line[3] for line in outs)
    for ptype in (31, 13, 19, 6):
        assert ("00524553" + f"{ptype:08x}") in blobs, f"no packet type {ptype}"
    assert "4f4b0a" in blobs or "4552522" in blobs, "no admin reply"
    assert max(line[2] for line in lines if line[0] == "state") > 0, "no job ever held"


def test_server_suites_pass_on_the_python_core_too() -> None:
    """This installation runs the compiled core; its Python source must pass too."""
    _needs_compiled()
    suites = ["test_server_core.py", "test_server_core_regressions.py", "test_server_close.py"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
        + [str(TESTS / suite) for suite in suites],
        env={**os.environ, "GEARPROTO_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        timeout=280,
        cwd=TESTS.parent,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout


@pytest.mark.parametrize("value", ["1", "yes"])
def test_gearproto_pure_python_forces_the_python_core(value: str) -> None:
    env = {**os.environ, "GEARPROTO_PURE_PYTHON": value}
    probe = (
        "import gearproto.server as s, gearproto.server.core as c;"
        "print(s.IMPLEMENTATION, c.__file__.endswith('.py'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["python", "True"], out.stderr


def _fake_build(directory: Path) -> None:
    """Every compiled module's source (older) and an extension file (newer)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in _compiled.MODULES:
        source, built = directory / f"{name}.py", directory / (name + suffix)
        source.write_text("X = 1\n")
        built.write_bytes(b"")
        os.utime(source, (1000, 1000))
        os.utime(built, (2000, 2000))


def test_a_stale_compiled_module_is_not_used(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    source = tmp_path / "core.py"
    if os.environ.get("GEARPROTO_PURE_PYTHON", "0") in ("", "0"):
        fresh = _compiled._SourceFinder("pkg", str(tmp_path))
        assert fresh.find_spec("pkg.core", None) is None  # fresh: the compiled one
    os.utime(source, (3000, 3000))
    spec = _compiled._SourceFinder("pkg", str(tmp_path)).find_spec("pkg.core", None)
    assert spec is not None  # edited after the build: the source
    assert spec.origin == str(source)
    finder = _compiled._SourceFinder("pkg", str(tmp_path))
    assert finder.find_spec("pkg.storage", None) is None  # not a compiled module
    os.utime(source, (1000, 1000))
    (tmp_path / ("core" + importlib.machinery.EXTENSION_SUFFIXES[0])).unlink()
    spec = _compiled._SourceFinder("pkg", str(tmp_path)).find_spec("pkg.core", None)
    assert spec is not None  # not built at all: the source
    assert spec.origin == str(source)


def test_one_stale_module_sends_the_whole_group_to_its_sources(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    os.utime(tmp_path / "_state.py", (3000, 3000))
    finder = _compiled._SourceFinder("pkg", str(tmp_path))
    for name in _compiled.MODULES:
        spec = finder.find_spec(f"pkg.{name}", None)
        assert spec is not None, name
        assert spec.origin == str(tmp_path / f"{name}.py")


def test_an_edited_group_mate_is_not_ignored_by_the_compiled_core(tmp_path: Path) -> None:
    """The real build: a copy of the installed package with ``_state.py`` edited
    after the build imports every server module from its source."""
    _needs_compiled()
    package = Path(gearproto.__file__).parent
    copy = tmp_path / "gearproto"
    shutil.copytree(package, copy, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    for extension in copy.rglob("*.so"):
        os.utime(extension, (2000, 2000))
    for source in copy.rglob("*.py"):
        os.utime(source, (1000, 1000))
    os.utime(copy / "server" / "_state.py", (3000, 3000))
    probe = (
        "import sys, gearproto.server as s, gearproto.server.core;"
        "from gearproto.server._compiled import MODULES;"
        "print(s.IMPLEMENTATION, *sorted(m.rsplit('.', 1)[1] for m in sys.modules"
        " if m.startswith('gearproto.server.') and m.rsplit('.', 1)[1] in MODULES"
        " and sys.modules[m].__file__.endswith('.so')))"
    )
    # (The hand-written gearproto.server._speedups is not in the mypyc group: it
    # stays compiled, and its Python twin in _wire is chosen only by
    # GEARPROTO_PURE_PYTHON; see tests/test_server_speedups.py.)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GEARPROTO_PURE_PYTHON": "0"}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split() == ["python"], out.stderr


def test_the_compiled_list_matches_the_build() -> None:
    tree = ast.parse((TESTS.parent / "setup.py").read_text())
    (listed,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "SERVER_MODULES" for t in node.targets)
    ]
    assert tuple(listed) == _compiled.MODULES
