"""Timers and idle callbacks: `after`, `after_idle`, `after_cancel`, `after_info`.

Ordering is tested with a fake clock (``FakeClock`` in conftest): the loop
reads the time from it, the test moves it (seconds), and ``loop.update()``
runs what is due.  Nothing here sleeps, and every ordering assertion is exact.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest
from conftest import AUTOJUMP, wait_for

import evloop

# ------------------------------------------------------------------ ordering

def test_timers_fire_in_deadline_order_not_creation_order(fake_loop, clock):
    fired = []
    fake_loop.after(30, fired.append, "30ms")
    fake_loop.after(10, fired.append, "10ms")
    fake_loop.after(20, fired.append, "20ms")

    clock.advance(0.03)
    fake_loop.update()

    assert fired == ["10ms", "20ms", "30ms"]


def test_timers_with_equal_deadlines_fire_first_in_first_out(fake_loop, clock):
    fired = []
    for n in range(50):
        fake_loop.after(10, fired.append, n)

    clock.advance(0.01)
    fake_loop.update()

    assert fired == list(range(50))


def test_timer_does_not_fire_before_its_deadline(fake_loop, clock):
    fired = []
    fake_loop.after(10, fired.append, "due")

    clock.advance(0.0099)
    fake_loop.update()
    assert fired == []

    clock.advance(0.0001)
    fake_loop.update()
    assert fired == ["due"]


def test_only_the_timers_that_are_due_fire(fake_loop, clock):
    fired = []
    fake_loop.after(5, fired.append, "a")
    fake_loop.after(15, fired.append, "b")

    clock.advance(0.01)
    fake_loop.update()
    assert fired == ["a"]

    clock.advance(0.005)
    fake_loop.update()
    assert fired == ["a", "b"]


def test_timer_passes_its_arguments(fake_loop, clock):
    got = []
    fake_loop.after(0, lambda *a: got.append(a), 1, "two", None)

    fake_loop.update()

    assert got == [(1, "two", None)]


def test_negative_delay_means_now(fake_loop, clock):
    fired = []
    fake_loop.after(-50, fired.append, "late")

    fake_loop.update()

    assert fired == ["late"]


def test_after_zero_scheduled_inside_a_timer_waits_for_the_next_pass(fake_loop, clock):
    fired = []

    def first():
        fired.append("first")
        fake_loop.after(0, fired.append, "scheduled by first")

    fake_loop.after(0, first)
    fake_loop.after(0, fired.append, "second")

    fake_loop.run_once(0)
    assert fired == ["first", "second"]

    fake_loop.run_once(0)
    assert fired == ["first", "second", "scheduled by first"]


def test_timer_that_reschedules_itself_does_not_starve_the_pass(fake_loop, clock):
    count = []

    def again():
        count.append(1)
        fake_loop.after(0, again)

    fake_loop.after(0, again)
    for _ in range(5):
        fake_loop.run_once(0)

    assert len(count) == 5


def test_timer_callback_that_raises_goes_to_bgerror_and_the_loop_continues(fake_loop, clock):
    errors, fired = [], []
    fake_loop.bgerror(errors.append)

    def boom():
        raise RuntimeError("timer failed")

    fake_loop.after(1, boom)
    fake_loop.after(1, fired.append, "after the failure")
    fake_loop.after(2, fired.append, "later")

    clock.advance(0.002)
    fake_loop.update()

    assert [str(e) for e in errors] == ["timer failed"]
    assert isinstance(errors[0], RuntimeError)
    assert fired == ["after the failure", "later"]


def test_a_real_clock_timer_fires_in_vwait(loop):
    done = evloop.Var()
    start = time.monotonic()
    loop.after(30, done.set, "fired")

    assert loop.vwait(done) == "fired"
    assert time.monotonic() - start >= 0.029


# --------------------------------------------------------------- cancelling

def test_after_cancel_of_a_pending_timer_stops_it(fake_loop, clock):
    fired = []
    keep = fake_loop.after(10, fired.append, "kept")
    drop = fake_loop.after(10, fired.append, "dropped")

    fake_loop.after_cancel(drop)
    clock.advance(0.01)
    fake_loop.update()

    assert fired == ["kept"]
    assert keep not in fake_loop.after_info()


def test_after_cancel_of_a_fired_timer_is_a_no_op(fake_loop, clock):
    fired = []
    timer = fake_loop.after(0, fired.append, "once")
    fake_loop.update()

    fake_loop.after_cancel(timer)
    fake_loop.after_cancel(timer)

    assert fired == ["once"]
    assert fake_loop.after_info() == []


@pytest.mark.parametrize("garbage", [None, -1, "after#1", object(), 3.5, [1, 2], {}])
def test_after_cancel_of_anything_not_a_timer_is_a_no_op(fake_loop, clock, garbage):
    fired = []
    fake_loop.after(0, fired.append, "untouched")

    fake_loop.after_cancel(garbage)
    fake_loop.update()

    assert fired == ["untouched"]


def test_after_cancel_of_a_timer_from_another_loop_is_a_no_op(fake_loop, clock):
    other = evloop.Loop(clock=clock)
    try:
        fired = []
        foreign = other.after(0, fired.append, "other loop")
        ours = fake_loop.after(0, fired.append, "our loop")

        fake_loop.after_cancel(foreign)         # not one of ours
        fake_loop.after_cancel(ours)
        fake_loop.after_cancel(ours)            # twice: still a no-op
        other.update()
        fake_loop.update()

        assert fired == ["other loop"]
        assert foreign not in other.after_info()
    finally:
        other.close()


def test_a_timer_cancelled_by_an_earlier_timer_of_the_same_pass_does_not_run(fake_loop, clock):
    fired = []
    victim = fake_loop.after(5, fired.append, "victim")
    fake_loop.after(1, fake_loop.after_cancel, victim)

    clock.advance(0.005)
    fake_loop.update()

    assert fired == []


def test_after_cancel_of_a_pending_idle_callback_stops_it(fake_loop):
    fired = []
    idle = fake_loop.after_idle(fired.append, "idle")

    fake_loop.after_cancel(idle)
    fake_loop.update()

    assert fired == []
    assert fake_loop.after_info() == []


def test_scheduling_and_cancelling_200k_timers_is_fast_and_the_heap_shrinks(fake_loop, clock):
    keep = fake_loop.after(10_000, lambda: None)
    fake_loop.run_once(0)
    blocks = sys.getallocatedblocks()
    start = time.perf_counter()
    for _ in range(200_000):
        fake_loop.after_cancel(fake_loop.after(1000, lambda: None))
    elapsed = time.perf_counter() - start

    # O(log n) each: well under a second on any machine (O(n) cancel would
    # take minutes).  The next pass sweeps the cancelled timers out: the
    # memory they held is given back, all but what a few hundred would
    # hold (a timer costs ~4 allocated blocks: 200k kept would be ~800k).
    assert elapsed < 3.0
    fake_loop.run_once(0)
    assert sys.getallocatedblocks() - blocks < 4000
    assert fake_loop.after_info() == [keep]


def test_cancelling_most_of_a_big_batch_keeps_the_survivors_in_order(fake_loop, clock):
    fired = []
    timers = [fake_loop.after(n % 97, fired.append, n) for n in range(20_000)]
    survivors = set(range(0, 20_000, 1000))
    for n, timer in enumerate(timers):
        if n not in survivors:
            fake_loop.after_cancel(timer)

    clock.advance(0.1)
    fake_loop.update()

    assert fired == sorted(survivors, key=lambda n: (n % 97, n))


# ---------------------------------------------------------------- after_info

def test_after_info_lists_pending_timers_and_idle_callbacks(fake_loop, clock):
    t1 = fake_loop.after(20, lambda: None)
    t2 = fake_loop.after(10, lambda: None)
    i1 = fake_loop.after_idle(lambda: None)

    assert set(fake_loop.after_info()) == {t1, t2, i1}

    clock.advance(0.01)
    fake_loop.run_once(0)                   # t2 fires; idle waits (a timer ran)
    assert set(fake_loop.after_info()) == {t1, i1}

    fake_loop.update()                      # nothing else due: idle runs
    assert fake_loop.after_info() == [t1]


def test_after_info_of_one_id_tells_its_callback_args_and_kind(fake_loop, clock):
    timer = fake_loop.after(20, print, "a", "b")
    idle = fake_loop.after_idle(len, "x")

    assert fake_loop.after_info(timer) == (print, ("a", "b"), "timer")
    assert fake_loop.after_info(idle) == (len, ("x",), "idle")
    fake_loop.after_cancel(timer)
    with pytest.raises(ValueError):
        fake_loop.after_info(timer)
    with pytest.raises(ValueError):
        fake_loop.after_info("after#1")


def test_after_info_is_empty_on_a_fresh_loop(fake_loop):
    assert fake_loop.after_info() == []


def test_module_level_after_functions_use_the_thread_loop(loop):
    fired = []
    timer = evloop.after(0, fired.append, "module after")
    idle = evloop.after_idle(fired.append, "module idle")
    assert set(evloop.after_info()) == {timer, idle}

    evloop.after_cancel(idle)
    evloop.update()

    assert fired == ["module after"]
    assert evloop.after_info() == []


# ------------------------------------------------------------------- idle

def test_idle_callback_runs_only_when_nothing_else_is_ready(fake_loop, clock):
    fired = []
    fake_loop.after_idle(fired.append, "idle")
    fake_loop.after(0, fired.append, "timer")

    fake_loop.run_once(0)
    assert fired == ["timer"]

    fake_loop.run_once(0)
    assert fired == ["timer", "idle"]


def test_idle_callback_waits_while_a_timer_keeps_the_loop_busy(fake_loop, clock):
    fired = []
    fake_loop.after_idle(fired.append, "idle")

    def busy(n):
        fired.append(n)
        if n < 3:
            fake_loop.after(0, busy, n + 1)

    fake_loop.after(0, busy, 1)
    fake_loop.update()

    assert fired == [1, 2, 3, "idle"]


def test_idle_callbacks_run_in_the_order_they_were_queued(fake_loop):
    fired = []
    for n in range(10):
        fake_loop.after_idle(fired.append, n)

    fake_loop.update()

    assert fired == list(range(10))


def test_idle_callback_queued_by_an_idle_callback_waits_for_the_next_round(fake_loop):
    fired = []

    def first():
        fired.append("first")
        fake_loop.after_idle(fired.append, "queued while idle ran")

    fake_loop.after_idle(first)
    fake_loop.after_idle(fired.append, "second")

    fake_loop.run_once(0)
    assert fired == ["first", "second"]

    fake_loop.run_once(0)
    assert fired == ["first", "second", "queued while idle ran"]


def test_idle_callback_that_raises_goes_to_bgerror(fake_loop):
    errors, fired = [], []
    fake_loop.bgerror(errors.append)
    fake_loop.after_idle(lambda: 1 / 0)
    fake_loop.after_idle(fired.append, "next")

    fake_loop.update()

    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
    assert fired == ["next"]


def test_update_idletasks_runs_only_idle_callbacks(fake_loop, clock):
    fired = []
    fake_loop.after(0, fired.append, "timer")
    fake_loop.after_idle(fired.append, "idle")
    fake_loop.call_soon_threadsafe(fired.append, "threadsafe")

    fake_loop.update(idletasks=True)
    assert fired == ["idle"]

    fake_loop.update()
    assert sorted(fired) == ["idle", "threadsafe", "timer"]


def test_timer_ids_are_distinct_increasing_numbers_across_loops(fake_loop):
    other = evloop.Loop()
    try:
        ids = [fake_loop.after(10, lambda: None), fake_loop.after_idle(lambda: None),
               other.after(10, lambda: None), fake_loop.after(10, lambda: None)]
    finally:
        other.close()

    assert all(isinstance(i, evloop.TimerId) for i in ids)
    assert ids == sorted(set(ids))


@pytest.mark.parametrize("schedule", ["after", "after_idle"])
def test_scheduling_something_not_callable_raises_and_schedules_nothing(fake_loop, schedule):
    with pytest.raises(TypeError):
        if schedule == "after":
            fake_loop.after(10, "puts hello")
        else:
            fake_loop.after_idle("puts hello")
    assert fake_loop.after_info() == []


# ---------------------------------------------------- timers and nested vwait

def _guard(loop: evloop.Loop, var: evloop.Var, seconds: float) -> threading.Timer:
    """Set ``var`` to "stuck" from another thread after ``seconds`` (so a
    deadlocked vwait fails the test instead of hanging it)."""
    guard = threading.Timer(seconds, loop.call_soon_threadsafe, (var.set, "stuck"))
    guard.daemon = True
    guard.start()
    return guard


@pytest.mark.timeout(10)
def test_vwait_inside_a_timer_is_woken_by_a_timer_due_in_the_same_pass(fake_loop, clock):
    # Tcl: after 0 {vwait v}; after 0 {set v 1} -- the second timer runs inside
    # the first one's vwait (Tcl takes timers off its list one at a time).
    var, seen = evloop.Var(), []
    fake_loop.after(0, lambda: seen.append(fake_loop.vwait(var)))
    fake_loop.after(0, var.set, "set by the second timer")
    guard = _guard(fake_loop, var, 1.0)

    fake_loop.update()
    guard.cancel()

    assert seen == ["set by the second timer"]


@pytest.mark.timeout(10)
def test_vwait_inside_an_idle_callback_is_woken_by_the_next_idle_callback(fake_loop):
    var, seen = evloop.Var(), []
    fake_loop.after_idle(lambda: seen.append(fake_loop.vwait(var)))
    fake_loop.after_idle(var.set, "set by the second idle callback")
    guard = _guard(fake_loop, var, 1.0)

    fake_loop.update()
    guard.cancel()

    assert seen == ["set by the second idle callback"]


def test_keyboard_interrupt_out_of_a_timer_loses_no_other_due_timer(fake_loop, clock):
    fired = []

    def interrupt():
        raise KeyboardInterrupt

    fake_loop.after(1, fired.append, "before")
    fake_loop.after(1, interrupt)
    fake_loop.after(1, fired.append, "after")
    clock.advance(0.001)

    with pytest.raises(KeyboardInterrupt):
        fake_loop.update()
    assert fired == ["before"]

    fake_loop.update()
    assert fired == ["before", "after"]
    assert fake_loop.after_info() == []


def test_keyboard_interrupt_out_of_an_idle_callback_loses_no_other_idle_callback(fake_loop):
    fired = []

    def interrupt():
        raise KeyboardInterrupt

    fake_loop.after_idle(interrupt)
    fake_loop.after_idle(fired.append, "still runs")

    with pytest.raises(KeyboardInterrupt):
        fake_loop.update()
    assert fake_loop.after_info() != []

    fake_loop.update()
    assert fired == ["still runs"]


def test_cancelling_a_timer_due_in_the_same_pass_keeps_the_heap_sound(fake_loop, clock):
    # Timers cancelled after being taken off the heap for running must not
    # upset the heap's count of dead entries (ordering keeps working).
    fired = []
    for _ in range(300):
        victims = [fake_loop.after(1, fired.append, "victim") for _ in range(3)]
        fake_loop.after(0, lambda v=victims: [fake_loop.after_cancel(t) for t in v])
    clock.advance(0.001)
    fake_loop.update()                 # each canceller runs before its victims
    assert fired == []

    later = [fake_loop.after(n, fired.append, n) for n in (30, 10, 20)]
    clock.advance(0.03)
    fake_loop.update()
    assert fired[-3:] == [10, 20, 30]
    assert not set(later) & set(fake_loop.after_info())


# ------------------------------------------------- the fake clock of the tests
# The timeout tests elsewhere rely on conftest's FakeClock jumping only when
# the loop has nothing to do; these pin that down.

def test_autojump_runs_a_long_timer_at_once_at_its_exact_fake_time(autojump_loop, autojump_clock):
    done = evloop.Var()
    start, real = autojump_loop.time(), time.monotonic()
    autojump_loop.after(30_000, lambda: done.set(autojump_loop.time()))

    assert autojump_loop.vwait(done) == start + 30.0
    assert autojump_clock.jumps == 1 and time.monotonic() - real < 5


def test_autojump_handles_loopback_io_before_any_jump(autojump_loop, autojump_clock):
    # A request and its echo over loopback TCP, with a 2 s timeout pending:
    # every step is real I/O, so fake time must not move at all.
    loop, reply = autojump_loop, evloop.Var()
    start = loop.time()

    def echo(ch):
        if (line := ch.gets()) is not None:
            ch.puts(line)

    def accept(ch, _host, _port):
        loop.fileevent(ch, "readable", echo, ch)

    srv = evloop.server(accept, 0, "127.0.0.1", loop=loop)
    client = evloop.open_async("127.0.0.1", srv.port, loop)

    def connected():
        loop.fileevent(client, "writable", None)     # a deferred interest change,
        client.puts("ping")                          # then data already waiting
        loop.fileevent(client, "readable", lambda: reply.set(client.gets()))

    loop.fileevent(client, "writable", connected)
    timeout = loop.after(2000, reply.set, "timeout")
    try:
        assert loop.vwait(reply) == "ping"
        assert loop.time() == start and autojump_clock.jumps == 0
    finally:
        loop.after_cancel(timeout)
        client.close()
        srv.close()


def test_autojump_waits_for_io_that_comes_within_the_threshold(autojump_loop):
    # A peer in another thread answers after a fifth of the threshold: the
    # clock must see the I/O coming and not jump to the 1 s timeout.
    loop, got = autojump_loop, evloop.Var()
    a, b = socket.socketpair()
    try:
        loop.fileevent(a, "readable", lambda: got.set(a.recv(10)))
        loop.after(1000, got.set, "timeout")
        peer = threading.Timer(AUTOJUMP / 5, b.send, (b"late",))
        peer.start()
        assert loop.vwait(got) == b"late"
        peer.join()
    finally:
        a.close()
        b.close()


def test_autojump_never_moves_time_in_update_or_run_once_0(autojump_loop):
    fired = []
    autojump_loop.after(1000, fired.append, "timer")
    start = autojump_loop.time()

    autojump_loop.update()
    for _ in range(5):
        autojump_loop.run_once(0)

    assert fired == [] and autojump_loop.time() == start
    wait_for(autojump_loop, lambda: fired)      # passes that may sleep: it jumps
    assert fired == ["timer"] and autojump_loop.time() == start + 1.0


def test_jump_at_once_handles_ready_io_first_then_jumps_without_waiting(jump_loop, jump_clock):
    # Threshold 0: no real time is given to I/O in flight, but I/O that is
    # ready when the loop asks how long to sleep runs before any jump.
    a, b = socket.socketpair()
    try:
        got = []
        fired = []
        start, real = jump_loop.time(), time.monotonic()
        jump_loop.fileevent(a, "readable", lambda: got.append((a.recv(10), jump_loop.time())))
        jump_loop.after(30_000, lambda: fired.append(jump_loop.time()))
        b.send(b"x")
        wait_for(jump_loop, lambda: fired)
        assert got == [(b"x", start)]
        assert fired == [start + 30.0] and jump_clock.jumps == 1
        assert time.monotonic() - real < 1.0
    finally:
        jump_loop.fileevent(a, "readable", None)
        a.close()
        b.close()


def test_a_manual_fake_clock_moves_only_when_advanced(fake_loop, clock):
    fired = []
    fake_loop.after(1000, fired.append, "timer")
    fake_loop.run_once(0.01)            # real time passes; fake time does not
    assert fired == [] and fake_loop.time() == clock.now == 0.0

    clock.advance(1.0)
    fake_loop.update()
    assert fired == ["timer"]
    with pytest.raises(ValueError):
        clock.advance(-1)
