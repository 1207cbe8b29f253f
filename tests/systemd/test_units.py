"""The unit files: `systemd-analyze verify` accepts them, the hardening of issue 6 is in them,
and `systemd-analyze security --offline=true` scores them at most EXPOSURE_MAX.

`verify` checks that ExecStart's binary exists and is executable, and /opt/registry/venv/bin/registry
does not exist on a test machine: the units are verified from a temporary copy whose ExecStart
path alone is replaced by an existing binary. Every other line, the hardening included, is
verified as written (and the copy is asserted to differ from the original only there).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
EXEC = "/opt/registry/venv/bin/registry"
STUB = "/bin/true"
# Measured with systemd 252: 1.4 for both units, 1.6 with the port-53 drop-in (systemd/README.md).
EXPOSURE_MAX = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")

# The hardening issue 6 asks for, exactly as written there.
REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "KillSignal": "SIGTERM",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    # The AF_INET AF_INET6 AF_UNIX, plus AF_NETLINK: libzmq's bind calls getifaddrs(3) and
    # aborts without it (found by the boot test; systemd/README.md).
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
}
PRESENT = ("WatchdogSec", "TimeoutStopSec", "LimitNOFILE", "StateDirectory", "ExecStart")


def service_section(path: Path) -> dict[str, list[str]]:
    """Key -> every value assigned in [Service] (comments skipped)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def stubbed_copy(tmp: Path) -> Path:
    """The units and the port-53 drop-in (as registry.service.d/ and registry@.service.d/) in tmp,
    with ExecStart's binary replaced by STUB; nothing else changed."""
    for unit in ("registry.service", "registry@.service"):
        text = (UNITS / unit).read_text()
        assert text.count(EXEC) == 1, f"{unit}: expected ExecStart={EXEC} once"
        stubbed = text.replace(EXEC, STUB)
        (tmp / unit).write_text(stubbed)
        diff = [(a, b) for a, b in zip(text.splitlines(), stubbed.splitlines()) if a != b]
        assert len(diff) == 1 and diff[0][0].startswith("ExecStart=")
        dropins = tmp / f"{unit}.d"
        dropins.mkdir()
        shutil.copy(UNITS / "registry-dns53.conf", dropins / "dns53.conf")
    return tmp


@pytest.mark.parametrize("unit", ["registry.service", "registry@.service"])
def test_hardening_keys(unit: str) -> None:
    keys = service_section(UNITS / unit)
    for key, want in REQUIRED.items():
        assert want in keys.get(key, []), f"{unit}: {key}={want} missing (has {keys.get(key)})"
    for key in PRESENT:
        assert keys.get(key), f"{unit}: no {key}="
    # No capability anywhere in the unit itself: CAP_NET_BIND_SERVICE only via the drop-in.
    assert keys["CapabilityBoundingSet"] == [""]
    assert "AmbientCapabilities" not in keys
    assert "DynamicUser" in keys and keys["DynamicUser"] == ["yes"]
    assert int(keys["LimitNOFILE"][0]) >= 4096


def test_units_differ_only_where_they_must() -> None:
    one = (UNITS / "registry.service").read_text()
    tmpl = (UNITS / "registry@.service").read_text()
    assert "--config /etc/registry/registry.toml" in one and "StateDirectory=registry\n" in one
    assert "--config /etc/registry/%i.toml" in tmpl and "StateDirectory=registry/%i\n" in tmpl
    per_node = ("ExecStart", "StateDirectory", "WorkingDirectory")
    a = {k: v for k, v in service_section(UNITS / "registry.service").items() if k not in per_node}
    b = {k: v for k, v in service_section(UNITS / "registry@.service").items() if k not in per_node}
    assert a == b, "registry.service and registry@.service must share every other [Service] setting"


def test_dropin_adds_only_the_bind_capability() -> None:
    keys = service_section(UNITS / "registry-dns53.conf")
    assert keys == {"CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"], "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"]}


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    stubbed_copy(tmp_path)
    names = ["registry.service", "registry@n1.service"]
    proc = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    complaints = [l for l in (proc.stdout + proc.stderr).splitlines() if "registry" in l]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check has teeth: an unknown key, or the real (absent) ExecStart path, fails it."""
    (tmp_path / "registry.service").write_text((UNITS / "registry.service").read_text().replace(
        EXEC, STUB).replace("ProtectHome=yes", "ProtectHome=maybe"))
    proc = subprocess.run(["systemd-analyze", "verify", "registry.service"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert "protect home value" in proc.stderr, proc.stderr  # NB: verify exits 0 on this: read its output
    (tmp_path / "registry.service").write_text((UNITS / "registry.service").read_text())
    proc = subprocess.run(["systemd-analyze", "verify", "registry.service"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and EXEC in proc.stderr, proc.stderr


def exposure(unit: str, cwd: Path) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", unit], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@pytest.mark.parametrize("unit", ["registry.service", "registry@n1.service"])
def test_security_exposure(tmp_path: Path, unit: str) -> None:
    stubbed_copy(tmp_path)
    with_dropin = exposure(unit, tmp_path)
    shutil.rmtree(tmp_path / ("registry@.service.d" if "@" in unit else "registry.service.d"))
    plain = exposure(unit, tmp_path)
    print(f"{unit}: exposure {plain} ({with_dropin} with the port-53 drop-in)")
    assert plain <= with_dropin <= EXPOSURE_MAX
