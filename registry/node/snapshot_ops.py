"""The server side of the operator's snapshot ops: ``snapshot_save`` and ``snapshot_restore``.

Both go through the node's one request machinery (``requests.Requests``), so there is no second
path for reads or writes:

- ``snapshot_save`` is a linearizable read (Raft §6.4), like ``services``: once the local
  catalogue has applied the read index, the node answers with its whole catalogue
  (``Catalogue.to_bytes()``, which includes client sessions) at its applied index, and that
  entry's term and the membership, so the client can write a snapshot file (storage.snapfile).
- ``snapshot_restore`` is a write like ``register``: a ``Restore`` command under the client's
  id and seq (at most once), proposed by the leader or forwarded to it (``ForwardOp.RESTORE``,
  which the leader bounds by a restore's size rather than a write's), answered once applied
  here. Every node, and every node's DNS child (which applies the same entries to its own
  replica), replaces its services at the same log index.

NB: a restore entry is large (up to ``catalogue.MAX_RESTORE_BYTES``), so it is re-sent to the
leader only every ``RESTORE_RETRY_S`` rather than every ``requests.RETRY_INTERVAL_S``, and
waited for up to ``RESTORE_TIMEOUT_S``: each re-send may append another copy to the log (applied
once, by the session, but replicated and stored each time).
"""

from __future__ import annotations

from typing import Any

from registry.catalogue import (
    Request,
    Restore,
    SnapshotError,
    ValidationError,
    check_snapshot_envelope,
    encode_request,
)
from registry.raft import RawNode
from registry.transport import ForwardOp

from .client_api import ClientRequest
from .replica import Replica
from .requests import Caller, Replies, Requests

RESTORE_TIMEOUT_S = 30.0  # the node answers `timeout` after this; the client retries, same seq
RESTORE_RETRY_S = 5.0


class SnapshotOps:
    def __init__(self, *, requests: Requests, replica: Replica, raw: RawNode, replies: Replies,
                 request_timeout_s: float) -> None:
        self._requests = requests
        self._replica = replica
        self._raw = raw
        self._replies = replies
        self._timeout_s = request_timeout_s

    def save(self, request: ClientRequest, now: float) -> None:
        if request.args:
            raise ValidationError("args", f"snapshot_save takes no arguments, got {sorted(map(str, request.args))}")
        self._requests.read(Caller(request.identity, request.request_id), self._answer_save, now)

    def _answer_save(self, caller: Caller) -> None:
        """Answer a save whose read index is applied: the catalogue as of its applied index now."""
        catalogue = self._replica.catalogue
        index = catalogue.applied_index
        term = self._replica.applied_term
        assert term > 0, f"no term known for applied index {index}"
        view = catalogue.view
        membership = self._raw.membership
        self._replies.reply(caller.identity, caller.request_id, {
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

    def restore(self, request: ClientRequest, now: float) -> None:
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
        self._requests.write(Caller(request.identity, request.request_id), (client_id, seq), data, now,
                             op=ForwardOp.RESTORE, timeout_s=max(RESTORE_TIMEOUT_S, self._timeout_s),
                             retry_s=RESTORE_RETRY_S)


def restored_reply(services: int, instances: int, index: int) -> dict[str, Any]:
    """The result of a committed snapshot_restore (docs/client-protocol.md)."""
    return {"services": services, "instances": instances, "index": index}
