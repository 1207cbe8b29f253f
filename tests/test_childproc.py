"""registry.childproc: the child-process machinery the DNS and prober children share, tested with
real child processes (a small program written for each test, run as ``python -m``) and real
socket pairs."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.childproc import (
    LENGTH_HEADER,
    TYPED_HEADER,
    ChildProcess,
    ChildStartError,
    FrameError,
    FrameQueue,
    FrameReader,
    read_settings,
    receive,
    settings_from_json,
    settings_to_json,
)

#: A bound for what a working child does at once (start, answer, exit): only a broken one reaches
#: it, so it is generous for a loaded 2-core machine.
SETTLE_S = 15.0
READY, ERROR, ECHO, GARBAGE = 10, 11, 1, 99

#: The child program: what it does is its settings' ``mode``.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from registry.childproc import TYPED_HEADER, FrameReader, child_arguments, open_feed, send_blocking

    def frame(kind, body=b""):
        return TYPED_HEADER.pack(kind, len(body)) + body

    args = child_arguments(None, prog="fake", description="a test child", settings_help="FakeSettings as JSON")
    feed = open_feed(args)
    mode = json.loads(args.settings)["mode"]
    if mode == "exit":
        sys.exit(7)
    if mode == "silent":
        time.sleep(60)
    if mode == "error":
        send_blocking(feed, frame(11, b"cannot bind"))
        sys.exit(2)
    if mode == "garbage":
        send_blocking(feed, frame(99, b"?"))
        time.sleep(60)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    feed.sendall(frame(10, str(os.getpid()).encode()))
    reader = FrameReader(max_body_bytes=1 << 20)
    while True:
        data = feed.recv(65536)
        if not data:
            if mode == "stubborn":
                time.sleep(60)
            sys.exit(0)
        for kind, body in reader.split(data):
            if mode == "die-after-one":
                sys.exit(5)
            feed.sendall(frame(kind, body))
    """
)


@dataclass(frozen=True)
class FakeSettings:
    mode: str = "echo"

    def to_json(self) -> str:
        return settings_to_json(self)


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "fake_child.py").write_text(CHILD, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return "fake_child"


@pytest.fixture
def handles() -> Iterator[list[ChildProcess]]:
    made: list[ChildProcess] = []
    yield made
    for handle in made:
        handle.kill()


def handle_of(module: str, handles: list[ChildProcess], mode: str) -> ChildProcess:
    handle = ChildProcess(module, FakeSettings(mode), name=f"the {mode} child")
    handles.append(handle)
    return handle


def ready_when_told(reader: FrameReader) -> tuple[list[bytes], Callable[[bytes], bool]]:
    """An ``on_data`` that is ready at the READY frame; the bodies it saw."""
    seen: list[bytes] = []

    def on_data(data: bytes) -> bool:
        for kind, body in reader.split(data):
            if kind == ERROR:
                raise ChildStartError(f"the child could not start: {body.decode()}")
            seen.append(body)
            if kind == READY:
                return True
        return False

    return seen, on_data


def read_frames(sock: socket.socket, reader: FrameReader, count: int) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    while len(got) < count:
        readable, _, _ = select.select([sock], [], [], SETTLE_S)
        assert readable, f"no frame within {SETTLE_S} s; got {got}"
        data = receive(sock, 65536)
        assert data, "the child closed its end"
        got.extend(reader.split(data))
    return got


# -- the parent's handle ------------------------------------------------------------------------------


def test_start_waits_for_ready_then_frames_flow_and_stop_ends_the_child_cleanly(
        module: str, handles: list[ChildProcess]) -> None:
    """start() returns once the child said READY; frames go both ways; stop() closes the socket,
    which the child reads as EOF and exits 0, without a signal."""
    handle = handle_of(module, handles, "echo")
    reader = FrameReader(max_body_bytes=1 << 20)
    seen, on_data = ready_when_told(reader)
    sock = handle.start(SETTLE_S, on_data)
    assert handle.alive() and handle.started
    assert seen == [str(handle.pid).encode()]
    assert sock.getblocking() is False and handle.fileno() == sock.fileno()
    queue = FrameQueue()
    queue.push(ECHO, TYPED_HEADER.pack(ECHO, 5) + b"hello")
    queue.push(ECHO, TYPED_HEADER.pack(ECHO, 0))
    assert queue.flush(sock)
    assert read_frames(sock, reader, 2) == [(ECHO, b"hello"), (ECHO, b"")]
    assert handle.stop(timeout_s=SETTLE_S) == 0
    assert not handle.alive() and handle.fileno() is None
    with pytest.raises(RuntimeError, match="already started"):
        handle.spawn()


def test_a_child_that_never_says_ready_is_a_timeout_error_and_is_killed(
        module: str, handles: list[ChildProcess]) -> None:
    """A child that stays silent past the timeout: ChildStartError(ETIMEDOUT) naming the child and
    the timeout; the child is gone when start() raises."""
    handle = handle_of(module, handles, "silent")
    _, on_data = ready_when_told(FrameReader(max_body_bytes=1024))
    with pytest.raises(ChildStartError, match=r"^.*the silent child did not start within 1\.0 s") as caught:
        handle.start(1.0, on_data)
    assert caught.value.errno == errno.ETIMEDOUT
    assert handle.proc is not None and handle.proc.poll() == -signal.SIGTERM
    assert handle.sock is None


def test_a_child_that_exits_before_ready_is_reported_with_its_status(
        module: str, handles: list[ChildProcess]) -> None:
    """A child that dies while starting: the start error names its exit status."""
    handle = handle_of(module, handles, "exit")
    _, on_data = ready_when_told(FrameReader(max_body_bytes=1024))
    with pytest.raises(ChildStartError, match=r"the exit child exited with status 7 before running \(see its log\)"):
        handle.start(SETTLE_S, on_data)
    assert not handle.alive()


def test_the_start_error_is_the_callers_type_and_doing() -> None:
    """start_error and doing shape the message a caller's users see."""

    class MyStartError(OSError):
        pass

    handle = ChildProcess("nope", FakeSettings(), name="the X process", doing="serving", start_error=MyStartError)
    error = handle._exited(3)
    assert isinstance(error, MyStartError)
    assert str(error) == "the X process exited with status 3 before serving (see its log)"


def test_what_the_handshake_raises_goes_up_and_the_child_is_killed(
        module: str, handles: list[ChildProcess]) -> None:
    """The child's own reason not to start (an ERROR frame) reaches the caller as on_data raised it."""
    handle = handle_of(module, handles, "error")
    _, on_data = ready_when_told(FrameReader(max_body_bytes=1024))
    with pytest.raises(ChildStartError, match="the child could not start: cannot bind"):
        handle.start(SETTLE_S, on_data)
    assert handle.proc is not None and handle.proc.poll() is not None


def test_a_malformed_frame_while_starting_is_a_clear_error(module: str, handles: list[ChildProcess]) -> None:
    """A child that sends a frame of a type the reader does not accept: FrameError naming the type."""
    handle = handle_of(module, handles, "garbage")
    _, on_data = ready_when_told(FrameReader(max_body_bytes=1024, accept=frozenset({READY, ERROR})))
    with pytest.raises(FrameError, match="unknown frame type 99"):
        handle.start(SETTLE_S, on_data)
    assert handle.proc is not None and handle.proc.poll() is not None


def test_a_child_that_dies_later_reports_its_exit_code_and_its_descriptor_can_go_quiet(
        module: str, handles: list[ChildProcess]) -> None:
    """A running child that exits: alive() turns False, stop() gives its exit status; silence()
    keeps the descriptor number valid but never readable (EOF otherwise always is)."""
    handle = handle_of(module, handles, "die-after-one")
    reader = FrameReader(max_body_bytes=1024)
    _, on_data = ready_when_told(reader)
    sock = handle.start(SETTLE_S, on_data)
    fd = sock.fileno()
    sock.sendall(TYPED_HEADER.pack(ECHO, 0))
    assert handle.proc is not None and handle.proc.wait(timeout=SETTLE_S) == 5
    assert not handle.alive()
    assert select.select([fd], [], [], 0)[0] == [fd]  # at EOF: always readable
    assert receive(sock, 10) == b""
    handle.silence()
    assert handle.fileno() == fd and select.select([fd], [], [], 0.1)[0] == []
    assert handle.stop(timeout_s=SETTLE_S) == 5
    assert handle.fileno() is None


def test_a_child_that_ignores_eof_and_sigterm_is_killed(module: str, handles: list[ChildProcess]) -> None:
    """stop(): EOF, then after timeout_s SIGTERM, then after a grace second SIGKILL."""
    handle = handle_of(module, handles, "stubborn")
    _, on_data = ready_when_told(FrameReader(max_body_bytes=1024))
    handle.start(SETTLE_S, on_data)
    assert handle.stop(timeout_s=0.2) == -signal.SIGKILL


# -- framing --------------------------------------------------------------------------------------------


def test_typed_frames_reassemble_from_any_split() -> None:
    stream = b"".join(TYPED_HEADER.pack(kind, len(body)) + body for kind, body in [(1, b"a"), (2, b""), (3, b"x" * 300)])
    for size in (1, 2, 5, 64, len(stream)):
        reader = FrameReader(max_body_bytes=1000)
        frames: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), size):
            frames.extend(reader.split(stream[i : i + size]))
        assert frames == [(1, b"a"), (2, b""), (3, b"x" * 300)]
        assert reader.buffered_bytes == 0


@pytest.mark.parametrize(
    "data, message",
    [
        (TYPED_HEADER.pack(7, 0), "unknown frame type 7"),
        (TYPED_HEADER.pack(1, 101), "frame of 101 bytes is over the 100-byte limit"),
    ],
)
def test_a_bad_typed_header_is_refused_with_a_clear_error(data: bytes, message: str) -> None:
    """An unknown type or an oversized body raises FrameError (the reader's own subclass if it names one)."""

    class MyError(FrameError):
        pass

    class MyReader(FrameReader):
        error = MyError

    with pytest.raises(FrameError, match=message):
        FrameReader(max_body_bytes=100, accept=frozenset({1})).split(data)
    with pytest.raises(MyError, match=message):
        MyReader(max_body_bytes=100, accept=frozenset({1})).split(data)


def test_an_oversized_untyped_frame_is_skipped_and_counted_when_asked() -> None:
    """With skip_oversized, a frame over the limit streams past unbuffered; the frames after it survive."""
    good = [LENGTH_HEADER.pack(3) + b"one", LENGTH_HEADER.pack(3) + b"two"]
    stream = good[0] + LENGTH_HEADER.pack(500) + b"z" * 500 + good[1]
    for size in (1, 4, 33, len(stream)):
        reader = FrameReader(max_body_bytes=100, typed=False, skip_oversized=True)
        frames: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), size):
            frames.extend(reader.split(stream[i : i + size]))
            assert reader.buffered_bytes <= 100 + LENGTH_HEADER.size
        assert frames == [(0, b"one"), (0, b"two")] and reader.oversized == 1
    with pytest.raises(FrameError, match="over the 100-byte limit"):
        FrameReader(max_body_bytes=100, typed=False).split(LENGTH_HEADER.pack(101))


def test_reader_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="only typed frames"):
        FrameReader(max_body_bytes=10, typed=False, accept=frozenset({1}))
    with pytest.raises(ValueError, match="must not be negative"):
        FrameReader(max_body_bytes=-1)


def test_frame_queue_never_splits_frames_and_coalesces_the_latest() -> None:
    """Partial sends keep frames whole and in order; a coalescing push replaces an unsent frame."""
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        queue = FrameQueue()
        big = TYPED_HEADER.pack(1, 300_000) + b"x" * 300_000
        queue.push(1, big)
        queue.push(2, TYPED_HEADER.pack(2, 1) + b"a", coalesce=True)
        queue.push(2, TYPED_HEADER.pack(2, 1) + b"b", coalesce=True)
        assert len(queue) == 2 and queue.has_unsent(2)
        assert not queue.flush(a)
        assert not queue.has_unsent(1)  # started
        assert queue.drop_unsent() == 6
        reader = FrameReader(max_body_bytes=1 << 20)
        b.setblocking(False)
        got: list[tuple[int, bytes]] = []
        while not got:
            queue.flush(a)
            data = receive(b, 1 << 20)
            if data:
                got.extend(reader.split(data))
        assert got == [(1, b"x" * 300_000)] and queue.pending_bytes == 0
        b.close()
        queue.push(2, TYPED_HEADER.pack(2, 0))
        with pytest.raises(OSError):
            queue.flush(a)
    finally:
        a.close()
        b.close()


# -- settings -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
    address: str
    size: int = 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "knobs are not JSON"),
        ("[1]", "knobs must be a JSON object, got list"),
        ('{"address": "a", "nope": 1}', r"unknown knobs \['nope'\]; known: \['address', 'size'\]"),
        ('{"size": 2}', "knobs lack 'address'"),
    ],
)
def test_settings_from_json_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_json(Knobs, text, what="knobs", required=("address",))


def test_settings_round_trip() -> None:
    knobs = Knobs("x", 3)
    assert json.loads(settings_to_json(knobs)) == {"address": "x", "size": 3}
    assert settings_from_json(Knobs, settings_to_json(knobs), what="knobs") == knobs


def test_a_child_refuses_bad_settings_with_the_frame_it_is_given() -> None:
    """read_settings: good settings are returned; bad ones send refusal(why) to the parent and give None."""
    parent, child = socket.socketpair()
    try:
        parse = lambda text: settings_from_json(Knobs, text, what="knobs")  # noqa: E731
        assert read_settings(child, '{"address": "a"}', parse, lambda why: why.encode()) == Knobs("a")
        assert read_settings(child, '{"nope": 1}', parse, lambda why: b"NO " + why.encode()) is None
        parent.settimeout(SETTLE_S)
        assert parent.recv(1024) == b"NO unknown knobs ['nope']; known: ['address', 'size']"
    finally:
        parent.close()
        child.close()
