"""ProberSettings: what the prober child needs to know, in one place.

``Prober`` passes them to the child as JSON on its command line (``to_json``), and the child
reads them back (``from_json``): add a field here and both sides have it. JSON, never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.childproc import settings_from_json, settings_to_json

__all__ = ["ProberSettings"]


@dataclass(frozen=True, slots=True)
class ProberSettings:
    """The prober child's settings. Invalid values raise ValueError naming the field and what is accepted.

    - ``stats_interval_s``: how often the child sends its counters;
    - ``report_batch_s``: how long a status change may wait for others to share its frame;
    - ``first_probe_spread_s``: a check added by an update is first probed within min(this, its
      interval), at a random moment (one added by a replace: within its interval; see
      ``registry.health.checks``);
    - ``max_in_flight``: probes open at once (each holds a socket); more wait for a slot. The
      child lowers it to fit its open-file limit (reported in READY);
    - ``http_read_bytes``: the most of an HTTP response read to find its status line.
    """

    stats_interval_s: float = 1.0
    report_batch_s: float = 0.02
    first_probe_spread_s: float = 1.0
    max_in_flight: int = 4096
    http_read_bytes: int = 4096

    def __post_init__(self) -> None:
        for name in ("stats_interval_s", "report_batch_s", "first_probe_spread_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
                raise ValueError(f"{name} must be a number of seconds from 0 to 3600, got {value!r}")
        if self.stats_interval_s == 0:
            raise ValueError("stats_interval_s must be positive, got 0")
        for name, low in (("max_in_flight", 1), ("http_read_bytes", 64)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")

    def to_json(self) -> str:
        return settings_to_json(self)

    @classmethod
    def from_json(cls, text: str) -> ProberSettings:
        """The settings ``to_json`` wrote; ValueError saying what is wrong otherwise."""
        return settings_from_json(cls, text, what="prober settings")
