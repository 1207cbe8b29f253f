"""The frames on the socket pair between an agent (``Prober``) and its prober child.

Every frame is a length (u32, big-endian) and a msgpack body ``[type, payload]`` (never pickle):

    agent -> child
      REPLACE  1  [spec, ...]: the whole set of checks to probe ([] = probe nothing)
      UPDATE   2  [[spec, ...], [[service, instance_id], ...]]: upsert these, remove those
    child -> agent
      READY   10  {"pid": int, "max_in_flight": int}: running
      REPORTS 11  [report, ...]: status changes, in the order they were reached
      STATS   12  {...}: the child's counters (see ``registry.health.child``)
      ERROR   13  {"message": str}: it cannot run (bad settings); it exits

    spec   = [service, instance_id, revision, kind, host, port, url, interval_ms, timeout_ms,
              failures, successes, status]      (kind and status as their enum values)
    report = [service, instance_id, revision, status, output]

A frame longer than ``MAX_FRAME_BYTES`` is skipped as it streams past (``FrameReader`` counts
it); a body that does not decode is the caller's to count. So a bad frame never desynchronises
the stream, and a reader's memory stays bounded. The framing itself (reader, queue) is
``registry.childproc``'s, shared with the DNS child; ``FrameQueue.push`` takes the frame's type
as its label.
"""

from __future__ import annotations

from typing import Any

import msgpack

from registry import childproc
from registry.catalogue.model import CheckKind, HealthStatus
from registry.childproc import FrameQueue, receive

from .spec import MAX_OUTPUT_CHARS, ProbeReport, ProbeSpec

__all__ = [
    "ERROR", "MAX_FRAME_BYTES", "READY", "REPLACE", "REPORTS", "STATS", "UPDATE", "FrameQueue", "FrameReader",
    "WireError", "decode", "decode_key", "decode_report", "decode_spec", "encode", "encode_report",
    "encode_spec", "receive",
]  # fmt: skip

REPLACE, UPDATE = 1, 2
READY, REPORTS, STATS, ERROR = 10, 11, 12, 13

#: The longest frame either side accepts (10,000 specs take about 1 MB).
MAX_FRAME_BYTES = 64 * 1024 * 1024

_LENGTH = childproc.LENGTH_HEADER


class WireError(childproc.FrameError):
    """A frame body, spec or report that is not what the wire format says."""


def encode(kind: int, payload: Any) -> bytes:
    """One frame, length included."""
    body = msgpack.packb([kind, payload], use_bin_type=True)
    assert len(body) <= MAX_FRAME_BYTES, f"a {len(body)}-byte frame is over MAX_FRAME_BYTES"
    return _LENGTH.pack(len(body)) + body


def decode(body: bytes) -> tuple[int, Any]:
    """(type, payload) of a frame body; WireError if it is not ``[int, payload]`` in msgpack."""
    try:
        value = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # NB: msgpack raises several unrelated types on bad input
        raise WireError(f"a frame body is not msgpack: {exc}") from exc
    if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int):
        raise WireError(f"a frame body must be [type, payload], got {_brief(value)}")
    return value[0], value[1]


def encode_spec(spec: ProbeSpec) -> list[Any]:
    return [spec.service, spec.instance_id, spec.revision, spec.kind.value, spec.host, spec.port, spec.url,
            spec.interval_ms, spec.timeout_ms, spec.failures, spec.successes, spec.status.value]


def decode_spec(value: Any) -> ProbeSpec:
    """A spec from its wire form; WireError saying what is wrong."""
    if not (isinstance(value, list) and len(value) == 12):
        raise WireError(f"a spec is a list of 12 fields, got {_brief(value)}")
    try:
        kind, status = CheckKind(value[3]), HealthStatus(value[11])
        return ProbeSpec(value[0], value[1], value[2], kind, value[4], value[5], value[6], value[7], value[8],
                         value[9], value[10], status)
    except ValueError as exc:
        raise WireError(f"invalid spec: {exc}") from exc


def encode_report(report: ProbeReport) -> list[Any]:
    return [report.service, report.instance_id, report.revision, report.status.value, report.output]


def decode_report(value: Any) -> ProbeReport:
    if not (isinstance(value, list) and len(value) == 5):
        raise WireError(f"a report is a list of 5 fields, got {_brief(value)}")
    service, instance_id, revision, status, output = value
    if not (isinstance(service, str) and isinstance(instance_id, str) and type(revision) is int
            and isinstance(output, str) and len(output) <= MAX_OUTPUT_CHARS):
        raise WireError(f"invalid report {_brief(value)}")
    try:
        return ProbeReport(service, instance_id, revision, HealthStatus(status), output)
    except ValueError as exc:
        raise WireError(f"invalid report status {status!r}") from exc


def decode_key(value: Any) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise WireError(f"a key is [service, instance_id], got {_brief(value)}")
    return value[0], value[1]


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class FrameReader(childproc.FrameReader):
    """Reassembles frame bodies from a byte stream, any split.

    A frame over ``max_frame_bytes`` is skipped as it arrives and counted in ``oversized``.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        super().__init__(max_body_bytes=max_frame_bytes, typed=False, skip_oversized=True)

    @property
    def max_frame_bytes(self) -> int:
        return self.max_body_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every complete body."""
        return [body for _, body in self.split(data)]
