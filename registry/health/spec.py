"""What the prober is asked to probe (``ProbeSpec``) and what it answers (``ProbeReport``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from registry.catalogue.model import CheckKind, HealthStatus, Instance

__all__ = ["MAX_OUTPUT_CHARS", "ProbeReport", "ProbeSpec", "probe_spec"]

#: The longest ``ProbeReport.output`` (what ``SetHealth`` accepts).
MAX_OUTPUT_CHARS = 256

_PROBED = (CheckKind.TCP, CheckKind.HTTP)


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One active check of one instance. Invalid fields raise ValueError naming the field.

    ``host``/``port``: for TCP, the instance's address and port; for HTTP, those of ``url``.
    ``status`` is the catalogue's current status: the prober counts consecutive results from it.
    The key is ``(service, instance_id)``; a spec with another ``revision`` for the same key is a
    new incarnation (its counts start again).
    """

    service: str
    instance_id: str
    revision: int
    kind: CheckKind
    host: str
    port: int
    url: str
    interval_ms: int
    timeout_ms: int
    failures: int
    successes: int
    status: HealthStatus

    def __post_init__(self) -> None:
        for name in ("service", "instance_id", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.kind, CheckKind) or self.kind not in _PROBED:
            raise ValueError(f"kind must be CheckKind.TCP or CheckKind.HTTP, got {self.kind!r}")
        if not isinstance(self.status, HealthStatus):
            raise ValueError(f"status must be a HealthStatus, got {self.status!r}")
        if not isinstance(self.url, str) or (self.kind is CheckKind.HTTP) != bool(self.url):
            raise ValueError(f"url must be given for an HTTP check only, got {self.url!r} for {self.kind.value}")
        if self.kind is CheckKind.HTTP and not self.url.startswith("http://"):
            raise ValueError(f"url must start with http://, got {self.url!r}")
        _integer("revision", self.revision, 0)
        _integer("port", self.port, 1, 65535)
        _integer("interval_ms", self.interval_ms, 1)
        _integer("timeout_ms", self.timeout_ms, 1, self.interval_ms)
        _integer("failures", self.failures, 1)
        _integer("successes", self.successes, 1)

    @property
    def key(self) -> tuple[str, str]:
        return self.service, self.instance_id


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """A status change the thresholds reached for one incarnation (``revision``) of an instance.

    ``output`` says why ("connection refused", "HTTP 500 Internal Server Error", "timed out
    after 1000 ms"); at most ``MAX_OUTPUT_CHARS`` characters.
    """

    service: str
    instance_id: str
    revision: int
    status: HealthStatus
    output: str

    @property
    def key(self) -> tuple[str, str]:
        return self.service, self.instance_id


def probe_spec(instance: Instance) -> ProbeSpec | None:
    """The spec that probes ``instance``'s check, or None if it has no TCP or HTTP check.

    For HTTP, host and port come from the check's url (port 80 if it names none).
    """
    check = instance.check
    if check is None or check.kind not in _PROBED:
        return None
    host, port, url = instance.address, instance.port, ""
    if check.kind is CheckKind.HTTP:
        parts = urlsplit(check.url)
        if not parts.hostname:
            raise ValueError(f"the HTTP check of {instance.service}/{instance.id} has no host: {check.url!r}")
        host, port, url = parts.hostname, parts.port or 80, check.url
    return ProbeSpec(
        service=instance.service, instance_id=instance.id, revision=instance.revision, kind=check.kind,
        host=host, port=port, url=url, interval_ms=check.interval_ms, timeout_ms=check.timeout_ms,
        failures=check.failures, successes=check.successes, status=instance.status,
    )  # fmt: skip


def _integer(name: str, value: object, low: int, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        accepted = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}")
