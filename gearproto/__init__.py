"""gearproto: the Gearman job-queue protocol as a sans-IO state machine.

The core (this package) parses and produces every Gearman binary packet and admin
text line for both ends of a connection, and does no I/O at all: no sockets, threads,
clocks or event loops.  Bindings (``gearproto.bindings``), a job server
(``gearproto.server``) and a fuzzer (``gearproto.fuzz``) are built on it.

Packet events live in :mod:`gearproto.events`, admin commands and replies in
:mod:`gearproto.admin`.  The receive loops also exist compiled (the optional
``gearproto._speedups`` extension, identical in behaviour); :data:`IMPLEMENTATION`
says which ones are in use, and ``GEARPROTO_PURE_PYTHON=1`` forces the Python ones.
"""

from . import admin, events
from ._codec import parse_int, raw_packet
from ._connection import (
    IMPLEMENTATION,
    NEED_DATA,
    Connection,
    ConnectionState,
    Limits,
    NeedData,
    Side,
    WorkerState,
)
from ._spec import (
    HEADER_SIZE,
    PACKETS,
    REQ,
    RES,
    Direction,
    FieldKind,
    FieldSpec,
    PacketSpec,
    PacketType,
    Priority,
)
from ._version import __version__
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import packet_type

__all__ = [
    "HEADER_SIZE",
    "IMPLEMENTATION",
    "NEED_DATA",
    "PACKETS",
    "REQ",
    "RES",
    "Connection",
    "ConnectionState",
    "Direction",
    "ErrorCode",
    "FieldKind",
    "FieldSpec",
    "Limits",
    "LocalProtocolError",
    "NeedData",
    "PacketSpec",
    "PacketType",
    "Priority",
    "ProtocolError",
    "RemoteProtocolError",
    "Side",
    "WorkerState",
    "__version__",
    "admin",
    "events",
    "packet_type",
    "parse_int",
    "raw_packet",
]
