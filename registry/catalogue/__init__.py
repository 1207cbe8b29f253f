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
Rule 7: health is state, changed only by committed commands (``Register``, ``SetHealth``,
``Deregister`` with a revision) whose times (``at_ms``) the proposer stamped: the catalogue never
reads a clock. ``Applied.touched`` says which instances an entry changed, for the leader's tracker.
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
    SetHealth,
    decode_request,
    default_instance_id,
    encode_request,
)
from .model import AddressKind, Check, CheckKind, HealthStatus, Instance
from .health import HEALTH_CLIENT_ID, Threshold, health_seq
from .state import (
    ALL_TOUCHED,
    INVALID,
    MAX_SESSIONS,
    NOT_FOUND,
    STALE_SEQ,
    Applied,
    Catalogue,
    Deregistered,
    HealthSet,
    Registered,
    Rejected,
    Restored,
    Result,
    SnapshotError,
    Touched,
    check_snapshot_envelope,
)
from .validation import (
    CHECK_KEYS,
    ValidationError,
    check_to_map,
    validate_check,
    validate_external_client_id,
)
from .view import CatalogueView, ServiceMap

__all__ = [
    "ALL_TOUCHED",
    "CHECK_KEYS",
    "HEALTH_CLIENT_ID",
    "INVALID",
    "MAX_RESTORE_BYTES",
    "MAX_SESSIONS",
    "NOT_FOUND",
    "STALE_SEQ",
    "VERSION",
    "AddressKind",
    "Check",
    "CheckKind",
    "HealthSet",
    "HealthStatus",
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
    "SetHealth",
    "SnapshotError",
    "Threshold",
    "Touched",
    "ValidationError",
    "check_snapshot_envelope",
    "check_to_map",
    "decode_request",
    "default_instance_id",
    "encode_request",
    "health_seq",
    "validate_check",
    "validate_external_client_id",
]
