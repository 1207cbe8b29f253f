"""DnsSettings: one list of the DNS child's settings, checked, and carried to the child as JSON."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest

from registry_dns.feed import ERROR, FrameReader
from registry_dns.settings import DEFAULT_RESPONDER, DnsSettings

SETTLE_S = 15.0  # a child process that refuses its settings says so at once; generous for a loaded machine


def test_settings_survive_the_trip_through_json() -> None:
    """What the parent writes is what the child reads, field for field (lists become tuples)."""
    settings = DnsSettings(address=("::1", 8600), domain="example.", ttl_s=7, negative_ttl_s=2, max_udp_payload=1400,
                           nameservers=[("n1", "10.0.0.1"), ("n2", "fd00::2")], max_stale_s=2.5,
                           tcp_idle_timeout_s=3.0, max_tcp_clients=9, max_sessions=11, stats_interval_s=0.25)
    again = DnsSettings.from_json(settings.to_json())
    assert again == settings
    assert again.nameservers == (("n1", "10.0.0.1"), ("n2", "fd00::2")) and again.address == ("::1", 8600)
    assert DnsSettings.from_json('{"address": ["127.0.0.1", 0]}') == DnsSettings(address=("127.0.0.1", 0))
    assert DnsSettings(address=("127.0.0.1", 0)).responder == DEFAULT_RESPONDER


def test_responder_args_are_the_responders_keywords() -> None:
    settings = DnsSettings(address=("127.0.0.1", 0), nameservers=[("n1", "10.0.0.1")])
    assert settings.responder_args() == {"domain": "registry.", "ttl_s": 30, "negative_ttl_s": 5,
                                         "max_udp_payload": 1232, "nameservers": (("n1", "10.0.0.1"),)}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("address", ("127.0.0.1",), r"address must be \(host, port\) with a port from 0 to 65535, got"),
        ("address", ("127.0.0.1", 70000), "a port from 0 to 65535, got"),
        ("address", ("127.0.0.1", "53"), r"address must be \(host, port\) with a port from 0 to 65535, got"),
        ("max_stale_s", 0, "max_stale_s must be a positive number of seconds, got 0"),
        ("stats_interval_s", -1.0, "stats_interval_s must be a positive number of seconds"),
        ("tcp_idle_timeout_s", True, "tcp_idle_timeout_s must be a positive number of seconds, got True"),
        ("max_tcp_clients", 0, "max_tcp_clients must be an integer of at least 1, got 0"),
        ("max_sessions", 1.5, "max_sessions must be an integer of at least 1"),
        ("nameservers", [("n1",)], r"nameservers must be \(node name, IP address\) pairs, got \('n1',\)"),
        ("responder", "registry_dns.resolver", "responder must be 'module:callable'"),
    ],
)
def test_bad_settings_are_refused_saying_what_is_accepted(field: str, value: Any, message: str) -> None:
    kwargs: dict[str, Any] = {"address": ("127.0.0.1", 0), field: value}
    with pytest.raises(ValueError, match=message):
        DnsSettings(**kwargs)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "DNS settings are not JSON"),
        ("[1, 2]", "DNS settings must be a JSON object, got list"),
        ('{"address": ["127.0.0.1", 0], "ttl": 5}', r"unknown DNS settings \['ttl'\]; known: \["),
        ('{"domain": "example."}', "DNS settings lack 'address'"),
    ],
)
def test_bad_settings_json_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DnsSettings.from_json(text)


def test_the_child_program_refuses_bad_settings_with_an_error_frame() -> None:
    """`python -m registry_dns.child` given settings it cannot use sends one ERROR frame naming
    the problem to its agent and exits with status 2, before binding anything."""
    agent_end, child_end = socket.socketpair()
    try:
        settings = json.dumps({"address": ["127.0.0.1", 0], "max_stale_s": -1})
        argv = [sys.executable, "-m", "registry_dns.child", "--fd", str(child_end.fileno()), "--settings", settings]
        child = subprocess.Popen(argv, pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        child_end.close()
        assert child.wait(timeout=SETTLE_S) == 2
        agent_end.settimeout(SETTLE_S)
        frames = FrameReader().feed(agent_end.recv(1 << 16))
        assert [kind for kind, _ in frames] == [ERROR]
        message = json.loads(frames[0][1])["message"]
        assert message == "bad DNS settings: max_stale_s must be a positive number of seconds, got -1"
    finally:
        agent_end.close()
        child_end.close()
