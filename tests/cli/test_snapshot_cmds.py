"""`registry snapshot save / inspect / restore` (typer's CliRunner) against fake nodes.

Exit status: 0 done, 1 the cluster could not do it (or the restore was declined), 2 a usage or
validation error (a missing, damaged or non-snapshot file; restore without --yes and no
terminal), in which case nothing is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from registry.catalogue import Catalogue, Register, Request, encode_request
from registry.cli import snapshot_cmds
from registry.cli.main import app
from registry.raft import Index, Membership, NodeId, Snapshot, SnapshotMeta, Term
from registry.storage.snapfile import read_snapshot_file, write_snapshot_file

from ..client.fake_server import FakeServer, error, ok

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_SERVERS", raising=False)


def catalogue() -> Catalogue:
    c = Catalogue()
    for seq, command in enumerate([Register("web", "10.0.0.1", 80), Register("web", "10.0.0.2", 80),
                                   Register("db", "10.0.0.3", 5432)], start=1):
        c.apply(seq, encode_request(Request("c1", seq, command)))
    return c


def snapshot_file(path: Path, c: Catalogue | None = None, *, index: int | None = None) -> Path:
    c = c or catalogue()
    meta = SnapshotMeta(Index(index if index is not None else c.applied_index), Term(2),
                        Membership(frozenset({NodeId(11), NodeId(12), NodeId(13)})))
    write_snapshot_file(path, Snapshot(meta, c.to_bytes()), kind="save")
    return path


def handler(saved: Catalogue | None = None, *, restore: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    saved = saved or catalogue()

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "snapshot_save":
            return ok({"index": saved.applied_index, "term": 2, "voters": [11, 12, 13], "learners": [],
                       "services": 2, "instances": 3, "sessions": saved.session_count(),
                       "digest": saved.digest(), "snapshot": saved.to_bytes()})
        if op == "snapshot_restore":
            return ok(restore or {"services": 2, "instances": 3, "index": 99})
        if op == "services":
            return ok({"index": 50, "services": {"cache": [{"id": "c", "address": "10.0.0.9", "port": 1,
                                                            "tags": [], "meta": {}}]}})
        return error("bad_request")

    return answer


def run(*args: str, servers: list[FakeServer] = (), input: str | None = None):  # type: ignore[assignment,no-untyped-def]
    flags = [f for s in servers for f in ("--server", s.address)]
    return runner.invoke(app, [*args, *flags], input=input)


def ops(server: FakeServer) -> list[str]:
    return [r["op"] for r in server.received()]


def test_help_lists_the_snapshot_commands() -> None:
    result = runner.invoke(app, ["snapshot", "--help"])
    assert result.exit_code == 0
    for name in ("save", "inspect", "restore"):
        assert name in result.output


# -- save -------------------------------------------------------------------------------------


def test_save_writes_a_snapshot_file_and_prints_index_and_term(fake, tmp_path: Path) -> None:
    """The file holds the catalogue the node sent, with its index, term and membership, kind "save"."""
    server = fake(handler())
    path = tmp_path / "s.snap"
    result = run("snapshot", "save", str(path), servers=[server])
    assert result.exit_code == 0, result.output
    assert "index 3, term 2" in result.stdout and "2 services, 3 instances" in result.stdout
    snap = read_snapshot_file(path)
    assert snap.data == catalogue().to_bytes()
    assert (snap.meta.index, snap.meta.term, sorted(snap.meta.membership.voters)) == (3, 2, [11, 12, 13])


def test_save_json_shape(fake, tmp_path: Path) -> None:
    server = fake(handler())
    path = tmp_path / "s.snap"
    result = run("snapshot", "save", str(path), "--json", servers=[server])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert set(got) == {"file", "index", "term", "size", "services", "instances", "sessions", "voters",
                        "learners", "digest", "kind"}
    assert got["size"] == path.stat().st_size and got["kind"] == "save" and got["digest"] == catalogue().digest()


def test_save_exits_1_when_the_cluster_cannot(fake, tmp_path: Path) -> None:
    server = fake(lambda r: error("no_leader", "no leader"))
    path = tmp_path / "s.snap"
    result = run("snapshot", "save", str(path), "--timeout", "0.5", servers=[server])
    assert result.exit_code == 1 and "no_leader" in result.stderr
    assert not path.exists()


def test_save_into_a_missing_directory_is_a_usage_error(fake, tmp_path: Path) -> None:
    server = fake(handler())
    result = run("snapshot", "save", str(tmp_path / "nope" / "s.snap"), servers=[server])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert ops(server) == []


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_prints_what_the_file_holds(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "inspect", str(path))
    assert result.exit_code == 0, result.output
    for text in ("save", "11, 12, 13", catalogue().digest()):
        assert text in result.stdout
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert lines["index"] == ["3"] and lines["term"] == ["2"] and lines["instances"] == ["3"]


def test_inspect_json_shape(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "inspect", str(path), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got == {**got, "valid": True, "kind": "save", "index": 3, "term": 2, "voters": [11, 12, 13],
                   "learners": [], "services": 2, "instances": 3, "sessions": 1, "digest": catalogue().digest(),
                   "file_size": path.stat().st_size}
    assert set(got) == {"file", "valid", "kind", "created", "created_iso", "index", "term", "voters", "learners",
                        "size", "file_size", "crc32", "services", "instances", "sessions", "digest"}


def _flipped(path: Path, at: int) -> Path:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not-a-snapshot": (lambda p: (p.write_text("hello\n"), p)[1], "not a registry snapshot file"),
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "not a registry snapshot file"),
    "flipped-data-byte": (lambda p: _flipped(snapshot_file(p), -5), "checksum"),
    "truncated": (lambda p: (p.write_bytes(snapshot_file(p).read_bytes()[:-20]), p)[1], "truncated"),
    "not-a-catalogue": (
        lambda p: (write_snapshot_file(p, Snapshot(SnapshotMeta(Index(3), Term(2), Membership(frozenset({NodeId(1)}))),
                                                   b"junk")), p)[1],
        "the catalogue inside is not valid"),
    "index-mismatch": (lambda p: snapshot_file(p, index=7), "not consistent"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_refused_with_a_clear_message_and_exit_2(name: str, tmp_path: Path, fake) -> None:
    """inspect and restore refuse it the same way, before sending anything."""
    make, message = BAD_FILES[name]
    path = make(tmp_path / "s.snap")
    server = fake(handler())
    for argv in (("inspect", str(path)), ("restore", str(path), "--yes")):
        result = run("snapshot", *argv, servers=[server] if argv[0] == "restore" else [])
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.stderr and "Traceback" not in result.output
    assert ops(server) == []


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("snapshot", "inspect", str(tmp_path / "nope.snap"))
    assert result.exit_code == 2 and "does not exist" in result.output


# -- restore ----------------------------------------------------------------------------------


def test_restore_without_yes_and_without_a_terminal_exits_2_and_sends_nothing(fake, tmp_path: Path) -> None:
    server = fake(handler())
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "restore", str(path), servers=[server])
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert ops(server) == []


def test_restore_with_yes_sends_the_catalogue_and_prints_the_result(fake, tmp_path: Path) -> None:
    server = fake(handler())
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "restore", str(path), "--yes", "--json", servers=[server])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"file": str(path), "snapshot_index": 3, "snapshot_term": 2,
                                         "services": 2, "instances": 3, "index": 99}
    (request,) = server.received()
    assert request["op"] == "snapshot_restore" and request["args"]["snapshot"] == catalogue().to_bytes()
    text = run("snapshot", "restore", str(path), "-y", servers=[server])
    assert text.exit_code == 0 and "restored 2 services, 3 instances" in text.stdout
    assert "committed at index 99" in text.stdout


@pytest.mark.parametrize("answer, code", [("y\n", 0), ("n\n", 1), ("\n", 1)])
def test_restore_asks_on_a_terminal_showing_current_and_snapshot_counts(
    answer: str, code: int, fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal it shows what will be replaced and restores only after "y" (default no)."""
    monkeypatch.setattr(snapshot_cmds, "_stdin_is_terminal", lambda: True)
    server = fake(handler())
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "restore", str(path), servers=[server], input=answer)
    assert result.exit_code == code, result.output
    assert "current:  1 services, 1 instances (index 50)" in result.stderr
    assert "snapshot: 2 services, 3 instances (index 3, term 2" in result.stderr
    assert ops(server) == (["services", "snapshot_restore"] if code == 0 else ["services"])


def test_restore_refused_by_the_cluster_as_invalid_exits_2(fake, tmp_path: Path) -> None:
    server = fake(lambda r: error("invalid", "not a valid catalogue snapshot"))
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "restore", str(path), "--yes", servers=[server])
    assert result.exit_code == 2 and "not a valid catalogue snapshot" in result.stderr


def test_restore_exits_1_when_the_cluster_cannot(fake, tmp_path: Path) -> None:
    server = fake(lambda r: error("timeout", "outcome unknown"))
    path = snapshot_file(tmp_path / "s.snap")
    result = run("snapshot", "restore", str(path), "--yes", "--timeout", "0.5", servers=[server])
    assert result.exit_code == 1 and "timeout" in result.stderr
