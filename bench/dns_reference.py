"""DNS reference (not a test): the registry's DNS process and dnsmasq side by side, same load.

    .venv/bin/python bench/dns_reference.py [--names 100] [--seconds 5] [--rounds 2] [--json]

Starts a bare registry DNS process (bench/dns_load.py's `start_dns`: the child a `registry
agent` runs, fed a catalogue of --names services with one instance each, no cluster) and a
dnsmasq (Debian's `dnsmasq-base`, /usr/sbin/dnsmasq) answering the same names with the same
addresses from a hosts file (`--no-resolv`: authoritative-only, no upstream), each on its own
free loopback port. Then, --rounds times, alternating which goes first, the same dnsperf load
(bench/dns_load.py's `dnsperf_load`: --window queries outstanding, A queries round-robin over the
names) against each for --seconds, sampling the server's CPU over the window: q/s, p50/p99 and
**queries per CPU-second of the server** (the issue's "queries per core"), and the ratio
registry/dnsmasq. dnsmasq is a C server with a cache: it is the bar to compare against, not a
rival. Without dnsperf the builtin Python generator is used (then the generator, not the
server, is usually the limit). Table or --json; the servers are always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import dns_load  # noqa: E402
from bench.cluster import pick_ports  # noqa: E402
from bench.proc import die_with_parent  # noqa: E402
from bench.script import add_options, machine_info, main_frame, new_parser, reporter  # noqa: E402

DOMAIN = "registry"


progress = reporter("dns_reference")


def find_dnsmasq() -> str | None:
    return shutil.which("dnsmasq") or next((p for p in ("/usr/sbin/dnsmasq",) if Path(p).exists()), None)


def start_dnsmasq(binary: str, names: int, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """dnsmasq answering s<n>.service.registry A with the addresses start_dns registers."""
    hosts = root / "hosts"
    hosts.write_text("".join(f"10.{n // 256}.{n % 256}.1 s{n}.service.{DOMAIN}\n" for n in range(names)))
    port = pick_ports(1, udp=True)[0]
    cmd = [binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
           f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--cache-size=10000",
           "--local-ttl=30", f"--local=/{DOMAIN}/", "--user=root", "--pid-file=", "--log-facility=-",
           "--conf-file=/dev/null"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError(f"dnsmasq exited: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
    return proc, port


def measure(pid: int, port: int, qnames: list[str], seconds: float, window: int, tool: str) -> dict[str, Any]:
    r, w = dns_load.with_server_cpu(pid, lambda: dns_load.load(tool, port, qnames, seconds, window))
    cpu = w.cpu_s().get("server", 0.0)
    r["server_cpu_pct"] = w.pct(cpu)
    r["qps_per_cpu_s"] = dns_load.per_cpu_s(r["answered"], cpu)
    return r


def print_table(r: dict[str, Any]) -> None:
    c = r["config"]
    print(f"DNS side by side: {c['names']} names, {c['tool']} with {c['window']} queries outstanding, "
          f"{c['seconds']:g} s x {c['rounds']} rounds; load average {r['machine']['loadavg_before'][0]:g}")
    print(f"{'server':<12}{'round':>6}{'q/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'loss %':>8}{'server CPU':>12}"
          f"{'q per CPU-s':>13}")
    for row in r["runs"]:
        print(f"{row['server']:<12}{row['round']:>6}{row['qps']:>9}{row['p50_ms'] or 0:>9.3f}{row['p99_ms'] or 0:>9.3f}"
              f"{row['loss_pct']:>8.2f}{row['server_cpu_pct']:>11.0f}%{row['qps_per_cpu_s'] or 0:>13}")
    s = r["summary"]
    print(f"medians: registry {s['registry_qps']} q/s, {s['registry_qps_per_cpu_s']} q per CPU-s; dnsmasq "
          f"{s['dnsmasq_qps']} q/s, {s['dnsmasq_qps_per_cpu_s']} q per CPU-s; ratio registry/dnsmasq: q/s "
          f"x{s['qps_ratio']}, q per CPU-s x{s['qps_per_cpu_s_ratio']}")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(server: str, key: str) -> float | None:
        values = [row[key] for row in runs if row["server"] == server and row.get(key) is not None]
        return round(statistics.median(values)) if values else None

    out: dict[str, Any] = {}
    for server in ("registry", "dnsmasq"):
        for key in ("qps", "qps_per_cpu_s", "p99_ms"):
            out[f"{server}_{key}"] = med(server, key)
    for key in ("qps", "qps_per_cpu_s"):
        a, b = out[f"registry_{key}"], out[f"dnsmasq_{key}"]
        out[f"{key}_ratio"] = round(a / b, 2) if a and b else None
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    tool = args.tool if args.tool != "auto" else ("dnsperf" if shutil.which("dnsperf") else "builtin")
    binary = find_dnsmasq()
    if binary is None:
        raise RuntimeError("dnsmasq not found: apt-get install -y dnsmasq-base")
    root = Path(tempfile.mkdtemp(prefix="registry-bench-dnsref-"))
    result: dict[str, Any] = {"benchmark": "dns_reference", "format": 1, "machine": machine_info(root),
                              "config": {"names": args.names, "seconds": args.seconds, "rounds": args.rounds,
                                         "window": args.window, "tool": tool, "dnsmasq": binary}}
    qnames = [f"s{n}.service.{DOMAIN}" for n in range(args.names)]
    registry = dnsmasq = None
    try:
        registry = dns_load.start_dns(args.names, 1, dns_load.default_responder())
        dnsmasq, dnsmasq_port = start_dnsmasq(binary, args.names, root)
        servers = {"registry": (registry.pid, registry.address[1]), "dnsmasq": (dnsmasq.pid, dnsmasq_port)}
        runs = []
        for rnd in range(1, args.rounds + 1):
            order = ["registry", "dnsmasq"] if rnd % 2 else ["dnsmasq", "registry"]
            for server in order:
                pid, port = servers[server]
                row = {"server": server, "round": rnd, **measure(pid, port, qnames, args.seconds, args.window, tool)}
                progress(f"{server} round {rnd}: {row['qps']} q/s, {row['qps_per_cpu_s']} q per CPU-s")
                runs.append(row)
        result["runs"] = runs
        result["summary"] = summarise(runs)
    finally:
        dns_load.cleanup()
        if registry is not None:
            registry.stop()
        if dnsmasq is not None:
            dnsmasq.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                dnsmasq.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = new_parser(__doc__)
    p.add_argument("--names", type=int, default=100, help="names (services of one instance) (default 100)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating which server goes first (default 2)")
    p.add_argument("--window", type=int, default=200, help="queries outstanding (default 200)")
    p.add_argument("--tool", choices=["auto", "dnsperf", "builtin"], default="auto")
    add_options(p, cluster=False)
    return main_frame(p.parse_args(argv), print_table, run, progress, interrupted="interrupted")


if __name__ == "__main__":
    sys.exit(main())
