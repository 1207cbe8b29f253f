"""systemd's service notification protocol (sd_notify(3)), written against its documented form.

A notification is one datagram of newline-separated ``KEY=VALUE`` lines sent on an ``AF_UNIX``
``SOCK_DGRAM`` socket to the path in ``$NOTIFY_SOCKET``; a leading ``@`` names a socket in the
abstract namespace (the ``@`` becomes a NUL byte). Outside systemd (no ``$NOTIFY_SOCKET``) every
call is a no-op. A failed send never raises: it is logged once and later sends are still tried
(systemd may come back, e.g. after a daemon-reexec).

``$WATCHDOG_USEC`` is the watchdog timeout in microseconds; ``$WATCHDOG_PID``, if set, names the
process it is meant for (a child that inherited the environment must not ping).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("registry.sdnotify")


def watchdog_interval_s(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds; None when there is none
    (unset, unparsable, zero, or ``$WATCHDOG_PID`` names another process)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "").strip()
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # the abstract namespace
    if value.startswith("/"):
        return value
    return None  # sd_notify(3) accepts only absolute paths and abstract names (vsock is not used here)


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET`` (read once, at construction); a no-op without it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._raw = raw
        self._address = _address(raw)
        self._socket: socket.socket | None = None
        self._warned = False
        if raw and self._address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: not an absolute path or @abstract name", raw)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``lines``; True if it was sent. Never raises."""
        if self._address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)  # a full receive queue must not stall the loop
            self._socket.sendto(data, self._address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s (further failures are not logged)",
                            self._raw, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
