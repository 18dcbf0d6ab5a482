"""The plain types of a connection: its side, states, limits and the NEED_DATA sentinel."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ._spec import FieldKind

__all__ = [
    "NEED_DATA",
    "ConnectionState",
    "Limits",
    "NeedData",
    "Side",
    "WorkerState",
]


class Side(enum.Enum):
    """Which end of the connection a :class:`Connection` plays."""

    #: Sends ``\\0REQ`` packets and admin commands: a client, a worker, or both.
    CLIENT = "client"
    #: Sends ``\\0RES`` packets and admin replies: a server's view of one peer.
    SERVER = "server"


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Connection.next_event` when more bytes are needed.
NEED_DATA: Final = NeedData.NEED_DATA


class ConnectionState(enum.Enum):
    """The life cycle of a :class:`Connection`."""

    #: Events flow both ways.
    OPEN = "open"
    #: The peer closed the connection and every event before that was read.
    CLOSED = "closed"
    #: A fatal protocol error happened (or a write failed); close the connection.
    ERROR = "error"


class WorkerState(enum.Enum):
    """What the worker role of a connection is doing (:attr:`Connection.worker_state`)."""

    #: Not waiting for a job, not sleeping, holding no job.
    IDLE = "idle"
    #: A GRAB_JOB* is waiting for its reply.
    GRABBING = "grabbing"
    #: PRE_SLEEP was sent and no NOOP (or GRAB_JOB*) has followed.
    SLEEPING = "sleeping"
    #: Holding at least one assigned job.
    WORKING = "working"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits enforced on everything sent and received.

    The packet size is checked on the size declared in the header, before any of
    the body is buffered.  The defaults follow gearmand and libgearman.

    Attributes:
        max_packet_size: Largest packet body accepted or sent; also bounds an admin
            listing (all its rows) and one admin reply line read by a client.
        max_function: Longest function name (libgearman's limit is 512).
        max_unique: Longest unique id (gearmand: 64).
        max_handle: Longest job handle (gearmand: 64 including its NUL).
        max_line: Longest admin command line a server reads, line ending included
            (gearmand's receive buffer: 8 KiB).
        max_text: Longest other text field (option names, client ids, error texts).
        max_number: Most characters in a number field a server accepts from its peer
            and a client sends (gearmand refuses timeouts over 20 characters).
    """

    max_packet_size: int = 64 * 1024 * 1024
    max_function: int = 512
    max_unique: int = 64
    max_handle: int = 64
    max_line: int = 8192
    max_text: int = 8192
    max_number: int = 20

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")
        if self.max_packet_size > 0xFFFFFFFF:
            raise ValueError(
                f"Limits.max_packet_size cannot exceed 2**32 - 1 (the size field is"
                f" 32 bits), not {self.max_packet_size}"
            )

    def for_kind(self, kind: FieldKind) -> int:
        """The limit that applies to fields of ``kind``."""
        return {
            FieldKind.FUNCTION: self.max_function,
            FieldKind.UNIQUE: self.max_unique,
            FieldKind.HANDLE: self.max_handle,
            FieldKind.DATA: self.max_packet_size,
            FieldKind.NUMBER: self.max_number,
            FieldKind.FLAG: self.max_number,
            FieldKind.TEXT: self.max_text,
        }[kind]
