"""The transport: Raft messages between nodes over ZeroMQ (and the wire codec they travel in).

Contract:
- `send(messages)` never blocks. A message that cannot be queued at once (its peer is down or
  slow, or it is addressed to a node that is not a peer) is dropped and counted: Raft retries,
  so a down peer costs only dropped messages, never memory or a stall.
- `drain()` never blocks and never raises for anything a peer sends. A frame that is malformed
  (wrong frame count, bad version, bad fields), from an unknown identity, or that lies about its
  source (a `source` other than the id of the sending node's name) or target is dropped and
  counted in `stats`. Frames over `max_frame_bytes` never reach Python: libzmq cuts the
  connection that carried them (`stats.disconnects`).
- `decode(encode(m)) == m` for every Raft message and for `Forward`; `decode` raises only
  CodecError, and never unpickles or evaluates anything.
- Delivery is best effort: messages may be lost, and after a reconnection a peer may see a gap.
  Order is kept per (sender, receiver) pair while a connection lasts.

Rule: this package imports only `registry.raft` (messages and types), `registry.naming`, zmq and
msgpack. It owns no thread and reads no clock: the node loop polls `ZmqTransport.socket`.
"""

from .base import Transport, TransportError
from .codec import FORWARD_OP_TAG, FORWARD_TAG, WIRE_VERSION, CodecError, Forward, ForwardOp, Wire, decode, encode
from .zmq_transport import TransportStats, ZmqTransport

__all__ = [
    "FORWARD_OP_TAG", "FORWARD_TAG", "WIRE_VERSION", "CodecError", "Forward", "ForwardOp", "Transport",
    "TransportError", "TransportStats", "Wire", "ZmqTransport", "decode", "encode",
]
