"""The client protocol's server side: a ROUTER socket, request decoding, replies (docs/client-protocol.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from registry.naming import format_hostport, zmq_endpoint

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 256 * 1024
# NB: only `snapshot_restore` may be larger: it carries a whole catalogue snapshot (at most
# catalogue.MAX_RESTORE_BYTES) plus the request's few fields. The ROUTER's MAXMSGSIZE is this
# bound, so larger frames never reach Python; the client port binds loopback by default.
MAX_RESTORE_REQUEST_BYTES = 48 * 1024**2 + 64 * 1024
BIG_OPS = frozenset({"snapshot_restore"})
OPS = ("register", "deregister", "services", "status", "snapshot_save", "snapshot_restore", "pass",
       "leader_transfer", "members")


class BadRequest(ValueError):
    """A frame that is not a valid request; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClientRequest:
    identity: bytes  # the ROUTER routing id of the client's connection
    request_id: int
    op: str
    args: dict[str, Any]


def decode_request(identity: bytes, payload: bytes) -> ClientRequest:
    if len(payload) > MAX_RESTORE_REQUEST_BYTES:
        raise BadRequest(f"request of {len(payload)} bytes exceeds the limit of {MAX_RESTORE_REQUEST_BYTES}")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise BadRequest(f"not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("a request must be a msgpack map")
    request_id = body.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool) or not 0 <= request_id < 2**63:
        raise BadRequest("'id' must be an integer from 0 to 2^63-1")
    if body.get("v") != PROTOCOL_VERSION:
        raise _with_id(request_id, f"unsupported protocol version {body.get('v')!r}; this node speaks {PROTOCOL_VERSION}")
    op = body.get("op")
    if op not in OPS:
        raise _with_id(request_id, f"unknown op {op!r}; accepted: {', '.join(OPS)}")
    if len(payload) > MAX_REQUEST_BYTES and op not in BIG_OPS:
        raise _with_id(request_id, f"{op} request of {len(payload)} bytes exceeds the limit of {MAX_REQUEST_BYTES}")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise _with_id(request_id, "'args' must be a map")
    return ClientRequest(identity, request_id, op, args)


class BadRequestWithId(BadRequest):
    def __init__(self, request_id: int, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


def _with_id(request_id: int, message: str) -> BadRequestWithId:
    return BadRequestWithId(request_id, message)


class ClientServer:
    """The node's client socket: receive requests without blocking, send replies."""

    def __init__(self, context: zmq.Context, address: tuple[str, int], log: logging.Logger) -> None:
        self._log = log
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_RESTORE_REQUEST_BYTES)
        self.socket.setsockopt(zmq.RCVHWM, 10_000)
        self.socket.setsockopt(zmq.SNDHWM, 10_000)
        if ":" in address[0]:
            self.socket.setsockopt(zmq.IPV6, 1)
        try:
            self.socket.bind(zmq_endpoint(*address))
        except zmq.ZMQError as exc:
            self.socket.close()
            raise OSError(f"cannot bind client address {format_hostport(*address)}: {exc}") from None
        self.malformed = 0

    def drain(self, limit: int = 10_000) -> list[ClientRequest]:
        out: list[ClientRequest] = []
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.malformed += 1
                continue
            identity, payload = frames
            try:
                out.append(decode_request(identity, payload))
            except BadRequestWithId as exc:
                self.malformed += 1
                self.error(identity, exc.request_id, "bad_request", str(exc))
            except BadRequest as exc:
                self.malformed += 1
                self._log.debug("dropped a malformed client frame: %s", exc)
        return out

    def reply(self, identity: bytes, request_id: int, result: dict[str, Any]) -> None:
        self._send(identity, {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})

    def error(self, identity: bytes, request_id: int, code: str, message: str) -> None:
        self._send(identity, {"v": PROTOCOL_VERSION, "id": request_id, "ok": False,
                              "error": {"code": code, "message": message}})

    def _send(self, identity: bytes, body: dict[str, Any]) -> None:
        try:
            self.socket.send_multipart([identity, msgpack.packb(body, use_bin_type=True)], zmq.NOBLOCK)
        except zmq.Again:
            self._log.warning("client send queue full; dropped a reply")

    def close(self) -> None:
        self.socket.close(linger=100)  # NB: lets the last "stopping" replies out
