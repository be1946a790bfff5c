"""PortPool: ordering and bookkeeping with the probe off, and the bind probe
against real sockets on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from portalloc.pool import PoolError, PoolExhausted, PortPool, PortUnavailable, probe_port

pytestmark = pytest.mark.timeout(30)


# --- bookkeeping and release order (probe off: no kernel involved) ------------

def test_first_ports_are_handed_out_in_ascending_order() -> None:
    pool = PortPool(30001, 30010, probe=None)
    assert [pool.reserve() for _ in range(3)] == [30001, 30002, 30003]


def test_released_port_is_not_handed_straight_back() -> None:
    pool = PortPool(30001, 30004, probe=None)
    first = pool.reserve()
    pool.release(first)
    handed = [pool.reserve() for _ in range(4)]
    assert handed == [30002, 30003, 30004, 30001]


def test_free_ports_come_back_in_least_recently_released_order() -> None:
    pool = PortPool(30001, 30003, probe=None)
    for _ in range(3):
        pool.reserve()
    for port in (30003, 30001, 30002):
        pool.release(port)
    assert [pool.reserve() for _ in range(3)] == [30003, 30001, 30002]


def test_empty_pool_raises_pool_exhausted_with_the_original_reason() -> None:
    pool = PortPool(30001, 30002, probe=None)
    pool.reserve()
    pool.reserve()
    with pytest.raises(PoolExhausted) as info:
        pool.reserve()
    assert str(info.value) == "no free ports"
    assert isinstance(info.value, PoolError)
    pool.release(30001)
    assert pool.reserve() == 30001


def test_reserve_of_a_specific_port() -> None:
    pool = PortPool(30001, 30005, probe=None)
    assert pool.reserve(30004) == 30004
    assert not pool.is_available(30004)
    assert pool.reserved == {30004}
    with pytest.raises(PortUnavailable):
        pool.reserve(30004)
    with pytest.raises(ValueError):
        pool.reserve(30006)
    assert [pool.reserve() for _ in range(4)] == [30001, 30002, 30003, 30005]


def test_release_of_a_port_not_reserved_is_an_error() -> None:
    pool = PortPool(30001, 30002, probe=None)
    with pytest.raises(PoolError):
        pool.release(30001)
    with pytest.raises(PoolError):
        pool.release(40000)
    assert pool.is_available(30001)


def test_is_available_covers_range_and_reservations() -> None:
    pool = PortPool(30001, 30002, probe=None)
    assert pool.is_available(30001)
    assert not pool.is_available(30000)
    assert not pool.is_available(30003)
    pool.reserve(30002)
    assert not pool.is_available(30002)


def test_pick_asks_the_test_in_order_and_does_not_reserve() -> None:
    pool = PortPool(30001, 30010, probe=None)
    asked: list[int] = []

    def odd(port: int) -> bool:
        asked.append(port)
        return port % 2 == 1

    pool.reserve(30001)
    assert pool.pick(odd) == 30003
    assert asked == [30002, 30003]
    assert pool.is_available(30003)


def test_rejected_candidate_moves_to_the_back() -> None:
    pool = PortPool(30001, 30003, probe=None)
    assert pool.reserve(test=lambda p: p != 30001) == 30002
    assert [pool.reserve(), pool.reserve()] == [30003, 30001]


def test_pick_raises_after_trying_each_free_port_once() -> None:
    pool = PortPool(30001, 30005, probe=None)
    pool.reserve(30003)
    asked: list[int] = []

    def never(port: int) -> bool:
        asked.append(port)
        return False

    with pytest.raises(PoolExhausted):
        pool.pick(never)
    assert sorted(asked) == [30001, 30002, 30004, 30005]


def test_large_range_picks_without_scanning_reserved_ports() -> None:
    pool = PortPool(1025, 31024, probe=None)
    for _ in range(29999):
        pool.reserve()
    asked: list[int] = []
    assert pool.reserve(test=lambda p: asked.append(p) is None) == 31024
    assert asked == [31024]
    with pytest.raises(PoolExhausted):
        pool.reserve()


@pytest.mark.parametrize("low, high", [(0, 10), (10, 9), (1, 65536), (-1, 5)])
def test_invalid_range_is_rejected(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        PortPool(low, high)


# --- the bind probe, with real sockets ------------------------------------------

def _listener(family: int, host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1)
    return sock


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a real listener on 127.0.0.1, for the test's duration."""
    with _listener(socket.AF_INET, "127.0.0.1") as sock:
        yield sock.getsockname()[1]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_probe_sees_a_listener_and_its_departure() -> None:
    sock = _listener(socket.AF_INET, "127.0.0.1")
    port = sock.getsockname()[1]
    try:
        assert probe_port(port) is False
    finally:
        sock.close()
    assert probe_port(port) is True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_probe_sees_an_ipv6_only_listener() -> None:
    with _listener(socket.AF_INET6, "::1") as sock:
        port = sock.getsockname()[1]
        assert probe_port(port) is False


@pytest.mark.parametrize("family, host, listen", [
    (socket.AF_INET, "0.0.0.0", True),
    (socket.AF_INET, "127.0.0.2", True),
    (socket.AF_INET, "127.0.0.1", False),          # bound, not listening: still taken
    (socket.AF_INET6, "::", True),                 # IPv6 only (V6ONLY set)
])
def test_probe_sees_a_socket_on_any_address_of_either_family(family, host, listen) -> None:
    if family == socket.AF_INET6 and not _ipv6_loopback():
        pytest.skip("no IPv6")
    sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, 0))
        if listen:
            sock.listen(1)
        assert probe_port(sock.getsockname()[1]) is False


def test_pool_skips_a_port_held_by_an_outside_program(busy_port: int) -> None:
    pool = PortPool(busy_port, busy_port)
    with pytest.raises(PoolExhausted):
        pool.reserve()
    with pytest.raises(PortUnavailable):
        pool.reserve(busy_port)
    assert pool.is_available(busy_port)  # the pool itself never reserved it


def test_pool_hands_out_the_next_port_when_the_first_is_busy() -> None:
    # Find a listener whose next port is free now; other processes may be
    # binding ephemeral ports too, so try a few.
    for _ in range(20):
        with _listener(socket.AF_INET, "127.0.0.1") as sock:
            port = sock.getsockname()[1]
            if port < 65535 and probe_port(port + 1):
                pool = PortPool(port, port + 1)
                got = pool.reserve()
                assert got == port + 1
                return
    pytest.skip("could not find two adjacent ports to test with")


def test_a_port_left_in_time_wait_counts_as_busy() -> None:
    # The server side closes first, so its end of the connection (local
    # port = the listening port) lingers in TIME_WAIT after everything else
    # is closed.  A server without SO_REUSEADDR could not bind there, so
    # the probe must say no; with SO_REUSEADDR the bind would succeed.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn, _ = listener.accept()
    conn.close()
    assert client.recv(1) == b""  # the server's FIN has arrived
    client.close()
    listener.close()

    assert probe_port(port) is False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reuse:
        reuse.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reuse.bind(("0.0.0.0", port))


def test_probe_rejects_numbers_that_are_not_ports() -> None:
    with pytest.raises(ValueError):
        probe_port(0)
    with pytest.raises(ValueError):
        probe_port(65536)
