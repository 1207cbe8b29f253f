"""Health checks end to end (issue 14, point 7): real agents, real listeners, real DNS queries.

- A TCP-checked service that stops listening drops out of every node's DNS within the
  configured bound, and comes back when it listens again.
- An HTTP check that answers 500 does the same.
- A TTL instance expires without heartbeats and stays with them, renewed through the leader
  (answered under its lease) and through followers (relayed in batches).
- A leader killed while heartbeats flow expires nothing that was renewed in time.

Deadlines come from the check's own settings (interval x failures, the TTL) plus an election
timeout and a margin for a loaded machine; the measured delays are printed.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from registry.client import NotFound

from .cluster import ELECTION_TIMEOUT_MAX_S, LOAD_MARGIN_S, Cluster, poll

INTERVAL_S = 1.0
FAILURES = 3
SUCCESSES = 2
TTL_S = 3.0
# NB: what issue 14 promises: gone from every node's DNS within interval x failures + 2 s; the
# test allows that plus an election timeout and the load margin (one commit, one DNS feed).
DETECT_BOUND_S = INTERVAL_S * FAILURES + 2.0 + ELECTION_TIMEOUT_MAX_S + LOAD_MARGIN_S
RECOVER_BOUND_S = INTERVAL_S * SUCCESSES + 2.0 + ELECTION_TIMEOUT_MAX_S + LOAD_MARGIN_S
TTL_BOUND_S = TTL_S + 2.0 + ELECTION_TIMEOUT_MAX_S + LOAD_MARGIN_S


def a_records(server: tuple[str, int], name: str) -> set[str] | None:
    """The A answer of one node's DNS (None on a timeout or an rcode other than NOERROR)."""
    query = dns.message.make_query(name, dns.rdatatype.A)
    try:
        reply = dns.query.udp(query, server[0], port=server[1], timeout=2.0)
    except (dns.exception.Timeout, OSError):
        return None
    if reply.rcode() != dns.rcode.NOERROR:
        return None
    return {rr.address for rrset in reply.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A}


def wait_dns(cluster: Cluster, name: str, want: set[str], timeout_s: float) -> float:
    """Seconds until every node's DNS answers exactly ``want`` for ``name``."""
    started = time.monotonic()
    servers = cluster.dns_addresses()

    def check() -> bool | None:
        return all(a_records(server, name) == want for server in servers.values()) or None

    poll(f"every node's DNS to answer {sorted(want)} for {name}", check, timeout_s)
    return time.monotonic() - started


@contextmanager
def tcp_listener(port: int = 0) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.2", port))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()


class _Status(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(type(self).code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_tcp_service_that_stops_listening_leaves_every_dns_and_comes_back(cluster: Cluster) -> None:
    """Killing the listener drops the instance from every node's DNS within interval x failures
    (+ the margins); listening again brings it back after `successes` good probes."""
    with tcp_listener() as sock:
        port = sock.getsockname()[1]
        with cluster.client() as client:
            client.register("web", "127.0.0.2", port, check={"kind": "tcp", "interval_ms": int(INTERVAL_S * 1000),
                                                              "timeout_ms": 1000, "failures": FAILURES,
                                                              "successes": SUCCESSES})
            client.register("web", "127.0.0.3", 80)  # unchecked: always served
        wait_dns(cluster, "web.service.registry", {"127.0.0.2", "127.0.0.3"}, DETECT_BOUND_S)
        time.sleep(INTERVAL_S * (FAILURES + 1))  # several probes pass: it stays
        assert all(a_records(s, "web.service.registry") == {"127.0.0.2", "127.0.0.3"}
                   for s in cluster.dns_addresses().values())
    gone = wait_dns(cluster, "web.service.registry", {"127.0.0.3"}, DETECT_BOUND_S)
    print(f"TCP: gone from every node's DNS {gone:.2f} s after the listener closed")
    with cluster.client() as client:
        [web] = [i for i in client.services("web")["web"] if i.address == "127.0.0.2"]
        assert web.status == "critical" and web.output
    with tcp_listener(port):
        back = wait_dns(cluster, "web.service.registry", {"127.0.0.2", "127.0.0.3"}, RECOVER_BOUND_S)
    print(f"TCP: back in every node's DNS {back:.2f} s after listening again")


def test_an_http_check_that_answers_500_leaves_dns_and_comes_back_on_200(cluster: Cluster) -> None:
    handler = type("Handler", (_Status,), {"code": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.4", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.4:{server.server_address[1]}/health"
        with cluster.client() as client:
            client.register("api", "127.0.0.4", 9000, check={"kind": "http", "url": url, "interval_ms": 1000,
                                                              "timeout_ms": 1000, "failures": FAILURES,
                                                              "successes": SUCCESSES})
        wait_dns(cluster, "api.service.registry", {"127.0.0.4"}, DETECT_BOUND_S)
        handler.code = 500
        gone = wait_dns(cluster, "api.service.registry", set(), DETECT_BOUND_S)
        print(f"HTTP: gone from every node's DNS {gone:.2f} s after it began answering 500")
        with cluster.client() as client:
            [api] = client.services("api")["api"]
            assert api.status == "critical" and "500" in api.output
        handler.code = 200
        back = wait_dns(cluster, "api.service.registry", {"127.0.0.4"}, RECOVER_BOUND_S)
        print(f"HTTP: back {back:.2f} s after answering 200 again")
    finally:
        server.shutdown()
        server.server_close()


def test_a_ttl_instance_stays_with_heartbeats_and_expires_without(cluster: Cluster) -> None:
    """Renewed every TTL/3 through different nodes it stays passing (and costs no log entry);
    when renewals stop it turns critical and leaves DNS; a renewal brings it back."""
    with cluster.client() as client:
        reg = client.register("job", "127.0.0.5", 7000, check={"kind": "ttl", "ttl_ms": int(TTL_S * 1000)})
        wait_dns(cluster, "job.service.registry", {"127.0.0.5"}, TTL_BOUND_S)
        index_before = cluster.status(cluster.wait_for_leader().node).commit
        names = cluster.names
        for i in range(int(3 * TTL_S / (TTL_S / 3))):  # three TTLs of renewals, each through another node
            with cluster.client(names[i % len(names)]) as one:
                one.heartbeat(reg.instance_id, "job")
            time.sleep(TTL_S / 3)
        [job] = client.services("job")["job"]
        assert job.status == "passing"
        leader = cluster.wait_for_leader()
        # Steady state writes nothing: the renewals added no entry (at most a leader's no-op).
        assert cluster.status(leader.node).commit <= index_before + 1
        # Both renewal paths ran: the leader's under its lease, and the followers' relayed in batches.
        renewals = {n: (cluster.status(n).health or {}).get("renewals") or {} for n in names}
        assert renewals[leader.node].get("by_lease", 0) > 0, renewals
        assert renewals[leader.node].get("renewals", 0) >= 2, renewals
        assert sum(r.get("forwarded", 0) for n, r in renewals.items() if n != leader.node) > 0, renewals
        gone = wait_dns(cluster, "job.service.registry", set(), TTL_BOUND_S + TTL_S)
        print(f"TTL: gone from every node's DNS {gone + TTL_S / 3:.2f} s after the last renewal (TTL {TTL_S:g} s)")
        client.heartbeat(reg.instance_id, "job")
        wait_dns(cluster, "job.service.registry", {"127.0.0.5"}, TTL_BOUND_S)


def test_a_leader_killed_during_heartbeats_expires_nothing_renewed_in_time(cluster: Cluster) -> None:
    """Renewals keep going through the followers while the leader is killed -9: the new leader
    restarts every TTL clock from its election, so no renewed instance ever turns critical."""
    leader = cluster.wait_for_leader()
    followers = [n for n in cluster.names if n != leader.node]
    ids = []
    with cluster.client(followers) as client:
        for i in range(5):
            ids.append(client.register("kept", f"127.0.1.{i + 1}", 7000,
                                       check={"kind": "ttl", "ttl_ms": int(TTL_S * 1000)}).instance_id)
        stop = threading.Event()
        errors: list[BaseException] = []

        def renew() -> None:
            with cluster.client(followers, timeout_s=TTL_S) as renewer:
                while not stop.is_set():
                    for instance_id in ids:
                        try:
                            renewer.heartbeat(instance_id, "kept")
                        except NotFound as e:  # the instance was deregistered: a real failure
                            errors.append(e)
                        except Exception:  # noqa: BLE001: no leader for a moment; the next round renews
                            pass
                    stop.wait(TTL_S / 6)

        thread = threading.Thread(target=renew, daemon=True)
        thread.start()
        try:
            time.sleep(TTL_S)
            cluster.kill(leader.node)
            new = cluster.wait_for_leader(names=followers)
            assert new.node != leader.node
            time.sleep(2 * TTL_S)  # two TTLs under the new leader, renewals flowing
            statuses = {i.id: i.status for i in client.services("kept")["kept"]}
        finally:
            stop.set()
            thread.join(10)
    assert not errors
    assert statuses == dict.fromkeys(ids, "passing")
    cluster.start([leader.node])
