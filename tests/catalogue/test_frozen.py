"""freeze(): the node's off-loop snapshot serialiser equals Catalogue.to_bytes() byte for byte."""

from __future__ import annotations

from registry.catalogue import Catalogue, Deregister, Register, Request, encode_request
from registry.catalogue.frozen import freeze


def fill(catalogue: Catalogue, start: int, count: int) -> None:
    for k in range(start, start + count):
        index = catalogue.applied_index + 1
        if k % 7 == 3:
            command = Deregister(f"svc-{k % 40}", address=f"10.0.{(k - 1) % 250}.{(k - 1) % 200}", port=80)
        else:
            command = Register(f"svc-{k % 40}", f"10.0.{k % 250}.{k % 200}", 80, tags=("a", f"t{k % 3}"),
                               meta={"k": str(k)})
        if k % 11 == 0:
            catalogue.skip(index)
        else:
            catalogue.apply(index, encode_request(Request(f"client-{k % 57}", k, command)))


def test_frozen_bytes_equal_to_bytes_at_the_freeze_whatever_is_applied_after() -> None:
    """The state captured by freeze() is serialised unchanged while the catalogue moves on."""
    catalogue = Catalogue(max_sessions=50)  # evictions too
    fill(catalogue, 1, 3000)
    expected, digest = catalogue.to_bytes(), catalogue.digest()
    frozen = freeze(catalogue)
    fill(catalogue, 3001, 500)
    assert catalogue.to_bytes() != expected
    data = frozen.to_bytes()
    assert data == expected and frozen.applied_index == Catalogue.from_bytes(data, max_sessions=50).applied_index
    assert Catalogue.from_bytes(data, max_sessions=50).digest() == digest


def test_an_empty_catalogue_freezes_too() -> None:
    assert freeze(Catalogue()).to_bytes() == Catalogue().to_bytes()


def test_thaw_equals_from_bytes() -> None:
    """thaw() (no per-field validation) rebuilds the same state as from_bytes()."""
    from registry.catalogue.frozen import thaw

    catalogue = Catalogue(max_sessions=50)
    fill(catalogue, 1, 2000)
    data = catalogue.to_bytes()
    thawed = thaw(data, max_sessions=50)
    assert thawed.digest() == Catalogue.from_bytes(data, max_sessions=50).digest() == catalogue.digest()
    assert thawed.view.applied_index == catalogue.applied_index and thawed.to_bytes() == data
    assert thawed.view.instances("svc-1") == catalogue.view.instances("svc-1")


def test_thaw_refuses_damaged_bytes() -> None:
    import pytest

    from registry.catalogue import SnapshotError
    from registry.catalogue.frozen import thaw

    catalogue = Catalogue()
    fill(catalogue, 1, 100)
    data = bytearray(catalogue.to_bytes())
    for damaged in (bytes(data[:-1]), bytes(data[:40]), b"XXXX" + bytes(data[4:]),
                    bytes(data[:-5]) + bytes([data[-5] ^ 1]) + bytes(data[-4:])):
        with pytest.raises(SnapshotError):
            thaw(damaged)
    with pytest.raises(SnapshotError, match="sessions"):
        thaw(bytes(data), max_sessions=1)
