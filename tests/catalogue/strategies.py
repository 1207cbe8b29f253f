"""Hypothesis strategies for catalogue tests: valid requests from small alphabets (so that
commands collide: upserts, deregistrations that match, retried and stale seqs), and garbage."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from registry.catalogue import (
    HEALTH_CLIENT_ID,
    Check,
    CheckKind,
    Deregister,
    HealthStatus,
    Register,
    Request,
    SetHealth,
    encode_request,
)

SERVICES = ["web", "WEB", "db", "api-v2"]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:DB8:0::1", "db.example.com", "DB.example.com."]
PORTS = [80, 8080]
IDS = [None, "a", "b", "A", "web-10.0.0.1-80"]
TAGS = ["blue", "Green", "v1", "BLUE"]
CLIENTS = ["c1", "c2", "c3", "c4"]
# Revisions are log indexes: small ones, so that health commands often name a live incarnation.
REVISIONS = st.integers(1, 12)
TIMES = st.sampled_from([0, 1, 1_700_000_000_000, 2**63 - 1])

checks = st.one_of(
    st.none(),
    st.builds(Check, kind=st.just(CheckKind.TTL), ttl_ms=st.sampled_from([1_000, 10_000]),
              deregister_after_ms=st.sampled_from([0, 60_000])),
    st.builds(Check, kind=st.just(CheckKind.TCP), interval_ms=st.just(1_000), timeout_ms=st.sampled_from([100, 1_000]),
              failures=st.integers(1, 3), successes=st.integers(1, 3)),
    st.builds(Check, kind=st.just(CheckKind.HTTP), url=st.sampled_from(["http://10.0.0.1:80/health", "http://[::1]:8/"]),
              interval_ms=st.just(2_000), timeout_ms=st.just(500)),
)  # fmt: skip

registers = st.builds(
    Register,
    service=st.sampled_from(SERVICES),
    address=st.sampled_from(ADDRESSES),
    port=st.sampled_from(PORTS),
    instance_id=st.sampled_from(IDS),
    tags=st.lists(st.sampled_from(TAGS), max_size=3),
    meta=st.dictionaries(st.sampled_from(["k", "zone", "w"]), st.sampled_from(["", "1", "eu"]), max_size=2),
    check=checks,
    at_ms=TIMES,
)
deregisters = st.one_of(
    st.builds(Deregister, service=st.sampled_from(SERVICES), instance_id=st.sampled_from([i for i in IDS if i])),
    st.builds(
        Deregister, service=st.sampled_from(SERVICES), address=st.sampled_from(ADDRESSES[:4]), port=st.just(80)
    ),
    st.builds(Deregister, service=st.sampled_from(SERVICES), instance_id=st.sampled_from([i for i in IDS if i]),
              revision=REVISIONS),
)  # fmt: skip
set_healths = st.builds(
    SetHealth,
    service=st.sampled_from(SERVICES),
    instance_id=st.sampled_from([i for i in IDS if i]),
    revision=REVISIONS,
    status=st.sampled_from(HealthStatus),
    at_ms=TIMES,
    output=st.sampled_from(["", "connection refused", "é" * 256]),
)
commands = st.sampled_from([0, 0, 1, 2]).flatmap(lambda k: (registers, deregisters, set_healths)[k])
requests = st.one_of(
    st.builds(Request, client_id=st.sampled_from(CLIENTS), seq=st.integers(1, 6), command=commands),
    # The leader's health writes: (term << 32) + counter, so a later term's seqs are higher.
    st.builds(Request, client_id=st.just(HEALTH_CLIENT_ID),
              seq=st.builds(lambda term, n: (term << 32) + n, st.integers(1, 3), st.integers(1, 4)),
              command=st.one_of(set_healths, deregisters.filter(lambda d: d.revision is not None))),
)  # fmt: skip

# Msgpack values of any shape, including ones a request never has (bytes, floats, ext, deep nesting).
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)  # fmt: skip


@st.composite
def mangled_requests(draw: st.DrawFn) -> bytes:
    """A real request's map with one key removed, replaced by a value of any type, or added."""
    request = draw(requests)
    body: dict[str, Any] = msgpack.unpackb(encode_request(request))
    key = draw(st.sampled_from(sorted(body) + ["extra"]))
    if draw(st.booleans()) and key in body:
        del body[key]
    else:
        body[key] = draw(msgpack_values)
    return msgpack.packb(body, use_bin_type=True)


garbage = st.one_of(
    st.binary(max_size=64),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    mangled_requests(),
)

# One log entry as the catalogue's tests feed it: mostly requests, some garbage, some non-NORMAL entries.
_ENTRY_KINDS: dict[str, st.SearchStrategy[tuple[str, bytes]]] = {
    "request": requests.map(lambda r: ("apply", encode_request(r))),
    "garbage": garbage.map(lambda g: ("apply", g)),
    "skip": st.just(("skip", b"")),
}
entries = st.sampled_from(["request"] * 8 + ["garbage", "skip"]).flatmap(_ENTRY_KINDS.__getitem__)
