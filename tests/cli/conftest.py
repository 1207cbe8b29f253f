"""Fixtures for CLI tests: the client tests' fake nodes (always closed, however a test ends)."""

from ..client.conftest import fake  # noqa: F401 (a fixture, found by pytest through this import)
