"""evloop attached to Tk: one thread, Tk's mainloop runs evloop (under Xvfb)."""

from __future__ import annotations

import socket
import time

import pytest

import evloop
from evloop.embed import MAX_PASSES

tkinter = pytest.importorskip("tkinter")

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def root(xdisplay):
    """A Tk root on the Xvfb display, withdrawn; destroyed after the test."""
    tk = tkinter.Tk(screenName=xdisplay)
    tk.withdraw()
    yield tk
    try:
        # Idle work first: Tk queues an idle ttk::ThemeChanged for a new
        # root, and the thread's notifier (shared by every root) would run
        # it in a later test, after this root is gone, printing an error.
        tk.update_idletasks()
        tk.destroy()
    except tkinter.TclError:
        pass                                # the test destroyed it


def mainloop(root, deadline_ms: int = 3000) -> bool:
    """Run Tk's mainloop until something calls ``root.quit()``; False if
    the deadline came first."""
    expired = []
    guard = root.after(deadline_ms, lambda: (expired.append(True), root.quit()))
    root.mainloop()
    if not expired:
        root.after_cancel(guard)
    return not expired


def test_evloop_timer_fires_on_time_while_tk_runs(loop, root):
    handle = evloop.attach_tk(root)
    start = loop.time()
    delays = []
    loop.after(60, lambda: (delays.append(loop.time() - start), root.quit()))
    ticks = []
    root.after(5, lambda: ticks.append(1))
    assert mainloop(root)
    assert 0.060 <= delays[0] < 0.060 + 0.050
    assert ticks == [1]
    handle.detach()


def test_evloop_server_and_client_talk_inside_tk(loop, root):
    handle = evloop.attach_tk(root)
    replies = []

    def accept(ch, _host, _port):
        loop.fileevent(ch, "readable", echo, ch)

    def echo(ch):
        line = ch.gets()
        if line is not None:
            ch.puts(line[::-1])
        elif ch.eof():
            ch.close()

    srv = evloop.server(accept, 0, "127.0.0.1", loop=loop)
    client = evloop.open_async("127.0.0.1", srv.port, loop=loop)

    def connected():
        loop.fileevent(client, "writable", None)
        client.puts("stressed")
        loop.fileevent(client, "readable", answered)

    def answered():
        line = client.gets()
        if line is not None:
            replies.append(line)
            root.quit()

    loop.fileevent(client, "writable", connected)
    handle.wakeup()
    assert mainloop(root)
    assert replies == ["desserts"]
    client.close()
    srv.close()
    handle.detach()


def test_busy_chain_of_evloop_timers_does_not_starve_tk(loop, root):
    handle = evloop.attach_tk(root)
    fires = 0

    def chain():
        nonlocal fires
        fires += 1
        loop.after(0, chain)

    loop.after(0, chain)
    handle.wakeup()
    tk_ticks = []

    def tick():
        tk_ticks.append(time.monotonic())
        if len(tk_ticks) == 5:
            root.quit()
        else:
            root.after(10, tick)

    t0 = time.monotonic()
    root.after(10, tick)
    assert mainloop(root)
    assert tk_ticks[-1] - t0 < 0.5
    assert fires > 5 * MAX_PASSES
    handle.detach()


def test_busy_tk_does_not_starve_evloop(loop, root):
    handle = evloop.attach_tk(root)
    spins = 0

    def spin():                             # Tk never idles
        nonlocal spins
        spins += 1
        root.after(0, spin)

    start = loop.time()
    delays = []
    loop.after(30, lambda: (delays.append(loop.time() - start), root.quit()))
    handle.wakeup()
    root.after(0, spin)
    assert mainloop(root)
    assert 0.030 <= delays[0] < 0.2
    assert spins > 10
    handle.detach()


def test_detach_stops_evloop_callbacks(loop, root):
    handle = evloop.attach_tk(root)
    a, b = socket.socketpair()
    ran = []
    loop.fileevent(a, "readable", lambda: (ran.append(a.recv(10)), root.quit()))
    b.send(b"one")
    assert mainloop(root)
    assert ran == [b"one"]
    handle.detach()
    assert not handle.attached
    loop.after(0, ran.append, "timer")
    b.send(b"two")
    root.after(50, root.quit)               # Tk runs; evloop must not
    assert mainloop(root)
    assert ran == [b"one"]
    loop.update()
    assert sorted(map(str, ran[1:])) == sorted(map(str, [b"two", "timer"]))
    loop.fileevent(a, "readable", None)
    a.close()
    b.close()


def test_callback_exception_goes_to_bgerror_not_to_tk(loop, root):
    errors = []
    loop.bgerror(errors.append)
    tk_errors = []
    root.report_callback_exception = lambda *exc: tk_errors.append(exc)
    handle = evloop.attach_tk(root)

    def boom():
        raise ValueError("bad input")

    loop.after(0, boom)
    loop.after(5, root.quit)
    handle.wakeup()
    assert mainloop(root)
    assert [str(e) for e in errors] == ["bad input"]
    assert tk_errors == []
    handle.detach()


def test_destroying_the_root_detaches_cleanly(loop, xdisplay, capfd):
    tk = tkinter.Tk(screenName=xdisplay)
    tk.withdraw()
    tkinter.Label(tk, text="child").pack()
    tk.update_idletasks()                   # see the root fixture
    handle = evloop.attach_tk(tk)
    loop.after(60_000, lambda: None)        # a far timer: Tk holds an after id
    handle.wakeup()
    ran = []
    loop.after(10, lambda: (ran.append("ran"), tk.destroy()))
    tk.mainloop()                           # returns once the root is gone
    assert ran == ["ran"]
    assert not handle.attached
    handle.detach()                         # harmless now
    var = evloop.Var()
    loop.after(1, var.set, "alone")
    assert loop.vwait(var) == "alone"
    _out, err = capfd.readouterr()
    assert err == ""


def test_vwait_while_attached_raises(loop, root):
    handle = evloop.attach_tk(root)
    var = evloop.Var()
    with pytest.raises(RuntimeError, match="attached to Tk"):
        loop.vwait(var)
    caught = []

    def inside_a_pass():
        try:
            evloop.vwait(var)
        except RuntimeError as exc:
            caught.append(exc)
        root.quit()

    loop.after(0, inside_a_pass)
    handle.wakeup()
    assert mainloop(root)
    assert len(caught) == 1
    handle.detach()
    loop.after(1, var.set, 3)
    assert loop.vwait(var) == 3


def test_attach_twice_is_refused(loop, root):
    handle = evloop.attach_tk(root)
    with pytest.raises(RuntimeError, match="already attached"):
        evloop.attach_tk(root)
    handle.detach()
    evloop.attach_tk(root).detach()


def test_the_programs_own_destroy_binding_survives_attach_and_detach(loop, xdisplay):
    tk = tkinter.Tk(screenName=xdisplay)
    tk.withdraw()
    seen = []
    tk.bind("<Destroy>", lambda e: seen.append(str(e.widget)), "+")
    tk.update_idletasks()
    evloop.attach_tk(tk).detach()
    handle = evloop.attach_tk(tk)
    loop.after(5, tk.destroy)
    handle.wakeup()
    tk.mainloop()
    assert seen == ["."]
    assert not handle.attached
