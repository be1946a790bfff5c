"""Making channels: open_async (Tcl's ``socket -async``), open, and server
(``socket -server``) on real loopback sockets: IPv4, IPv6, dual stack, Unix
paths, UDP; plus the descriptor-limit cases in child processes.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for

import evloop

pytestmark = pytest.mark.timeout(10)

ROOT = Path(__file__).resolve().parent.parent


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


def _writable(loop, ch, timeout=5.0):
    """Run the loop until ``ch``'s writable handler fires; remove it after."""
    fired = evloop.Var()
    loop.fileevent(ch, "writable", fired.set, True)
    guard = loop.after(timeout * 1000, fired.set, False)
    try:
        assert loop.vwait(fired) is True, "writable did not fire"
    finally:
        loop.after_cancel(guard)
        if not ch.closed():
            loop.fileevent(ch, "writable", None)


class Accepted:
    """A server callback that records (channel, host, port) of each peer."""

    def __init__(self):
        self.peers = []

    def __call__(self, ch, host, port):
        self.peers.append((ch, host, port))

    def close(self):
        for ch, _, _ in self.peers:
            ch.close(force=True)


@pytest.fixture
def accepted():
    acc = Accepted()
    yield acc
    acc.close()


def _udp_sender(host: str = "127.0.0.1") -> socket.socket:
    """A UDP socket bound to ``host`` (so its address is known in advance)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _child(code: str, timeout: float = 8) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# -------------------------------------------------------------- open_async

def test_open_async_to_a_listener_fires_writable_with_no_error(loop, listener):
    sock, port = listener
    ch = evloop.open_async("127.0.0.1", port)
    try:
        _writable(loop, ch)

        assert ch.error() is None
        conn, addr = sock.accept()
        assert ch.sockname() == addr
        assert ch.peername() == ("127.0.0.1", port)
        conn.close()
    finally:
        ch.close()


def test_open_async_channel_is_non_blocking_and_line_buffered(loop, listener):
    _, port = listener
    ch = evloop.open_async("127.0.0.1", port)
    try:
        config = ch.configure()
        assert config["blocking"] is False
        assert config["buffering"] == "line"
    finally:
        ch.close()


def test_open_async_to_a_closed_port_reports_econnrefused_exactly_once(loop, refusing_port):
    ch = evloop.open_async("127.0.0.1", refusing_port)
    try:
        _writable(loop, ch)

        first = ch.error()
        assert isinstance(first, OSError)
        assert first.errno == errno.ECONNREFUSED
        assert first.strerror == os.strerror(errno.ECONNREFUSED)
        assert ch.error() is None
    finally:
        ch.close()


def test_open_async_that_fails_at_once_keeps_the_error_and_still_fires_writable(loop):
    # connect() to a broadcast address fails synchronously with ENETUNREACH.
    ch = evloop.open_async("127.255.255.255", 9)        # must not raise
    try:
        _writable(loop, ch)

        first = ch.error()
        assert isinstance(first, OSError)
        assert first.errno == errno.ENETUNREACH
        assert ch.error() is None
    finally:
        ch.close()


@needs_ipv6
def test_open_async_over_ipv6(loop):
    srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    try:
        ch = evloop.open_async("::1", srv.getsockname()[1])
        _writable(loop, ch)
        assert ch.error() is None
        assert ch.peername() == ("::1", srv.getsockname()[1])
        ch.close()
    finally:
        srv.close()


def test_open_async_raises_when_no_descriptor_is_left():
    result = _child("""
        import errno, resource, socket, evloop
        loop = evloop.get_loop()
        target = socket.create_server(("127.0.0.1", 0))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        hold = []
        try:
            while True:
                hold.append(socket.socket())
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        try:
            evloop.open_async("127.0.0.1", target.getsockname()[1])
        except OSError as exc:
            print("raised", errno.errorcode[exc.errno])
        else:
            print("did not raise")
        for s in hold[:8]:
            s.close()
        ch = evloop.open_async("127.0.0.1", target.getsockname()[1])
        print("after freeing", "ok" if ch.fileno() >= 0 else "bad")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["raised EMFILE", "after freeing ok"]


# -------------------------------------------------------------------- open

def test_open_async_to_a_short_numeric_form_resolves_it(loop, listener):
    sock, port = listener
    ch = evloop.open_async("127.1", port)        # getaddrinfo's job, not inet_pton's
    try:
        _writable(loop, ch)
        assert ch.error() is None
        assert ch.peername() == ("127.0.0.1", port)
    finally:
        ch.close()


def test_open_async_takes_the_port_as_a_string_too(loop, listener):
    sock, port = listener
    ch = evloop.open_async("127.0.0.1", str(port))
    try:
        _writable(loop, ch)
        assert ch.error() is None
    finally:
        ch.close()


@pytest.mark.parametrize("port", [-1, 65536, 70000, 80.0, "no-such-service"])
def test_open_async_and_server_refuse_a_bad_port(loop, port):
    with pytest.raises(OSError if isinstance(port, str) else (ValueError, OSError)):
        evloop.open_async("127.0.0.1", port)
    with pytest.raises(OSError if isinstance(port, str) else (ValueError, OSError)):
        evloop.server(lambda *a: None, port, "127.0.0.1")
    with pytest.raises((ValueError, TypeError)):
        evloop.server(lambda *a: None, port)          # dual stack


def test_open_connects_and_returns_a_blocking_channel(loop, listener):
    sock, port = listener
    ch = evloop.open("127.0.0.1", port, timeout=5)
    conn, _ = sock.accept()
    try:
        assert ch.configure()["blocking"] is True
        ch.puts("hi")
        assert conn.recv(10) == b"hi\n"
    finally:
        conn.close()
        ch.close()


def test_open_to_a_closed_port_raises(loop, refusing_port):
    with pytest.raises(ConnectionRefusedError):
        evloop.open("127.0.0.1", refusing_port, timeout=5)


# ------------------------------------------------------------------ server

def test_server_ipv4_accepts_v4_peers_with_their_address(loop, accepted):
    srv = evloop.server(accepted, 0, "127.0.0.1")
    try:
        client = socket.create_connection(("127.0.0.1", srv.port))
        wait_for(loop, lambda: accepted.peers)

        ch, host, port = accepted.peers[0]
        assert (host, port) == client.getsockname()
        assert isinstance(port, int)
        assert ch.configure()["blocking"] is False
        assert ch.configure()["buffering"] == "line"
        client.close()
    finally:
        srv.close()


@needs_ipv6
def test_server_ipv4_refuses_ipv6_peers(loop, accepted):
    srv = evloop.server(accepted, 0, "127.0.0.1")
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("::1", srv.port), timeout=5)
    finally:
        srv.close()


@needs_ipv6
def test_server_ipv6_accepts_v6_peers_and_refuses_v4(loop, accepted):
    srv = evloop.server(accepted, 0, "::1")
    try:
        client = socket.create_connection(("::1", srv.port))
        wait_for(loop, lambda: accepted.peers)
        _, host, port = accepted.peers[0]
        assert (host, port) == client.getsockname()[:2]
        client.close()

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    finally:
        srv.close()


@needs_ipv6
def test_dual_stack_server_reports_v4_peers_as_plain_ipv4(loop, accepted):
    srv = evloop.server(accepted, 0)             # host "": both families
    try:
        v4 = socket.create_connection(("127.0.0.1", srv.port))
        v6 = socket.create_connection(("::1", srv.port))
        wait_for(loop, lambda: len(accepted.peers) == 2)

        peers = {host: (ch, port) for ch, host, port in accepted.peers}
        assert set(peers) == {"127.0.0.1", "::1"}
        assert peers["127.0.0.1"][1] == v4.getsockname()[1]
        assert isinstance(peers["127.0.0.1"][1], int)
        assert peers["127.0.0.1"][0].peername() == ("127.0.0.1", v4.getsockname()[1])
        assert peers["::1"][1] == v6.getsockname()[1]
        v4.close()
        v6.close()
    finally:
        srv.close()


def test_server_on_a_host_name_resolves_it(loop, accepted):
    srv = evloop.server(accepted, 0, "localhost")
    try:
        family = srv.sock.family
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        client = socket.create_connection((host, srv.port))
        wait_for(loop, lambda: accepted.peers)
        assert accepted.peers[0][1] == host
        client.close()
    finally:
        srv.close()


def test_server_port_zero_tells_the_port_it_got(loop, accepted):
    srv = evloop.server(accepted, 0, "127.0.0.1")
    try:
        assert srv.port != 0
        assert srv.port == srv.sock.getsockname()[1]
        assert srv.fileno() == srv.sock.fileno()
    finally:
        srv.close()


def test_server_close_stops_listening(loop, accepted):
    srv = evloop.server(accepted, 0, "127.0.0.1")
    port = srv.port
    srv.close()
    srv.close()                                   # twice: harmless

    assert srv.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_server_callback_that_raises_does_not_stop_the_server(loop, accepted):
    errors = []
    loop.bgerror(errors.append)
    calls = []

    def callback(ch, host, port):
        calls.append(port)
        if len(calls) == 1:
            ch.close()
            raise RuntimeError("first connection failed")
        accepted(ch, host, port)

    srv = evloop.server(callback, 0, "127.0.0.1")
    try:
        first = socket.create_connection(("127.0.0.1", srv.port))
        wait_for(loop, lambda: errors)
        second = socket.create_connection(("127.0.0.1", srv.port))
        wait_for(loop, lambda: accepted.peers)

        assert [str(e) for e in errors] == ["first connection failed"]
        assert accepted.peers[0][2] == second.getsockname()[1]
        first.close()
        second.close()
    finally:
        srv.close()


def test_server_closed_by_its_callback_stops_accepting_quietly(loop):
    errors, calls = [], []
    loop.bgerror(errors.append)

    def callback(ch, host, port):
        calls.append(port)
        ch.close()
        srv.close()

    srv = evloop.server(callback, 0, "127.0.0.1")
    clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        wait_for(loop, lambda: calls)
        loop.update()

        assert len(calls) == 1 and errors == []
    finally:
        for c in clients:
            c.close()


def test_closing_a_dgram_server_removes_every_handler_of_its_socket(loop):
    srv = evloop.server(None, 0, "127.0.0.1", kind="dgram")
    fd = srv.fileno()
    loop.fileevent(srv.sock, "readable", lambda: None)
    loop.fileevent(srv.sock, "writable", lambda: None)

    srv.close()

    assert srv.fileno() == -1
    # Nothing left for a reused number.
    assert loop.fileevent(fd, "readable") is None
    assert loop.fileevent(fd, "writable") is None


def test_server_and_open_async_talk_line_by_line(loop):
    def accept(ch, host, port):
        def echo():
            line = ch.gets()
            if line is not None:
                ch.puts(line.upper())
            elif ch.eof():
                ch.close()
        loop.fileevent(ch, "readable", echo)

    srv = evloop.server(accept, 0, "127.0.0.1")
    client = evloop.open_async("127.0.0.1", srv.port)
    try:
        _writable(loop, client)
        assert client.error() is None
        replies = []

        def on_reply():
            line = client.gets()
            if line is not None:
                replies.append(line)

        loop.fileevent(client, "readable", on_reply)
        client.puts("hello")
        client.puts("world")
        wait_for(loop, lambda: len(replies) == 2)

        assert replies == ["HELLO", "WORLD"]
    finally:
        client.close()
        srv.close()


# --------------------------------------------------------- Unix-domain paths

def test_unix_server_accepts_on_its_path_and_removes_it_on_close(loop, accepted, tmp_path):
    path = str(tmp_path / "srv.sock")
    srv = evloop.server(accepted, 0, path)
    try:
        assert os.path.exists(path)
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        wait_for(loop, lambda: accepted.peers)

        ch, host, port = accepted.peers[0]
        assert isinstance(port, int)
        assert ch.sockname() == path
        ch.puts("over unix")
        assert client.recv(100) == b"over unix\n"
        client.close()
    finally:
        srv.close()
    assert not os.path.exists(path)


def test_unix_server_replaces_a_stale_socket_file(loop, accepted, tmp_path):
    path = str(tmp_path / "stale.sock")
    old = socket.socket(socket.AF_UNIX)
    old.bind(path)
    old.close()                                   # the file stays, nobody serves it
    assert os.path.exists(path)

    srv = evloop.server(accepted, 0, path)
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        wait_for(loop, lambda: accepted.peers)
        client.close()
    finally:
        srv.close()


def test_unix_server_does_not_steal_a_path_in_use(loop, accepted, tmp_path):
    path = str(tmp_path / "busy.sock")
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(path)
    busy.listen()
    try:
        with pytest.raises(OSError) as info:
            evloop.server(accepted, 0, path)
        assert info.value.errno == errno.EADDRINUSE
        assert os.path.exists(path)
    finally:
        busy.close()


# ---------------------------------------------------------------- datagrams

def test_udp_server_with_a_readable_handler_on_its_socket(loop):
    srv = evloop.server(None, 0, "127.0.0.1", kind="dgram")
    got = evloop.Var()
    loop.fileevent(srv.sock, "readable", lambda: got.set(srv.sock.recvfrom(100)))
    sender = _udp_sender()
    try:
        assert srv.sock.type == socket.SOCK_DGRAM
        sender.sendto(b"datagram", ("127.0.0.1", srv.port))

        data, addr = loop.vwait(got)
        assert data == b"datagram"
        assert addr == sender.getsockname()
    finally:
        sender.close()
        srv.close()


def test_udp_server_with_a_callback_gets_data_host_and_port(loop):
    got = []
    srv = evloop.server(lambda data, host, port: got.append((data, host, port)),
                        0, "127.0.0.1", kind="dgram")
    sender = _udp_sender()
    try:
        sender.sendto(b"one", ("127.0.0.1", srv.port))
        sender.sendto(b"two", ("127.0.0.1", srv.port))
        wait_for(loop, lambda: len(got) == 2)

        host, port = sender.getsockname()
        assert got == [(b"one", host, port), (b"two", host, port)]
    finally:
        sender.close()
        srv.close()


@needs_ipv6
def test_dual_stack_udp_server_reports_v4_senders_as_plain_ipv4(loop):
    got = []
    srv = evloop.server(lambda data, host, port: got.append((data, host, port)),
                        0, kind="dgram")
    sender = _udp_sender()
    try:
        sender.sendto(b"v4", ("127.0.0.1", srv.port))
        wait_for(loop, lambda: got)
        assert got == [(b"v4", "127.0.0.1", sender.getsockname()[1])]
    finally:
        sender.close()
        srv.close()


def test_udp_server_callback_that_raises_does_not_stop_the_server(loop):
    errors, got = [], []
    loop.bgerror(errors.append)

    def callback(data, host, port):
        if data == b"bad":
            raise ValueError("bad datagram")
        got.append(data)

    srv = evloop.server(callback, 0, "127.0.0.1", kind="dgram")
    sender = _udp_sender()
    try:
        sender.sendto(b"bad", ("127.0.0.1", srv.port))
        wait_for(loop, lambda: errors)
        sender.sendto(b"good", ("127.0.0.1", srv.port))

        wait_for(loop, lambda: got, timeout=1)
        assert got == [b"good"]
    finally:
        sender.close()
        srv.close()


def test_unix_datagram_server(loop, tmp_path):
    path = str(tmp_path / "dgram.sock")
    got = []
    srv = evloop.server(lambda data, host, port: got.append(data), 0, path, kind="dgram")
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"unix datagram", path)
        wait_for(loop, lambda: got)
        assert got == [b"unix datagram"]
    finally:
        sender.close()
        srv.close()
    assert not os.path.exists(path)


def test_unix_datagram_server_replaces_a_stale_socket_file_but_not_a_live_one(loop, tmp_path):
    stale, live = str(tmp_path / "stale.sock"), str(tmp_path / "live.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(stale)
    old.close()                                   # left behind by a crash
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    owner.bind(live)
    try:
        srv = evloop.server(None, 0, stale, kind="dgram")
        srv.close()
        with pytest.raises(OSError):
            evloop.server(None, 0, live, kind="dgram")
        assert os.path.exists(live)
    finally:
        owner.close()


def test_server_rejects_a_bad_kind_and_a_stream_server_without_callback(loop):
    with pytest.raises(ValueError):
        evloop.server(lambda *a: None, 0, "127.0.0.1", kind="raw")
    with pytest.raises(ValueError):
        evloop.server(None, 0, "127.0.0.1")


# ------------------------------------------------- accept at the fd limit

def test_accept_at_the_descriptor_limit_does_not_spin_and_resumes():
    # In a child with a low RLIMIT_NOFILE: five clients connect, then the
    # descriptor table is filled.  For half a second the server cannot
    # accept; the process must stay (nearly) idle.  Then descriptors are
    # freed, and every pending client must be served.
    result = _child("""
        import json, os, resource, socket, evloop

        def cpu_seconds():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        loop = evloop.get_loop()
        served = []

        def accept(ch, host, port):
            served.append(ch)
            ch.puts("welcome")

        srv = evloop.server(accept, 0, "127.0.0.1")
        clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]
        hold = []
        try:
            while True:
                hold.append(os.dup(0))
        except OSError:
            pass

        start = cpu_seconds()
        elapsed = evloop.Var()
        loop.after(500, elapsed.set, True)
        loop.vwait(elapsed)
        cpu_while_full = cpu_seconds() - start
        served_while_full = len(served)

        for fd in hold:
            os.close(fd)
        deadline = evloop.Var(False)
        timer = loop.after(5000, deadline.set, True)
        while len(served) < 5 and not deadline.get():
            loop.run_once()
        loop.after_cancel(timer)

        replies = []
        for c in clients:
            c.settimeout(5)
            replies.append(c.recv(100).decode())
        print(json.dumps({"cpu": cpu_while_full, "served_while_full": served_while_full,
                          "served": len(served), "replies": replies}))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["served_while_full"] == 0
    assert report["cpu"] < 0.2, f"{report['cpu']:.2f} s of CPU in 0.5 s: accept spins"
    assert report["served"] == 5
    assert report["replies"] == ["welcome\n"] * 5


# ------------------------------------------------------------ loop=argument

def test_server_and_open_async_use_the_loop_they_are_given(loop):
    other = evloop.Loop()
    try:
        peers = []
        srv = evloop.server(lambda ch, h, p: peers.append(ch), 0, "127.0.0.1", loop=other)
        client = evloop.open_async("127.0.0.1", srv.port, loop=other)

        loop.update()                      # the thread's loop knows nothing of them
        assert peers == []
        assert loop.fileevent(srv.sock, "readable") is None

        wait_for(other, lambda: peers)
        assert peers[0].configure()["blocking"] is False
        peers[0].close()
        client.close()
        srv.close()
    finally:
        other.close()
