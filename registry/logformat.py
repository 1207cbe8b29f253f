"""How every registry process writes its log lines on stderr: one place, used by `registry agent`
(so by `registry up`'s children too) and by the DNS child process.

Under systemd with stderr connected to the journal (``$JOURNAL_STREAM`` names stderr's
``device:inode``, see systemd.exec(5)), each line starts with its syslog priority (``<3>`` error,
``<4>`` warning, ``<6>`` info, ``<7>`` debug, sd-daemon(3)) and carries no timestamp: the journal
keeps its own and filters on the priority. Otherwise lines are human-readable, with a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(message)s"

#: logging level -> syslog priority (sd-daemon(3)); levels between take the next more severe one.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7  # debug


class JournalFormatter(logging.Formatter):
    """``<P>message``; a multi-line record (a traceback) gets the prefix on every line, so the
    journal keeps them at the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(stream: IO[Any] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True if ``$JOURNAL_STREAM`` is set and names ``stream`` (stderr by default). When stderr
    cannot be inspected (not a real file), a set ``$JOURNAL_STREAM`` is trusted."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        fd = (sys.stderr if stream is None else stream).fileno()
        st = os.fstat(fd)
    except (AttributeError, ValueError, OSError):
        return True
    dev, _, ino = value.partition(":")
    try:
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except ValueError:
        return False


def make_formatter(tag: str = "", *, journal: bool | None = None) -> logging.Formatter:
    """The formatter for stderr: journal-style or human-style (``tag`` goes before the message)."""
    if journal is None:
        journal = stderr_is_journal()
    body = f"{tag} %(message)s" if tag else "%(message)s"
    if journal:
        return JournalFormatter(body)
    return logging.Formatter("%(asctime)s %(levelname)s " + body)


def configure(level: int = logging.INFO, *, tag: str = "") -> None:
    """Send the root logger's records to stderr in the right style (replacing its handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(tag))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
