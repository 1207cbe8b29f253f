"""`registry snapshot save | inspect | restore`: the operator's catalogue snapshots.

- ``save FILE``: a consistent (linearizable) copy of the cluster's catalogue, taken through the
  leader, written atomically as a snapshot file (registry.storage.snapfile, kind "save").
- ``inspect FILE``: validates a snapshot file (header, checksum, the catalogue inside) and says
  what it holds. Works offline, on any snapshot file (also a node's own, kind "node").
- ``restore FILE``: replaces the cluster's services and instances by the file's, as ONE Raft
  write (every node and every node's DNS switch at the same log index). Client sessions stay
  the cluster's own, so that in-flight clients keep exactly-once writes. Asks first (unless
  ``--yes``).

Exit status: 0 done; 1 the cluster could not do it (or the operator declined the restore);
2 a usage or validation error: bad arguments, a file that is missing, damaged or not a
snapshot, or ``restore`` without ``--yes`` when stdin is not a terminal. Nothing is sent to
the cluster before the file and the arguments are checked.

NB: the client, the snapshot file code and the catalogue are imported inside the commands, only
so that ``registry --help`` stays fast (ZeroMQ and LMDB are slow to import).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from registry.cli.options import JsonOption, ServersOption, TimeoutOption, command_group, open_client
from registry.cli.output import echo_json, echo_table, fail, invalid

if TYPE_CHECKING:
    from registry.catalogue import Catalogue
    from registry.storage.snapfile import SnapshotHeader

snapshot_app = command_group("snapshot", "Save, inspect and restore catalogue snapshots.")

DEFAULT_TIMEOUT_S = 60.0  # a snapshot can be tens of MB, and a restore is applied on every node


def _load(path: Path) -> tuple[SnapshotHeader, bytes, Catalogue]:
    """The file's header, catalogue bytes and the catalogue they hold; exit 2 if any is bad."""
    from registry.catalogue import Catalogue, SnapshotError
    from registry.storage.snapfile import SnapshotFileError, read_snapshot_file, read_snapshot_header

    try:
        header = read_snapshot_header(path)
        snapshot = read_snapshot_file(path)
    except SnapshotFileError as e:
        invalid(str(e))
    except OSError as e:
        invalid(f"cannot read {path}: {e.strerror or e}")
    try:
        catalogue = Catalogue.from_bytes(snapshot.data)
    except SnapshotError as e:
        invalid(f"{path}: the catalogue inside is not valid: {e}")
    if catalogue.applied_index != header.meta.index:
        invalid(f"{path}: the header says index {header.meta.index} but the catalogue inside is at "
                 f"index {catalogue.applied_index}: the file is not consistent")
    return header, bytes(snapshot.data), catalogue


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _counts(catalogue: Catalogue) -> tuple[int, int]:
    services = catalogue.view.services
    return len(services), sum(len(instances) for instances in services.values())


def _iso(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).isoformat(timespec="seconds")


def _ids(ids: frozenset[int] | tuple[int, ...]) -> list[int]:
    return sorted(int(i) for i in ids)


FileArgument = Annotated[
    Path,
    typer.Argument(metavar="FILE", help="The snapshot file.", exists=True, dir_okay=False, readable=True,
                   show_default=False),
]


@snapshot_app.command()
def save(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Where to write the snapshot (replaced atomically).",
                             show_default=False)
    ],
    servers: ServersOption = None,
    timeout_s: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Save a consistent snapshot of the cluster's catalogue to FILE.

    The snapshot is taken through the leader (a linearizable read): it holds every write
    committed before the command started. It includes services, instances and client sessions.
    Prints its log index and term, size and counts.

    Exit status: 0 saved, 1 the cluster could not do it (or FILE could not be written), 2 bad
    arguments.
    """
    from registry.client import RegistryError

    if file.is_dir():
        raise typer.BadParameter(f"{file} is a directory; give a file name", param_hint="FILE")
    if not file.parent.is_dir():
        raise typer.BadParameter(f"directory {file.parent} does not exist", param_hint="FILE")
    with open_client(servers, timeout_s) as client:
        try:
            got = client.snapshot_save()
        except RegistryError as e:
            fail(e)

    from registry.raft import Index, Membership, NodeId, Snapshot, SnapshotMeta, Term
    from registry.storage.snapfile import write_snapshot_file

    membership = Membership(frozenset(NodeId(v) for v in got.voters), frozenset(NodeId(v) for v in got.learners))
    snapshot = Snapshot(SnapshotMeta(Index(got.index), Term(got.term), membership), got.data)
    try:
        size = write_snapshot_file(file, snapshot, kind="save")
    except OSError as e:
        typer.echo(f"Error: cannot write {file}: {e.strerror or e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        echo_json({"file": str(file), "index": got.index, "term": got.term, "size": size,
                    "services": got.services, "instances": got.instances, "sessions": got.sessions,
                    "voters": list(got.voters), "learners": list(got.learners), "digest": got.digest,
                    "kind": "save"})
    else:
        typer.echo(f"saved snapshot at index {got.index}, term {got.term} to {file}: {size} bytes, "
                   f"{got.services} services, {got.instances} instances, {got.sessions} client sessions")


@snapshot_app.command()
def inspect(file: FileArgument, as_json: JsonOption = False) -> None:
    """Check a snapshot FILE and print what it holds (no cluster needed).

    Checks the header, the checksum and the catalogue inside; prints the log index and term,
    the membership, sizes, when and by what it was written, counts and the catalogue digest.

    Exit status: 0 the file is valid, 2 it is missing, damaged or not a snapshot.
    """

    header, data, catalogue = _load(file)
    services, instances = _counts(catalogue)
    meta = header.meta
    info: dict[str, Any] = {
        "file": str(file), "valid": True, "kind": header.kind, "created": header.created,
        "created_iso": _iso(header.created), "index": meta.index, "term": meta.term,
        "voters": _ids(meta.membership.voters), "learners": _ids(meta.membership.learners),
        "size": header.size, "file_size": file.stat().st_size, "crc32": header.crc32,
        "services": services, "instances": instances, "sessions": catalogue.session_count(),
        "digest": catalogue.digest(),
    }  # fmt: skip
    if as_json:
        echo_json(info)
        return
    rows = [
        ("file", str(file)),
        ("kind", header.kind),
        ("created", info["created_iso"]),
        ("index", str(meta.index)),
        ("term", str(meta.term)),
        ("voters", ", ".join(map(str, info["voters"])) or "-"),
        ("learners", ", ".join(map(str, info["learners"])) or "-"),
        ("size", f"{header.size} bytes of catalogue, {info['file_size']} bytes in all (crc32 {header.crc32:#010x})"),
        ("services", str(services)),
        ("instances", str(instances)),
        ("sessions", str(info["sessions"])),
        ("digest", info["digest"]),
    ]
    echo_table(("FIELD", "VALUE"), rows)


@snapshot_app.command()
def restore(
    file: FileArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    servers: ServersOption = None,
    timeout_s: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Replace the cluster's services and instances by those in snapshot FILE.

    One Raft write: every node, and every node's DNS, switches to exactly the snapshot's
    services at the same log index. Client sessions are kept (the cluster's own, not the
    file's), so clients retrying a write keep exactly-once. Asks for confirmation, showing what
    will be replaced, unless --yes; without a terminal on stdin, --yes is required.

    Exit status: 0 restored, 1 the cluster could not do it or the restore was declined, 2 bad
    arguments, a bad FILE, or no --yes without a terminal.
    """
    from registry.client import RegistryError

    header, data, catalogue = _load(file)
    services, instances = _counts(catalogue)
    if not yes and not _stdin_is_terminal():
        invalid("restore replaces the cluster's whole catalogue and stdin is not a terminal to ask; "
                 "pass --yes to confirm")
    with open_client(servers, timeout_s) as client:
        if not yes:
            try:
                current = client.services()
            except RegistryError as e:
                fail(e)
            now_services = sum(1 for items in current.values() if items)
            now_instances = sum(len(items) for items in current.values())
            typer.echo("This replaces the cluster's catalogue (client sessions are kept):", err=True)
            typer.echo(f"  current:  {now_services} services, {now_instances} instances (index {current.index})",
                       err=True)
            typer.echo(f"  snapshot: {services} services, {instances} instances (index {header.meta.index}, "
                       f"term {header.meta.term}, {header.kind}, created {_iso(header.created)})", err=True)
            if not typer.confirm("Restore?", default=False, err=True):
                typer.echo("Not restored: nothing changed.", err=True)
                raise typer.Exit(1)
        try:
            got = client.snapshot_restore(data)
        except RegistryError as e:
            fail(e, hint="FILE")
    if as_json:
        echo_json({"file": str(file), "snapshot_index": header.meta.index, "snapshot_term": header.meta.term,
                    "services": got.services, "instances": got.instances, "index": got.index})
    else:
        typer.echo(f"restored {got.services} services, {got.instances} instances from {file} "
                   f"(snapshot index {header.meta.index}), committed at index {got.index}")
