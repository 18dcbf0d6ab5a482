"""Finding a free big-packet buffer in the core's pool, by reference count.

Kept apart from :mod:`gearproto.server.core` on purpose: the core may run compiled
(mypyc), where a loop variable does not own a reference, so the count that means
"nobody else holds this buffer" would differ.  This module is always interpreted,
so the count below is exact in both implementations of the core.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["free_buffer"]


def free_buffer(pool: list[Any], size: int) -> Any:
    """A buffer of ``pool`` that fits ``size`` bytes and that nothing else refers to
    (no job's payload view), or ``None``."""
    for buffer in pool:
        # References: the pool's list, ``buffer`` and getrefcount's argument; a view
        # of the buffer (a payload still in use) adds one.
        if size <= len(buffer) <= 2 * size and sys.getrefcount(buffer) <= 3:
            return buffer
    return None
