"""The DNS process: the feed's framing, the settings, the child's replica and staleness
(``DnsChild`` in-process, with a fake clock and the stand-in responder of
``tests/dns/test_server.py``), and DnsProcess end to end (a real child process with the real
``registry_dns.resolver.Responder``, queried with dnspython).

Timing: no check depends on the machine being fast. A child is fresh until its last leader
contact plus ``max_stale_s`` by the shared monotonic clock, so a reply received before
(moment the contact was sent) + ``max_stale_s`` must be an answer, and a SERVFAIL can only be
received after it; the tests assert exactly that, and wait for everything else with
``SETTLE_S`` deadlines that only a broken child reaches.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from registry.catalogue import Catalogue, Deregister, Register, Request, encode_request
from registry_dns.feed import (
    CONTACT,
    ENTRIES,
    ERROR,
    MAX_BODY_BYTES,
    READY,
    RESTORE,
    RESYNC,
    STATS,
    FeedError,
    FrameQueue,
    FrameReader,
    decode_contact,
    decode_entries,
    decode_index,
    encode_contact,
    encode_entries,
    encode_json,
    frame,
)
from registry_dns.child import DnsChild
from registry_dns.process import DnsProcess, DnsStartError
from registry_dns.settings import DnsSettings

from .test_server import StandInResponder

HOST = "127.0.0.1"
WEB = "web.service.registry."
NORMAL, NOOP = 0, 1
#: A bound for what a working child does at once (a reply, a report): only a broken one reaches
#: it, so it is generous for a loaded 2-core machine running `pytest -n auto`.
SETTLE_S = 15.0


def register(seq: int, address: str, service: str = "web", client: str = "c1") -> bytes:
    return encode_request(Request(client, seq, Register(service, address, 8080)))


def deregister(seq: int, address: str, service: str = "web", client: str = "c1") -> bytes:
    return encode_request(Request(client, seq, Deregister(service, address=address, port=8080)))


# -- the feed's framing ---------------------------------------------------------------------------


def test_frames_reassemble_from_any_split() -> None:
    """A frame stream read in pieces of any size gives the same frames."""
    entries = [(1, NOOP, b""), (2, NORMAL, register(1, "10.0.0.1")), (3, NORMAL, b"\x00" * 300)]
    stream = encode_entries(entries) + encode_contact(True, 12.5) + frame(RESTORE, b"snap")
    for size in (1, 2, 7, 64, len(stream)):
        reader = FrameReader()
        frames: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), size):
            frames.extend(reader.feed(stream[i : i + size]))
        assert [k for k, _ in frames] == [ENTRIES, CONTACT, RESTORE]
        assert list(decode_entries(frames[0][1])) == entries
        assert decode_contact(frames[1][1]) == (True, 12.5)
        assert frames[2][1] == b"snap"
        assert reader.buffered_bytes == 0


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes([99, 0, 0, 0, 0]), "unknown frame type 99"),
        (bytes([ENTRIES]) + (MAX_BODY_BYTES + 1).to_bytes(4, "big"), "over the"),
    ],
)
def test_reader_refuses_bad_headers(data: bytes, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        FrameReader().feed(data)


def test_reader_accepts_only_the_types_of_its_direction() -> None:
    with pytest.raises(FeedError):
        FrameReader(frozenset({STATS})).feed(frame(ENTRIES, b""))


@pytest.mark.parametrize("body", [b"\x00" * 5, encode_entries([(1, 0, b"abc")])[5:-1]])
def test_truncated_entry_records_are_refused(body: bytes) -> None:
    with pytest.raises(FeedError):
        list(decode_entries(body))


@pytest.mark.parametrize("body", [b"", b"\x01" * 8, b"\x02" + b"\x00" * 8, b"\x01\x7f\xf8" + b"\x00" * 6])
def test_bad_contact_and_index_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(FeedError):
        decode_contact(body)
    if len(body) != 8:
        with pytest.raises(FeedError):
            decode_index(body)


def test_frame_queue_keeps_frames_whole_and_coalesces_the_latest() -> None:
    """Partial sends never split or mix frames; a coalescing frame replaces an unsent one."""
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        queue = FrameQueue()
        big = frame(RESTORE, b"x" * 500_000)
        queue.push(RESTORE, big)
        queue.push(CONTACT, encode_contact(True, 1.0), coalesce=True)
        queue.push(CONTACT, encode_contact(True, 2.0), coalesce=True)  # replaces the first
        assert len(queue) == 2
        assert not queue.flush(a)  # the socket takes only part of the big frame
        started = queue.pending_bytes
        assert 0 < started < len(big) + 14
        queue.push(CONTACT, encode_contact(True, 3.0), coalesce=True)
        assert queue.drop_unsent() == 14  # the started frame stays, whole
        reader = FrameReader()
        got: list[tuple[int, bytes]] = []
        b.setblocking(False)
        while not queue.flush(a) or not got:
            try:
                got.extend(reader.feed(b.recv(1 << 20)))
            except BlockingIOError:
                pass
        assert [k for k, _ in got] == [RESTORE] and got[0][1] == b"x" * 500_000
        assert queue.pending_bytes == 0 and len(queue) == 0
    finally:
        a.close()
        b.close()


# -- the child, in-process ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingResponder(StandInResponder):
    pass


@pytest.fixture
def child() -> Iterator[tuple[DnsChild, socket.socket, FakeClock]]:
    parent_end, child_end = socket.socketpair()
    child_end.setblocking(False)
    clock = FakeClock()
    made = DnsChild(child_end, CountingResponder(), DnsSettings(address=(HOST, 0), max_stale_s=30.0), clock=clock)
    try:
        yield made, parent_end, clock
    finally:
        made.server.close()
        parent_end.close()
        child_end.close()


def pump(child: DnsChild, parent_end: socket.socket, data: bytes = b"") -> None:
    """Deliver ``data`` to the child and run one wakeup of its loop (as ``DnsChild.run`` does)."""
    if data:
        parent_end.sendall(data)  # NB: in the child's receive buffer when sendall returns: no wait
    child.server.run_once(0.0)
    child.after_wake()


def reports(parent_end: socket.socket) -> list[tuple[int, bytes]]:
    parent_end.setblocking(False)
    reader = FrameReader()
    frames: list[tuple[int, bytes]] = []
    try:
        while True:
            frames.extend(reader.feed(parent_end.recv(1 << 16)))
    except BlockingIOError:
        pass
    parent_end.setblocking(True)
    return frames


def test_child_is_stale_until_told_of_a_leader_and_after_max_stale_s(child: Any) -> None:
    """No contact yet -> stale; a contact -> fresh; no news for max_stale_s -> stale again, by
    the child's own clock (a silent or hung agent); None ("no leader now") does not refresh."""
    c, parent_end, clock = child
    assert c.server.stale
    pump(c, parent_end, encode_contact(True, clock.now - 1.0))
    assert not c.server.stale
    clock.now += 28.9
    pump(c, parent_end, encode_contact(False, 0.0))
    assert not c.server.stale and not c.leader_known
    clock.now += 0.2  # 30.1 s after the contact
    pump(c, parent_end, encode_contact(False, 0.0))
    assert c.server.stale
    pump(c, parent_end, encode_contact(True, clock.now))
    assert not c.server.stale
    assert c.stale_flips_at() == clock.now + 30.0


def test_child_trusts_no_contact_time_from_the_future(child: Any) -> None:
    c, parent_end, clock = child
    pump(c, parent_end, encode_contact(True, clock.now + 3600))
    assert c.last_contact_at == clock.now


def test_child_applies_entries_in_order_and_updates_the_responder_once_per_batch(child: Any) -> None:
    """NORMAL entries are applied, others skipped, repeats ignored; one responder update per
    wakeup, and a no-op entry still hands over its view (the SOA serial is the applied index)."""
    c, parent_end, clock = child
    updates = c.responder.counters["updates"]
    batch = [(1, NOOP, b"")] + [(i, NORMAL, register(i, f"10.0.0.{i}")) for i in range(2, 12)]
    pump(c, parent_end, encode_entries(batch[:6]) + encode_entries(batch[6:]))
    assert c.catalogue.applied_index == 11
    assert len(c.catalogue.view.instances("web")) == 10
    assert c.responder.counters["updates"] == updates + 1
    assert c.responder.view is c.catalogue.view
    pump(c, parent_end, encode_entries(batch[3:] + [(12, NOOP, b"")]))  # repeats, then a no-op
    assert c.catalogue.applied_index == 12
    assert c.responder.counters["updates"] == updates + 2  # one more update, for the whole batch
    assert c.responder.view is c.catalogue.view and c.responder.view.applied_index == 12


def test_child_catalogue_equals_the_nodes(child: Any) -> None:
    """The replica is the node's state machine fed the same log: equal digests."""
    c, parent_end, _ = child
    node = Catalogue()
    entries = [(1, NOOP, b"")]
    entries += [(i, NORMAL, register(i, f"10.0.{i}.1", service=f"s{i % 3}")) for i in range(2, 40)]
    entries += [(40, NORMAL, deregister(40, "10.0.5.1", service="s2")), (41, NORMAL, b"garbage")]
    for index, kind, data in entries:
        node.apply(index, data) if kind == NORMAL else node.skip(index)
    pump(c, parent_end, encode_entries(entries))
    assert c.catalogue.digest() == node.digest()


def test_child_with_a_gap_asks_for_a_snapshot_and_goes_stale_until_it_gets_one(child: Any) -> None:
    """A missing entry stops applying (never out of order); the child sends RESYNC (at most once
    a second) and, if no RESTORE comes within max_stale_s, answers SERVFAIL; RESTORE heals it."""
    c, parent_end, clock = child
    node = Catalogue()
    for i in (1, 2, 3):
        node.apply(i, register(i, f"10.0.0.{i}"))
    pump(c, parent_end, encode_contact(True, clock.now) + encode_entries([(1, NORMAL, register(1, "10.0.0.1"))]))
    pump(c, parent_end, encode_entries([(3, NORMAL, register(3, "10.0.0.3"))]))
    assert c.catalogue.applied_index == 1 and c.gap_since == clock.now
    pump(c, parent_end, encode_entries([(4, NORMAL, register(4, "10.0.0.4"))]))  # within the second
    got = [(kind, decode_index(body)) for kind, body in reports(parent_end) if kind == RESYNC]
    assert got == [(RESYNC, 1)]
    clock.now += 29
    pump(c, parent_end, encode_contact(True, clock.now))
    assert not c.server.stale
    clock.now += 2
    pump(c, parent_end, encode_contact(True, clock.now))
    assert c.server.stale  # fresh contact, but entries missing for over max_stale_s
    pump(c, parent_end, frame(RESTORE, node.to_bytes()) + encode_entries([(4, NORMAL, register(4, "10.0.0.4"))]))
    node.apply(4, register(4, "10.0.0.4"))
    assert c.catalogue.digest() == node.digest()
    assert not c.server.stale and c.gap_since is None


def test_child_never_goes_back_to_an_older_snapshot(child: Any) -> None:
    c, parent_end, _ = child
    old = Catalogue()
    old.apply(1, register(1, "10.0.0.1"))
    pump(c, parent_end, encode_entries([(i, NORMAL, register(i, f"10.0.0.{i}")) for i in (1, 2)]))
    pump(c, parent_end, frame(RESTORE, old.to_bytes()))
    assert c.catalogue.applied_index == 2 and c.counts["old_snapshots"] == 1


def test_child_refuses_a_corrupt_snapshot_and_asks_again(child: Any) -> None:
    c, parent_end, clock = child
    pump(c, parent_end, frame(RESTORE, b"RCAT not really"))
    assert c.counts["bad_snapshots"] == 1 and c.running
    assert [k for k, _ in reports(parent_end) if k != STATS] == [RESYNC]


def test_child_stops_on_a_corrupt_feed_and_says_why(child: Any) -> None:
    """Framing it cannot trust ends the child (status 3) with an ERROR report, never a crash."""
    c, parent_end, _ = child
    pump(c, parent_end, bytes([77, 0, 0, 0, 1, 0]))
    assert not c.running and c.exit_status == 3
    errors = [json.loads(body)["message"] for kind, body in reports(parent_end) if kind == ERROR]
    assert len(errors) == 1 and "unknown frame type 77" in errors[0]


def test_child_stops_when_the_feed_closes(child: Any) -> None:
    c, parent_end, _ = child
    parent_end.shutdown(socket.SHUT_WR)
    pump(c, parent_end)
    assert not c.running and c.exit_status == 0


def test_child_reports_counters(child: Any) -> None:
    c, parent_end, clock = child
    c.report(clock.now + 0.5)
    c.after_wake()
    (kind, body), = reports(parent_end)
    stats = json.loads(body)
    assert kind == STATS
    assert stats["stale"] is True and stats["applied_index"] == 0 and stats["qps"] == 0.0
    assert {"answered", "dropped", "stale_queries", "udp_queries", "responder"} <= set(stats)


def stale_reports(parent_end: socket.socket) -> list[bool]:
    return [json.loads(body)["stale"] for kind, body in reports(parent_end) if kind == STATS]


def test_child_reports_a_change_of_staleness_at_once(child: Any) -> None:
    """The report's ``stale`` is what DNS does now: a change (a first leader contact, or none for
    max_stale_s) is reported in the same wakeup, not at the next stats interval; between
    changes the reports keep their interval."""
    c, parent_end, clock = child
    pump(c, parent_end)  # the first report, due at once
    assert stale_reports(parent_end) == [True]
    pump(c, parent_end, encode_contact(True, clock.now))  # the clock has not moved: no report is due
    assert stale_reports(parent_end) == [False]
    pump(c, parent_end, encode_contact(True, clock.now))
    assert stale_reports(parent_end) == []  # unchanged, and the interval has not passed
    clock.now += 30.1  # no contact for over max_stale_s
    c.on_wake()
    c.after_wake()
    assert stale_reports(parent_end) == [True]


# -- DnsProcess end to end ------------------------------------------------------------------------


@pytest.fixture
def make_dns() -> Iterator[Callable[..., DnsProcess]]:
    """``make(start=True, snapshot=None, max_backlog_bytes=..., **settings)``: a DnsProcess with
    ``DnsSettings(**settings)`` on a free port (stats every 0.1 s unless said), started."""
    made: list[DnsProcess] = []

    def make(start: bool = True, snapshot: Callable[[], bytes] | None = None,
             max_backlog_bytes: int = 64 * 1024 * 1024, **settings: Any) -> DnsProcess:
        settings.setdefault("address", (HOST, 0))
        settings.setdefault("stats_interval_s", 0.1)
        process = DnsProcess(DnsSettings(**settings), snapshot=snapshot, max_backlog_bytes=max_backlog_bytes)
        made.append(process)
        if start:
            process.start(timeout_s=SETTLE_S)
        return process

    yield make
    for process in made:
        if process.pid is not None and process.alive():
            os.kill(process.pid, signal.SIGCONT)
        process.stop(timeout_s=5)


def ask(process: DnsProcess, qname: str = WEB, *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(qname, "A")
    port = process.address[1]
    if tcp:
        return dns.query.tcp(q, HOST, port=port, timeout=SETTLE_S)
    return dns.query.udp(q, HOST, port=port, timeout=SETTLE_S)


def addresses(reply: dns.message.Message) -> set[str]:
    return {rd.address for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A}


def eventually(process: DnsProcess, check: Callable[[], bool], timeout_s: float = SETTLE_S, what: str = "") -> None:
    """Keep the parent ticking (as the node loop does) until ``check()`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        process.flush()
        try:
            if check():
                return
        except dns.exception.Timeout:
            pass
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s; stats {process.stats()}"
        time.sleep(0.02)


def test_registered_instances_appear_in_dns(make_dns: Callable[..., DnsProcess]) -> None:
    """Entries streamed with apply() reach the child's catalogue and its answers, UDP and TCP;
    a deregistration takes the name away."""
    process = make_dns()
    process.leader_contact(0.0)
    process.apply([(1, NOOP, b""), (2, NORMAL, register(1, "10.0.0.1")), (3, NORMAL, register(2, "10.0.0.2"))])
    eventually(process, lambda: addresses(ask(process)) == {"10.0.0.1", "10.0.0.2"}, what="the answer")
    assert addresses(ask(process, tcp=True)) == {"10.0.0.1", "10.0.0.2"}
    assert ask(process, "nope.service.registry.").rcode() == dns.rcode.NXDOMAIN
    process.apply([(4, NORMAL, deregister(3, "10.0.0.1")), (5, NORMAL, deregister(4, "10.0.0.2"))])
    eventually(process, lambda: not ask(process).answer, what="the deregistration")
    assert ask(process).rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR)
    eventually(process, lambda: process.stats().get("applied_index") == 5, what="the report")
    stats = process.stats()
    assert stats["alive"] and stats["answered"] >= 4 and stats["stale"] is False and stats["backlog_bytes"] == 0


def test_a_report_read_together_with_ready_is_kept() -> None:
    """The child reports at once after READY; when the parent reads both in one piece (a busy
    parent), that first report is kept, not dropped with the rest of the read."""
    parent_end, child_end = socket.socketpair()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        process = DnsProcess(DnsSettings(address=(HOST, 0)))
        process._child.proc, process._child.sock = sleeper, parent_end  # what start() sets up, with a stand-in child
        child_end.sendall(encode_json(READY, {"host": HOST, "port": 5353}) + encode_json(STATS, {"stale": True}))
        process._child.await_ready(SETTLE_S, process._on_start_data)
        parent_end.setblocking(False)
        assert process.address == (HOST, 5353)
        assert process.stats()["stale"] is True
    finally:
        sleeper.kill()
        sleeper.wait()
        parent_end.close()
        child_end.close()


def test_entries_applied_before_start_are_delivered(make_dns: Callable[..., DnsProcess]) -> None:
    process = make_dns(start=False)
    process.apply([(1, NORMAL, register(1, "10.0.0.9"))])
    process.leader_contact(0.0)
    process.start(timeout_s=SETTLE_S)
    eventually(process, lambda: addresses(ask(process)) == {"10.0.0.9"}, what="the answer")


def test_servfail_without_leader_contact_and_recovery(make_dns: Callable[..., DnsProcess]) -> None:
    """SERVFAIL before any leader contact; answers from the first contact on while the agent
    reports None ("no leader now") every tick, for max_stale_s; SERVFAIL after that, never
    before; answers again as soon as a leader is heard from."""
    max_stale_s = 2.0
    process = make_dns(max_stale_s=max_stale_s)
    process.apply([(1, NORMAL, register(1, "10.0.0.1"))])
    assert ask(process).rcode() == dns.rcode.SERVFAIL
    contact = time.monotonic()  # the contact the child gets is this moment or a little later
    process.leader_contact(0.0)
    fresh_until = contact + max_stale_s  # so a reply received before this was answered fresh
    # NB: queries read in the same wakeup as the one before the contact are answered as stale
    # as it was; from the first fresh answer on, the contact is in effect.
    eventually(process, lambda: ask(process).rcode() == dns.rcode.NOERROR, what="the first fresh answer")
    fresh_replies = 0
    while True:
        process.leader_contact(None)
        reply = ask(process)
        received = time.monotonic()
        if reply.rcode() == dns.rcode.SERVFAIL:
            assert received > fresh_until, \
                f"SERVFAIL {received - contact:.3f} s after the contact (max_stale_s {max_stale_s}); {process.stats()}"
            break
        assert addresses(reply) == {"10.0.0.1"}, reply
        fresh_replies += 1
        assert received < fresh_until + SETTLE_S, "no SERVFAIL after max_stale_s without a leader"
        time.sleep(0.05)
    assert fresh_replies >= 1, "premise: at least one query answered within max_stale_s of the contact"
    process.leader_contact(0.0)
    eventually(process, lambda: ask(process).rcode() == dns.rcode.NOERROR, what="recovery")
    eventually(process, lambda: process.stats()["stale_queries"] >= 2, what="stale counted")


def test_a_silent_agent_leads_to_servfail(make_dns: Callable[..., DnsProcess]) -> None:
    """A hung agent sends nothing: the child's own clock turns its answers into SERVFAIL."""
    max_stale_s = 2.0
    process = make_dns(max_stale_s=max_stale_s)
    process.apply([(1, NORMAL, register(1, "10.0.0.1"))])
    process.leader_contact(0.0)
    sent = time.monotonic()  # the contact the child got is no later than this
    eventually(process, lambda: addresses(ask(process)) == {"10.0.0.1"}, what="the answer (fresh)")
    time.sleep(max(0.0, sent + max_stale_s + 0.1 - time.monotonic()))  # no calls at all
    assert ask(process).rcode() == dns.rcode.SERVFAIL


def test_leader_contact_age_is_honoured(make_dns: Callable[..., DnsProcess]) -> None:
    """A follower that last heard from its leader long ago is stale at once; one that heard from
    it within max_stale_s is not."""
    process = make_dns(max_stale_s=5.0)
    process.apply([(1, NORMAL, register(1, "10.0.0.1"))])
    process.leader_contact(6.0)
    eventually(process, lambda: process.stats().get("leader_known") is True, what="the report")
    assert ask(process).rcode() == dns.rcode.SERVFAIL  # 6 s ago, and the age only grows

    def fresh() -> bool:
        process.leader_contact(4.0)  # every tick, as the node loop does
        return ask(process).rcode() == dns.rcode.NOERROR

    eventually(process, fresh, what="fresh")


def test_status_shows_what_dns_does_now(make_dns: Callable[..., DnsProcess]) -> None:
    """``stats()["stale"]`` (the DNS column of `registry status`) follows the child's staleness
    at once, both ways, even with reports otherwise an hour apart: after the first leader
    contact it says fresh while DNS answers, and after max_stale_s without news it says stale."""
    max_stale_s = 3.0
    process = make_dns(max_stale_s=max_stale_s, stats_interval_s=3600.0)
    process.apply([(1, NORMAL, register(1, "10.0.0.1"))])
    eventually(process, lambda: process.stats().get("stale") is True, what="the first report (no leader yet)")
    contact = time.monotonic()
    process.leader_contact(0.0)
    eventually(process, lambda: process.stats().get("stale") is False, what="a report saying fresh")
    reply = ask(process)
    assert time.monotonic() < contact + max_stale_s, "premise: the report and a query within max_stale_s"
    assert addresses(reply) == {"10.0.0.1"}, reply  # fresh, as the report said
    stats = process.stats()
    assert stats["leader_contact_age_s"] is not None and stats["report_age_s"] is not None
    eventually(process, lambda: process.stats().get("stale") is True, timeout_s=max_stale_s + SETTLE_S,
               what="a report saying stale, max_stale_s after the contact")
    assert time.monotonic() > contact + max_stale_s
    assert ask(process).rcode() == dns.rcode.SERVFAIL


def test_a_setting_the_responder_refuses_fails_start_with_its_message(make_dns: Callable[..., DnsProcess]) -> None:
    process = make_dns(start=False, ttl_s=-1)
    with pytest.raises(DnsStartError, match=r"ttl_s must be an integer from 0 to 2\*\*31-1, got -1"):
        process.start(timeout_s=SETTLE_S)
    assert not process.alive()


def test_port_in_use_fails_start_with_the_childs_message(make_dns: Callable[..., DnsProcess]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((HOST, 0))
        port = busy.getsockname()[1]
        process = make_dns(start=False, address=(HOST, port))
        with pytest.raises(DnsStartError) as caught:
            process.start(timeout_s=SETTLE_S)
    assert caught.value.errno == errno.EADDRINUSE
    assert f"{HOST}:{port}" in str(caught.value) and "in use" in str(caught.value)
    assert not process.alive()


def test_a_responder_that_cannot_be_built_fails_start(make_dns: Callable[..., DnsProcess]) -> None:
    process = make_dns(start=False, responder="registry_dns.no_such_module:Responder")
    with pytest.raises(DnsStartError, match="no_such_module"):
        process.start(timeout_s=SETTLE_S)
    assert not process.alive()


def test_stop_ends_the_child_and_frees_the_port(make_dns: Callable[..., DnsProcess]) -> None:
    process = make_dns()
    address = process.address
    assert process.stop(timeout_s=SETTLE_S) == 0
    assert not process.alive()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(address)


def _process_state(pid: int) -> str | None:
    """The state letter of a process (Z: exited, not reaped), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def test_child_exits_when_its_parent_is_killed() -> None:
    """SIGKILL of the agent closes the feed; the child sees EOF and exits within a bound."""
    code = textwrap.dedent(f"""
        import sys, time
        from registry_dns.process import DnsProcess
        from registry_dns.settings import DnsSettings
        p = DnsProcess(DnsSettings(address=("127.0.0.1", 0)))
        p.start(timeout_s={SETTLE_S})
        p.leader_contact(0.0)
        print(p.pid, p.address[1], flush=True)
        time.sleep(120)
    """)
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = agent.stdout.readline()  # type: ignore[union-attr]
        child_pid, port = (int(x) for x in line.split())
        reply = dns.query.udp(dns.message.make_query(WEB, "A"), HOST, port=port, timeout=2)
        assert reply.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR)  # serving
        agent.kill()
        agent.wait(timeout=SETTLE_S)
        deadline = time.monotonic() + SETTLE_S
        while _process_state(child_pid) not in (None, "Z"):
            assert time.monotonic() < deadline, "the DNS child outlived its killed parent"
            time.sleep(0.02)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_a_gap_is_healed_with_a_snapshot(make_dns: Callable[..., DnsProcess]) -> None:
    """An entry lost on the way: the child asks, the parent sends snapshot(), answers converge."""
    node = Catalogue()
    process = make_dns(snapshot=node.to_bytes)
    process.leader_contact(0.0)
    entries = [(i, NORMAL, register(i, f"10.0.0.{i}")) for i in range(1, 6)]
    for index, _, data in entries:
        node.apply(index, data)
    process.apply(entries[:2] + entries[3:])  # 3 is missing
    eventually(process, lambda: addresses(ask(process)) == {f"10.0.0.{i}" for i in range(1, 6)}, what="healing")
    eventually(process, lambda: process.stats().get("restores") == 1, what="the report")
    stats = process.stats()
    assert stats["resyncs"] == 1 and stats["gaps"] == 1 and stats["applied_index"] == 5


def test_backlog_is_bounded_by_a_snapshot_when_the_child_is_stuck(make_dns: Callable[..., DnsProcess]) -> None:
    """A stopped child (SIGSTOP) cannot read: past max_backlog_bytes the parent replaces its
    backlog by one snapshot, and the child converges once it runs again."""
    node = Catalogue()
    process = make_dns(snapshot=node.to_bytes, max_backlog_bytes=200_000)
    process.leader_contact(0.0)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        index = 0
        for _ in range(100):  # 100 x 20 entries of ~6.7 KB: 13 MB, far over the socket buffers
            entries = []
            for _ in range(20):
                index += 1
                data = _big_register(index)
                node.apply(index, data)
                entries.append((index, NORMAL, data))
            process.apply(entries)
            assert process.stats()["backlog_bytes"] < 200_000 + 2 * 140_000
        assert process.stats()["overflows"] >= 1
    finally:
        os.kill(process.pid, signal.SIGCONT)
    eventually(process, lambda: process.stats().get("applied_index") == index, timeout_s=2 * SETTLE_S,
               what="convergence")
    assert addresses(ask(process, f"s{index % 7}.service.registry.", tcp=True)) == {"10.0.0.1"}


def _big_register(seq: int) -> bytes:
    """Re-register one instance of service s{seq % 7} with 6.5 KB of meta (the catalogue stays small)."""
    meta = {f"k{i}": f"{seq}-" + "v" * 400 for i in range(16)}
    return encode_request(Request("c1", seq, Register(f"s{seq % 7}", "10.0.0.1", 8080, meta=meta)))


def test_backlog_without_a_snapshot_source_is_kept_and_measured(make_dns: Callable[..., DnsProcess]) -> None:
    process = make_dns(max_backlog_bytes=10_000)
    process.leader_contact(0.0)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        entries = [(i, NORMAL, _big_register(i)) for i in range(1, 2001)]  # 13 MB
        for start in range(0, len(entries), 20):
            process.apply(entries[start : start + 20])
        assert process.stats()["backlog_bytes"] > 1_000_000
    finally:
        os.kill(process.pid, signal.SIGCONT)
    eventually(process, lambda: process.stats().get("applied_index") == 2000, timeout_s=2 * SETTLE_S,
               what="delivery")
    stats = process.stats()
    assert stats["backlog_bytes"] == 0 and stats["backlog_peak_bytes"] > 10_000 and stats["overflows"] == 0


def test_restore_replaces_the_childs_catalogue(make_dns: Callable[..., DnsProcess]) -> None:
    """A node that starts from a snapshot hands it over; entries continue after its index."""
    node = Catalogue()
    for i in range(1, 11):
        node.apply(i, register(i, f"10.0.0.{i}"))
    process = make_dns()
    process.leader_contact(0.0)
    process.restore(node.to_bytes())
    process.apply([(11, NORMAL, deregister(11, "10.0.0.1"))])
    want = {f"10.0.0.{i}" for i in range(2, 11)}
    eventually(process, lambda: addresses(ask(process, tcp=True)) == want, what="the restored view")


def test_child_that_dies_is_reported(make_dns: Callable[..., DnsProcess]) -> None:
    process = make_dns()
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    eventually(process, lambda: not process.alive(), what="death")
    for i in range(1, 100):
        process.apply([(i, NORMAL, register(i, "10.0.0.1"))])  # never raises into the node loop
        process.leader_contact(0.0)
    stats = process.stats()
    assert stats["alive"] is False and "error" in stats
    assert stats["backlog_bytes"] == 0  # nothing piles up for a child that is gone


def test_responder_settings_reach_the_child(make_dns: Callable[..., DnsProcess]) -> None:
    """domain, ttl_s and nameservers given to DnsProcess are the child's responder's."""
    process = make_dns(domain="example.", ttl_s=77, nameservers=[("n1", "127.0.0.1"), ("n2", "127.0.0.2")])
    process.leader_contact(0.0)
    process.apply([(1, NORMAL, register(1, "10.0.0.1"))])
    port = process.address[1]
    eventually(process, lambda: bool(dns.query.udp(dns.message.make_query("web.service.example.", "A"), HOST,
                                                   port=port, timeout=2).answer), what="the answer")
    reply = dns.query.udp(dns.message.make_query("web.service.example.", "A"), HOST, port=port, timeout=2)
    assert reply.answer[0].ttl == 77
    ns = dns.query.udp(dns.message.make_query("example.", "NS"), HOST, port=port, timeout=2)
    assert sorted(str(rd.target) for rrset in ns.answer for rd in rrset) == ["n1.node.example.", "n2.node.example."]
