"""The compiled receive loops of :class:`gearproto.Connection` (optional accelerator)."""

from typing import Any

#: Version of the tables :func:`configure` expects.
API_VERSION: int

def configure(tables: dict[str, Any], /) -> dict[str, Any]:
    """Hand over the tables of ``gearproto._connection``; called once at its import.

    Returns the compiled methods to install on ``Connection``, by name.
    """

def parse_requests(conn: Any, src: bytes, /) -> int:
    """``Connection._parse_requests``, compiled; returns the position reached."""

def parse_responses(conn: Any, src: bytes, /) -> int:
    """``Connection._parse_responses``, compiled; returns the position reached."""
