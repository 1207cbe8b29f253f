"""A stand-in registry node for client tests: a real ZeroMQ ROUTER on 127.0.0.1, in a thread,
that speaks docs/client-protocol.md through a handler the test chooses.

It checks nothing about Raft: it only lets tests see exactly what the client sends (``requests``)
and script what it answers (a reply, an error, silence, garbage, a delay).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

# What a handler returns: the reply's body ({"ok": True, "result": ...} or
# {"ok": False, "error": {...}}; "v" and "id" are filled in), raw bytes to send as they are, or
# None to stay silent.
Handler = Callable[[dict[str, Any]], "dict[str, Any] | bytes | None"]

_POLL_MS = 10
_JOIN_S = 5.0


def ok(result: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(code: str, message: str = "") -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message or code}}


def silent(request: dict[str, Any]) -> None:
    return None


STATUS = {
    "node": "n1", "node_id": 7, "role": "follower", "term": 3, "leader": "n2", "commit": 10,
    "applied": 10, "last_index": 11, "raft": "127.0.0.1:7001", "client": "127.0.0.1:7101",
    "dns": "127.0.0.1:8600", "peers": {},
}  # fmt: skip


def answering(request: dict[str, Any]) -> dict[str, Any]:
    """A well-behaved node with a fixed catalogue: every op succeeds."""
    op, args = request["op"], request["args"]
    if op == "register":
        return ok({"instance_id": args["instance_id"] or f"{args['service']}-1", "created": True,
                   "index": 42})
    if op == "deregister":
        return ok({"removed": [args.get("instance_id") or "web-1"], "index": 43})
    if op == "services":
        web = [{"id": "web-1", "address": "10.0.0.5", "port": 8080, "tags": ["blue"],
                "meta": {"zone": "a"}}]
        services = {"web": web, "db": []}
        if args["service"] is not None:
            services = {args["service"]: services.get(args["service"], [])}
        return ok({"index": 44, "services": services})
    if op == "status":
        return ok(STATUS)
    return error("bad_request", f"unknown op {op!r}")


class FakeServer:
    """A ROUTER bound to an ephemeral port on 127.0.0.1, answering through ``handler`` after
    ``delay_s`` (or, with ``crash_on_request``, closing at the first request without answering).
    ``requests`` holds every decoded request, in arrival order."""

    def __init__(self, handler: Handler = answering, *, delay_s: float = 0.0,
                 crash_on_request: bool = False) -> None:
        self.handler = handler
        self.delay_s = delay_s
        self.crash_on_request = crash_on_request  # close the socket at the first request, as kill -9
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socket = zmq.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._run, name=f"fake-{port}", daemon=True)
        self._thread.start()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def _run(self) -> None:
        sock = self._socket
        pending: list[tuple[float, list[bytes]]] = []  # (due, frames), in due order
        try:
            while not self._stop.is_set():
                if sock.poll(_POLL_MS, zmq.POLLIN):
                    identity, *frames = sock.recv_multipart()
                    request = msgpack.unpackb(frames[-1], raw=False)
                    with self._lock:
                        self.requests.append(request)
                    if self.crash_on_request:
                        return
                    body = self.handler(request)
                    if isinstance(body, bytes):
                        payload = body
                    elif body is not None:
                        payload = msgpack.packb({"v": 1, "id": request["id"], **body})
                    else:
                        continue
                    pending.append((time.monotonic() + self.delay_s, [identity, payload]))
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    sock.send_multipart(pending.pop(0)[1])
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(_JOIN_S)
        assert not self._thread.is_alive(), "fake server thread did not stop"

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def unused_address() -> str:
    """A 127.0.0.1 address that nothing listens on (bound, then closed, by ZeroMQ)."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(linger=0)
    return f"127.0.0.1:{port}"


class CatalogueNode:
    """A handler with a catalogue of its own, as a node of this version keeps one: register adds
    or replaces an instance (with its ``check``), ``pass`` answers for an instance that exists
    and ``not_found`` otherwise, deregister removes, services lists with the health fields.
    Health is what the test sets (``set_status``): no clock runs here. ``beats`` holds the
    monotonic time of every ``pass`` that found its instance."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.index = 10
        self.now_ms = now_ms
        self.beats: list[float] = []
        self._lock = threading.Lock()

    def set_status(self, service: str, instance_id: str, status: str, output: str = "") -> None:
        with self._lock:
            self.index += 1
            self.instances[service, instance_id].update(status=status, since_ms=self.now_ms, output=output)

    def remove(self, service: str, instance_id: str) -> None:
        """A forced deregistration, by someone else."""
        with self._lock:
            self.index += 1
            del self.instances[service, instance_id]

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        op, args = request["op"], request["args"]
        with self._lock:
            if op == "register":
                service = args["service"].lower()
                iid = args["instance_id"] or f"{service}-{args['address']}-{args['port']}"
                self.index += 1
                created = (service, iid) not in self.instances
                self.instances[service, iid] = {
                    "id": iid, "address": args["address"], "port": args["port"], "tags": args["tags"],
                    "meta": args["meta"], "status": "passing", "since_ms": self.now_ms,
                    "check": args.get("check"), "revision": self.index,
                }  # fmt: skip
                return ok({"instance_id": iid, "created": created, "index": self.index})
            if op == "pass":
                found = [key for key in self.instances
                         if key[1] == args["instance_id"] and args.get("service") in (None, key[0])]
                if not found:
                    return error("not_found", f"no instance {args['instance_id']!r}: deregistered or expired")
                if len(found) > 1:
                    return error("invalid", f"instance id {args['instance_id']!r} is in services "
                                 f"{', '.join(sorted(s for s, _ in found))}: give the service")
                self.beats.append(time.monotonic())
                [(service, iid)] = found
                return ok({"service": service, "instance_id": iid, "status": self.instances[service, iid]["status"],
                           "index": self.index})
            if op == "deregister":
                key = (args["service"], args.get("instance_id"))
                if key not in self.instances:
                    return error("not_found", "no such instance")
                self.index += 1
                del self.instances[key]
                return ok({"removed": [key[1]], "index": self.index})
            if op == "services":
                services: dict[str, list[dict[str, Any]]] = {}
                for (service, _), instance in sorted(self.instances.items()):
                    services.setdefault(service, []).append(
                        {k: v for k, v in instance.items() if k != "output" or v})
                if args["service"] is not None:
                    services = {args["service"]: services.get(args["service"], [])}
                return ok({"index": self.index, "services": services})
            if op == "status":
                return ok(STATUS)
            return error("bad_request", f"unknown op {op!r}")
