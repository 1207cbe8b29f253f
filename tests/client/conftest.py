"""Fixtures for client tests: fake nodes that are always closed, however a test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .fake_server import FakeServer


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeServer]]:
    """A factory of FakeServer (same arguments), each closed at the end of the test."""
    made: list[FakeServer] = []

    def make(*args: object, **kwargs: object) -> FakeServer:
        server = FakeServer(*args, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
