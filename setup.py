"""Build hooks that pyproject.toml cannot express: the optional compiled modules.

Everything compiled here is optional; the Python sources stay the reference and are
always installed (``GEARPROTO_PURE_PYTHON=1`` makes the package use them at run time).

* ``gearproto._speedups``: the protocol core's receive loops, hand-written C.
* ``gearproto.server._speedups``: two primitives of the job server's hot path (a
  packet built in one allocation, a socket write that keeps the GIL), hand-written C.
* The job server's hot path (``gearproto.server.core`` and the modules it runs on,
  the runners' shared glue and the asyncio runner), compiled by mypyc from its
  type-annotated sources when mypy is importable at build time (it is in
  ``[build-system] requires``).  ``GEARPROTO_NO_MYPYC=1`` at
  build time skips it.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

# The server modules compiled by mypyc (gearproto/server/_compiled.py lists the same).
SERVER_MODULES = ("core", "_state", "_wire", "_handles", "_runner", "asyncio_runner")


def _mypyc_extensions() -> list[Extension]:
    if os.environ.get("GEARPROTO_NO_MYPYC", "0") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # no mypy at build time: the Python modules are used
        return []
    # Paths through the gearproto/server symlink, so that mypy names the modules
    # gearproto.server.*.
    paths = [f"gearproto/server/{name}.py" for name in SERVER_MODULES]
    extensions: list[Extension] = mypycify(paths, opt_level="3", group_name="gearproto.server")
    return extensions


setup(
    ext_modules=[
        Extension("gearproto._speedups", ["gearproto/_speedups.c"], optional=True),
        Extension("gearproto.server._speedups", ["gearproto/server/_speedups.c"], optional=True),
        *_mypyc_extensions(),
    ]
)
