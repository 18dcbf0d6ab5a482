"""The gearproto job server (embeddable, gearmand-compatible)."""
