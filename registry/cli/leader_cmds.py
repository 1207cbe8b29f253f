"""`registry leader transfer [NAME]`: hand leadership to a named voter, or to the most caught-up one.

Any node takes the request (a follower forwards it to the leader); the command returns once a
node saw the new leader lead (dissertation §3.10: the target is brought up to date, then starts
an election at once, so the cluster is without a leader for one round trip, not an election
timeout). Use it before taking the leader's server down by hand; `systemctl stop` (SIGTERM) does
the same by itself.

Exit status: 0 done (also when NAME already leads), 1 the cluster could not do it (no leader,
the target did not take over in time, another node did, no other voter: the reason on stderr),
2 a usage error: a NAME that is not a valid node name or not a member.

NB: the client is imported inside the command, only because ZeroMQ is slow to import
(``registry --help`` stays fast).
"""

from __future__ import annotations

from typing import Annotated

import typer

from registry.cli.options import JsonOption, ServersOption, TimeoutOption, command_group, open_client
from registry.cli.output import echo_json, echo_table, fail

leader_app = command_group("leader", "Leadership: hand it over to another node.")

#: Enough for a hand-over (twice the longest election timeout: 1.5 s by default) through a
#: follower, on a loaded machine.
DEFAULT_TIMEOUT_S = 10.0


@leader_app.command()
def transfer(
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="The node to lead (default: the most caught-up voter).",
                       show_default=False),
    ] = None,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Move leadership to NAME, or to the most caught-up voter, and wait until it leads.

    Prints the previous leader, the new one and its term. Exit status: 0 done (also when NAME
    already leads), 1 the cluster could not do it (the reason on stderr), 2 a NAME that is not a
    member.
    """
    from registry.client import RegistryError

    with open_client(servers, timeout_s) as client:
        try:
            got = client.transfer_leadership(name)
        except RegistryError as e:
            fail(e, hint="NAME")
    if as_json:
        echo_json({"leader": got.leader, "term": got.term, "previous": got.previous, "moved": got.moved})
        return
    echo_table(["PREVIOUS", "LEADER", "TERM"], [[got.previous or "-", got.leader, str(got.term)]])
    if got.moved:
        typer.echo(f"leadership moved from {got.previous or 'an unknown node'} to {got.leader} (term {got.term})")
    else:
        typer.echo(f"{got.leader} already leads (term {got.term}); nothing moved")
