"""`registry members [--json]`: the cluster's members as the leader sees them, and its fault tolerance.

For each member: its name, Raft address, whether it votes (voter) or only receives the log
(learner), its match index (the last log index the leader knows it holds), how long ago the
leader last heard from it, and which one leads; then how many voters may fail while the cluster
keeps working ((voters - 1) // 2). Any node takes the request: a follower asks its leader.

Exit status: 0 listed, 1 the cluster could not answer (no leader, a node too old to know the
op: the reason on stderr), 2 a usage error.

TODO(i15): `members add NAME HOST:PORT` and `members remove NAME` go here as subcommands of
``members_app``: print fault tolerance before and after (``fault_tolerance``), refuse unless
``--force`` when ``check_fault_tolerance(voters, voters_after, floor)`` says so (the floor is
the leader's ``min_fault_tolerance``, in every `members` answer).

NB: the client is imported inside the command, only because ZeroMQ is slow to import
(``registry --help`` stays fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from registry.cli.options import JsonOption, ServersOption, TimeoutOption, command_group, open_client
from registry.cli.output import echo_json, echo_table, fail

if TYPE_CHECKING:
    from registry.client import Members

members_app = command_group("members", "The cluster's members: who votes, who leads, how far each is.")

DEFAULT_TIMEOUT_S = 5.0


@members_app.callback(invoke_without_command=True, no_args_is_help=False)
def members(
    ctx: typer.Context,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """List the members as the leader sees them, and how many voters may fail.

    Exit status: 0 listed, 1 the cluster could not answer (the reason on stderr), 2 a usage error.
    """
    if ctx.invoked_subcommand is not None:
        return
    from registry.client import RegistryError

    with open_client(servers, timeout_s) as client:
        try:
            got = client.members()
        except RegistryError as e:
            fail(e)
    if as_json:
        echo_json(members_json(got))
        return
    echo_table(["NAME", "RAFT", "ROLE", "MATCH", "LAST CONTACT", "LEADER"], [
        [m.name, m.raft or "?", "voter" if m.voter else "learner", "-" if m.match is None else str(m.match),
         "-" if m.last_contact_s is None else f"{m.last_contact_s:.1f}s ago", "*" if m.leader else ""]
        for m in got.members])
    typer.echo(f"voters: {got.voters}, learners: {got.learners}; fault tolerance: {got.fault_tolerance} "
               f"(how many voters may fail; floor {got.min_fault_tolerance}); leader {got.leader or 'none'}, "
               f"term {got.term}, commit {got.commit}")


def members_json(got: Members) -> dict[str, object]:
    return {"leader": got.leader, "term": got.term, "commit": got.commit, "voters": got.voters,
            "learners": got.learners, "fault_tolerance": got.fault_tolerance,
            "min_fault_tolerance": got.min_fault_tolerance,
            "members": [{"name": m.name, "id": m.id, "raft": m.raft, "client": m.client,
                         "role": "voter" if m.voter else "learner", "match": m.match,
                         "last_contact_s": m.last_contact_s, "leader": m.leader} for m in got.members]}
