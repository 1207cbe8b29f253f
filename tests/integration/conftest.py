"""Fixtures for the real-process tests: clusters that are always torn down, however a test
ends, and whose node logs are attached to the report of a test that fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster

_CLUSTERS = pytest.StashKey[list[Cluster]]()
LOG_TAIL_LINES = 40


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    report = yield
    # NB: the call phase ends before fixture teardown, so the processes and logs are still there.
    if report.failed:
        for i, cluster in enumerate(item.stash.get(_CLUSTERS, [])):
            report.sections.append((f"node logs of cluster {i} ({report.when})", cluster.tails(LOG_TAIL_LINES)))
    return report


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """A factory: ``make_cluster(n=3, start=True, wait_leader=True)`` -> a Cluster under
    tmp_path, started and with an agreed leader unless told otherwise. Every cluster made is
    closed at teardown (SIGTERM, then SIGKILL after a bound)."""
    made: list[Cluster] = []
    request.node.stash[_CLUSTERS] = made

    def make(n: int = 3, *, start: bool = True, wait_leader: bool = True, **kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", n, **kwargs)
        made.append(cluster)
        if start:
            cluster.start()
            cluster.wait_answering()
            if wait_leader:
                cluster.wait_for_leader()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def attach_cluster_logs(request: pytest.FixtureRequest) -> Callable[[Cluster], Cluster]:
    """``attach_cluster_logs(cluster)``: add the node logs of a cluster made elsewhere (e.g. by a
    module-scoped fixture) to this test's report if it fails; returns the cluster. NB: use it
    instead of ``make_cluster`` in a test, not with it (``make_cluster`` sets the test's list)."""

    def attach(cluster: Cluster) -> Cluster:
        request.node.stash.setdefault(_CLUSTERS, []).append(cluster)
        return cluster

    return attach


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A started 3-node cluster with an agreed leader."""
    return make_cluster(3)
