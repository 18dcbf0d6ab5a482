"""Job handles: unguessable by default, gearmand's ``<prefix>:<n>`` on request."""

from __future__ import annotations

import os
from typing import Final

__all__ = ["HandleMaker"]

# Random bytes per handle: 80 bits cannot be guessed by a peer that has seen others.
_TOKEN_BYTES: Final = 10
_POOL_HANDLES: Final = 1024


class HandleMaker:
    """Makes a new job handle per created job.

    With a ``prefix`` the handles are gearmand's ``<prefix>:<n>``, ``n`` counting
    from 1 (tests and tools that expect gearmand's style ask for it with
    ``--job-handle-prefix``).  Without one a handle is ``H:`` plus 20 random hex
    digits, so that knowing one handle tells nothing about the others (handles
    are the only credential that ``cancel job`` and GET_STATUS ask for).
    """

    __slots__ = ("_count", "_next", "_pool", "_prefix")

    def __init__(self, prefix: bytes | None = None) -> None:
        if prefix is not None and len(prefix) > 40:
            raise ValueError("the job handle prefix must be at most 40 bytes")
        if prefix is not None and (b"\0" in prefix or not prefix.isascii()):
            raise ValueError("the job handle prefix must be printable ASCII")
        self._prefix = prefix + b":" if prefix is not None else None
        self._count = 0
        #: Random handles made ahead, used from index ``_next`` on.
        self._pool: list[bytes] = []
        self._next = 0

    def __call__(self) -> bytes:
        if self._prefix is not None:
            self._count += 1
            return self._prefix + b"%d" % self._count
        index = self._next
        pool = self._pool
        if index >= len(pool):
            # One urandom call per thousand handles keeps the syscall off the hot path,
            # and the handles are made in one go (a list index per job after that).
            digits = os.urandom(_TOKEN_BYTES * _POOL_HANDLES).hex().encode()
            width = 2 * _TOKEN_BYTES
            pool = self._pool = [
                b"H:" + digits[at : at + width] for at in range(0, len(digits), width)
            ]
            index = 0
        self._next = index + 1
        return pool[index]
