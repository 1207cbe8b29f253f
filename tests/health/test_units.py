"""The prober's pure parts: the consecutive-result threshold, the specs and the wire format."""

from __future__ import annotations

import msgpack
import pytest

from registry.catalogue.model import Check, CheckKind, HealthStatus, Instance
from registry.health import ProbeReport, ProbeSpec, ProberSettings, probe_spec
from registry.catalogue.health import Threshold
from registry.health.wire import (
    REPLACE,
    FrameReader,
    WireError,
    decode,
    decode_key,
    decode_report,
    decode_spec,
    encode,
    encode_report,
    encode_spec,
)

from .support import http_spec, tcp_spec

P, C = HealthStatus.PASSING, HealthStatus.CRITICAL


@pytest.mark.parametrize(
    "start, results, want",
    [
        (P, [False, False], [None, None]),
        (P, [False, False, False], [None, None, C]),
        (P, [False, False, True, False, False, False], [None, None, None, None, None, C]),  # a success resets
        (P, [True] * 5, [None] * 5),
        (C, [True, True], [None, P]),
        (C, [True, False, True, True], [None, None, None, P]),  # a failure resets
        (P, [False] * 3 + [True] * 2 + [False] * 3, [None, None, C, None, P, None, None, C]),
    ],
)
def test_threshold_counts_consecutive_results_from_its_status(start, results, want) -> None:
    """Critical after 3 consecutive failures from passing; passing after 2 consecutive successes."""
    threshold = Threshold(3, 2, start)
    assert [threshold.observe(ok) for ok in results] == want


def test_threshold_of_one_flips_at_once() -> None:
    """With thresholds of 1 every contrary result is a change, and an agreeing one is none."""
    threshold = Threshold(1, 1, P)
    assert [threshold.observe(ok) for ok in (True, False, False, True, True)] == [None, C, None, P, None]


def test_threshold_refuses_zero() -> None:
    with pytest.raises(ValueError, match="from 1 to 100"):
        Threshold(0, 2, P)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"service": ""}, "service must be a non-empty string"),
        ({"kind": CheckKind.TTL}, "kind must be CheckKind.TCP or CheckKind.HTTP"),
        ({"port": 0}, "port must be an integer from 1 to 65535"),
        ({"timeout_ms": 300}, "timeout_ms must be an integer from 1 to 200"),
        ({"failures": 0}, "failures must be an integer of at least 1"),
        ({"url": "http://x/"}, "url must be given for an HTTP check only"),
        ({"revision": True}, "revision must be an integer"),
        ({"status": "passing"}, "status must be a HealthStatus"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(change: dict, message: str) -> None:
    fields = {f: getattr(tcp_spec("a", 80), f) for f in ProbeSpec.__slots__}
    with pytest.raises(ValueError, match=message):
        ProbeSpec(**{**fields, **change})


def test_an_http_spec_needs_an_http_url() -> None:
    spec = http_spec("a", 8080)
    fields = {f: getattr(spec, f) for f in ProbeSpec.__slots__}
    with pytest.raises(ValueError, match="url must start with http://"):
        ProbeSpec(**{**fields, "url": "https://h/"})


def test_probe_spec_of_an_instance() -> None:
    """TCP probes the instance's address and port; HTTP the url's (port 80 by default); TTL nothing."""
    tcp = Check(CheckKind.TCP, interval_ms=1000, timeout_ms=500, failures=3, successes=2)
    instance = Instance("a", "web", "10.0.0.1", 8080, check=tcp, status=C, revision=7)
    assert probe_spec(instance) == ProbeSpec("web", "a", 7, CheckKind.TCP, "10.0.0.1", 8080, "", 1000, 500, 3, 2, C)
    http = Check(CheckKind.HTTP, url="http://[::1]/ready?x=1", interval_ms=2000, timeout_ms=1000)
    spec = probe_spec(Instance("b", "web", "10.0.0.2", 8080, check=http))
    assert (spec.host, spec.port, spec.url, spec.status) == ("::1", 80, "http://[::1]/ready?x=1", P)
    assert probe_spec(Instance("c", "web", "10.0.0.3", 1, check=Check(CheckKind.TTL, ttl_ms=10_000))) is None
    assert probe_spec(Instance("d", "web", "10.0.0.4", 1)) is None


def test_specs_and_reports_round_trip_the_wire() -> None:
    for spec in (tcp_spec("a", 80, status=C, revision=9), http_spec("b", 8080, "/x?y=1")):
        kind, payload = decode(encode(REPLACE, [encode_spec(spec)])[4:])
        assert (kind, [decode_spec(v) for v in payload]) == (REPLACE, [spec])
    report = ProbeReport("web", "a", 3, C, "connection refused")
    assert decode_report(msgpack.unpackb(msgpack.packb(encode_report(report)))) == report
    assert decode_key(["web", "a"]) == ("web", "a")


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb({"a": 1}), r"must be \[type, payload\]"),
        (msgpack.packb(["1", []]), r"must be \[type, payload\]"),
    ],
)
def test_bad_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode(body)


@pytest.mark.parametrize(
    "value",
    [
        "x", [1] * 12, ["web", "a", 1, "ttl", "h", 1, "", 1, 1, 1, 1, "passing"],
        ["web", "a", 1, "tcp", "h", 1, "", 1, 1, 1, 1, "unknown"],
    ],
)
def test_bad_specs_are_refused(value: object) -> None:
    with pytest.raises(WireError):
        decode_spec(value)


@pytest.mark.parametrize("value", [[], ["web", "a", 1, "passing", 5], ["web", "a", 1, "ok", ""]])
def test_bad_reports_are_refused(value: object) -> None:
    with pytest.raises(WireError):
        decode_report(value)


def test_frames_reassemble_from_any_split_and_oversized_ones_are_skipped() -> None:
    """A frame over the limit streams past unbuffered and is counted; the frames after it survive."""
    small = [encode(REPLACE, []), encode(REPLACE, [encode_spec(tcp_spec("a", 80))])]
    big = (200).to_bytes(4, "big") + b"\xc1" * 200
    stream = small[0] + big + small[1]
    for size in (1, 3, 50, len(stream)):
        reader = FrameReader(max_frame_bytes=100)
        bodies: list[bytes] = []
        for i in range(0, len(stream), size):
            bodies.extend(reader.feed(stream[i : i + size]))
        assert bodies == [small[0][4:], small[1][4:]]
        assert reader.oversized == 1
        assert reader.buffered_bytes == 0


def test_settings_round_trip_and_refuse_bad_values() -> None:
    settings = ProberSettings(stats_interval_s=0.1, max_in_flight=10)
    assert ProberSettings.from_json(settings.to_json()) == settings
    with pytest.raises(ValueError, match="max_in_flight must be an integer of at least 1"):
        ProberSettings(max_in_flight=0)
    with pytest.raises(ValueError, match="unknown prober settings"):
        ProberSettings.from_json('{"nope": 1}')
    with pytest.raises(ValueError, match="stats_interval_s must be positive"):
        ProberSettings(stats_interval_s=0)
