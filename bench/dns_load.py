"""DNS load benchmark (not a test): queries/s and latency of one DNS process (issue 4, point 8).

    .venv/bin/python bench/dns_load.py [--instances 1,10] [--names 100] [--seconds 5]
                                       [--window 200] [--tool builtin|dnsperf|both] [--json]
    .venv/bin/python bench/dns_load.py --server 127.0.0.1:8600 --names web   # any running server

Without --server it starts a ``DnsProcess`` (the child process a `registry agent` runs) on a free
loopback port for each --instances count, registers --names services (``s0`` ... ``sN``) with
that many instances each through the same entry feed the node uses, and loads it with A queries
for those names, round-robin:

- **builtin**: this process, one UDP socket, --window queries outstanding at all times (a reply
  or a 1 s timeout frees a slot). Reports qps, p50/p99/max latency and loss. NB: it is Python;
  on a two-core machine it and the DNS process get one core each, so it may be the limit.
- **dnsperf** (if installed: ``apt-get install -y dnsperf``): the same names, ``-q`` --window,
  then again limited to half the measured rate (``-Q``) to check the loss there (target < 1%).
  dnsperf 2.10 prints average latency only; run with ``-v`` (one line per answer), its output
  gives p50/p99 too.

bench/dns_cluster.py reuses ``builtin_load`` and ``dnsperf_load`` against a real 3-node cluster.

The responder is ``registry_dns.resolver:Responder`` when it exists, else ``CachedResponder``
below, a stand-in with the designed fast path (a reply encoded once per question and catalogue
version, the query id patched in, answers rotated per query) so that the number measures the
server loop, the process and that path. --responder picks another ("module:callable").
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # noqa: E402

from bench.proc import die_with_parent  # noqa: E402
from bench.window import Latencies, Window  # noqa: E402
from registry.catalogue import CatalogueView, Register, Request, encode_request  # noqa: E402
from registry_dns.process import DnsProcess  # noqa: E402
from registry_dns.settings import DnsSettings  # noqa: E402

HOST = "127.0.0.1"
LOADGENS: set[subprocess.Popen[bytes]] = set()  # dnsperf processes running now, and
DATAFILES: set[str] = set()  # their query files: cleanup() removes both (a thread may be cut short)

def cleanup() -> None:
    """Kill the dnsperf processes still running and remove their query files (on Ctrl-C)."""
    for proc in list(LOADGENS):
        with contextlib.suppress(OSError):
            proc.kill()
    for path in list(DATAFILES):
        with contextlib.suppress(OSError):
            os.unlink(path)
    DATAFILES.clear()


class CachedResponder:
    """Stand-in for the real responder's fast path: one dnslib encoding per question and view.

    Cache key: the query minus its id (flags, question, EDNS all count); value: ``rotations``
    encodings with the answers rotated, used in turn. A miss (or a new view) builds with dnslib.
    """

    def __init__(self, *, domain: str = "registry.", ttl_s: int = 30, negative_ttl_s: int = 5,
                 nameservers: Any = (), max_udp_payload: int = 1232) -> None:
        self.suffix = ".service." + domain.lower().rstrip(".")
        self.ttl_s = ttl_s
        self.view = CatalogueView.empty()
        self.cache: dict[bytes, tuple[list[bytes], list[int]]] = {}
        self.counters = {"hits": 0, "misses": 0, "malformed": 0, "servfail": 0}
        self._servfail: dict[bytes, bytes] = {}

    def update(self, view: CatalogueView) -> None:
        self.view = view
        self.cache = {}

    def answer(self, packet: bytes, *, tcp: bool = False, stale: bool = False) -> bytes | None:
        key = packet[2:]
        if stale:
            self.counters["servfail"] += 1
            tail = self._servfail.get(key)
            if tail is None:
                tail = self._build(packet, servfail=True)
                if tail is None:
                    return None
                self._servfail[key] = tail
            return packet[:2] + tail
        entry = self.cache.get(key)
        if entry is None:
            self.counters["misses"] += 1
            built = self._build_rotations(packet)
            if built is None:
                return None
            entry = self.cache[key] = (built, [0])
        else:
            self.counters["hits"] += 1
        tails, turn = entry
        i = turn[0]
        turn[0] = i + 1 if i + 1 < len(tails) else 0
        return packet[:2] + tails[i]

    def _build(self, packet: bytes, servfail: bool = False) -> bytes | None:
        try:
            request = DNSRecord.parse(packet)
        except Exception:
            self.counters["malformed"] += 1
            return None
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply.pack()[2:]

    def _build_rotations(self, packet: bytes) -> list[bytes] | None:
        try:
            request = DNSRecord.parse(packet)
            qname = request.q.qname
        except Exception:
            self.counters["malformed"] += 1
            return None
        name = str(qname).lower().rstrip(".")
        instances = self.view.instances(name[: -len(self.suffix)]) if name.endswith(self.suffix) else ()
        rotations = []
        for shift in range(max(1, len(instances))):
            reply = request.reply()
            order = instances[shift:] + instances[:shift]
            for instance in order:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(instance.address), ttl=self.ttl_s))
            if not instances:
                reply.header.rcode = RCODE.NXDOMAIN
            rotations.append(reply.pack()[2:])
        return rotations


def default_responder() -> str:
    if importlib.util.find_spec("registry_dns.resolver") is not None:
        return "registry_dns.resolver:Responder"
    return "bench.dns_load:CachedResponder"


def start_dns(names: int, instances: int, responder: str) -> DnsProcess:
    """A DnsProcess on a free port holding ``names`` services of ``instances`` instances each."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    process = DnsProcess(DnsSettings(address=(HOST, 0), max_stale_s=3600, responder=responder))
    process.start(timeout_s=30)
    process.leader_contact(0.0)
    entries = []
    index = 0
    for n in range(names):
        for i in range(instances):
            index += 1
            address = f"10.{n // 256}.{n % 256}.{i + 1}"
            entries.append((index, 0, encode_request(Request("bench", index, Register(f"s{n}", address, 8080)))))
    process.apply(entries)
    deadline = time.monotonic() + 30
    while process.stats().get("applied_index") != index:
        assert time.monotonic() < deadline, f"the DNS process did not apply the catalogue: {process.stats()}"
        process.flush()
        time.sleep(0.05)
    return process


def builtin_load(port: int, qnames: list[str], seconds: float, window: int) -> dict[str, Any]:
    """UDP, one socket, ``window`` outstanding queries; qps and latency percentiles."""
    templates = [DNSRecord.question(q, "A").pack()[2:] for q in qnames]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect((HOST, port))
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    sent = lost = rcode_errors = 0
    next_id = 0
    turn = 0
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    next_expiry = start + 0.25
    send, recv = sock.send, sock.recv
    n_templates = len(templates)
    while True:
        now = clock()
        if now >= end:
            break
        while len(sent_at) < window:
            next_id = (next_id + 1) & 0xFFFF
            if next_id in sent_at:
                continue
            try:
                send(next_id.to_bytes(2, "big") + templates[turn])
            except BlockingIOError:
                break
            sent_at[next_id] = clock()
            turn = turn + 1 if turn + 1 < n_templates else 0
            sent += 1
        select.select([sock], [], [], 0.05)
        while True:
            try:
                data = recv(4096)
            except BlockingIOError:
                break
            t0 = sent_at.pop(int.from_bytes(data[:2], "big"), None)
            if t0 is not None:
                latencies.append(clock() - t0)
                if data[3] & 0x0F:
                    rcode_errors += 1
        if now >= next_expiry:
            next_expiry = now + 0.25
            stale = [qid for qid, t0 in sent_at.items() if now - t0 > 1.0]
            for qid in stale:
                del sent_at[qid]
            lost += len(stale)
    elapsed = clock() - start
    in_flight = len(sent_at)  # sent in the last moments: neither answered nor lost
    sent -= in_flight
    sock.close()
    percentiles = Latencies(latencies)

    def pct(p: float) -> float:
        return round(percentiles.pct(p, empty=0.0), 3)  # type: ignore[arg-type]

    return {
        "tool": "builtin", "seconds": round(elapsed, 2), "window": window, "sent": sent,
        "answered": len(latencies), "lost": lost, "loss_pct": round(100 * lost / sent, 3) if sent else 0.0,
        "qps": round(len(latencies) / elapsed), "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100),
        "error_rcodes": rcode_errors,
    }  # fmt: skip


def dnsperf_load(port: int, qnames: list[str], seconds: float, window: int, max_qps: int | None = None,
                 *, host: str | None = None) -> dict[str, Any]:
    """dnsperf, UDP, ``window`` queries outstanding (and at most ``max_qps`` per second if given).

    Runs it with ``-v``, which prints one line per answer with its latency (dnsperf 2.10 has no
    percentiles of its own; the lines cost it no rate visible above this machine's noise), into a
    temporary file: p50/p99 are nearest-rank over every answer. ``cpu_s`` is dnsperf's own CPU
    time (from wait4), so that a caller can tell when the load generator is the limit.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        DATAFILES.add(f.name)
        f.write("".join(f"{q} A\n" for q in qnames))
        datafile = f.name
    cmd = ["dnsperf", "-s", host or HOST, "-p", str(port), "-d", datafile, "-l", str(seconds), "-q", str(window),
           "-c", "4", "-T", "1", "-t", "1", "-v"]
    if max_qps:
        cmd += ["-Q", str(max_qps)]
    out_file = tempfile.TemporaryFile("w+")
    try:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
        LOADGENS.add(proc)
        watchdog = threading.Timer(seconds + 30, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # NB: wait4, not wait: dnsperf's CPU time too
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            watchdog.cancel()
            LOADGENS.discard(proc)
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        out_file.seek(0)
        latencies: list[float] = []
        summary: list[str] = []
        for line in out_file:
            if line.startswith("> "):
                with contextlib.suppress(ValueError, IndexError):
                    latencies.append(float(line.rsplit(None, 1)[1]))
            elif not line.startswith("["):
                summary.append(line)
        out = "".join(summary)
    finally:
        out_file.close()
        with contextlib.suppress(OSError):  # cleanup() may have removed it
            os.unlink(datafile)
        DATAFILES.discard(datafile)

    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(m.group(1)) if m else float("nan")

    sent, completed, lost = num("Queries sent"), num("Queries completed"), num("Queries lost")
    if sent != sent:  # NaN: no statistics (dnsperf failed)
        raise RuntimeError(f"dnsperf failed (exit status {proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    m = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", out)
    codes = re.search(r"Response codes:\s+(.*)", out)
    rcodes = {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1))} if codes else {}
    percentiles = Latencies(latencies)

    def pct(p: float) -> float | None:
        value = percentiles.pct(p, empty=None)
        return None if value is None else round(value, 3)

    return {
        "tool": "dnsperf", "seconds": seconds, "window": window, "max_qps": max_qps, "sent": int(sent),
        "answered": int(completed), "lost": int(lost), "loss_pct": round(100 * lost / sent, 3) if sent else 0.0,
        "qps": round(num("Queries per second")), "p50_ms": pct(50), "p99_ms": pct(99),
        "avg_ms": round(float(m.group(1)) * 1000, 3) if m else None,
        "max_ms": round(float(m.group(3)) * 1000, 3) if m else None,
        "error_rcodes": sum(n for code, n in rcodes.items() if code != "NOERROR"), "rcodes": rcodes,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }  # fmt: skip


def load(tool: str, port: int, qnames: list[str], seconds: float, window: int, max_qps: int | None = None,
         *, host: str | None = None) -> dict[str, Any]:
    """One DNS load of ``tool`` (builtin or dnsperf; only dnsperf can cap the rate)."""
    if tool == "dnsperf":
        return dnsperf_load(port, qnames, seconds, window, max_qps, host=host)
    assert max_qps is None, "the builtin generator has no rate limit"
    return builtin_load(port, qnames, seconds, window)


def with_server_cpu(pid: int, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], Window]:
    """``run()``'s result, and a `Window` of the DNS server ``pid`` (as "server") around it."""
    window = Window({"server": pid})
    window.open()
    result = run()
    window.close()
    return result, window


def per_cpu_s(answered: int, cpu_s: float) -> int | None:
    """Answers per CPU-second of the server ("queries per core")."""
    return round(answered / cpu_s) if cpu_s > 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", default="1,10", help="instances per name, comma-separated runs")
    parser.add_argument("--names", default="100", help="number of services, or (with --server) names")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=200, help="queries outstanding")
    parser.add_argument("--tool", choices=["builtin", "dnsperf", "both"], default="both")
    parser.add_argument("--server", help="HOST:PORT of a running server instead of a DnsProcess")
    parser.add_argument("--responder", default=None, help="module:callable the DNS process builds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tools = ["builtin", "dnsperf"] if args.tool == "both" else [args.tool]
    if "dnsperf" in tools and shutil.which("dnsperf") is None:
        print("dnsperf not installed (apt-get install -y dnsperf): builtin load only", file=sys.stderr)
        tools = [t for t in tools if t != "dnsperf"]
    responder = args.responder or default_responder()
    results: list[dict[str, Any]] = []
    runs: list[tuple[str, int, list[str], DnsProcess | None]] = []
    if args.server:
        global HOST
        HOST, _, port = args.server.rpartition(":")
        runs.append(("server " + args.server, int(port), [n if n.endswith(".") else n + "." for n in args.names.split(",")], None))
    for count in ([] if args.server else [int(x) for x in args.instances.split(",")]):
        names = int(args.names)
        process = start_dns(names, count, responder)
        runs.append((f"{count} instance(s) per name", process.address[1],
                     [f"s{n}.service.registry." for n in range(names)], process))
    try:
        for label, port, qnames, process in runs:
            loads: list[tuple[str, int | None]] = []
            for tool in tools:
                loads.append((tool, None))
                if tool == "dnsperf":
                    loads.append((tool, -1))  # at half the rate just measured
            for tool, limit in loads:
                if limit == -1:
                    limit = max(1, results[-1]["qps"] // 2)
                run = functools.partial(load, tool, port, qnames, args.seconds, args.window, limit)
                if process is None or not process.pid:
                    result = run()
                else:
                    result, window = with_server_cpu(process.pid, run)
                    cpu = window.cpu_s().get("server", 0.0)
                    # NB: the machine may be shared; CPU time per answer is the robust number
                    result["dns_cpu_s"] = round(cpu, 2)
                    result["qps_per_dns_core"] = per_cpu_s(result["answered"], cpu)
                results.append({"run": label, **result})
            if process is not None:
                process.flush()
                time.sleep(0.6)
                stats = process.stats()
                results.append({"run": label, "tool": "dns-process", "answered": stats.get("answered"),
                                "dropped": stats.get("dropped"), "send_errors": stats.get("send_errors"),
                                "responder": responder})
    finally:
        cleanup()
        for _, _, _, process in runs:
            if process is not None:
                process.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
