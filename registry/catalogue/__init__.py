"""The service catalogue: the replicated state machine, and the immutable view that readers use.

Rule 1: pure. No I/O, no clock, no threads, no randomness; the standard library plus msgpack
(for the log and snapshot encodings) only. The same committed entries give the same state, the
same results and the same ``digest()`` on every node.
Rule 2: the node loop calls ``Catalogue.apply(index, data)`` for every committed NORMAL entry
and ``Catalogue.skip(index)`` for every other committed entry, in index order, each once (an
out-of-order index raises AssertionError). ``apply`` never raises on bad bytes: it returns
``Applied`` with a ``Rejected`` result and changes nothing but the applied index.
Rule 3: readers (DNS, client reads) on any thread take ``catalogue.view`` once and read that
``CatalogueView``; it is immutable and replaced by a reference swap after every entry. Its
``version`` changes exactly when its services change.
Rule 4: what clients may write is decided by ``validation`` (limits as in
docs/client-protocol.md) and is part of the state machine: changing a rule needs a new command
encoding ``VERSION``. Commands validate when constructed, so the node can refuse a bad write
before proposing it (``ValidationError``, the client's ``invalid``).
Rule 5: at most once (Raft §8): a ``Request`` carries a client id and seq; a retried seq gets the
first result back, an older seq is ``stale_seq``. ``MAX_SESSIONS`` must be equal on all nodes.
Rule 6: ``Restore`` (an operator's ``registry snapshot restore``) replaces every service by a
snapshot's, as one entry, validated when applied; client sessions are kept (see ``_restore``).
"""

from .commands import (
    MAX_RESTORE_BYTES,
    VERSION,
    Command,
    CommandError,
    Deregister,
    Register,
    Request,
    Restore,
    decode_request,
    default_instance_id,
    encode_request,
)
from .model import AddressKind, Check, CheckKind, HealthStatus, Instance
from .state import (
    INVALID,
    MAX_SESSIONS,
    NOT_FOUND,
    STALE_SEQ,
    Applied,
    Catalogue,
    Deregistered,
    Registered,
    Rejected,
    Restored,
    Result,
    SnapshotError,
    check_snapshot_envelope,
)
from .validation import ValidationError
from .view import CatalogueView, ServiceMap

__all__ = [
    "INVALID",
    "MAX_RESTORE_BYTES",
    "MAX_SESSIONS",
    "NOT_FOUND",
    "STALE_SEQ",
    "VERSION",
    "AddressKind", "Check", "CheckKind", "HealthStatus",
    "Applied",
    "Catalogue",
    "CatalogueView",
    "Command",
    "CommandError",
    "Deregister",
    "Deregistered",
    "Instance",
    "Register",
    "Registered",
    "Rejected",
    "Request",
    "Restore",
    "Restored",
    "Result",
    "ServiceMap",
    "SnapshotError",
    "ValidationError",
    "check_snapshot_envelope",
    "decode_request",
    "default_instance_id",
    "encode_request",
]
