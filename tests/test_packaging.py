"""The distribution's layout: the top-level folders install as gearproto.* everywhere.

bindings/, server/ and fuzz/ sit beside gearproto/ in the repository and are mapped
into the gearproto namespace by pyproject.toml; these tests build the real wheel and
install it into a fresh virtual environment to show the mapping holds outside the
source tree.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"gearproto.bindings": "bindings", "gearproto.server": "server", "gearproto.fuzz": "fuzz"}


def _config() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        setuptools: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return setuptools


def _source_packages() -> set[str]:
    found = {"gearproto"}
    for package, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    return {p for p in found if "__pycache__" not in p}


def test_every_source_package_is_listed_in_pyproject() -> None:
    config = _config()
    listed = set(config["packages"])  # type: ignore[call-overload]
    assert _source_packages() <= listed, "add new subpackages to [tool.setuptools] packages"
    package_dir = config["package-dir"]
    for package, folder in MAPPED.items():
        assert package_dir[package] == folder  # type: ignore[index]


def test_symlinks_let_tools_see_the_mapped_packages() -> None:
    # mypy and `python -m pytest` resolve gearproto.server through these links.
    for folder in MAPPED.values():
        link = ROOT / "gearproto" / folder
        assert link.is_symlink()
        assert link.resolve() == (ROOT / folder).resolve()


def test_wheel_installs_and_imports_outside_the_tree(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("gearproto-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gearproto/py.typed" in names
    for package in [*MAPPED, "gearproto"]:
        assert package.replace(".", "/") + "/__init__.py" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import gearproto, gearproto.bindings, gearproto.server, gearproto.fuzz, sys;"
        "print(gearproto.__version__, gearproto.server.__file__)"
    )
    out = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert str(venv) in out.stdout, "the import must come from the installed wheel"
