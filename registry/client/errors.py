"""What a client call raises: ``RegistryError`` and its kinds (docs/client-protocol.md, "Errors")."""

from __future__ import annotations

from collections.abc import Sequence

# Error codes after which the same request goes to another server (docs/client-protocol.md).
RETRY_CODES = frozenset({"no_leader", "timeout", "stopping"})


class RegistryError(Exception):
    """Anything the registry could not do. ``code`` is the protocol's error code when a server
    sent one (``None`` for errors found by the client); ``server`` is the HOST:PORT that sent it."""

    def __init__(self, message: str, *, code: str | None = None, server: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.server = server


class ValidationFailed(RegistryError, ValueError):
    """The arguments are wrong: found by the client before sending (``code`` None, ``field``
    names the argument), or refused by a server (``invalid`` or ``bad_request``). Never retried."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, code=code, server=server)
        self.field = field


class NotFound(RegistryError):
    """A deregister matched no instance (``not_found``)."""


class TransferFailed(RegistryError):
    """A leadership transfer did not happen (``transfer_failed``): the target did not take over
    in time, another node did, or nobody can; the message says which. Not retried."""


class Unavailable(RegistryError):
    """No server did it: none answered before the deadline, or every answer was ``no_leader``,
    ``timeout`` or ``stopping``, or the cluster has lost its quorum (``code`` ``no_leader``).
    ``tried`` lists the servers asked, ``last_error`` the most informative reason ("HOST:PORT:
    why"). For a write, the outcome is unknown: it may have been committed."""

    def __init__(
        self,
        message: str,
        *,
        tried: Sequence[str] = (),
        last_error: str | None = None,
        code: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, code=code, server=server)
        self.tried = tuple(tried)
        self.last_error = last_error


def error_for(code: str, message: str, server: str) -> RegistryError:
    """The exception for an error reply (docs/client-protocol.md, "Reply")."""
    if code in ("invalid", "bad_request"):
        return ValidationFailed(f"{server} refused the request: {message}", code=code, server=server)
    if code == "not_found":
        return NotFound(message, code=code, server=server)
    if code == "transfer_failed":
        return TransferFailed(f"{server}: {message}", code=code, server=server)
    if code in RETRY_CODES:
        return Unavailable(f"{server}: {code}: {message}", code=code, server=server,
                           tried=(server,), last_error=f"{code}: {message}")
    # stale_seq, and any code a newer server may add.
    return RegistryError(f"{server}: {code}: {message}", code=code, server=server)
