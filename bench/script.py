"""What every benchmark script shares around its measurement: options, the run's context, the
main frame and the output.

Not a benchmark. `main_frame` is every script's `main`: `--show FILE` prints a saved result's
table; otherwise SIGTERM/SIGINT become KeyboardInterrupt (so the clusters' clean-up always
runs), the measurement runs, and its result is printed as the table or, with `--json`, as one
strict JSON object (NaN as null). `machine_info`, `fsync_probe` and `disk_line` give every
result the same context: the machine, its load, and what a durable commit cost on its disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.storage import bench_storage, filesystem
from registry.client import RegistryError

Progress = Callable[[str], None]


def reporter(name: str) -> Progress:
    """A script's progress lines, on stderr: ``[name] message``."""

    def progress(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return progress


# ---------------------------------------------------------------------------------------------
# Options


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's argument parser; its description is the first paragraph of ``doc``."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_procs(text: str) -> str:
    """An argparse type for --procs: a positive number, or auto."""
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"a positive number or auto, not {text!r}")
    return text


def numbers(text: str) -> list[int]:
    """An argparse type: comma-separated numbers (--clients 1,16,64)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,16,64, got {text!r}") from None


def add_options(parser: argparse.ArgumentParser, *, cluster: bool = True) -> None:
    """The options every script has (--json, --show) and, with ``cluster``, those of a script
    that starts its own clusters (--dir, --agent-arg, --keep)."""
    if cluster:
        parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                            help="parent of the temporary cluster directory (default: the system temp dir; "
                                 "a real disk, not tmpfs)")
        parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                            help="extra argument for every agent, e.g. --agent-arg=--tick-interval-ms=20 (repeat)")
        parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--show", type=Path, metavar="FILE", help="print the table of a saved --json result and exit")


# ---------------------------------------------------------------------------------------------
# The run's context


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt, so a benchmark's cleanup always runs."""

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    # NB: SIGINT explicitly too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)


def bench_root(prefix: str, parent: Path | None, report: Progress) -> tuple[Path, str]:
    """A fresh directory for a benchmark's clusters and its filesystem; warns when it is tmpfs."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fs = filesystem(root)
    if fs.startswith("tmpfs"):
        report(f"warning: {root} is on tmpfs, where fsync costs nothing: not a durable measurement; use --dir")
    return root, fs


def fsync_probe(root: Path, seconds: float = 1.0) -> dict[str, float]:
    """Durable one-entry LMDB commits in ``root`` for ``seconds``: bench/storage.py's first row,
    so every result carries what a commit cost on this disk at that moment."""
    r = bench_storage(root, 1, os.urandom(128), seconds)
    return {"commits_per_s": round(r["saves_per_s"]), "p50_ms": round(r["p50_ms"], 3), "p99_ms": round(r["p99_ms"], 3)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(data_root: Path) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_before": loadavg(), "python": platform.python_version(),
            "platform": platform.platform(), "data_filesystem": filesystem(data_root)}


# ---------------------------------------------------------------------------------------------
# Output


def no_nan(value: Any) -> Any:
    """NaN (a percentile of no writes) as null, so that the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def num(value: Any, spec: str = ".2f") -> str:
    """A table cell: ``value`` formatted, "-" when there is none (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(float(value), spec)


def print_header(r: dict[str, Any], title: str, aside: str = "") -> None:
    """A table's first lines: ``title``, the machine and its load, the data's filesystem, and the
    `disk:` line if the result has ``disk_before`` (and ``disk_after``, if measured)."""
    m = r["machine"]
    print(f"{title}, {m['cpus']} CPUs{aside}, load average {m['loadavg_before'][0]:g} before and "
          f"{m.get('loadavg_after', ['?'])[0]} after, data on {m['data_filesystem']}")
    if "disk_before" not in r:
        return
    b = r["disk_before"]
    line = f"disk: a durable LMDB commit (bench/storage.py) took p50 {b['p50_ms']:.2f} ms / p99 {b['p99_ms']:.2f} ms "
    if "disk_after" not in r:
        print(line + "before the run")
        return
    a = r["disk_after"] or {}
    print(line + f"before the run and p50 {num(a.get('p50_ms'))} / p99 {num(a.get('p99_ms'))} ms after")


def output(write: Callable[[], None]) -> int:
    """Print; a reader that went away (`| head`) is not an error."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def emit(result: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], None]) -> int:
    if as_json:
        return output(lambda: print(json.dumps(no_nan(result), indent=2 if sys.stdout.isatty() else None,
                                               allow_nan=False)))
    return output(lambda: table(result))


def main_frame(args: argparse.Namespace, table: Callable[[dict[str, Any]], None],
               measure: Callable[[argparse.Namespace], dict[str, Any]], progress: Progress,
               interrupted: str = "interrupted: the cluster was stopped") -> int:
    """A benchmark script's main: --show, or ``measure(args)`` and its table or JSON. An error
    (a cluster that does not start, a node that does not answer...) is reported in one line
    and exits 1; Ctrl-C or SIGTERM exits 130 once the clusters are stopped."""
    if args.show is not None:
        return output(lambda: table(json.loads(args.show.read_text())))
    stop_on_signals()
    try:
        result = measure(args)
    except KeyboardInterrupt:
        progress(interrupted)
        return 130
    except (RuntimeError, OSError, RegistryError) as exc:
        progress(f"error: {exc}")
        return 1
    return emit(result, args.json, table)
