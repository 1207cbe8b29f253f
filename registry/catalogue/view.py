"""What readers see: an immutable view of the catalogue's services at one applied index.

The catalogue publishes a new ``CatalogueView`` after every entry it applies or skips, by
swapping one reference; readers on other threads (DNS, client reads) take ``catalogue.view``
once and read that object, which never changes. Nothing here performs I/O or takes a lock.

Cost: a view shares everything it did not change with the view before it. Services live in 256
buckets chosen by the name's hash; a write copies the one service's tuple of instances, the one
bucket that holds it and the tuple of buckets, never the other services. So an apply costs
O(instances of that service + services / 256), not O(catalogue).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from .model import Instance
from .validation import ValidationError, validate_instance

# NB: buckets are chosen with the built-in str hash, which is salted per process. That is safe:
# placement is never observable (iteration, digests and snapshots go by sorted name), exactly as
# a dict's own hashing is not.
_BUCKETS = 256
_MASK = _BUCKETS - 1
_by_id = attrgetter("id")


class _Service:
    """One service's instances, sorted by id, and its tag index, built on first use.

    NB: the tag index is filled lazily from whichever thread asks first. Two threads may both
    build it; each builds the same value and the attribute assignment is atomic, so either wins.
    """

    __slots__ = ("instances", "_by_tag")

    def __init__(self, instances: tuple[Instance, ...]) -> None:
        self.instances = instances
        self._by_tag: dict[str, tuple[Instance, ...]] | None = None

    def tagged(self, tag: str) -> tuple[Instance, ...]:
        by_tag = self._by_tag
        if by_tag is None:
            groups: dict[str, list[Instance]] = {}
            for instance in self.instances:
                for t in instance.tags:
                    groups.setdefault(t, []).append(instance)
            by_tag = {t: tuple(group) for t, group in groups.items()}
            self._by_tag = by_tag
        return by_tag.get(tag, ())


_EMPTY_BUCKET: Mapping[str, _Service] = MappingProxyType({})


class ServiceMap(Mapping[str, tuple[Instance, ...]]):
    """Read-only mapping: lowercase service name -> its instances, sorted by id.

    Only services with at least one instance are present. Iteration is in sorted name order.
    Lookups are exact (use ``CatalogueView.instances`` for case-insensitive ones). Immutable:
    item and attribute assignment raise; a change makes a new map (``with_instances``) that
    shares every untouched bucket.
    """

    __slots__ = ("_buckets", "_len", "_names")

    # Invariant: _len == number of names over all buckets; no bucket maps a name to ().
    # Invariant: _names is None or the sorted tuple of all names (built on first use; benign race).

    def __init__(self) -> None:
        object.__setattr__(self, "_buckets", (_EMPTY_BUCKET,) * _BUCKETS)
        object.__setattr__(self, "_len", 0)
        object.__setattr__(self, "_names", ())

    @classmethod
    def _make(
        cls, buckets: tuple[Mapping[str, _Service], ...], length: int, names: tuple[str, ...] | None
    ) -> ServiceMap:
        new = cls.__new__(cls)
        object.__setattr__(new, "_buckets", buckets)
        object.__setattr__(new, "_len", length)
        object.__setattr__(new, "_names", names)
        return new

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, tuple[Instance, ...]]]) -> ServiceMap:
        """A map of the given (name, instances) pairs, built in one pass: O(services).

        The caller guarantees names are unique and instances canonical, non-empty, sorted by id.
        """
        buckets: list[dict[str, _Service]] = [{} for _ in range(_BUCKETS)]
        length = 0
        for name, instances in items:
            assert instances, f"service {name!r} has no instances"
            buckets[hash(name) & _MASK][name] = _Service(instances)
            length += 1
        return cls._make(tuple(MappingProxyType(b) if b else _EMPTY_BUCKET for b in buckets), length, None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _entry(self, name: str) -> _Service | None:
        return self._buckets[hash(name) & _MASK].get(name)

    def __getitem__(self, name: str) -> tuple[Instance, ...]:
        entry = self._buckets[hash(name) & _MASK].get(name)
        if entry is None:
            raise KeyError(name)
        return entry.instances

    def get(self, name: str, default: Any = None) -> Any:
        entry = self._buckets[hash(name) & _MASK].get(name)
        return default if entry is None else entry.instances

    def __contains__(self, name: object) -> bool:
        return name in self._buckets[hash(name) & _MASK]

    def __len__(self) -> int:
        return self._len

    def names(self) -> tuple[str, ...]:
        """Every service name, sorted."""
        names = self._names
        if names is None:
            names = tuple(sorted(name for bucket in self._buckets for name in bucket))
            object.__setattr__(self, "_names", names)
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"ServiceMap({dict(self.items())!r})"

    def with_instances(self, name: str, instances: tuple[Instance, ...]) -> ServiceMap:
        """A new map in which ``name`` has ``instances`` (sorted by id), or is absent if empty.

        The caller guarantees ``instances`` are canonical, of service ``name`` and sorted by id.
        """
        i = hash(name) & _MASK
        old = self._buckets[i]
        existed = name in old
        bucket = dict(old)
        if instances:
            bucket[name] = _Service(instances)
        else:
            bucket.pop(name, None)
        buckets = self._buckets[:i] + (MappingProxyType(bucket),) + self._buckets[i + 1 :]
        exists = bool(instances)
        names = self._names if existed == exists else None
        return ServiceMap._make(buckets, self._len + exists - existed, names)


_EMPTY_MAP = ServiceMap()


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class CatalogueView:
    """The catalogue's services as of ``applied_index``. Immutable; safe to share between threads.

    Views compare and hash by identity (usable as cache keys); compare ``services`` for content.

    - ``applied_index``: the last log index applied (or skipped) when this view was published.
    - ``version``: the index of the last entry that changed ``services`` (0: never changed). It
      changes exactly when the content changes, and since every node applies the same log, one
      version names one content on every node: a cache of answers keyed by it (DNS) stays valid.
    - ``services``: lowercase service name -> instances sorted by id (a read-only ``ServiceMap``).
    """

    applied_index: int
    version: int
    services: ServiceMap

    @classmethod
    def empty(cls) -> CatalogueView:
        return cls(applied_index=0, version=0, services=_EMPTY_MAP)

    @classmethod
    def build(
        cls, instances: Iterable[Instance], *, applied_index: int = 0, version: int | None = None
    ) -> CatalogueView:
        """A view holding ``instances`` (validated and normalised). For tests and tools (e.g. DNS tests).

        Raises ValidationError for an invalid instance or two with the same service and id.
        """
        by_service: dict[str, dict[str, Instance]] = {}
        for raw in instances:
            instance = validate_instance(raw)
            ids = by_service.setdefault(instance.service, {})
            if instance.id in ids:
                raise ValidationError(
                    "instance_id", f"service {instance.service!r} has two instances with id {instance.id!r}"
                )
            ids[instance.id] = instance
        services = ServiceMap.from_items(
            (name, tuple(ids[k] for k in sorted(ids))) for name, ids in by_service.items()
        )
        return cls(
            applied_index=applied_index,
            version=applied_index if version is None else version,
            services=services,
        )

    def _service(self, service: str) -> _Service | None:
        entry = self.services._entry(service)
        if entry is None and service.isascii():
            lowered = service.lower()
            if lowered != service:
                entry = self.services._entry(lowered)
        return entry

    def instances(self, service: str, tag: str | None = None) -> tuple[Instance, ...]:
        """The instances of ``service`` (any case), sorted by id; only those tagged ``tag`` if given.

        () for an unknown service or tag. O(1) after the first query of a tag on a service version.
        """
        entry = self._service(service)
        if entry is None:
            return ()
        if tag is None:
            return entry.instances
        if not tag.isascii():
            return ()
        return entry.tagged(tag.lower())

    def instance(self, service: str, instance_id: str) -> Instance | None:
        """The instance of ``service`` (any case) with this id (case-sensitive), or None."""
        entry = self._service(service)
        if entry is None:
            return None
        instances = entry.instances
        i = bisect_left(instances, instance_id, key=_by_id)
        return instances[i] if i < len(instances) and instances[i].id == instance_id else None

    def service_names(self) -> tuple[str, ...]:
        """Every service with at least one instance, lowercase, sorted."""
        return self.services.names()

    def __contains__(self, service: str) -> bool:
        """True if ``service`` (any case) has at least one instance."""
        return self._service(service) is not None

    def __repr__(self) -> str:
        return (
            f"CatalogueView(applied_index={self.applied_index}, version={self.version}, "
            f"services={len(self.services)})"
        )
