"""The whole performance suite in one command: every benchmark, one table, one JSON object.

    .venv/bin/python -m bench.all [--quick] [--json] [--out FILE] [--only NAMES] [--skip NAMES]
    .venv/bin/python -m bench.all --show FILE          # the table of a saved result
    make bench / make bench-quick                     # the same, full or --quick, JSON in bench-result.json

Runs, one after the other, each benchmark script of bench/ with --json in its own process (each
starts its own fresh durable clusters through bench/cluster.py), keeps their JSON, and prints
one summary table against the issue's targets, with etcd's numbers as ratios:

| step          | script              | full profile                                  | --quick                      |
|---------------|---------------------|-----------------------------------------------|------------------------------|
| writes        | writes.py           | 1000 sequential writes; 16/64/256 clients 10 s | 300 writes; 16/64/256, 4 s   |
| etcd          | compare_etcd.py     | 1/16/64/256 clients, 5 s, 2 rounds             | 1/16/64/256, 3 s, 1 round    |
| failover      | failover.py         | 7 leader kills                                 | 5 kills                      |
| elections     | elections.py        | 64 clients for 600 s, no faults                | 64 clients for 45 s          |
| dns           | dns_cluster.py      | 1 and 10 instances, 5 s phases                 | 1 instance, 3 s phases       |
| dns_reference | dns_reference.py    | registry DNS vs dnsmasq, 5 s, 2 rounds         | 3 s, 1 round                 |
| restart       | restart.py          | 10,000 and 100,000 instances                   | 10,000 instances             |
| health        | health.py           | 10,000 TCP checks, 1,000 TTL, 3 rounds         | 2,000 TCP, 200 TTL, 2 rounds |

A full run takes about 45-55 minutes (restart's 100,000 registrations and the 10-minute
election run dominate; health about 8); --quick about 10-12. A step that fails is reported as such and the
others still run. Progress (each script's own) goes to stderr; the table (or with --json the
JSON) to stdout; --out also writes the JSON to a file. Benchmarks are not tests: nothing here
asserts a time; the `target` column only says where the issue's targets stand on this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.script import loadavg, reporter  # noqa: E402

STEPS: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (script, full-profile args, --quick args)
    "writes": ("writes.py", ["--sequential", "1000", "--clients", "16,64,256", "--seconds", "10"],
               ["--sequential", "300", "--warmup", "30", "--clients", "16,64,256", "--seconds", "4"]),
    "etcd": ("compare_etcd.py", ["--clients", "1,16,64,256", "--seconds", "5", "--rounds", "2"],
             ["--clients", "1,16,64,256", "--seconds", "3", "--rounds", "1", "--warmup", "30"]),
    "failover": ("failover.py", ["--trials", "7"], ["--trials", "5", "--interval", "2"]),
    "elections": ("elections.py", ["--seconds", "600", "--clients", "64"], ["--seconds", "45", "--clients", "64"]),
    "dns": ("dns_cluster.py", ["--seconds", "5", "--instances", "1,10"],
            ["--seconds", "3", "--instances", "1", "--names", "50"]),
    "dns_reference": ("dns_reference.py", ["--seconds", "5", "--rounds", "2"], ["--seconds", "3", "--rounds", "1"]),
    "restart": ("restart.py", ["--instances", "10000,100000"], ["--instances", "10000"]),
    "health": ("health.py", [], ["--quick"]),
}

TARGETS = {
    "seq_p50_ms": 1.5, "seq_p99_ms": 5.0, "etcd_ratio_64": 2.0, "failover_median_s": 0.6, "failover_max_s": 1.2,
    "spurious_elections": 0, "dns_qps_per_core": 50_000, "rss_mib_100k": 150,
    "health_latency_ratio": 1.2, "health_steady_entries": 0,
}


progress = reporter("all")


def run_step(name: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    script, full, fast = STEPS[name]
    cmd = [sys.executable, str(BENCH / script), "--json", *(fast if quick else full), *extra]
    progress(f"{name}: {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    seconds = round(time.monotonic() - t0, 1)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = {"error": f"exit status {proc.returncode}, no JSON on stdout"}
    if proc.returncode not in (0, None) and "error" not in result:
        result["error"] = f"exit status {proc.returncode}"
    result["step_seconds"] = seconds
    progress(f"{name}: done in {seconds:g} s" + (f" ({result['error']})" if "error" in result else ""))
    return result


# ---------------------------------------------------------------------------------------------
# The summary: one row per figure of the issue


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if d is None:
            return None
        if isinstance(key, int) and isinstance(d, list):
            d = d[key] if -len(d) <= key < len(d) else None
        elif isinstance(d, dict):
            d = d.get(key)
        else:
            return None
    return d


def _median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(steps: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    w = steps.get("writes") or {}
    seq = next((x for x in w.get("sequential", []) if x.get("via") == "leader"), None)
    fol = next((x for x in w.get("sequential", []) if x.get("via") == "follower"), None)
    if seq:
        s["seq_leader"] = {k: seq.get(k) for k in ("p50_ms", "p99_ms", "p999_ms", "writes_per_s")}
    if fol:
        s["seq_follower"] = {k: fol.get(k) for k in ("p50_ms", "p99_ms", "p999_ms", "writes_per_s")}
    s["throughput"] = {str(t["clients"]): {"writes_per_s": t.get("writes_per_s"), "p50_ms": t.get("p50_ms"),
                                           "p99_ms": t.get("p99_ms"), "errors": sum(t.get("errors", {}).values()),
                                           "elections": t.get("elections")}
                       for t in w.get("throughput", [])}
    e = steps.get("etcd") or {}
    s["etcd"] = {str(x["clients"]): {k: x.get(k) for k in ("registry_writes_per_s", "etcd_writes_per_s",
                                                           "ratio_writes_per_s", "registry_p99_ms", "etcd_p99_ms",
                                                           "ratio_p99_ms")}
                 for x in e.get("summary", [])}
    f = steps.get("failover") or {}
    if f.get("summary"):
        s["failover"] = {k: f["summary"].get(k) for k in ("trials", "failover_median_s", "failover_max_s",
                                                          "elected_median_s", "extra_elections", "errors")}
    el = steps.get("elections") or {}
    if el.get("elections"):
        s["elections"] = {"seconds": _get(el, "config", "seconds"), "clients": _get(el, "config", "clients"),
                          "term_changes": el["elections"]["term_changes"],
                          "leader_changes": el["elections"]["leader_changes"],
                          "leaderless_episodes": el["elections"].get("leaderless_episodes"),
                          "writes_per_s": _get(el, "writes", "writes_per_s"), "p99_ms": _get(el, "writes", "p99_ms")}
    d = steps.get("dns") or {}
    dns_rows: dict[str, dict[str, Any]] = {}
    for row in d.get("phases", []):
        if row.get("dns") is None or row["phase"] not in ("dns", "dns+writes"):
            continue
        key = f"{row['phase']} ({row.get('instances')} inst.)"
        dns_rows.setdefault(key, {"qps": [], "p99_ms": [], "qps_per_dns_core": [], "dns_cpu_pct": [],
                                  "writes_per_s": []})
        r = dns_rows[key]
        r["qps"].append(row["dns"].get("qps"))
        r["p99_ms"].append(row["dns"].get("p99_ms"))
        r["qps_per_dns_core"].append(row["dns"].get("qps_per_dns_core"))
        r["dns_cpu_pct"].append(_get(row, "cpu_pct", "dns_child"))
        r["writes_per_s"].append(_get(row, "writes", "writes_per_s"))
    s["dns"] = {k: {m: _median(v) for m, v in r.items()} for k, r in dns_rows.items()}
    ref = steps.get("dns_reference") or {}
    if ref.get("summary"):
        s["dns_reference"] = ref["summary"]
    r = steps.get("restart") or {}
    s["restart"] = {}
    for count in r.get("counts", []):
        mem = count.get("memory") or {}
        rows = count.get("restarts") or []
        s["restart"][str(count.get("instances"))] = {
            "rss_mib_max": max((m.get("rss_mib", 0) for m in mem.values()), default=None),
            "dns_rss_mib_max": max((m.get("dns_rss_mib") or 0 for m in mem.values()), default=None),
            "restart_s": {row["restart"] + ("" if row.get("node") != "cluster" else " (cluster)"): row.get("read_s")
                          for row in rows if row.get("restart") in ("follower", "leader")
                          or row.get("node") == "cluster"},
            "error": count.get("error"),
        }
    h = steps.get("health") or {}
    if h.get("summary"):
        hs = h["summary"]
        s["health"] = {"tcp": _get(h, "config", "tcp"), "ttl": _get(h, "config", "ttl"),
                       "ratio_p50": hs.get("ratio_p50"), "ratio_p99": hs.get("ratio_p99"),
                       "entries": _get(hs, "on", "entries"),
                       "leader_cpu_pct": _get(hs, "on", "idle_cpu_leader"),
                       "prober_cpu_pct": _get(hs, "on", "idle_cpu_prober"),
                       "heartbeats_per_s": _get(hs, "on", "heartbeats_per_s")}
    return s


def _f(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def print_table(r: dict[str, Any]) -> None:
    s, m = r["summary"], r["machine"]
    print(f"registry performance suite ({r['profile']}): 3 durable nodes on loopback, {m['cpus']} CPUs, load average "
          f"{m['loadavg_before']} before, {m.get('loadavg_after')} after; {r['seconds']:.0f} s")
    disk = _get(r, "steps", "writes", "disk_before")
    if disk:
        print(f"disk: a durable one-entry LMDB commit took p50 {disk['p50_ms']} ms / p99 {disk['p99_ms']} ms "
              "before the writes step (the floor under every write; it swings on a shared machine)")
    print(f"\n{'figure':<44}{'registry':>22}{'etcd':>12}{'reg/etcd':>10}  target")
    sq = s.get("seq_leader") or {}
    if sq:
        print(f"{'sequential write via leader p50/p99/p99.9':<44}"
              f"{_f(sq['p50_ms']) + '/' + _f(sq['p99_ms']) + '/' + _f(sq['p999_ms']) + ' ms':>22}{'':>22}  "
              f"p50<=1.5 {_mark(sq['p50_ms'] <= 1.5 if sq['p50_ms'] else None)}, "
              f"p99<=5 {_mark(sq['p99_ms'] <= 5 if sq['p99_ms'] else None)}")
    sf = s.get("seq_follower") or {}
    if sf:
        print(f"{'sequential write via follower p50/p99/p99.9':<44}"
              f"{_f(sf['p50_ms']) + '/' + _f(sf['p99_ms']) + '/' + _f(sf['p999_ms']) + ' ms':>22}")
    etcd = s.get("etcd") or {}
    if "1" in etcd:
        x = etcd["1"]
        print(f"{'1 client writes/s (side by side)':<44}{_f(x['registry_writes_per_s'], '.0f'):>22}"
              f"{_f(x['etcd_writes_per_s'], '.0f'):>12}{_f(x['ratio_writes_per_s']):>10}")
    for c, t in s.get("throughput", {}).items():
        x = etcd.get(c) or {}
        target = ""
        if c == "64":
            ratio = x.get("ratio_writes_per_s")
            target = f">=2x etcd {_mark(ratio >= 2 if ratio else None)}"
        print(f"{c + ' clients writes/s, p99 ms':<44}{_f(t['writes_per_s'], '.0f') + ', ' + _f(t['p99_ms'], '.1f'):>22}"
              f"{_f(x.get('etcd_writes_per_s'), '.0f') + ', ' + _f(x.get('etcd_p99_ms'), '.1f') if x else '-':>12}"
              f"{_f(x.get('ratio_writes_per_s')):>10}  {target}")
        if x:
            print(f"{'  same run as etcd (compare_etcd.py)':<44}{_f(x.get('registry_writes_per_s'), '.0f') + ', ' + _f(x.get('registry_p99_ms'), '.1f'):>22}")
    fo = s.get("failover")
    if fo:
        print(f"{'failover median / max (' + str(fo['trials']) + ' kill -9)':<44}"
              f"{_f(fo['failover_median_s']) + ' / ' + _f(fo['failover_max_s']) + ' s':>22}{'':>22}  "
              f"<=0.6 {_mark(fo['failover_median_s'] <= 0.6 if fo['failover_median_s'] is not None else None)}, "
              f"<=1.2 {_mark(fo['failover_max_s'] <= 1.2 if fo['failover_max_s'] is not None else None)}")
    el = s.get("elections")
    if el:
        print(f"{'spurious elections: terms/leaders moved':<44}{str(el['term_changes']) + ' / ' + str(el['leader_changes']):>22}"
              f"{'':>22}  0 {_mark(el['term_changes'] == 0)} ({el['clients']} clients, {el['seconds']:g} s, "
              f"{_f(el['writes_per_s'], '.0f')} writes/s; {el.get('leaderless_episodes') or 0} leaderless "
              "episodes kept by pre-vote)")
    for k, d in (s.get("dns") or {}).items():
        print(f"{'DNS ' + k + ' q/s, p99 ms':<44}{_f(d['qps'], '.0f') + ', ' + _f(d['p99_ms'], '.2f'):>22}")
        qpc = d.get("qps_per_dns_core")
        print(f"{'  queries per DNS CPU-second':<44}{_f(qpc, '.0f'):>22}{'':>22}  "
              f">=50,000 {_mark(qpc >= 50_000 if qpc else None)}")
    ref = s.get("dns_reference")
    if ref:
        print(f"{'bare DNS process, q/s (dnsmasq in etcd col.)':<44}{_f(ref['registry_qps'], '.0f'):>22}"
              f"{_f(ref['dnsmasq_qps'], '.0f'):>12}{_f(ref['qps_ratio']):>10}")
        print(f"{'  queries per server CPU-second':<44}{_f(ref['registry_qps_per_cpu_s'], '.0f'):>22}"
              f"{_f(ref['dnsmasq_qps_per_cpu_s'], '.0f'):>12}{_f(ref['qps_per_cpu_s_ratio']):>10}")
    for count, x in (s.get("restart") or {}).items():
        if x.get("error"):
            print(f"{'restart/memory ' + count + ' instances':<44}{'error: ' + str(x['error'])[:60]}")
            continue
        rss = x["rss_mib_max"]
        tgt = f"<=150 MiB {_mark(rss <= 150 if rss else None)}" if int(count) >= 100_000 else ""
        print(f"{'RSS per node (max) with ' + count + ' inst.':<44}"
              f"{_f(rss, '.0f') + ' + DNS ' + _f(x['dns_rss_mib_max'], '.0f') + ' MiB':>22}{'':>22}  {tgt}")
        times = ", ".join(f"{k} {_f(v)}" for k, v in x["restart_s"].items())
        print(f"{'  restart to a linearizable read (s)':<44}{times:>22}")
    he = s.get("health")
    if he:
        ratio = max((x for x in (he["ratio_p50"], he["ratio_p99"]) if x is not None), default=None)
        entries = [e for e in he["entries"] or [] if e is not None]
        print(f"{'health: write p50/p99 ratio checks on/off':<44}"
              f"{_f(he['ratio_p50']) + ' / ' + _f(he['ratio_p99']):>22}{'':>22}  "
              f"<=1.2 {_mark(ratio <= 1.2 if ratio is not None else None)} "
              f"({he['tcp']} TCP checks, {he['ttl']} TTL)")
        print(f"{'  Raft entries in steady state; leader CPU %':<44}"
              f"{str(entries) + '; ' + _f(he['leader_cpu_pct'], '.1f'):>22}{'':>22}  "
              f"0 {_mark(not any(entries) if entries else None)} (prober {_f(he['prober_cpu_pct'], '.1f')}% CPU, "
              f"{_f(he['heartbeats_per_s'], '.0f')} heartbeats/s)")
    for name, step in r["steps"].items():
        if "error" in step:
            print(f"note: step {name} failed: {step['error']}")
    print("note: compare runs side by side only; quote medians; the per-step JSON has every figure")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short profile (about 8-10 minutes)")
    p.add_argument("--only", help=f"comma-separated steps to run (of {','.join(STEPS)})")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out")
    p.add_argument("--dir", type=Path, help="parent of the benchmarks' cluster directories (a real disk)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument("--show", type=Path, metavar="FILE", help="print the table of a saved result and exit")
    args = p.parse_args(argv)
    if args.show is not None:
        print_table(json.loads(args.show.read_text()))
        return 0
    names = [n for n in (args.only.split(",") if args.only else STEPS) if n and n not in args.skip.split(",")]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        p.error(f"unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    if "etcd" in names and not (shutil.which("etcd") or Path("/usr/bin/etcd").exists()):
        progress("etcd not found (apt-get install -y etcd-server): skipping the etcd step")
        names.remove("etcd")
    extra = ["--dir", str(args.dir)] if args.dir else []
    result: dict[str, Any] = {"benchmark": "all", "format": 1, "profile": "quick" if args.quick else "full",
                              "machine": {"cpus": os.cpu_count(), "loadavg_before": loadavg()},
                              "targets": TARGETS, "steps": {}}
    t0 = time.monotonic()
    try:
        for name in names:
            step_extra = extra if name != "dns_reference" else []
            result["steps"][name] = run_step(name, args.quick, step_extra)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["machine"]["loadavg_after"] = loadavg()
    result["summary"] = summarise(result["steps"])
    text = json.dumps(result, allow_nan=False)
    if args.out:
        args.out.write_text(text + "\n")
        progress(f"JSON written to {args.out}")
    if args.json:
        print(text)
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
