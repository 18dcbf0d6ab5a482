"""The version of gearproto (single source)."""

__version__ = "0.1.0"
