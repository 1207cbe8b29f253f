"""The snapshot ops of the client protocol: `Client.snapshot_save` / `snapshot_restore` against
fake nodes, and the server's request limits (registry/node/client_api.py): only
`snapshot_restore` may exceed MAX_REQUEST_BYTES."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from registry.catalogue.validation import RESTORE_MAX_BYTES
from registry.client import Client, Restoration, SavedSnapshot, Unavailable, ValidationFailed
from registry.node.client_api import (
    MAX_REQUEST_BYTES,
    MAX_RESTORE_REQUEST_BYTES,
    OPS,
    BadRequest,
    BadRequestWithId,
    decode_request,
)

from .fake_server import error, ok

SAVED = {"index": 12, "term": 3, "voters": [5, 7, 9], "learners": [], "services": 2, "instances": 3,
         "sessions": 1, "digest": "ab" * 32, "snapshot": b"RCAT\x00\x01" + bytes(32)}


def saving(request: dict[str, Any]) -> dict[str, Any]:
    if request["op"] == "snapshot_save":
        return ok(SAVED)
    if request["op"] == "snapshot_restore":
        return ok({"services": 2, "instances": 3, "index": 20})
    return error("bad_request")


def test_snapshot_save_returns_the_snapshot_and_its_metadata(fake) -> None:
    """snapshot_save sends no arguments and parses index, term, membership, counts and the bytes."""
    server = fake(saving)
    with Client([server.address], timeout_s=2) as client:
        got = client.snapshot_save()
    assert got == SavedSnapshot(12, 3, (5, 7, 9), (), 2, 3, 1, "ab" * 32, SAVED["snapshot"])
    assert "snapshot" not in repr(got).replace("SavedSnapshot", "")
    (request,) = server.received()
    assert request["op"] == "snapshot_save" and request["args"] == {}


def test_snapshot_save_treats_a_reply_without_bytes_as_malformed(fake) -> None:
    """A reply whose snapshot is not a msgpack bin counts as a failed attempt (Unavailable)."""
    server = fake(lambda r: ok({**SAVED, "snapshot": "text"}))
    with Client([server.address], timeout_s=0.5) as client, pytest.raises(Unavailable, match="malformed"):
        client.snapshot_save()


def test_snapshot_restore_is_a_write_retried_with_the_same_seq(fake) -> None:
    """snapshot_restore carries client, seq and the snapshot as bin; after a retryable error the
    next server gets the same client and seq (at most once)."""
    first = fake(lambda r: error("no_leader"))
    second = fake(saving)
    data = b"RCAT" + bytes(100)
    with Client([first.address, second.address], timeout_s=5) as client:
        got = client.snapshot_restore(data)
    assert got == Restoration(services=2, instances=3, index=20)
    (a,), (b,) = first.received(), second.received()
    assert a["op"] == b["op"] == "snapshot_restore"
    assert a["args"] == b["args"] and a["args"]["snapshot"] == data
    assert set(a["args"]) == {"client", "seq", "snapshot"}


def test_snapshot_restore_checks_its_argument_before_sending(fake) -> None:
    server = fake(saving)
    with Client([server.address], timeout_s=1) as client:
        for bad in ("text", b"", bytes(RESTORE_MAX_BYTES + 1)):
            with pytest.raises(ValidationFailed) as caught:
                client.snapshot_restore(bad)  # type: ignore[arg-type]
            assert caught.value.field == "snapshot" and caught.value.code is None
    assert server.received() == []


def test_an_invalid_restore_is_not_retried(fake) -> None:
    """`invalid` (a bad snapshot, refused by the node) is final: ValidationFailed, one attempt."""
    first = fake(lambda r: error("invalid", "not a valid catalogue snapshot"))
    second = fake(saving)
    with Client([first.address, second.address], timeout_s=2) as client, pytest.raises(ValidationFailed):
        client.snapshot_restore(b"RCAT" + bytes(10))
    assert second.received() == []


def _frame(op: str, args: dict[str, Any], rid: int = 1) -> bytes:
    return msgpack.packb({"v": 1, "id": rid, "op": op, "args": args}, use_bin_type=True)


def test_the_server_accepts_the_snapshot_ops() -> None:
    assert {"snapshot_save", "snapshot_restore"} <= set(OPS)
    assert decode_request(b"i", _frame("snapshot_save", {})).op == "snapshot_save"


def test_only_a_restore_may_exceed_the_request_limit() -> None:
    """A snapshot_restore up to MAX_RESTORE_REQUEST_BYTES is decoded; any other op that large is
    refused with its id (bad_request); anything larger is refused before decoding."""
    big = bytes(MAX_REQUEST_BYTES + 1)
    request = decode_request(b"i", _frame("snapshot_restore", {"client": "c", "seq": 1, "snapshot": big}))
    assert request.args["snapshot"] == big
    with pytest.raises(BadRequestWithId, match="exceeds") as caught:
        decode_request(b"i", _frame("register", {"meta": {"k": "x" * (MAX_REQUEST_BYTES + 1)}}, rid=9))
    assert caught.value.request_id == 9
    with pytest.raises(BadRequest, match="exceeds"):
        decode_request(b"i", bytes(MAX_RESTORE_REQUEST_BYTES + 1))
    assert MAX_RESTORE_REQUEST_BYTES > RESTORE_MAX_BYTES
