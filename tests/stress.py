"""`make test-stress`: the real-process suites, several times, on a machine with one core taken.

Runs ``pytest -n auto tests/integration tests/faults`` ``--runs`` times while a busy loop (a child
process spinning at normal priority, pinned to the last CPU) occupies one core, as on a loaded
CI machine. Prints one line per run (outcome counts, duration, load average) and a summary; exits
non-zero if any run failed. A test that fails here only because the machine was slow is a bug in
the test (docs: README, "Tests").

    python -m tests.stress [--runs N] [--no-busy] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("tests/integration", "tests/faults")
_SUMMARY = re.compile(r"(\d+) (passed|failed|error|errors|skipped|xfailed|xpassed)")


def start_busy_loop() -> subprocess.Popen[bytes]:
    """One process that spins forever on the last CPU."""
    cpu = max(os.sched_getaffinity(0))
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def run_once(pytest_args: list[str], log: Path) -> tuple[int, dict[str, int], float]:
    """One pytest run; (exit status, outcome counts, seconds). Its output goes to ``log`` and stdout."""
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-n", "auto", *SUITES, *pytest_args],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
            if line.strip():
                last = line
        status = proc.wait()
    counts: dict[str, int] = {}
    for number, outcome in _SUMMARY.findall(last):
        counts["error" if outcome == "errors" else outcome] = int(number)
    return status, counts, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="how many times to run the suites (default 3)")
    parser.add_argument("--no-busy", action="store_true", help="do not occupy a core")
    parser.add_argument("--logs", type=Path, default=ROOT / ".stress", help="where each run's output goes")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    args.logs.mkdir(parents=True, exist_ok=True)
    busy = None if args.no_busy else start_busy_loop()
    results = []
    try:
        for run in range(1, args.runs + 1):
            print(f"\n=== stress run {run}/{args.runs}: {' '.join(SUITES)}"
                  f"{'' if busy is None else ', one core busy'} ===", flush=True)
            status, counts, seconds = run_once(pytest_args, args.logs / f"run-{run}.log")
            results.append((run, status, counts, seconds, os.getloadavg()))
    finally:
        if busy is not None:
            os.killpg(busy.pid, signal.SIGKILL)
            busy.wait()
    print(f"\n=== stress summary ({'one core busy' if busy is not None else 'no busy loop'}, "
          f"{os.cpu_count()} CPUs; logs in {args.logs}) ===")
    for run, status, counts, seconds, load in results:
        outcome = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no summary line"
        print(f"run {run}: {'PASSED' if status == 0 else f'FAILED (exit {status})'}: {outcome}; "
              f"{seconds:.0f} s; load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    failed = [run for run, status, *_ in results if status != 0]
    print(f"{len(results) - len(failed)} of {len(results)} runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
