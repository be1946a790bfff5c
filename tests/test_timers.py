"""Timers and idle callbacks: `after`, `after_idle`, `after_cancel`, `after_info`.

Ordering is tested with a fake clock: the loop reads the time from
``FakeClock``, the test moves it, and ``loop.update()`` runs what is due.
Nothing here sleeps, and every ordering assertion is exact.
"""

from __future__ import annotations

import threading
import time

import pytest

import evloop


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000.0


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def floop(clock):
    """A Loop on the fake clock."""
    lp = evloop.Loop(clock=clock)
    yield lp
    lp.close()


# ------------------------------------------------------------------ ordering

def test_timers_fire_in_deadline_order_not_creation_order(floop, clock):
    fired = []
    floop.after(30, fired.append, "30ms")
    floop.after(10, fired.append, "10ms")
    floop.after(20, fired.append, "20ms")

    clock.advance(30)
    floop.update()

    assert fired == ["10ms", "20ms", "30ms"]


def test_timers_with_equal_deadlines_fire_first_in_first_out(floop, clock):
    fired = []
    for n in range(50):
        floop.after(10, fired.append, n)

    clock.advance(10)
    floop.update()

    assert fired == list(range(50))


def test_timer_does_not_fire_before_its_deadline(floop, clock):
    fired = []
    floop.after(10, fired.append, "due")

    clock.advance(9.9)
    floop.update()
    assert fired == []

    clock.advance(0.1)
    floop.update()
    assert fired == ["due"]


def test_only_the_timers_that_are_due_fire(floop, clock):
    fired = []
    floop.after(5, fired.append, "a")
    floop.after(15, fired.append, "b")

    clock.advance(10)
    floop.update()
    assert fired == ["a"]

    clock.advance(5)
    floop.update()
    assert fired == ["a", "b"]


def test_timer_passes_its_arguments(floop, clock):
    got = []
    floop.after(0, lambda *a: got.append(a), 1, "two", None)

    floop.update()

    assert got == [(1, "two", None)]


def test_negative_delay_means_now(floop, clock):
    fired = []
    floop.after(-50, fired.append, "late")

    floop.update()

    assert fired == ["late"]


def test_after_zero_scheduled_inside_a_timer_waits_for_the_next_pass(floop, clock):
    fired = []

    def first():
        fired.append("first")
        floop.after(0, fired.append, "scheduled by first")

    floop.after(0, first)
    floop.after(0, fired.append, "second")

    floop.run_once(0)
    assert fired == ["first", "second"]

    floop.run_once(0)
    assert fired == ["first", "second", "scheduled by first"]


def test_timer_that_reschedules_itself_does_not_starve_the_pass(floop, clock):
    count = []

    def again():
        count.append(1)
        floop.after(0, again)

    floop.after(0, again)
    for _ in range(5):
        floop.run_once(0)

    assert len(count) == 5


def test_timer_callback_that_raises_goes_to_bgerror_and_the_loop_continues(floop, clock):
    errors, fired = [], []
    floop.bgerror(errors.append)

    def boom():
        raise RuntimeError("timer failed")

    floop.after(1, boom)
    floop.after(1, fired.append, "after the failure")
    floop.after(2, fired.append, "later")

    clock.advance(2)
    floop.update()

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

def test_after_cancel_of_a_pending_timer_stops_it(floop, clock):
    fired = []
    keep = floop.after(10, fired.append, "kept")
    drop = floop.after(10, fired.append, "dropped")

    floop.after_cancel(drop)
    clock.advance(10)
    floop.update()

    assert fired == ["kept"]
    assert keep not in floop.after_info()


def test_after_cancel_of_a_fired_timer_is_a_no_op(floop, clock):
    fired = []
    timer = floop.after(0, fired.append, "once")
    floop.update()

    floop.after_cancel(timer)
    floop.after_cancel(timer)

    assert fired == ["once"]
    assert floop.after_info() == []


@pytest.mark.parametrize("garbage", [None, -1, "after#1", object(), 3.5, [1, 2], {}])
def test_after_cancel_of_anything_not_a_timer_is_a_no_op(floop, clock, garbage):
    fired = []
    floop.after(0, fired.append, "untouched")

    floop.after_cancel(garbage)
    floop.update()

    assert fired == ["untouched"]


def test_after_cancel_of_a_timer_from_another_loop_is_a_no_op(floop, clock):
    other = evloop.Loop(clock=clock)
    try:
        fired = []
        foreign = other.after(0, fired.append, "other loop")
        ours = floop.after(0, fired.append, "our loop")

        floop.after_cancel(foreign)         # not one of ours
        floop.after_cancel(ours)
        floop.after_cancel(ours)            # twice: still a no-op
        other.update()
        floop.update()

        assert fired == ["other loop"]
        assert foreign not in other.after_info()
    finally:
        other.close()


def test_a_timer_cancelled_by_an_earlier_timer_of_the_same_pass_does_not_run(floop, clock):
    fired = []
    victim = floop.after(5, fired.append, "victim")
    floop.after(1, floop.after_cancel, victim)

    clock.advance(5)
    floop.update()

    assert fired == []


def test_after_cancel_of_a_pending_idle_callback_stops_it(floop):
    fired = []
    idle = floop.after_idle(fired.append, "idle")

    floop.after_cancel(idle)
    floop.update()

    assert fired == []
    assert floop.after_info() == []


def test_scheduling_and_cancelling_200k_timers_is_fast_and_the_heap_shrinks(floop, clock):
    keep = floop.after(10_000, lambda: None)
    start = time.perf_counter()
    for _ in range(200_000):
        floop.after_cancel(floop.after(1000, lambda: None))
    elapsed = time.perf_counter() - start

    # O(log n) each: well under a second on any machine (O(n) cancel would
    # take minutes).  The next pass sweeps the heap: it holds a few hundred
    # entries, not 200k.
    assert elapsed < 3.0
    floop.run_once(0)
    assert len(floop._heap) < 1000
    assert floop.after_info() == [keep]


def test_cancelling_most_of_a_big_batch_keeps_the_survivors_in_order(floop, clock):
    fired = []
    timers = [floop.after(n % 97, fired.append, n) for n in range(20_000)]
    survivors = set(range(0, 20_000, 1000))
    for n, timer in enumerate(timers):
        if n not in survivors:
            floop.after_cancel(timer)

    clock.advance(100)
    floop.update()

    assert fired == sorted(survivors, key=lambda n: (n % 97, n))


# ---------------------------------------------------------------- after_info

def test_after_info_lists_pending_timers_and_idle_callbacks(floop, clock):
    t1 = floop.after(20, lambda: None)
    t2 = floop.after(10, lambda: None)
    i1 = floop.after_idle(lambda: None)

    assert set(floop.after_info()) == {t1, t2, i1}

    clock.advance(10)
    floop.run_once(0)                   # t2 fires; idle waits (a timer ran)
    assert set(floop.after_info()) == {t1, i1}

    floop.update()                      # nothing else due: idle runs
    assert floop.after_info() == [t1]


def test_after_info_of_one_id_tells_its_callback_args_and_kind(floop, clock):
    timer = floop.after(20, print, "a", "b")
    idle = floop.after_idle(len, "x")

    assert floop.after_info(timer) == (print, ("a", "b"), "timer")
    assert floop.after_info(idle) == (len, ("x",), "idle")
    floop.after_cancel(timer)
    with pytest.raises(ValueError):
        floop.after_info(timer)
    with pytest.raises(ValueError):
        floop.after_info("after#1")


def test_after_info_is_empty_on_a_fresh_loop(floop):
    assert floop.after_info() == []


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

def test_idle_callback_runs_only_when_nothing_else_is_ready(floop, clock):
    fired = []
    floop.after_idle(fired.append, "idle")
    floop.after(0, fired.append, "timer")

    floop.run_once(0)
    assert fired == ["timer"]

    floop.run_once(0)
    assert fired == ["timer", "idle"]


def test_idle_callback_waits_while_a_timer_keeps_the_loop_busy(floop, clock):
    fired = []
    floop.after_idle(fired.append, "idle")

    def busy(n):
        fired.append(n)
        if n < 3:
            floop.after(0, busy, n + 1)

    floop.after(0, busy, 1)
    floop.update()

    assert fired == [1, 2, 3, "idle"]


def test_idle_callbacks_run_in_the_order_they_were_queued(floop):
    fired = []
    for n in range(10):
        floop.after_idle(fired.append, n)

    floop.update()

    assert fired == list(range(10))


def test_idle_callback_queued_by_an_idle_callback_waits_for_the_next_round(floop):
    fired = []

    def first():
        fired.append("first")
        floop.after_idle(fired.append, "queued while idle ran")

    floop.after_idle(first)
    floop.after_idle(fired.append, "second")

    floop.run_once(0)
    assert fired == ["first", "second"]

    floop.run_once(0)
    assert fired == ["first", "second", "queued while idle ran"]


def test_idle_callback_that_raises_goes_to_bgerror(floop):
    errors, fired = [], []
    floop.bgerror(errors.append)
    floop.after_idle(lambda: 1 / 0)
    floop.after_idle(fired.append, "next")

    floop.update()

    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
    assert fired == ["next"]


def test_update_idletasks_runs_only_idle_callbacks(floop, clock):
    fired = []
    floop.after(0, fired.append, "timer")
    floop.after_idle(fired.append, "idle")
    floop.call_soon_threadsafe(fired.append, "threadsafe")

    floop.update(idletasks=True)
    assert fired == ["idle"]

    floop.update()
    assert sorted(fired) == ["idle", "threadsafe", "timer"]


def test_timer_ids_are_distinct_increasing_numbers_across_loops(floop):
    other = evloop.Loop()
    try:
        ids = [floop.after(10, lambda: None), floop.after_idle(lambda: None),
               other.after(10, lambda: None), floop.after(10, lambda: None)]
    finally:
        other.close()

    assert all(isinstance(i, evloop.TimerId) for i in ids)
    assert ids == sorted(set(ids))


@pytest.mark.parametrize("schedule", ["after", "after_idle"])
def test_scheduling_something_not_callable_raises_and_schedules_nothing(floop, schedule):
    with pytest.raises(TypeError):
        if schedule == "after":
            floop.after(10, "puts hello")
        else:
            floop.after_idle("puts hello")
    assert floop.after_info() == []


# ---------------------------------------------------- timers and nested vwait

def _guard(loop: evloop.Loop, var: evloop.Var, seconds: float) -> threading.Timer:
    """Set ``var`` to "stuck" from another thread after ``seconds`` (so a
    deadlocked vwait fails the test instead of hanging it)."""
    guard = threading.Timer(seconds, loop.call_soon_threadsafe, (var.set, "stuck"))
    guard.daemon = True
    guard.start()
    return guard


@pytest.mark.timeout(10)
def test_vwait_inside_a_timer_is_woken_by_a_timer_due_in_the_same_pass(floop, clock):
    # Tcl: after 0 {vwait v}; after 0 {set v 1} -- the second timer runs inside
    # the first one's vwait (Tcl takes timers off its list one at a time).
    var, seen = evloop.Var(), []
    floop.after(0, lambda: seen.append(floop.vwait(var)))
    floop.after(0, var.set, "set by the second timer")
    guard = _guard(floop, var, 1.0)

    floop.update()
    guard.cancel()

    assert seen == ["set by the second timer"]


@pytest.mark.timeout(10)
def test_vwait_inside_an_idle_callback_is_woken_by_the_next_idle_callback(floop):
    var, seen = evloop.Var(), []
    floop.after_idle(lambda: seen.append(floop.vwait(var)))
    floop.after_idle(var.set, "set by the second idle callback")
    guard = _guard(floop, var, 1.0)

    floop.update()
    guard.cancel()

    assert seen == ["set by the second idle callback"]


def test_keyboard_interrupt_out_of_a_timer_loses_no_other_due_timer(floop, clock):
    fired = []

    def interrupt():
        raise KeyboardInterrupt

    floop.after(1, fired.append, "before")
    floop.after(1, interrupt)
    floop.after(1, fired.append, "after")
    clock.advance(1)

    with pytest.raises(KeyboardInterrupt):
        floop.update()
    assert fired == ["before"]

    floop.update()
    assert fired == ["before", "after"]
    assert floop.after_info() == []


def test_keyboard_interrupt_out_of_an_idle_callback_loses_no_other_idle_callback(floop):
    fired = []

    def interrupt():
        raise KeyboardInterrupt

    floop.after_idle(interrupt)
    floop.after_idle(fired.append, "still runs")

    with pytest.raises(KeyboardInterrupt):
        floop.update()
    assert floop.after_info() != []

    floop.update()
    assert fired == ["still runs"]


def test_cancelling_a_timer_due_in_the_same_pass_keeps_the_heap_sound(floop, clock):
    # Timers cancelled after being taken off the heap for running must not
    # upset the heap's count of dead entries (ordering keeps working).
    fired = []
    for _ in range(300):
        victims = [floop.after(1, fired.append, "victim") for _ in range(3)]
        floop.after(0, lambda v=victims: [floop.after_cancel(t) for t in v])
    clock.advance(1)
    floop.update()                 # each canceller runs before its victims
    assert fired == []

    later = [floop.after(n, fired.append, n) for n in (30, 10, 20)]
    clock.advance(30)
    floop.update()
    assert fired[-3:] == [10, 20, 30]
    assert not set(later) & set(floop.after_info())
