"""What the node loop needs from a transport, whatever carries the bytes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .codec import Wire

__all__ = ["Transport", "TransportError"]


class TransportError(Exception):
    """The transport cannot be set up or used (a busy address, a closed transport, bad peers).

    Never raised for what peers send: bad input from the network is dropped and counted."""


class Transport(Protocol):
    def send(self, messages: Iterable[Wire]) -> None:
        """Hand messages to the network without blocking; undeliverable ones are dropped (Raft retries)."""

    def drain(self, limit: int = 10_000) -> list[Wire]:
        """Every message received so far (at most `limit` frames' worth), without blocking."""

    def close(self) -> None:
        """Release the sockets; idempotent."""
