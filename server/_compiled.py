"""Which implementation of the server's hot modules is imported: compiled or Python.

The modules in :data:`MODULES` (the scheduler core and its records, wire codec and
handle maker; the runners' shared glue and the asyncio runner) are also built as C
extensions by mypyc when the package is built with mypy available (see
``setup.py``); they behave exactly as their Python
sources, which stay the reference and are always shipped.  A compiled module is
used unless

* ``GEARPROTO_PURE_PYTHON`` is set to anything but ``0`` (as for the core's
  ``gearproto._speedups``), or
* in a source checkout (an editable install: the package is not under
  site-packages), its Python source is newer than it: the build is stale and the
  source wins, so an edit is never silently ignored.  Installed packages are never
  "stale" (an installer writes the files in any order).

Importing this module installs the import hook for its own package; the package's
``__init__`` imports it before anything else.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["MODULES", "compiled_modules", "install", "mypyc_attr"]

_T = TypeVar("_T")

try:
    # Class options for mypyc (read at build time; a no-op when run).
    from mypy_extensions import mypyc_attr
except ImportError:  # pragma: no cover - mypy_extensions comes with mypy

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Callable[[_T], _T]:  # type: ignore[misc]
        return lambda cls: cls


#: The modules mypyc compiles (names inside ``gearproto.server``).
MODULES = ("core", "_state", "_wire", "_handles", "_runner", "asyncio_runner")


def _pure_python_forced() -> bool:
    return os.environ.get("GEARPROTO_PURE_PYTHON", "0") not in ("", "0")


class _SourceFinder:
    """Finds the Python source of a compiled module when it must not be used."""

    def __init__(self, package: str, directory: str) -> None:
        self.package = package
        self.directory = directory
        self.names = {f"{package}.{name}": name for name in MODULES}
        self._use_source: bool | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        name = self.names.get(fullname)
        if name is None:
            return None
        source = os.path.join(self.directory, name + ".py")
        if not os.path.exists(source):
            return None  # a build without sources: the compiled module it is
        if not self._sources_win():
            return None  # the ordinary import picks the compiled module
        return importlib.util.spec_from_file_location(fullname, source)

    def _sources_win(self) -> bool:
        """Whether every module of :data:`MODULES` comes from its source.

        Decided once, for all of them together: they are compiled as one group, and a
        compiled module loads its compiled group mates directly, without asking this
        finder; so one stale module (an edited ``_state.py`` next to an unchanged
        ``core.py``) must send the whole group to its sources, or the edit would be
        silently ignored."""
        if self._use_source is None:
            self._use_source = _pure_python_forced() or any(
                self._stale(name, os.path.join(self.directory, name + ".py")) for name in MODULES
            )
        return self._use_source

    def _stale(self, name: str, source: str) -> bool:
        """True if there is no compiled module, or (in a source checkout) it is older
        than its source."""
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            built = os.path.join(self.directory, name + suffix)
            if os.path.exists(built):
                if _installed(self.directory):
                    return False
                return os.path.getmtime(built) < os.path.getmtime(source)
        return True


def _installed(directory: str) -> bool:
    """True if ``directory`` is inside an installation (site-packages, dist-packages)."""
    parts = os.path.realpath(directory).split(os.sep)
    return "site-packages" in parts or "dist-packages" in parts


def install(package: str, directory: str) -> None:
    """Route the imports of :data:`MODULES` of ``package`` (found in ``directory``)."""
    for finder in sys.meta_path:
        if isinstance(finder, _SourceFinder) and finder.package == package:
            return
    sys.meta_path.insert(0, _SourceFinder(package, directory))


def compiled_modules(package: str) -> list[str]:
    """The modules of :data:`MODULES` that were imported compiled."""
    result = []
    for name in MODULES:
        module = sys.modules.get(f"{package}.{name}")
        if module is not None and not (module.__file__ or "").endswith(".py"):
            result.append(name)
    return result


if __package__:
    install(__package__, os.path.dirname(os.path.abspath(__file__)))
