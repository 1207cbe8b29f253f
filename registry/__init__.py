"""registry: a service-discovery registry.

Nodes agree on a catalogue of services through Raft (messages over ZeroMQ, the log in LMDB), and
serve the committed catalogue over DNS.

Layers, from the inside out (the direction is enforced by tests/test_layering.py):

- ``registry.raft``: the Raft core. Performs no I/O; stdlib only.
- ``registry.sim``: a seeded, single-threaded simulator that drives real cores. Test support,
  shipped so that ``registry sim --seed N`` reproduces a failure; never imported by the core.
- ``registry.cli``: the ``registry`` command. A composition root: nothing imports it.
- ``registry_dns`` (the repository's ``dns/`` folder): the DNS responder.
- ``registry.childproc``: what the agent's child processes (DNS, the prober) share: start,
  handshake, stop, framing. A leaf: stdlib only.
"""

__version__ = "0.1.0"
