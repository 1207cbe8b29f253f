"""The server side of the operator's snapshot ops: ``snapshot_save`` and ``snapshot_restore``.

Called from the node loop's client dispatch (``Node._receive_clients``) on the loop's thread, and
only through the loop's own machinery, so there is no second path for reads or writes:

- ``snapshot_save`` is a linearizable read (Raft §6.4): a ReadIndex read like ``services``; once
  the local catalogue has applied the read index, the node answers with its whole catalogue
  (``Catalogue.to_bytes()``, which includes client sessions) at its applied index, and that
  entry's term and the membership, so the client can write a snapshot file (storage.snapfile).
- ``snapshot_restore`` is a write like ``register``: a ``Restore`` command under the client's
  id and seq (at most once), proposed by the leader or forwarded to it, answered once applied
  here. Every node, and every node's DNS child (which applies the same entries to its own
  replica), replaces its services at the same log index.

NB: a restore entry is large (up to ``catalogue.MAX_RESTORE_BYTES``), so it is re-sent to the
leader only every ``RESTORE_RETRY_S`` rather than every ``loop.RETRY_INTERVAL_S``, and waited
for up to ``RESTORE_TIMEOUT_S``: each re-send may append another copy to the log (applied once,
by the session, but replicated and stored each time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from registry.catalogue import (
    Request,
    Restore,
    SnapshotError,
    ValidationError,
    check_snapshot_envelope,
    encode_request,
)

if TYPE_CHECKING:
    from .client_api import ClientRequest
    from .loop import Node, _PendingRead

OPS = frozenset({"snapshot_save", "snapshot_restore"})
RESTORE_TIMEOUT_S = 30.0  # the node answers `timeout` after this; the client retries, same seq
RESTORE_RETRY_S = 5.0


def handle(node: Node, request: ClientRequest, now: float) -> None:
    """Start one snapshot op. Raises ValidationError for bad arguments (the loop answers `invalid`)."""
    if request.op == "snapshot_save":
        _start_save(node, request, now)
    elif request.op == "snapshot_restore":
        _start_restore(node, request, now)
    else:
        raise AssertionError(f"not a snapshot op: {request.op!r}")


def _start_save(node: Node, request: ClientRequest, now: float) -> None:
    from .loop import _PendingRead  # NB: lazy: loop imports this module

    if request.args:
        raise ValidationError("args", f"snapshot_save takes no arguments, got {sorted(map(str, request.args))}")
    read = _PendingRead(request.identity, request.request_id, None, now + node.config.request_timeout_s, 0.0,
                        answer=lambda done: _answer_save(node, done))
    context = next(node._read_ids).to_bytes(8, "big")
    node._reads[context] = read
    node._ask_read_index(context, read, now)


def _answer_save(node: Node, read: _PendingRead) -> None:
    """Answer a save whose read index is applied: the catalogue as of its applied index now."""
    assert node.client is not None and node.raw is not None
    catalogue = node.catalogue
    index = catalogue.applied_index
    term = _applied_term(node, index)
    view = catalogue.view
    membership = node.raw.raft.membership
    node.client.reply(read.identity, read.request_id, {
        "index": index,
        "term": term,
        "voters": sorted(int(v) for v in membership.voters),
        "learners": sorted(int(v) for v in membership.learners),
        "services": len(view.services),
        "instances": sum(len(instances) for instances in view.services.values()),
        "sessions": catalogue.session_count(),
        "digest": catalogue.digest(),
        "snapshot": catalogue.to_bytes(),
    })  # fmt: skip


def _applied_term(node: Node, index: int) -> int:
    """The term of the entry at ``index`` (the last applied), which the loop keeps."""
    term = node.applied_term
    assert term > 0, f"no term known for applied index {index}"
    return int(term)


def _start_restore(node: Node, request: ClientRequest, now: float) -> None:
    from .loop import _PendingWrite  # NB: lazy: loop imports this module

    args = request.args
    unknown = set(args) - {"client", "seq", "snapshot"}
    if unknown:
        raise ValidationError("args", f"snapshot_restore has unknown arguments {sorted(map(str, unknown))}")
    client_id, seq, snapshot = args.get("client"), args.get("seq"), args.get("snapshot")
    if type(snapshot) is not bytes:
        raise ValidationError("snapshot", f"'snapshot' must be a msgpack bin, got {type(snapshot).__name__}")
    command = Restore(snapshot)  # checks the size
    try:
        # NB: only the header and checksum here (fast): the catalogue checks every field when it
        # applies the entry, on every node the same way, and a full parse on the loop's thread
        # costs seconds for 100k instances. This keeps damaged or foreign bytes out of the log.
        check_snapshot_envelope(snapshot)
    except SnapshotError as exc:
        raise ValidationError("snapshot", f"not a valid catalogue snapshot: {exc}") from None
    data = encode_request(Request(client_id=client_id, seq=seq, command=command))  # validates client and seq
    key = (client_id, seq)
    write = node._writes.get(key)
    if write is None:
        write = node._writes[key] = _PendingWrite(data, [], now + max(RESTORE_TIMEOUT_S, node.config.request_timeout_s),
                                                  retry_s=RESTORE_RETRY_S)
    write.waiters.append((request.identity, request.request_id))
    node._send_write(write, now)


def restored_reply(services: int, instances: int, index: int) -> dict[str, Any]:
    """The result of a committed snapshot_restore (docs/client-protocol.md)."""
    return {"services": services, "instances": instances, "index": index}
