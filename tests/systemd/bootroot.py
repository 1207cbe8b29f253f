"""A minimal Debian 12 root for the boot test, made with debootstrap once and cached.

The cache lives under ``$REGISTRY_BOOT_CACHE`` (default ``/var/cache/registry-boot-root``), one folder
per package list: its name carries a hash of the suite, variant and packages, so changing the list
makes a new root and never reuses a stale one. The root is built in a temporary folder and renamed
into place only when complete, under a lock, so an interrupted run leaves nothing half-made.
The boot test runs it with ``--volatile=overlay``: the cached root itself is never written.

Run ``python -m tests.systemd.bootroot`` to build (or find) the root and print its path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = os.environ.get("REGISTRY_BOOT_MIRROR", "http://deb.debian.org/debian")
# systemd as PID 1; python3 + python3-venv for /opt/registry/venv; systemd-resolved + libnss-resolve
# for docs/deploy.md's `getent hosts web.service.registry`; procps/iproute2 for debugging.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "systemd-resolved", "libnss-resolve",
            "procps", "iproute2")
CACHE = Path(os.environ.get("REGISTRY_BOOT_CACHE", "/var/cache/registry-boot-root"))
DEBOOTSTRAP_TIMEOUT_S = 900


def root_key() -> str:
    text = "\n".join([SUITE, VARIANT, *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def root_path() -> Path:
    return CACHE / f"{SUITE}-{root_key()}"


def ensure_root(log=print) -> tuple[Path, float | None]:
    """The cached root, building it if missing. Returns (path, seconds debootstrap took or None)."""
    root = root_path()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return root, None
        tmp = CACHE / f".build-{root.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in CACHE.glob(f".build-{root.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        cmd = ["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES), SUITE, str(tmp), MIRROR]
        log("running: " + " ".join(cmd))
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=DEBOOTSTRAP_TIMEOUT_S)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        took = time.monotonic() - started
        _prepare(tmp)
        (tmp / ".complete").write_text(f"debootstrap {took:.1f} s\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        for old in CACHE.glob(f"{SUITE}-*"):  # roots of older package lists: never used again
            if old != root:
                shutil.rmtree(old, ignore_errors=True)
        return root, took


def _prepare(root: Path) -> None:
    """Trim the boot: no getty on the console, an empty machine-id (nspawn supplies one)."""
    (root / "etc/machine-id").write_text("")
    for unit in ("console-getty.service", "getty@.service", "getty.target", "systemd-timesyncd.service",
                 "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        link = root / "etc/systemd/system" / unit
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/dev/null")


if __name__ == "__main__":
    path, took = ensure_root(log=lambda m: print(m, file=sys.stderr))
    print(path, f"(debootstrap {took:.1f} s)" if took is not None else "(cached)")
