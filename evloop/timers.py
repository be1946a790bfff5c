"""Timers and idle callbacks: the `after` half of the event loop.

Design of time
--------------
Every timer has a deadline on a monotonic clock (``time.monotonic`` unless
the loop was given another clock, as tests do).  Pending timers live in a
binary heap of ``(deadline, sequence, TimerId)`` tuples.  The sequence number
is unique and increasing, so two timers with the same deadline fire in the
order they were created (Tcl's rule), and tuple comparison never reaches the
``TimerId`` itself -- it all happens in C.

Cancelling does not search the heap.  ``cancel`` marks the ``TimerId`` dead
and counts it; dead entries are dropped when they reach the top of the heap,
and when they outnumber the live ones the heap is rebuilt without them.  So
scheduling and cancelling a timer each cost O(log n), and a program that
cancels nearly every timer it makes (a timeout per request) keeps a heap the
size of what is really pending.

Idle callbacks (``after idle``) are a FIFO queue served in *generations*: a
pass of the loop runs the callbacks that were queued when it started; any
queued while they run wait for the next pass, as in Tcl's ``TclServiceIdle``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any, Callable

__all__ = ["TimerId"]

# Rebuild the heap when dead entries are this many and more than half of it.
_SWEEP_MIN = 256


class TimerId:
    """The handle ``after`` and ``after_idle`` return: Tcl's ``after#N``.

    ``after_cancel`` takes it.  ``when`` is the deadline on the loop's clock
    (``None`` for an idle callback); ``pending`` is true until the callback
    runs or is cancelled.
    """

    __slots__ = ("number", "when", "callback", "args", "pending")

    def __init__(self, number: int, when: float | None,
                 callback: Callable[..., Any], args: tuple) -> None:
        self.number = number
        self.when = when
        self.callback = callback
        self.args = args
        self.pending = True

    def __repr__(self) -> str:
        kind = "idle" if self.when is None else "timer"
        state = "pending" if self.pending else "done"
        return f"<TimerId after#{self.number} {kind} {state}>"


class TimerQueue:
    """Pending timers and idle callbacks of one loop (internal to `Loop`)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, TimerId]] = []
        self.idle: deque[TimerId] = deque()
        self._dead = 0            # cancelled entries still in the heap
        self._numbers = itertools.count(1)

    def add(self, when: float, callback: Callable[..., Any], args: tuple) -> TimerId:
        """Schedule ``callback(*args)`` at ``when``; returns its TimerId."""
        n = next(self._numbers)
        timer = TimerId(n, when, callback, args)
        heapq.heappush(self.heap, (when, n, timer))
        return timer

    def add_idle(self, callback: Callable[..., Any], args: tuple) -> TimerId:
        """Queue ``callback(*args)`` for the next idle round; returns its TimerId."""
        timer = TimerId(next(self._numbers), None, callback, args)
        self.idle.append(timer)
        return timer

    def cancel(self, timer: Any) -> None:
        """Forget a pending timer or idle callback; anything else is a no-op."""
        if not isinstance(timer, TimerId) or not timer.pending:
            return
        timer.pending = False
        timer.callback = timer.args = None     # drop references now
        if timer.when is None:
            return                             # skipped when its idle round comes
        # (A timer already taken off the heap for running counts too; the
        # clamp keeps that from making the count exceed the heap.)
        self._dead = min(self._dead + 1, len(self.heap))
        if self._dead > _SWEEP_MIN and self._dead * 2 > len(self.heap):
            self.heap = [entry for entry in self.heap if entry[2].pending]
            heapq.heapify(self.heap)
            self._dead = 0

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None; pops dead entries on the way."""
        heap = self.heap
        while heap:
            entry = heap[0]
            if entry[2].pending:
                return entry[0]
            heapq.heappop(heap)
            self._dead -= 1
        return None

    def pop_due(self, now: float) -> list[TimerId]:
        """Remove and return the live timers whose deadline is at or before ``now``.

        All due timers are collected before any runs, so a callback that
        schedules ``after 0`` does not starve the rest of the loop.
        """
        heap = self.heap
        due = []
        pop = heapq.heappop
        while heap and heap[0][0] <= now:
            timer = pop(heap)[2]
            if timer.pending:
                due.append(timer)
            else:
                self._dead -= 1
        return due

    def take_idle(self) -> list[TimerId]:
        """Take this generation of idle callbacks (later ones wait a round)."""
        batch = list(self.idle)
        self.idle.clear()
        return batch

    def pending(self) -> list[TimerId]:
        """Every pending TimerId, soonest first, then the idle ones in order."""
        live = sorted(entry for entry in self.heap if entry[2].pending)
        return [entry[2] for entry in live] + [t for t in self.idle if t.pending]

    def __bool__(self) -> bool:
        return bool(self.heap) or bool(self.idle)
