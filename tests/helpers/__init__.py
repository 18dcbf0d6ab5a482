"""Shared test helpers (imported by the tests as ``helpers``)."""
