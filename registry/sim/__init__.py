"""The seeded cluster simulator: real Raft cores over a simulated network, disks and clients.

Health (TTL instances, keepalives, the leader's real HealthTracker) runs in some seeds too.
Test support shipped with the package so that `registry sim --seed N` replays any failure exactly.
Production code (node, storage, transport, dns) never imports it.
"""

from collections.abc import Mapping

from .checkers import HealthChecker, SafetyChecker, Violation
from .cluster import SimResult, Simulation, replay_command, run
from .mutants import MUTANTS as _MUTANT_CLASSES

#: Deliberately broken cores (and health trackers), by name: what each one breaks.
MUTANTS: Mapping[str, str] = {name: description for name, (_, description) in _MUTANT_CLASSES.items()}

__all__ = ["MUTANTS", "HealthChecker", "SafetyChecker", "SimResult", "Simulation", "Violation", "replay_command", "run"]
