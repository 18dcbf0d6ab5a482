"""The job server's differential conformance suite and its test helpers."""
