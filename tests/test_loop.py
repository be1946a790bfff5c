"""The reactor: fileevent, Var/vwait, update, bgerror, threads and signals.

File events are tested on real sockets (``socket.socketpair`` and loopback
TCP); waiting is done with ``vwait`` / ``wait_for``, never with sleeps.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

import evloop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pair():
    """A connected socketpair (a, b); both closed after the test."""
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _readable(sock: socket.socket) -> None:
    sock.send(b"x")


# ------------------------------------------------------- fileevent: the table

def test_fileevent_readable_handler_runs_when_data_arrives(loop, pair):
    a, b = pair
    got = evloop.Var()
    loop.fileevent(a, "readable", lambda: got.set(a.recv(100)))

    b.send(b"hello")

    assert loop.vwait(got) == b"hello"


def test_fileevent_passes_the_handler_arguments(loop, pair):
    a, b = pair
    got = evloop.Var()
    loop.fileevent(a, "readable", lambda *args: (a.recv(1), got.set(args)), "x", 2)

    b.send(b"!")

    assert loop.vwait(got) == ("x", 2)


def test_fileevent_query_returns_the_callable_alone_or_none(loop, pair):
    a, _ = pair

    def handler(arg):
        pass

    assert loop.fileevent(a, "readable") is None
    loop.fileevent(a, "readable", handler, "an argument")

    assert loop.fileevent(a, "readable") is handler
    assert loop.fileevent(a, "writable") is None


def test_fileevent_replaces_the_previous_handler(loop, pair):
    a, b = pair
    calls = []
    loop.fileevent(a, "readable", calls.append, "old")
    loop.fileevent(a, "readable", lambda: (a.recv(1), calls.append("new")))

    b.send(b"x")
    wait_for(loop, lambda: calls)
    loop.update()

    assert calls == ["new"]


def test_fileevent_none_removes_the_handler(loop, pair):
    a, b = pair
    calls = []
    loop.fileevent(a, "readable", calls.append, "removed")
    loop.fileevent(a, "readable", None)
    b.send(b"x")

    loop.update()

    assert calls == []
    assert loop.fileevent(a, "readable") is None


def test_removing_a_handler_that_was_never_set_is_harmless(loop, pair):
    a, _ = pair
    assert loop.fileevent(a, "writable", None) is None
    assert loop.fileevent(a, "writable") is None


def test_fileevent_readable_and_writable_on_one_socket_both_fire(loop, pair):
    a, b = pair
    seen = set()

    def on_readable():
        a.recv(10)
        seen.add("readable")

    def on_writable():
        seen.add("writable")
        loop.fileevent(a, "writable", None)

    loop.fileevent(a, "readable", on_readable)
    loop.fileevent(a, "writable", on_writable)
    b.send(b"x")

    wait_for(loop, lambda: seen == {"readable", "writable"})
    assert loop.fileevent(a, "readable") is on_readable
    assert loop.fileevent(a, "writable") is None


def test_removing_one_event_keeps_the_other(loop, pair):
    a, b = pair
    got = evloop.Var()
    loop.fileevent(a, "writable", lambda: None)
    loop.fileevent(a, "readable", lambda: got.set(a.recv(10)))

    loop.fileevent(a, "writable", None)
    b.send(b"still here")

    assert loop.vwait(got) == b"still here"


def test_fileevent_accepts_an_integer_descriptor(loop, pair):
    a, b = pair
    got = evloop.Var()
    loop.fileevent(a.fileno(), "readable", lambda: got.set(os.read(a.fileno(), 10)))

    b.send(b"by fd")

    assert loop.vwait(got) == b"by fd"
    loop.fileevent(a.fileno(), "readable", None)


def test_fileevent_accepts_a_channel(loop, pair):
    a, b = pair
    ch = evloop.Channel(a, loop)
    got = evloop.Var()
    loop.fileevent(ch, "readable", lambda: got.set(ch.gets()))

    b.send(b"a line\n")

    assert loop.vwait(got) == "a line"


@pytest.mark.parametrize("event", ["read", "Readable", "exception", "", "writeable"])
def test_fileevent_rejects_a_bad_event_name(loop, pair, event):
    a, _ = pair
    with pytest.raises(ValueError):
        loop.fileevent(a, event, lambda: None)
    with pytest.raises(ValueError):
        loop.fileevent(a, event)


def test_module_level_fileevent_uses_the_thread_loop(loop, pair):
    a, b = pair
    got = evloop.Var()
    evloop.fileevent(a, "readable", lambda: got.set(a.recv(10)))

    assert loop.fileevent(a, "readable") is not None
    b.send(b"module")
    assert evloop.vwait(got) == b"module"


def test_readable_handler_is_called_when_the_peer_hangs_up(loop, pair):
    a, b = pair
    got = evloop.Var()
    loop.fileevent(a, "readable", lambda: got.set(a.recv(10)))

    b.close()

    assert loop.vwait(got) == b""


# ------------------------------------------ fileevent: failures and removals

def test_fileevent_handler_that_raises_is_reported_and_deleted(loop, pair):
    a, b = pair
    errors, calls = [], []
    loop.bgerror(errors.append)

    def broken():
        calls.append(1)
        raise RuntimeError("handler bug")   # never reads: a would stay readable

    loop.fileevent(a, "readable", broken)
    b.send(b"x")

    wait_for(loop, lambda: errors)
    for _ in range(5):
        loop.run_once(0)

    assert calls == [1]
    assert [str(e) for e in errors] == ["handler bug"]
    assert loop.fileevent(a, "readable") is None


def test_writable_handler_that_raises_is_deleted_but_the_readable_one_stays(loop, pair):
    a, b = pair
    errors = []
    loop.bgerror(errors.append)
    got = evloop.Var()
    loop.fileevent(a, "writable", lambda: 1 / 0)
    loop.fileevent(a, "readable", lambda: got.set(a.recv(100)))

    wait_for(loop, lambda: errors)
    b.send(b"reader alive")

    assert loop.vwait(got) == b"reader alive"
    assert loop.fileevent(a, "writable") is None
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


def test_a_handler_removed_earlier_in_the_same_pass_does_not_run(loop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    try:
        ran = []

        # Whichever runs first removes the other: exactly one may run.
        def first():
            ran.append("first")
            a1.recv(10)
            loop.fileevent(a2, "readable", None)

        def second():
            ran.append("second")
            a2.recv(10)
            loop.fileevent(a1, "readable", None)

        loop.fileevent(a1, "readable", first)
        loop.fileevent(a2, "readable", second)
        b1.send(b"x")
        b2.send(b"x")

        assert loop.run_once(5) >= 1
        loop.update()

        assert len(ran) == 1
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_a_closed_channels_handler_never_runs(loop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    try:
        ch1, ch2 = evloop.Channel(a1, loop), evloop.Channel(a2, loop)
        ran = []

        # Both are readable in the same pass; whichever runs first closes
        # the other, whose pending event must then be dropped.
        def on1():
            ran.append((1, ch1.gets()))
            ch2.close()

        def on2():
            ran.append((2, ch2.gets()))
            ch1.close()

        loop.fileevent(ch1, "readable", on1)
        loop.fileevent(ch2, "readable", on2)
        b1.send(b"line\n")
        b2.send(b"line\n")

        loop.run_once(5)
        loop.update()

        assert len(ran) == 1
        winner, line = ran[0]
        assert line == "line"
        assert [ch1.closed(), ch2.closed()] == [winner == 2, winner == 1]
    finally:
        for ch in (ch1, ch2):
            ch.close()
        for s in (b1, b2):
            s.close()


def test_closing_a_channel_removes_both_handlers(loop, pair):
    a, b = pair
    ch = evloop.Channel(a, loop)
    calls = []
    loop.fileevent(ch, "readable", calls.append, "r")
    loop.fileevent(ch, "writable", calls.append, "w")

    ch.close()
    loop.update()

    assert calls == []
    assert b.recv(10) == b""                  # really closed
    assert loop.fileevent(ch, "readable") is None
    assert loop.fileevent(ch, "writable") is None


def test_a_reused_descriptor_never_gets_the_old_handlers_events(loop, pair):
    a, b = pair
    old = evloop.Channel(a, loop)
    old_calls = []
    loop.fileevent(old, "readable", old_calls.append, "old readable")
    loop.fileevent(old, "writable", old_calls.append, "old writable")
    fd = old.fileno()

    old.close()
    new, new_peer = socket.socketpair()
    try:
        spare = None
        if new.fileno() != fd:          # the peer end took the number
            new, spare = new_peer, new
        assert new.fileno() == fd

        # The new socket is readable and writable; nothing was registered.
        (spare or new_peer).send(b"data for the new socket")
        loop.update()
        assert old_calls == []
        assert loop.fileevent(new, "readable") is None
        assert loop.fileevent(fd, "writable") is None

        # Its own handler gets its events, the old one still nothing.
        got = evloop.Var()
        loop.fileevent(new, "readable", lambda: got.set(new.recv(100)))
        assert loop.vwait(got) == b"data for the new socket"
        assert old_calls == []
        loop.fileevent(new, "readable", None)
    finally:
        new.close()
        new_peer.close()


def test_a_descriptor_closed_and_reused_in_the_same_pass_drops_the_stale_event(loop):
    # Two sockets are readable in one pass.  The trigger's handler closes the
    # victim channel and opens a socket that takes its descriptor number, with
    # a handler of its own; the victim's event of this pass must reach neither
    # the old handler (after the close) nor the new one (its socket is not
    # readable).
    (ta, tb), (va, vb) = socket.socketpair(), socket.socketpair()
    made = []
    try:
        victim = evloop.Channel(va, loop)
        fd = victim.fileno()
        log = []

        def victim_handler():
            log.append(("old", "closed" if victim.closed() else "open"))
            victim.gets()

        def trigger():
            log.append("trigger")
            ta.recv(10)
            victim.close()
            s1, s2 = socket.socketpair()
            made.extend([s1, s2])
            new = s1 if s1.fileno() == fd else s2
            log.append(("reused", new.fileno() == fd))
            loop.fileevent(new, "readable", log.append, "new handler")

        loop.fileevent(ta, "readable", trigger)
        loop.fileevent(victim, "readable", victim_handler)
        tb.send(b"go")
        vb.send(b"line\n")

        loop.run_once(5)
        loop.update()

        # epoll lists descriptors in the order they became ready, so the
        # trigger runs first and the victim's event of this pass is stale.
        assert log[0] == "trigger"
        assert ("reused", True) in log
        assert ("old", "closed") not in log
        assert "new handler" not in log
    finally:
        loop.fileevent(ta, "readable", None)
        for s in [ta, tb, vb, *made]:
            s.close()


def _reuse_number(a: socket.socket, b: socket.socket) -> tuple[socket.socket, socket.socket]:
    """Close the pair (a, b) and return a new pair (new, peer) whose ``new``
    has a's descriptor number (the lowest free number is always taken)."""
    fd = a.fileno()
    a.close()
    b.close()
    s1, s2 = socket.socketpair()
    new, peer = (s1, s2) if s1.fileno() == fd else (s2, s1)
    assert new.fileno() == fd
    return new, peer


def test_a_socket_closed_with_its_handler_set_does_not_stall_the_next_channel_on_its_fd(loop):
    # The user closes a raw socket without removing its handler first (the
    # loop cannot see that).  A Channel that gets the same descriptor number
    # and has more output than the socket takes must still drain it, and the
    # old handler must never run.
    a, b = socket.socketpair()
    old_calls = []
    loop.fileevent(a, "readable", old_calls.append, "old")
    new, peer = _reuse_number(a, b)
    ch = evloop.Channel(new, loop)
    try:
        payload = b"y" * (4 * 1024 * 1024)
        ch.configure(encoding="binary")
        ch.puts(payload, newline=False)
        ch.flush()
        peer.setblocking(False)
        received = bytearray()

        def pull():
            try:
                received.extend(peer.recv(1 << 20))
            except BlockingIOError:
                pass
            return len(received) == len(payload)

        wait_for(loop, pull, timeout=3)
        assert old_calls == []
    finally:
        ch.close(force=True)
        peer.close()


def test_a_descriptor_number_reused_after_its_socket_was_closed_has_no_handler(loop):
    # Registered through the socket object, closed without removing the
    # handler; the same number, now another socket, is then named as an int.
    a, b = socket.socketpair()
    old_calls = []
    loop.fileevent(a, "readable", old_calls.append, "old")
    fd = a.fileno()
    new, peer = _reuse_number(a, b)
    try:
        assert loop.fileevent(fd, "readable") is None

        got = evloop.Var()
        loop.fileevent(fd, "readable", lambda: got.set(new.recv(10)))
        peer.send(b"new")
        assert loop.vwait(got) == b"new"
        assert old_calls == []
    finally:
        loop.fileevent(fd, "readable", None)
        new.close()
        peer.close()


class _SelectorSpy:
    """The loop's real selector, with a log of the changes it is asked for."""

    def __init__(self, selector, fd: int) -> None:
        self._selector, self._fd, self.log = selector, fd, []

    def __getattr__(self, name):
        return getattr(self._selector, name)

    def register(self, fd, events, data=None):
        if fd == self._fd:
            self.log.append(("register", events))
        return self._selector.register(fd, events, data)

    def modify(self, fd, events, data=None):
        if fd == self._fd:
            self.log.append(("modify", events))
        return self._selector.modify(fd, events, data)

    def unregister(self, fd):
        if fd == self._fd:
            self.log.append(("unregister",))
        return self._selector.unregister(fd)


def test_swapping_writable_for_readable_in_a_handler_is_one_selector_change(loop, pair):
    a, b = pair
    spy = loop._selector = _SelectorSpy(loop._selector, a.fileno())
    got = evloop.Var()

    def connected():                       # the open_async pattern
        loop.fileevent(a, "writable", None)
        loop.fileevent(a, "readable", lambda: got.set(a.recv(10)))
        b.send(b"reply")

    loop.fileevent(a, "writable", connected)
    assert loop.vwait(got) == b"reply"
    loop.fileevent(a, "readable", None)
    loop.update()

    read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
    assert spy.log == [("register", write), ("modify", read), ("unregister",)]


def test_a_number_whose_handler_was_removed_before_its_close_works_when_reused(loop):
    # The right order for a number: remove the handler, then close.  The
    # number, reused at once, must get its new handler's events although
    # no pass ran in between.
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.fileevent(fd, "readable", lambda: None)
    loop.fileevent(fd, "readable", None)
    new, peer = _reuse_number(a, b)
    try:
        got = []
        loop.fileevent(fd, "readable", lambda: got.append(new.recv(10)))
        peer.send(b"new")

        wait_for(loop, lambda: got, timeout=2)
        assert got == [b"new"]
    finally:
        loop.fileevent(fd, "readable", None)
        new.close()
        peer.close()


def test_a_change_to_a_socket_then_closed_behind_the_loops_back_is_dropped_and_reported(loop):
    errors = []
    loop.bgerror(errors.append)
    a, b = socket.socketpair()
    fd = a.fileno()
    calls = []
    loop.fileevent(a, "readable", calls.append, "r")
    loop.fileevent(a, "writable", calls.append, "w")   # told at the next pass
    a.close()                                          # the handlers still set
    b.close()

    loop.update()

    assert calls == []
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert loop.fileevent(fd, "readable") is None
    assert loop.run_once(0) == 0


def test_fileevent_on_a_closed_channel_is_refused(loop, pair):
    a, _ = pair
    ch = evloop.Channel(a, loop)
    ch.close()

    with pytest.raises(ValueError):
        loop.fileevent(ch, "readable", lambda: None)
    assert loop.fileevent(ch, "readable") is None


def test_fileevent_on_a_closing_channel_is_refused(loop, pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ch = evloop.Channel(a, loop)
    ch.configure(encoding="binary")
    ch.puts(b"x" * (1 << 20))              # more than the socket takes
    ch.close()                             # draining in the background
    assert ch.closed() and ch.fileno() >= 0

    with pytest.raises(ValueError):
        loop.fileevent(ch, "readable", lambda: None)
    assert loop.fileevent(ch, "readable") is None
    ch.close(force=True)


def test_fileevent_on_a_regular_file_raises_and_registers_nothing(loop, tmp_path):
    with open(tmp_path / "plain.txt", "w") as f:
        with pytest.raises(OSError):       # epoll refuses regular files
            loop.fileevent(f, "readable", lambda: None)
        assert loop.fileevent(f, "readable") is None
        assert loop.run_once(0) == 0


def test_fileevent_with_a_handler_that_is_not_callable_changes_nothing(loop, pair):
    a, _ = pair
    calls = []
    loop.fileevent(a, "readable", calls.append, "kept")

    with pytest.raises(TypeError):
        loop.fileevent(a, "readable", "not callable")
    assert loop.fileevent(a, "readable") == calls.append


def test_keyboard_interrupt_in_a_buffered_input_handler_loses_no_other_channel(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    channels = [evloop.Channel(a, loop) for a, _ in pairs]
    got = []

    def handler(ch, name):
        line = ch.gets()
        if line == "stop":
            raise KeyboardInterrupt
        if line is not None:
            got.append((name, line))

    try:
        for (_, peer), ch, name in zip(pairs, channels, "ab"):
            peer.sendall(b"first\n" + (b"stop\n" if name == "a" else b"") + b"second\n")
            assert ch.gets() == "first"    # the rest stays buffered
            loop.fileevent(ch, "readable", handler, ch, name)
        with pytest.raises(KeyboardInterrupt):
            loop.update()

        loop.update()
        assert ("b", "second") in got and ("a", "second") in got
    finally:
        for (_, b), ch in zip(pairs, channels):
            ch.close(force=True)
            b.close()


# ------------------------------------------------------------- Var and vwait

def test_var_holds_a_value():
    var = evloop.Var(3)
    assert var.get() == 3
    var.set("four")
    assert var.get() == "four"
    assert evloop.Var().get() is None


def test_vwait_returns_the_new_value(loop):
    var = evloop.Var("old")
    loop.after(1, var.set, "new")

    assert loop.vwait(var) == "new"
    assert var.get() == "new"


def test_vwait_wakes_when_set_to_an_equal_value(loop):
    var = evloop.Var(7)
    loop.after(1, var.set, 7)

    assert loop.vwait(var) == 7


def test_vwait_returns_at_the_first_set_even_if_more_are_queued(autojump_loop):
    # On the fake clock (conftest): exact, whatever the machine's load.
    loop = autojump_loop
    var, log = evloop.Var(), []
    start = loop.time()
    loop.after(1, var.set, "first")
    loop.after(50, log.append, "later timer")

    assert loop.vwait(var) == "first"
    assert log == [] and loop.time() == start + 0.001


def test_vwait_nests_inside_a_callback(autojump_loop, pair):
    loop = autojump_loop
    a, b = pair
    outer, inner, log = evloop.Var(), evloop.Var(), []

    def on_readable():
        a.recv(10)
        loop.fileevent(a, "readable", None)
        log.append("handler waits")
        log.append(("inner got", loop.vwait(inner)))
        outer.set("outer done")

    loop.fileevent(a, "readable", on_readable)
    loop.after(5, b.send, b"x")
    loop.after(20, inner.set, "inner value")

    assert loop.vwait(outer) == "outer done"
    assert log == ["handler waits", ("inner got", "inner value")]


def test_vwait_inside_a_timer_sees_later_timers(autojump_loop):
    loop = autojump_loop
    var, seen = evloop.Var(), []
    loop.after(0, lambda: seen.append(loop.vwait(var)))
    loop.after(10, var.set, "from a later pass")

    wait_for(loop, lambda: seen)
    assert seen == ["from a later pass"]


def test_module_level_vwait_and_update_use_the_thread_loop(loop):
    var = evloop.Var()
    evloop.after(0, var.set, "module")
    assert evloop.vwait(var) == "module"

    log = []
    evloop.after(0, log.append, "updated")
    evloop.update()
    assert log == ["updated"]


# ------------------------------------------------------------------ update

def test_update_never_blocks(loop, pair):
    a, _ = pair
    loop.fileevent(a, "readable", lambda: None)    # never readable
    loop.after(10_000, lambda: None)                # far away

    start = time.monotonic()
    loop.update()
    loop.update(idletasks=True)

    assert time.monotonic() - start < 0.5


def test_update_runs_everything_that_is_ready(loop, pair):
    a, b = pair
    log = []
    loop.fileevent(a, "readable", lambda: log.append(("read", a.recv(10))))
    loop.after(0, log.append, "timer")
    loop.after_idle(log.append, "idle")
    loop.call_soon_threadsafe(log.append, "threadsafe")
    b.send(b"io")

    loop.update()

    assert sorted(map(str, log)) == sorted(map(str, [("read", b"io"), "timer", "idle", "threadsafe"]))
    assert log[-1] == "idle"


def test_update_idletasks_leaves_file_events_alone(loop, pair):
    a, b = pair
    log = []
    loop.fileevent(a, "readable", lambda: log.append(a.recv(10)))
    loop.after_idle(log.append, "idle")
    b.send(b"io")

    loop.update(idletasks=True)

    assert log == ["idle"]


def test_run_once_with_a_timeout_returns_zero_when_nothing_happens(loop):
    start = time.monotonic()
    assert loop.run_once(0.05) == 0
    assert time.monotonic() - start >= 0.04


# ------------------------------------------------------------------ bgerror

def test_bgerror_install_returns_the_previous_handler_and_query_the_current(loop):
    first, second = (lambda exc: None), (lambda exc: None)

    default = loop.bgerror()
    assert callable(default)
    assert loop.bgerror(first) is default
    assert loop.bgerror() is first
    assert loop.bgerror(second) is first
    assert loop.bgerror(None) is second
    assert loop.bgerror() is default


def test_bgerror_handler_gets_the_exception_and_the_loop_keeps_running(loop):
    errors, log = [], []
    loop.bgerror(errors.append)
    loop.after(0, lambda: {}["missing"])
    loop.after(0, log.append, "next")

    loop.update()

    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    assert log == ["next"]


def test_default_bgerror_prints_the_traceback_on_stderr(loop, capsys):
    def faulty_callback():
        raise ValueError("visible on stderr")

    loop.after(0, faulty_callback)
    loop.update()

    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "faulty_callback" in err
    assert "ValueError: visible on stderr" in err


def test_bgerror_none_restores_the_default_printer(loop, capsys):
    loop.bgerror(lambda exc: None)
    loop.after(0, lambda: 1 / 0)
    loop.update()
    assert capsys.readouterr().err == ""

    loop.bgerror(None)
    loop.after(0, lambda: 1 / 0)
    loop.update()
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_a_bgerror_handler_that_raises_does_not_kill_the_loop(loop, capsys):
    def bad_handler(exc):
        raise RuntimeError("the handler itself failed")

    log = []
    loop.bgerror(bad_handler)
    loop.after(0, lambda: 1 / 0)
    loop.after(0, log.append, "still running")

    loop.update()

    assert log == ["still running"]
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err
    assert "the handler itself failed" in err


def test_module_level_bgerror_acts_on_the_thread_loop(loop):
    handler = lambda exc: None  # noqa: E731
    previous = evloop.bgerror(handler)
    assert loop.bgerror() is handler
    evloop.bgerror(previous)


def test_keyboard_interrupt_in_a_callback_is_not_swallowed(loop):
    def interrupt():
        raise KeyboardInterrupt

    loop.after(0, interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.update()


# --------------------------------------------------------- threads and stop

def _sleeping_in_poll(tid: int) -> bool | None:
    """Whether thread ``tid`` is blocked in epoll (None if we can't tell)."""
    try:
        return "epoll" in Path(f"/proc/self/task/{tid}/wchan").read_text()
    except OSError:
        return None


def _when_loop_sleeps(tid: int, action, *args) -> threading.Thread:
    """Start a thread that does ``action(*args)`` once thread ``tid`` sleeps
    in the selector (polled for up to 5 s)."""
    def run():
        deadline = time.monotonic() + 5
        while _sleeping_in_poll(tid) is False and time.monotonic() < deadline:
            time.sleep(0.005)
        action(*args)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(10)
def test_call_soon_threadsafe_wakes_a_loop_sleeping_in_run_once(loop):
    log = []
    t = _when_loop_sleeps(threading.get_native_id(), loop.call_soon_threadsafe,
                          log.append, "from a thread")

    while not log:
        loop.run_once(None)         # would sleep for ever without the wakeup
    t.join()

    assert log == ["from a thread"]


@pytest.mark.timeout(10)
def test_call_soon_threadsafe_wakes_a_loop_sleeping_in_vwait(loop):
    var = evloop.Var()
    t = _when_loop_sleeps(threading.get_native_id(), loop.call_soon_threadsafe,
                          var.set, threading.current_thread().name)

    assert loop.vwait(var) == "MainThread"
    t.join()


@pytest.mark.timeout(10)
def test_many_threadsafe_calls_all_run_in_order(loop):
    log, done = [], evloop.Var()

    def produce():
        for n in range(5000):
            loop.call_soon_threadsafe(log.append, n)
        loop.call_soon_threadsafe(done.set, True)

    t = threading.Thread(target=produce)
    t.start()
    loop.vwait(done)
    t.join()

    assert log == list(range(5000))


def test_call_soon_threadsafe_refuses_what_is_not_callable(loop):
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe("not callable")
    assert loop.run_once(0) == 0          # nothing queued, no wakeup sent


def test_threadsafe_callback_that_raises_goes_to_bgerror(loop):
    errors = []
    loop.bgerror(errors.append)
    loop.call_soon_threadsafe(lambda: [][1])
    loop.update()
    assert len(errors) == 1 and isinstance(errors[0], IndexError)


@pytest.mark.timeout(10)
def test_stop_from_another_thread_makes_run_return(loop):
    started = []

    def start_stopper():
        started.append(True)
        _when_loop_sleeps(threading.get_native_id(), loop.stop)

    loop.after(0, start_stopper)
    loop.run()

    assert started == [True]


def test_stop_inside_a_callback_makes_run_return_after_the_pass(loop):
    log = []
    loop.after(0, log.append, "a")
    loop.after(0, loop.stop)
    loop.after(0, log.append, "same pass")
    loop.after(50, log.append, "never")

    loop.run()

    assert log == ["a", "same pass"]


def test_run_can_be_started_again_after_stop(loop):
    log = []
    for n in range(3):
        loop.after(0, log.append, n)
        loop.after(0, loop.stop)
        loop.run()
    assert log == [0, 1, 2]


def test_each_thread_has_its_own_default_loop(loop):
    other = []
    t = threading.Thread(target=lambda: other.append((evloop.get_loop(), evloop.get_loop())))
    t.start()
    t.join()

    assert evloop.get_loop() is loop
    assert other[0][0] is other[0][1]
    assert other[0][0] is not loop
    other[0][0].close()



def test_set_loop_returns_the_previous_default_to_put_back(loop):
    other = evloop.Loop()
    try:
        assert evloop.set_loop(other) is loop
        assert evloop.get_loop() is other
        assert evloop.set_loop(loop) is other
        assert evloop.get_loop() is loop
    finally:
        other.close()

# ------------------------------------------------------------------ signals

def _child(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def _signalled(code: str, sig: int) -> tuple[int, str, str]:
    """Run ``code`` in a child; once it prints "running", send it ``sig``.
    Returns its exit status and what it wrote after that line."""
    child = _child(code)
    try:
        assert child.stdout.readline() == "running\n"
        child.send_signal(sig)
        out, err = child.communicate(timeout=5)
    finally:
        child.kill()
    return child.returncode, out, err


@pytest.mark.timeout(10)
def test_sigterm_with_on_signal_stops_run_and_the_process_exits_cleanly():
    status, out, err = _signalled("""
        import signal, evloop
        loop = evloop.get_loop()
        loop.on_signal(signal.SIGTERM, loop.stop)
        loop.after(0, lambda: print("running", flush=True))
        loop.run()
        print("run returned")
    """, signal.SIGTERM)

    assert status == 0, err
    assert out == "run returned\n"


@pytest.mark.timeout(10)
def test_sigint_without_a_handler_raises_keyboard_interrupt_out_of_run():
    status, out, err = _signalled("""
        import signal, sys, evloop
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
        loop = evloop.get_loop()
        loop.after(0, lambda: print("running", flush=True))
        try:
            loop.run()
        except KeyboardInterrupt:
            print("KeyboardInterrupt out of run()", flush=True)
            sys.exit(3)
        print("run returned")
    """, signal.SIGINT)

    assert status == 3, err
    assert out == "KeyboardInterrupt out of run()\n"


@pytest.mark.timeout(10)
def test_on_signal_runs_the_callback_in_the_loop_with_its_arguments():
    child = _child("""
        import os, signal, evloop
        loop = evloop.get_loop()
        done = evloop.Var()
        loop.on_signal(signal.SIGUSR1, done.set, "usr1 seen")
        loop.after(0, os.kill, os.getpid(), signal.SIGUSR1)
        print(loop.vwait(done))
        loop.on_signal(signal.SIGUSR1, None)
        print(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)
    """)
    out, err = child.communicate(timeout=5)

    assert child.returncode == 0, err
    assert out == "usr1 seen\nTrue\n"
