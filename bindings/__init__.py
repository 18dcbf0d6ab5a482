"""I/O bindings for the gearproto core: ``sync`` (blocking sockets), ``asyncio`` and ``trio``.

Importing this package imports no I/O framework; import the submodule you need.
"""
