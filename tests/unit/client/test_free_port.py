"""Ports for local servers: free, and out of the range that outgoing connections take theirs from."""

import secrets
import socket
from pathlib import Path

import pytest

from fluxfill.client import triton_binary
from fluxfill.client.triton_binary import (
    FIRST_SERVER_PORT,
    free_port,
    free_port_between,
    free_ports,
    given_or_free_ports,
)


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound() -> None:
    low = ephemeral_low()
    ports = {free_port() for _ in range(20)}
    if low - FIRST_SERVER_PORT >= 2:
        assert all(FIRST_SERVER_PORT <= port < low for port in ports), sorted(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_bound_port_is_never_handed_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        # A window of two ports, one of them busy: every draw must land on the other (or fall back).
        chosen = {free_port_between(busy, busy + 2) for _ in range(20)}
    assert busy not in chosen


def test_no_room_falls_back_to_the_kernels_choice() -> None:
    port = free_port_between(40000, 40000)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_one_servers_ports_are_all_different_when_every_draw_lands_on_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drawn one by one, a tritonserver's gRPC and metrics ports were once the same (free until it binds
    them): it refused to start, and 87 tests with it."""
    draws = iter([20001, 20001, 20001, 20002, 20001, 20003])
    monkeypatch.setattr(secrets, "randbelow", lambda _end: next(draws) - FIRST_SERVER_PORT)
    # Each draw free, as it may not be on the machine (another worker's server held 20002 once in CI).
    monkeypatch.setattr(triton_binary, "_bindable", lambda _port: True)

    assert free_ports(3) == [20001, 20002, 20003]


def test_ports_given_are_never_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([20001, 20002, 20001, 20003])
    monkeypatch.setattr(secrets, "randbelow", lambda _end: next(draws) - FIRST_SERVER_PORT)
    monkeypatch.setattr(triton_binary, "_bindable", lambda _port: True)

    assert free_ports(2, excluding=(20001, None)) == [20002, 20003]


def test_the_ports_not_given_are_drawn_apart_from_those_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalTritonServer, the local emulators and `fluxfill stack` take a server's ports this way."""
    draws = iter([20005, 20001, 20005, 20002])
    monkeypatch.setattr(secrets, "randbelow", lambda _end: next(draws) - FIRST_SERVER_PORT)
    monkeypatch.setattr(triton_binary, "_bindable", lambda _port: True)

    assert given_or_free_ports(None, 20005, None) == [20001, 20005, 20002]
