"""The gearproto job server: gearmand's semantics, embeddable, sans-IO at its heart.

* :class:`JobServer` runs it: ``async with JobServer() as server`` inside asyncio or
  trio, ``with JobServer() as server`` from synchronous code (background thread).
* :class:`ServerCore` is the server as a pure state machine, for custom runners and
  deterministic tests; :class:`ServerConfig` holds its settings.
* ``gearproto server`` / ``python -m gearproto.server`` is the gearmand-compatible
  command line (:mod:`gearproto.server.cli`).

The scheduler core also exists compiled (built by mypyc when mypy is present at build
time; identical in behaviour): :data:`IMPLEMENTATION` says which one is in use, and
``GEARPROTO_PURE_PYTHON=1`` forces the Python one.
"""

# Imported first: it decides which implementation the modules below load.
from . import _compiled
from ._server import JobServer, new_event_loop
from ._state import PeerInfo
from .core import ServerConfig, ServerCore, Transmit, default_admin_guard
from .storage import JobStore, MemoryStore, StoreBatch, StoredJob

#: ``"compiled"`` when the scheduler core runs as mypyc-compiled C, else ``"python"``.
IMPLEMENTATION = "compiled" if "core" in _compiled.compiled_modules(__name__) else "python"

__all__ = [
    "IMPLEMENTATION",
    "JobServer",
    "JobStore",
    "MemoryStore",
    "PeerInfo",
    "ServerConfig",
    "ServerCore",
    "StoreBatch",
    "StoredJob",
    "Transmit",
    "default_admin_guard",
    "new_event_loop",
]
