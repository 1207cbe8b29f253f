"""Real things for the prober's tests: loopback listeners, an HTTP server whose answer can be
changed, a server that accepts and never answers, and a loop that ticks a Prober as the node does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from registry.catalogue.model import CheckKind, HealthStatus
from registry.health import Prober, ProbeReport, ProbeSpec

HOST = "127.0.0.1"
#: A bound for what a working prober does at once: only a broken one reaches it, so it is generous
#: for a loaded 2-core machine running `pytest -n auto`.
SETTLE_S = 15.0


class Listener:
    """A TCP listener on loopback that accepts and closes every connection, on its own thread."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(1024)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        # NB: shutdown wakes the thread blocked in accept(); close alone would not on Linux.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=SETTLE_S)


class HttpServer:
    """A real http.server on loopback answering GET with ``self.code``; it records what it was asked."""

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.requests: list[tuple[str, str | None]] = []  # (path, Host header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests.append((self.path, self.headers.get("Host")))
                body = b"x" * 10_000  # more than the prober reads
                self.send_response(outer.code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """Accepts connections and reads them, never answering: a hanging service."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed_by_peer = 0
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        self.closed_by_peer += 1

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self._conns:
            conn.close()


def free_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tcp_spec(name: str, port: int, *, revision: int = 1, interval_ms: int = 200, timeout_ms: int = 150,
             failures: int = 3, successes: int = 2, status: HealthStatus = HealthStatus.PASSING,
             service: str = "web") -> ProbeSpec:
    return ProbeSpec(service, name, revision, CheckKind.TCP, HOST, port, "", interval_ms, timeout_ms,
                     failures, successes, status)


def http_spec(name: str, port: int, path: str = "/health", *, interval_ms: int = 200, timeout_ms: int = 150,
              failures: int = 3, successes: int = 2, status: HealthStatus = HealthStatus.PASSING) -> ProbeSpec:
    return ProbeSpec("web", name, 1, CheckKind.HTTP, HOST, port, f"http://{HOST}:{port}{path}", interval_ms,
                     timeout_ms, failures, successes, status)


@contextmanager
def running(prober: Prober) -> Iterator[Prober]:
    prober.start(timeout_s=SETTLE_S)
    try:
        yield prober
    finally:
        prober.stop(timeout_s=5)


def next_report(prober: Prober, timeout_s: float = SETTLE_S, what: str = "a report") -> ProbeReport:
    """Tick the prober as the node loop does until one report arrives; it must be the only one."""
    reports = collect(prober, lambda got: bool(got), timeout_s, what)
    assert len(reports) == 1, f"expected one report, got {reports}"
    return reports[0]


def collect(prober: Prober, done: Callable[[list[ProbeReport]], bool], timeout_s: float = SETTLE_S,
            what: str = "reports") -> list[ProbeReport]:
    got: list[ProbeReport] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s; got {got}; stats {prober.stats()}"
        time.sleep(0.01)
        got.extend(prober.drain())
    return got


def quiet_for(prober: Prober, probes: int, timeout_s: float = SETTLE_S) -> list[ProbeReport]:
    """Tick until the child has made ``probes`` more probes (by its counters); the reports meanwhile."""
    start = stats_when(prober, lambda s: "probes" in s)["probes"]
    got: list[ProbeReport] = []
    stats_when(prober, lambda s: s["probes"] >= start + probes, timeout_s, sink=got)
    return got


def stats_when(prober: Prober, ok: Callable[[dict], bool], timeout_s: float = SETTLE_S,
               sink: list[ProbeReport] | None = None) -> dict:
    """The prober's stats once ``ok(stats)`` holds (reports drained meanwhile go to ``sink``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = prober.stats()
        if ok(stats):
            return stats
        assert time.monotonic() < deadline, f"stats never satisfied the condition within {timeout_s} s: {stats}"
        time.sleep(0.01)
        reports = prober.drain()
        if sink is not None:
            sink.extend(reports)
        else:
            assert not reports, f"unexpected reports {reports}"
