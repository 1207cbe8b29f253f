"""DNS responder micro-benchmark (not a test): answers/s of ``Responder.answer``, no sockets.

    .venv/bin/python bench/dns_resolver.py [--seconds 0.5] [--instances 1,10,100]

For N instances behind one name, and for A (shuffled), AAAA (NODATA: the services are IPv4-only)
and SRV (with the targets' addresses in the additional section), without and with EDNS (1232):

- hit:        the answer is cached for this catalogue version (the server's steady state);
- revalidate: another service changed since the answer was built: the O(1) re-check;
- miss:       this service changed before every query, so every answer is rebuilt (Zone.plan,
              dnslib encoding of each record, the first variant) - the worst case under writes.

Then the cost of what the fast path declines (the same query with a trailing octet: dnslib parses
it, the answer still comes from the cache) and of a flood of random names (every one a miss,
NXDOMAIN). One thread, one core; each row is the best of 5 rounds. The issue's target is >= 50,000
queries/s per core for the whole server loop, socket calls included, so the hit path has to be
several times faster than that on its own.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import dns.message

from registry.catalogue import CatalogueView, Instance
from registry_dns.resolver import Responder


def instances(service: str, n: int) -> list[Instance]:
    return [Instance(id=f"{service}-{i}", service=service, address=f"10.1.{i // 250}.{i % 250 + 1}",
                     port=8000 + i, tags=("prod",), meta=(("version", "1.0"),)) for i in range(n)]


def query(name: str, rdtype: str, *, edns: bool) -> bytes:
    return dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232).to_wire()


def rate(fn: Callable[[], object], seconds: float, batch: int = 1000) -> float:
    """Calls per second of ``fn``: the best of 5 rounds of about ``seconds / 5`` each."""
    best = 0.0
    for _ in range(5):
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 5:
            for _ in range(batch):
                fn()
            count += batch
        best = max(best, count / elapsed)
    return best


def row(label: str, per_s: float, size: int | str = "") -> None:
    print(f"{label:<40}{per_s:>12,.0f}{1e6 / per_s:>10.2f}{size:>9}")


def bench_name(n: int, seconds: float) -> None:
    service = f"s{n}"
    mine = instances(service, n)
    others = instances("other", 3)
    name = f"{service}.service.registry."
    for rdtype, edns in (("A", False), ("A", True), ("AAAA", False), ("SRV", False), ("SRV", True)):
        label = f"{n:>3} inst {rdtype:<4} {'edns' if edns else 'plain':<5}"
        packet = query(name, rdtype, edns=edns)

        responder = Responder(nameservers=[("n1", "127.0.0.1")], rng=random.Random(1))
        base = CatalogueView.build(mine + others, applied_index=10)
        responder.update(base)
        reply = responder.answer(packet)
        assert reply is not None
        row(f"{label} hit", rate(lambda: responder.answer(packet), seconds), len(reply))

        # Views as the catalogue publishes them after a write to "other": this service's instance
        # tuple is shared, the services map is not.
        changed = [CatalogueView(applied_index=11 + i, version=11 + i,
                                 services=base.services.with_instances("other", tuple(others[: 1 + i % 3])))
                   for i in range(64)]
        step = iter(range(1 << 62))

        def revalidate() -> None:
            responder.update(changed[next(step) & 63])
            responder.answer(packet)

        row(f"{label} revalidate", rate(revalidate, seconds, 64))

        rebuilt = [CatalogueView(applied_index=100 + i, version=100 + i,
                                 services=base.services.with_instances(service, tuple(mine)))
                   for i in range(64)]

        def miss() -> None:
            responder.update(rebuilt[next(step) & 63])
            responder.answer(packet)

        row(f"{label} miss", rate(miss, seconds, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per row")
    parser.add_argument("--instances", default="1,10,100", help="comma-separated instance counts")
    args = parser.parse_args()

    print(f"{'case':<40}{'answers/s':>12}{'us each':>10}{'reply B':>9}")
    for n in (int(x) for x in args.instances.split(",")):
        bench_name(n, args.seconds)

    responder = Responder(rng=random.Random(1))
    responder.update(CatalogueView.build(instances("web", 10), applied_index=10))
    packet = query("web.service.registry.", "A", edns=False)
    responder.answer(packet)
    declined = packet + b"\x00"                        # trailing octet: the fast path declines
    row("declined by the fast path (dnslib)", rate(lambda: responder.answer(declined), args.seconds))
    names = [query(f"x{i}.service.registry.", "A", edns=False) for i in range(20_000)]
    step = iter(range(1 << 62))
    row("random names (NXDOMAIN, all misses)", rate(lambda: responder.answer(names[next(step) % 20_000]),
                                                   args.seconds, 100))
    print(f"responder counters: {responder.counters}")


if __name__ == "__main__":
    main()
