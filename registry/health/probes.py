"""One probe of one check, as a coroutine: TCP connect, or HTTP GET with a 2xx status expected.

A probe returns an ``Outcome``: ``ok`` True or False, and ``output`` (why, for people). A
failure of the prober itself (out of file descriptors, out of memory) is ``ok=None``: it says
nothing about the instance, so it must not count towards critical.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from registry.catalogue.model import CheckKind

from .spec import MAX_OUTPUT_CHARS, ProbeSpec

__all__ = ["Outcome", "probe"]

#: errno values that are the prober's own trouble, not the instance's.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?: ([^\r\n]*))?")
_USER_AGENT = "registry-health"


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool | None  # None: the prober could not probe (a local error); not a result
    output: str


async def probe(spec: ProbeSpec, *, http_read_bytes: int = 4096) -> Outcome:
    """Probe once, within ``spec.timeout_ms`` (a probe that hangs is cut there)."""
    try:
        async with asyncio.timeout(spec.timeout_ms / 1000):
            if spec.kind is CheckKind.TCP:
                return await _tcp(spec)
            return await _http(spec, http_read_bytes)
    except TimeoutError:
        return Outcome(False, f"timed out after {spec.timeout_ms} ms")
    except socket.gaierror as exc:
        return Outcome(False, _cap(f"cannot resolve {spec.host}: {exc.strerror or exc}"))
    except OSError as exc:
        if exc.errno in LOCAL_ERRNOS:
            return Outcome(None, _cap(f"prober error: {exc.strerror or exc}"))
        return Outcome(False, _cap(_describe(exc)))


async def _tcp(spec: ProbeSpec) -> Outcome:
    loop = asyncio.get_running_loop()
    family, address = await _resolve(spec.host, spec.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    finally:
        sock.close()
    return Outcome(True, "connected")


async def _resolve(host: str, port: int) -> tuple[int, tuple]:
    """(family, sockaddr); an address literal without a lookup, a host name through getaddrinfo."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise socket.gaierror(socket.EAI_NONAME, "no address") from None
        family, _, _, _, address = infos[0]
        return family, address
    if literal.version == 6:
        return socket.AF_INET6, (host, port, 0, 0)
    return socket.AF_INET, (host, port)


async def _http(spec: ProbeSpec, read_bytes: int) -> Outcome:
    parts = urlsplit(spec.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    family, address = await _resolve(spec.host, spec.port)
    reader, writer = await asyncio.open_connection(address[0], address[1], family=family, limit=read_bytes)
    try:
        request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: {_USER_AGENT}\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n")
        writer.write(request.encode("ascii", "replace"))
        head = b""
        while b"\n" not in head and len(head) < read_bytes:
            chunk = await reader.read(read_bytes - len(head))
            if not chunk:
                break
            head += chunk
    finally:
        writer.transport.abort()  # NB: no lingering: the status line is all a probe needs
    match = _STATUS_LINE.match(head)
    if match is None:
        if not head:
            return Outcome(False, "connection closed before a response")
        return Outcome(False, _cap(f"not an HTTP response: {head[:40]!r}"))
    code = int(match.group(1))
    reason = (match.group(2) or b"").decode("latin-1").strip()
    return Outcome(200 <= code < 300, _cap(f"HTTP {code} {reason}".rstrip()))


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _cap(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else text[: MAX_OUTPUT_CHARS - 3] + "..."
