"""Exceptions raised by the protocol core, and the ERROR codes servers send.

Two kinds of mistakes exist on a connection, and they get two classes so that a caller
never has to guess who is at fault:

* :class:`LocalProtocolError`: *you* asked the core to do something the protocol forbids
  (send a reply nobody asked for, a NUL inside a function name, WORK_COMPLETE for a job
  you do not hold, ...).  It is raised by :meth:`Connection.send` before any byte is
  produced, so nothing reached the wire and the connection is unchanged.
* :class:`RemoteProtocolError`: the *peer* broke the protocol.  It is raised by
  :meth:`Connection.next_event`.  ``hint`` is the reply a gearmand-compatible server
  sends for it (an ERROR packet or an ``ERR`` admin line) and ``fatal`` says whether the
  stream can still be trusted: a non-fatal error consumed exactly one bad packet or
  line, and you may keep calling ``next_event()``; after a fatal one the connection
  must be closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .admin import AdminError
    from .events import Error

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ErrorCode:
    """The ``code`` values of ERROR packets (gearmand's ``gearman_return_t`` names).

    Plain ``bytes`` constants, because a server may send any code and the core
    never rejects an unknown one.
    """

    INVALID_MAGIC = b"INVALID_MAGIC"
    INVALID_COMMAND = b"INVALID_COMMAND"
    INVALID_PACKET = b"INVALID_PACKET"
    INVALID_ARGUMENT = b"INVALID_ARGUMENT"
    ARGUMENT_TOO_LARGE = b"ARGUMENT_TOO_LARGE"
    QUEUE_ERROR = b"QUEUE_ERROR"
    UNKNOWN_OPTION = b"UNKNOWN_OPTION"
    JOB_NOT_FOUND = b"JOB_NOT_FOUND"
    TOO_MANY_ARGS = b"TOO_MANY_ARGS"
    PERMISSION_DENIED = b"PERMISSION_DENIED"
    SERVER_BUSY = b"SERVER_BUSY"
    TIMEOUT = b"TIMEOUT"


class ProtocolError(Exception):
    """Base class of the core's protocol errors; never raised itself."""

    def __init__(
        self,
        message: str,
        *,
        hint: Error | AdminError | None = None,
        fatal: bool = True,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError instead")
        super().__init__(message)
        #: The reply a server sends for this error (ERROR packet or admin ``ERR`` line).
        self.hint = hint
        #: ``False`` if exactly one packet or line was rejected and the stream goes on.
        self.fatal = fatal

    @property
    def code(self) -> bytes | None:
        """The error code of :attr:`hint`, if there is one."""
        return None if self.hint is None else self.hint.code


class LocalProtocolError(ProtocolError):
    """The caller tried to send something the protocol forbids; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""
