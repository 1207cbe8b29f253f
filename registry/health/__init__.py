"""Active health checks (TCP and HTTP), probed off the Raft loop, in a child process.

Rule 1: probes never run on the node loop. ``Prober`` is the node's handle of a child process
(``registry.health.child``) that probes on its own asyncio loop; every handle call but ``start``
and ``stop`` returns at once.
Rule 2: the child reports only status changes (``ProbeReport``), decided by consecutive-result
thresholds counted from the status the catalogue gave (``ProbeSpec.status``). It proposes
nothing: the node turns reports into ``SetHealth`` commands, and only while it leads.
Rule 3: a report names the revision it was counted for; ``Prober.drain`` drops reports for
checks that were removed or re-registered since, and the catalogue refuses any that slip by.
Rule 4: imports only ``registry.catalogue`` (the model types), ``registry.logformat``,
``registry.childproc`` (the child-process machinery it shares with the DNS child), the standard
library and msgpack; never raft, storage, transport or node. Frames are msgpack, never
pickle.
"""

from .process import CHILD_MODULE, Prober, ProberError, ProberStartError
from .settings import ProberSettings
from .spec import MAX_OUTPUT_CHARS, ProbeReport, ProbeSpec, probe_spec

__all__ = [
    "CHILD_MODULE",
    "MAX_OUTPUT_CHARS",
    "ProbeReport",
    "ProbeSpec",
    "Prober",
    "ProberError",
    "ProberSettings",
    "ProberStartError",
    "probe_spec",
]
