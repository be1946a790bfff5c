"""evloop, second cut: layering, bounds, Tcl's timing and EOF, embedding.

Each test here pins one item of DESIGN's "Details added in the second cut".
"""

from __future__ import annotations

import ast
import errno
import pathlib
import re
import shutil
import socket
import struct
import subprocess
import threading

import pytest

import evloop

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ layering

def test_loop_module_imports_nothing_of_the_channel_layer():
    tree = ast.parse((ROOT / "evloop" / "loop.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if "channel" in m or "sockets" in m}, imported
    assert "Channel" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_no_module_uses_a_private_name_of_a_channel_or_loop():
    pattern = re.compile(r"(ch|channel|loop|self\._loop)\._[a-z]")
    found = []
    for package in ("evloop", "portalloc", "scanner", "examples"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_no_evloop_module_imports_a_private_name_of_another():
    for path in sorted((ROOT / "evloop").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_fileevent_hands_the_call_to_an_object_that_keeps_its_own_events(loop):
    calls = []

    class Keeper:
        def fileevent(self, event, *handler):
            calls.append((event, handler))
            return "mine" if not handler else None

    keeper = Keeper()
    def cb(x):
        return x
    assert loop.fileevent(keeper, "readable", cb, 1) is None
    assert loop.fileevent(keeper, "writable") == "mine"
    assert calls == [("readable", (cb, 1)), ("writable", ())]


def test_channel_events_set_through_loop_or_channel_are_the_same(loop):
    a, b = socket.socketpair()
    ch = evloop.Channel(a, loop)
    try:
        def handler():
            return None
        loop.fileevent(ch, "readable", handler)
        assert ch.fileevent("readable") is handler
        ch.fileevent("readable", None)
        assert loop.fileevent(ch, "readable") is None
        with pytest.raises(ValueError):
            ch.fileevent("exception", handler)
    finally:
        ch.close()
        b.close()


def test_open_async_failure_known_at_once_is_kept_through_the_constructor(loop):
    a, b = socket.socketpair()
    refused = ConnectionRefusedError(111, "Connection refused")
    ch = evloop.Channel(a, loop, error=refused)
    try:
        assert ch.error() is refused
        assert ch.error() is None
    finally:
        ch.close()
        b.close()


# ------------------------------------------------------------------ bounds

@pytest.fixture
def tcp(loop):
    """(channel, peer) on loopback TCP."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname(), timeout=5)
    conn, _ = listener.accept()
    listener.close()
    ch = evloop.Channel(conn, loop)
    yield ch, peer
    ch.close(force=True)
    peer.close()


def test_gets_on_a_non_blocking_channel_calls_recv_once_at_most(chpair):
    ch, peer = chpair
    peer.sendall(b"x" * 100_000)          # fits the socketpair's buffer

    assert ch.gets() is None
    assert ch.pending("input") == 65536   # one recv of 64 KiB, not two
    assert ch.blocked()
    assert ch.gets() is None
    assert ch.pending("input") == 100_000


def test_read_on_a_non_blocking_channel_calls_recv_once_at_most(chpair):
    ch, peer = chpair
    peer.sendall(b"y" * 100_000)

    assert ch.read() == "y" * 65536
    assert ch.read() == "y" * (100_000 - 65536)


def test_gets_serves_a_buffered_line_without_recv(chpair):
    ch, peer = chpair
    peer.sendall(b"one\ntwo\n")
    assert ch.gets() == "one"
    peer.sendall(b"three\n")
    assert ch.gets() == "two"
    assert ch.pending("input") == 0 or ch.pending("input") == 6


def test_line_longer_than_the_limit_raises_and_stays_for_read(chpair):
    ch, peer = chpair
    ch.configure(limit=1000)
    peer.sendall(b"z" * 5000)

    with pytest.raises(evloop.LineTooLong) as info:
        ch.gets()
    assert isinstance(info.value, ValueError)
    assert ch.pending("input") == 5000
    with pytest.raises(evloop.LineTooLong):
        ch.gets()                          # no recv, same answer
    assert ch.read() == "z" * 5000
    peer.sendall(b"short\n")
    assert ch.gets() == "short"


def test_a_complete_line_longer_than_the_limit_raises_too(chpair):
    ch, peer = chpair
    ch.configure(limit=10)
    peer.sendall(b"0123456789\n" + b"0123456789x\nok\n")
    assert ch.gets() == "0123456789"       # exactly the limit: fine
    with pytest.raises(evloop.LineTooLong):
        ch.gets()
    assert ch.read() == "0123456789x\nok\n"


def test_no_limit_takes_any_line(chpair):
    ch, peer = chpair
    ch.configure(limit=None, blocking=True)
    sender = threading.Thread(target=peer.sendall, args=(b"q" * 3_000_000 + b"\n",))
    sender.start()
    try:
        assert ch.gets() == "q" * 3_000_000    # more than the default limit
    finally:
        sender.join(5)


def test_a_blocking_gets_stops_receiving_at_the_limit(chpair):
    ch, peer = chpair
    ch.configure(limit=100_000, blocking=True)
    peer.sendall(b"w" * 150_000)           # no line end, peer stays open
    with pytest.raises(evloop.LineTooLong):
        ch.gets()
    assert 100_000 < ch.pending("input") <= 100_000 + 65536
    assert ch.read(10) == "w" * 10


@pytest.mark.parametrize("bad", [0, -5, 1.5, "10", True])
def test_a_bad_limit_is_refused_and_changes_nothing(chpair, bad):
    ch, _ = chpair
    with pytest.raises(ValueError):
        ch.configure(limit=bad)
    assert ch.configure()["limit"] == 1 << 20


def test_a_flooding_peer_costs_bounded_memory_and_never_stops_the_loop(loop, tcp):
    ch, peer = tcp
    limit = 256 * 1024
    ch.configure(limit=limit)
    stop = threading.Event()

    def flood():
        chunk = b"f" * 65536
        try:
            while not stop.is_set():
                peer.sendall(chunk)
        except OSError:
            pass                           # closed under us: done

    seen = {"too_long": 0, "max_pending": 0, "ticks": 0, "other": 0,
            "frozen_at": None, "ticks_frozen": 0, "drained": 0}
    done = evloop.Var()

    def readable():
        try:
            ch.gets()
        except evloop.LineTooLong:
            seen["too_long"] += 1
            if seen["too_long"] == 1:
                seen["frozen_at"] = ch.pending("input")
        seen["max_pending"] = max(seen["max_pending"], ch.pending("input"))

    def tick():
        seen["ticks"] += 1
        if seen["frozen_at"] is not None and not seen["drained"]:
            # Receiving has stopped: the buffer stays as it was.
            assert ch.pending("input") == seen["frozen_at"]
            seen["ticks_frozen"] += 1
            if seen["ticks_frozen"] == 20:
                seen["drained"] = len(ch.read())   # lets it receive again
        if seen["too_long"] >= 2 or seen["ticks"] > 3000:
            done.set(True)
        else:
            loop.after(1, tick)

    a, b = socket.socketpair()
    def other():
        a.recv(10)
        seen["other"] += 1
        if seen["other"] < 5:
            b.send(b"!")

    loop.fileevent(a, "readable", other)
    b.send(b"!")
    ch.fileevent("readable", readable)
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    loop.after(1, tick)
    try:
        loop.vwait(done)
    finally:
        stop.set()
        loop.fileevent(a, "readable", None)
        a.close()
        b.close()
        ch.close(force=True)
        peer.close()
        sender.join(5)

    assert seen["too_long"] >= 2               # raised, drained, raised again
    assert seen["drained"] > limit
    assert seen["ticks_frozen"] >= 20
    assert limit < seen["max_pending"] <= limit + 65536
    assert seen["other"] == 5                  # the other handler kept its turn


# ------------------------------------------------------------ Tcl's EOF rules

def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _until_writable(loop, ch):
    fired = evloop.Var()
    loop.fileevent(ch, "writable", fired.set, True)
    guard = loop.after(5000, fired.set, False)
    assert loop.vwait(fired), "writable never fired"
    loop.after_cancel(guard)
    loop.fileevent(ch, "writable", None)


def test_reset_mid_stream_keeps_the_data_then_ends_softly(loop, tcp):
    ch, peer = tcp
    peer.sendall(b"last words\n")
    got = []
    done = evloop.Var()

    def readable():
        line = ch.gets()
        if line is not None:
            got.append(line)
            _reset(peer)
        elif ch.eof():
            done.set(ch.error())

    ch.fileevent("readable", readable)
    loop.after(5000, done.set, "timeout")
    exc = loop.vwait(done)
    assert got == ["last words"]
    assert isinstance(exc, ConnectionResetError)
    assert ch.error() is None


def test_other_read_errors_still_raise(loop):
    # A connected UDP socket learns of an ICMP port unreachable as
    # ECONNREFUSED from recv: a read error that is neither a reset nor a
    # failed connect (the socket has a peer).
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", port))
    ch = evloop.Channel(udp, loop)
    try:
        ch.puts("anyone?")
        fired = evloop.Var()
        ch.fileevent("readable", fired.set, True)
        guard = loop.after(5000, fired.set, False)
        assert loop.vwait(fired)
        loop.after_cancel(guard)
        with pytest.raises(ConnectionRefusedError):
            ch.gets()
        assert ch.eof()
    finally:
        ch.close()


def test_gets_after_a_refused_async_connect_is_not_connected_and_the_refusal_waits(
        loop, refusing_port):
    # Tcl socket-14.7.2: gets fails with "socket is not connected" and
    # fconfigure -error still reports "connection refused", once; eof stays 0.
    ch = evloop.open_async("127.0.0.1", refusing_port)
    try:
        _until_writable(loop, ch)
        with pytest.raises(OSError) as info:
            ch.gets()
        assert info.value.errno == errno.ENOTCONN
        assert not ch.eof()
        refusal = ch.error()
        assert isinstance(refusal, ConnectionRefusedError)
        assert ch.error() is None
        with pytest.raises(OSError) as info:
            ch.read()
        assert info.value.errno == errno.ENOTCONN
    finally:
        ch.close()


def test_whoever_reads_the_refusal_first_keeps_it(loop, refusing_port):
    # Tcl socket-14.8.2: -error first, then gets is "not connected".
    ch = evloop.open_async("127.0.0.1", refusing_port)
    try:
        _until_writable(loop, ch)
        assert isinstance(ch.error(), ConnectionRefusedError)
        with pytest.raises(OSError) as info:
            ch.gets()
        assert info.value.errno == errno.ENOTCONN
        assert ch.error() is None
    finally:
        ch.close()


def test_a_connect_error_known_at_once_waits_for_error_after_gets(loop):
    a, b = socket.socketpair()
    b.close()
    lone = socket.socket()                 # never connected: recv is ENOTCONN
    a.close()
    ch = evloop.Channel(lone, loop, error=OSError(errno.ENETUNREACH, "unreachable"))
    try:
        with pytest.raises(OSError) as info:
            ch.gets()
        assert info.value.errno == errno.ENOTCONN
        assert ch.error().errno == errno.ENETUNREACH
    finally:
        ch.close()


def test_read_reports_eof_on_the_call_after_the_last_characters(chpair):
    # Tcl io-12.5: the read that returns the last characters does not see
    # the end yet; eof is reported on the next readable event.
    ch, peer = chpair
    peer.sendall(b"abc")
    peer.shutdown(socket.SHUT_WR)

    assert ch.read() == "abc"
    assert not ch.eof()
    assert ch.read() == ""
    assert ch.eof()


# ------------------------------------------------------------- vwait timing

class _Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake():
    """(loop, clock): a Loop on a clock that only the test moves."""
    clock = _Clock()
    lp = evloop.Loop(clock=clock)
    previous = evloop.set_loop(lp)
    yield lp, clock
    evloop.set_loop(previous)
    lp.close()


def test_vwait_reply_then_cancel_timeout_never_sees_the_timeout(fake):
    loop, clock = fake
    a, b = socket.socketpair()
    ch = evloop.Channel(a, loop)
    log = []
    reply = evloop.Var()
    try:
        def got_reply():
            line = ch.gets()
            if line is not None:
                log.append(line)
                reply.set(line)

        ch.fileevent("readable", got_reply)
        timeout = loop.after(20, lambda: log.append("timeout"))
        b.sendall(b"pong\n")
        clock.now += 0.060             # the reply and the timeout: both due

        assert loop.vwait(reply) == "pong"
        loop.after_cancel(timeout)
        loop.update()
        assert log == ["pong"]
    finally:
        ch.close()
        b.close()


def test_vwait_returns_after_one_descriptor_and_keeps_the_others_for_later(loop):
    pairs = [socket.socketpair() for _ in range(3)]
    calls = {n: 0 for n in range(3)}
    done = evloop.Var()

    def handler(n, sock):
        sock.recv(10)
        calls[n] += 1
        done.set(n)

    try:
        for n, (a, b) in enumerate(pairs):
            loop.fileevent(a, "readable", handler, n, a)
            b.send(b"x")
        loop.after(5000, done.set, "timeout")   # a deadline, never reached
        first = loop.vwait(done)
        assert first in (0, 1, 2)
        assert sum(calls.values()) == 1         # no other handler ran first
        assert loop.backend_timeout() == 0      # the rest of the pass waits
        loop.run_once(0)                        # finishes that pass
        assert calls == {0: 1, 1: 1, 2: 1}      # nothing lost, nothing twice
        loop.update()
        assert calls == {0: 1, 1: 1, 2: 1}
    finally:
        for a, b in pairs:
            loop.fileevent(a, "readable", None)
            a.close()
            b.close()


def test_both_handlers_of_one_descriptor_are_one_event(loop):
    # As tclsh: a channel's readable and writable scripts run in one event.
    a, b = socket.socketpair()
    log = []
    done = evloop.Var()
    try:
        def readable():
            a.recv(10)
            log.append("r")
            done.set(1)

        def writable():
            log.append("w")
            loop.fileevent(a, "writable", None)

        loop.fileevent(a, "readable", readable)
        loop.fileevent(a, "writable", writable)
        b.send(b"x")
        loop.vwait(done)
        assert log == ["r", "w"]
    finally:
        loop.fileevent(a, "readable", None)
        a.close()
        b.close()


def test_timers_due_at_one_moment_are_one_event(fake):
    loop, clock = fake
    log = []
    done = evloop.Var()
    loop.after(1, lambda: (log.append("a"), done.set(1)))
    loop.after(2, log.append, "b")
    loop.after(50, log.append, "later")
    clock.now += 0.010
    loop.vwait(done)
    assert log == ["a", "b"]


def test_one_generation_of_idle_callbacks_is_one_event(loop):
    log = []
    done = evloop.Var()
    loop.after_idle(lambda: (log.append(1), done.set(1), loop.after_idle(log.append, 3)))
    loop.after_idle(log.append, 2)
    loop.vwait(done)
    assert log == [1, 2]
    loop.update()
    assert log == [1, 2, 3]


def test_a_nested_vwait_shares_the_pass_and_runs_nothing_twice(loop):
    pairs = [socket.socketpair() for _ in range(3)]
    calls = []
    inner, outer = evloop.Var(), evloop.Var()

    def handler(n, sock):
        sock.recv(10)
        calls.append(n)
        if len(calls) == 1:
            loop.vwait(inner)               # the other two may run in here
            outer.set(True)
        elif len(calls) == 2:
            inner.set(True)

    try:
        for n, (a, b) in enumerate(pairs):
            loop.fileevent(a, "readable", handler, n, a)
            b.send(b"x")
        guard = loop.after(5000, outer.set, "timeout")
        assert loop.vwait(outer) is True
        loop.after_cancel(guard)
        loop.update()
        assert sorted(calls) == [0, 1, 2]
    finally:
        for a, b in pairs:
            loop.fileevent(a, "readable", None)
            a.close()
            b.close()


_TCL_VWAIT = r"""
set srv [socket -server accept -myaddr 127.0.0.1 0]
proc accept {s h p} { set ::peer $s }
set c [socket 127.0.0.1 [lindex [fconfigure $srv -sockname] 2]]
vwait peer
fconfigure $c -blocking 0 -buffering line
fconfigure $peer -buffering line
puts $peer hello
puts $peer world
fileevent $c readable {lappend ::log r:[gets $c]; set ::reply 1}
set id [after 20 {lappend ::log timeout}]
after 0 {lappend ::log zero}
set t [clock milliseconds]; while {[clock milliseconds] - $t < 60} {}
vwait reply
lappend log returned
after cancel $id
update
puts $log
"""


def test_vwait_counts_events_as_tclsh_does(fake, tmp_path):
    tclsh = shutil.which("tclsh") or shutil.which("tclsh8.6")
    if tclsh is None:
        pytest.skip("tclsh not installed")
    script = tmp_path / "vwait.tcl"
    script.write_text(_TCL_VWAIT)
    tcl = subprocess.run([tclsh, str(script)], capture_output=True, text=True,
                         timeout=10, check=True).stdout.split()

    loop, clock = fake
    a, b = socket.socketpair()
    ch = evloop.Channel(a, loop)
    log = []
    reply = evloop.Var()
    try:
        def readable():
            log.append(f"r:{ch.gets()}")
            reply.set(1)

        b.sendall(b"hello\nworld\n")
        ch.fileevent("readable", readable)
        timeout = loop.after(20, log.append, "timeout")
        loop.after(0, log.append, "zero")
        clock.now += 0.060
        loop.vwait(reply)
        log.append("returned")
        loop.after_cancel(timeout)
        loop.update()
    finally:
        ch.close()
        b.close()
    assert tcl == ["r:hello", "returned", "zero", "r:world"]
    assert log == tcl


# ------------------------------------------------------------ long delays

@pytest.mark.parametrize("bad", [float("inf"), float("nan"), float("-inf")])
def test_after_refuses_an_infinite_or_nan_delay(loop, bad):
    before = loop.after_info()
    with pytest.raises(ValueError):
        loop.after(bad, print)
    assert loop.after_info() == before


def test_a_timer_25_days_or_more_away_does_not_break_the_pass(loop):
    a, b = socket.socketpair()
    fired = []
    try:
        far = loop.after(30 * 86400 * 1000, fired.append, "far")   # > 2**31 ms
        huge = loop.after(1e300, fired.append, "huge")
        loop.fileevent(a, "readable", lambda: fired.append(a.recv(10)))
        b.send(b"x")
        assert loop.run_once() == 1         # slept towards day 30, woke on I/O
        b.send(b"y")
        assert loop.run_once(1e12) == 1     # a caller's huge timeout too
        assert fired == [b"x", b"y"]
        assert set(loop.after_info()) >= {far, huge}
        assert 29 * 86400 < loop.backend_timeout() <= 30 * 86400 + 0.001
    finally:
        loop.fileevent(a, "readable", None)
        a.close()
        b.close()


def test_run_once_zero_never_blocks(loop):
    loop.after(60_000, print)
    a, b = socket.socketpair()
    try:
        loop.fileevent(a, "readable", lambda: None)
        t0 = loop.time()
        for _ in range(50):
            assert loop.run_once(0) == 0
        assert loop.time() - t0 < 1.0       # 50 passes, none waited
    finally:
        loop.fileevent(a, "readable", None)
        a.close()
        b.close()


# --------------------------------------------------------------- embedding

def test_backend_timeout_says_when_the_loop_has_work(fake):
    loop, clock = fake
    assert loop.backend_timeout() is None           # only I/O could wake it
    timer = loop.after(250, print)
    assert loop.backend_timeout() == pytest.approx(0.250)
    clock.now += 0.1
    assert loop.backend_timeout() == pytest.approx(0.150)
    clock.now += 1
    assert loop.backend_timeout() == 0               # due now
    loop.after_cancel(timer)
    assert loop.backend_timeout() is None            # cancelled: no deadline
    idle = loop.after_idle(print)
    assert loop.backend_timeout() == 0
    loop.after_cancel(idle)
    loop.call_soon_threadsafe(print)
    assert loop.backend_timeout() == 0


def test_an_outer_select_loop_drives_evloop_through_backend_fd(loop):
    """Embedding: a tiny outer loop waits on backend_fd with a plain
    select.select and backend_timeout, and calls run_once(0)."""
    import select

    a, b = socket.socketpair()
    log = []
    try:
        def readable():
            log.append(("read", a.recv(10)))

        def tick():
            log.append("timer")
            b.send(b"ping")                    # I/O that only epoll sees

        loop.fileevent(a, "readable", readable)
        loop.after(20, tick)
        deadline = loop.time() + 5
        while len(log) < 2 and loop.time() < deadline:
            timeout = loop.backend_timeout()
            wait = 1.0 if timeout is None else min(timeout, 1.0)
            select.select([loop.backend_fd()], [], [], wait)
            loop.run_once(0)
        assert log == ["timer", ("read", b"ping")]
    finally:
        loop.fileevent(a, "readable", None)
        a.close()
        b.close()


def test_backend_fd_sees_a_handler_changed_since_the_last_pass(loop):
    import select

    a, b = socket.socketpair()
    try:
        loop.fileevent(a, "readable", lambda: a.recv(10))
        loop.run_once(0)
        loop.fileevent(a, "writable", lambda: loop.fileevent(a, "writable", None))
        # The selector learns of the writable handler before the next wait.
        assert loop.backend_timeout() is None
        ready, _, _ = select.select([loop.backend_fd()], [], [], 5)
        assert ready
    finally:
        loop.fileevent(a, "readable", None)
        loop.fileevent(a, "writable", None)
        a.close()
        b.close()


def test_forget_removes_both_handlers_at_once(loop):
    a, b = socket.socketpair()
    ch = evloop.Channel(socket.socketpair()[0], loop)
    try:
        loop.fileevent(a, "readable", print)
        loop.fileevent(a, "writable", print)
        loop.forget(a)
        assert loop.fileevent(a, "readable") is None
        assert loop.fileevent(a, "writable") is None
        b.send(b"x")
        assert loop.run_once(0) == 0            # nothing left to call
        loop.forget(a)                          # again: nothing happens
        loop.fileevent(ch, "readable", print)
        loop.forget(ch)                         # a channel removes its own
        assert ch.fileevent("readable") is None
    finally:
        a.close()
        b.close()
        ch.close()


# ------------------------------------------------- timers bucketed per ms

def test_a_burst_of_timers_fires_in_deadline_order_then_fifo(fake):
    loop, clock = fake
    fired = []
    for n in range(300):                       # a burst: filed lazily
        loop.after(n % 7 + 1, fired.append, ("t", n % 7 + 1, n))
    clock.now += 0.003                         # ticks 1..3 are due now
    loop.after(0, fired.append, ("zero", 0, 300))
    clock.now += 0.010
    loop.update()
    keys = [(ms, n) for _, ms, n in fired if _ == "t"]
    assert keys == sorted(keys)                # deadline, then made-first
    zero = fired.index(("zero", 0, 300))
    # The after(0) was made at 3 ms: after every timer due by then.
    assert all(ms <= 3 for _, ms, _ in fired[:zero])
    assert all(ms > 3 for _, ms, _ in fired[zero + 1:])
    assert len(fired) == 301


def test_a_timer_never_fires_early_and_at_most_a_millisecond_late(fake):
    loop, clock = fake
    clock.now += 0.0004                        # off the millisecond
    fired = []
    loop.after(10, fired.append, 1)
    clock.now += 0.0099
    loop.update()
    assert fired == []                         # 9.9 ms: not yet
    clock.now += 0.0007                        # 10.6 ms: its millisecond is over
    loop.update()
    assert fired == [1]


def test_a_fake_clock_on_whole_milliseconds_is_exact(fake):
    loop, clock = fake
    fired = []
    for ms in (20, 60, 70, 110):
        loop.after(ms, fired.append, ms)
    for step, expect in ((0.020, [20]), (0.040, [20, 60]), (0.010, [20, 60, 70]),
                         (0.040, [20, 60, 70, 110])):
        clock.now += step
        loop.update()
        assert fired == expect


def test_cancelling_the_soonest_of_a_burst_only_costs_an_empty_pass(fake):
    loop, clock = fake
    fired = []
    first = loop.after(5, fired.append, "first")
    rest = [loop.after(50 + n, fired.append, n) for n in range(100)]
    loop.after_cancel(first)
    assert loop.backend_timeout() == pytest.approx(0.005)   # the old bound
    clock.now += 0.005
    loop.update()
    assert fired == []
    assert loop.backend_timeout() == pytest.approx(0.045)   # now exact
    for timer in rest:
        loop.after_cancel(timer)
    loop.update()
    assert loop.backend_timeout() is None


# ------------------------------------------- no local port: raised, not kept

_NO_PORT_CHILD = r"""
import errno, socket, subprocess, sys
import evloop
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
# Two local ports for connects; held connections take them, and the next
# connect to the same destination finds none (EADDRNOTAVAIL).
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40001\n")
L = socket.socket(); L.bind(("127.0.0.1", 0)); L.listen(16)
held = []
while True:
    try:
        held.append(evloop.open_async("127.0.0.1", L.getsockname()[1]))
    except OSError as exc:
        print(exc.errno, len(held))
        break
    if len(held) > 10:
        print("no error", len(held))
        break
"""


@pytest.mark.timeout(20)
def test_open_async_raises_when_no_local_port_is_free():
    # A shortage says nothing of the target: the caller must be able to
    # wait and retry, so it is raised, not kept for error() like a refusal.
    import os
    import sys
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace")
    root = pathlib.Path(__file__).resolve().parent.parent
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", _NO_PORT_CHILD],
                       capture_output=True, text=True, timeout=15, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)})
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip(f"no private network namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    code, opened = r.stdout.split()
    assert code == str(errno.EADDRNOTAVAIL) and 1 <= int(opened) <= 2
