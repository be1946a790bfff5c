"""Timers and idle callbacks: the ``after`` half of the event loop.

Design of time
--------------
``after`` and ``after_idle`` return a `TimerId`: a plain number, unique in
the process and increasing (Tcl's ``after#N``).  The loop keeps every
pending one in a dict from number to entry, so "is this a pending id of
this loop?" is one lookup: ``after_cancel`` of anything else does nothing,
and ``after_info`` lists the dict.

An entry is a small list ``[deadline, number, callback, args]``.  Timer
entries also live in a binary heap (``heapq``), as in the priority-queue
recipe of the ``heapq`` documentation: lists compare in C, element by
element, and the unique number makes two timers with the same deadline fire
in the order they were made (Tcl's rule) before the comparison could reach
the callback.  Deadlines are on a monotonic clock (``time.monotonic``
unless the loop was given another clock, as tests do).

Cancelling does not search the heap: it sets the entry's callback to None
and leaves it there, until it reaches the top, or until a pass of the loop,
looking for the next deadline, finds that cancels since the last sweep
outnumber half the heap and rebuilds it without dead entries (as Tornado
and asyncio do).  Scheduling costs O(log n), cancelling O(1), and a program that
cancels nearly every timer it makes (a timeout per request) keeps a heap
about the size of what is really pending.

A pass of the loop runs the timers that were due when it began, and no
others: it takes a fresh number as a boundary and pops only entries older
than it.  So a timer that schedules ``after 0`` waits for the next pass
instead of starving file events, yet nothing is copied into a batch first:
a ``vwait`` nested in a timer callback runs the remaining due timers itself,
and an exception that escapes the loop (KeyboardInterrupt) leaves them on
the heap.

Idle callbacks (``after idle``) are a FIFO queue served in *generations*
the same way: a round runs the callbacks queued before it began; those
queued while it runs wait for the next round, as in Tcl's
``TclServiceIdle``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any

__all__ = ["TimerId"]

TimerId = int
"""What ``after`` and ``after_idle`` return: the N of Tcl's ``after#N``."""

_INF = float("inf")

# A pass sweeps the heap when more than this many cancels, and more than
# half of it, have piled up since the last sweep.
_SWEEP_MIN = 256

# Numbers for TimerIds, unique in the process (so another loop's id is
# never one of ours) and increasing (so they also mark generations).
# next() on a count is atomic under the GIL.
_numbers = itertools.count(1)


class Timers:
    """The timer half of `Loop`, which inherits it: ``after``,
    ``after_idle``, ``after_cancel``, ``after_info``, and the steps of a
    pass that run timers.  Needs ``self._clock`` and ``self.report`` (an
    exception from a callback goes there)."""

    # Provided by Loop.
    _clock: Callable[[], float]
    report: Callable[[BaseException], None]

    def __init__(self) -> None:
        self._pending: dict[TimerId, list] = {}    # every pending entry, by number
        self._heap: list[list] = []                # timer entries, dead ones too
        self._idle: deque[list] = deque()          # idle entries, dead ones too
        self._cancels = 0                          # cancels since the last sweep

    def after(self, ms: float, callback: Callable[..., Any], *args: Any) -> TimerId:
        """Run ``callback(*args)`` once, ``ms`` milliseconds from now (at
        once if ``ms`` <= 0); returns its TimerId.  Any finite delay works,
        however long.  Raises TypeError if ``callback`` is not callable,
        ValueError if ``ms`` is infinite or NaN."""
        if not callable(callback):
            raise TypeError(f"after needs a callable, not {callback!r}")
        when = self._clock()
        if ms > 0:
            if ms == _INF:
                raise ValueError("after needs a finite delay, not inf")
            when += ms / 1000
        elif not ms > -_INF:
            raise ValueError(f"after needs a finite delay, not {ms!r}")
        number = next(_numbers)
        entry = self._pending[number] = [when, number, callback, args]
        heappush(self._heap, entry)
        return number

    def after_idle(self, callback: Callable[..., Any], *args: Any) -> TimerId:
        """Run ``callback(*args)`` when the loop has nothing else to do;
        returns its TimerId.  Raises TypeError if it is not callable."""
        if not callable(callback):
            raise TypeError(f"after_idle needs a callable, not {callback!r}")
        number = next(_numbers)
        entry = self._pending[number] = [None, number, callback, args]
        self._idle.append(entry)
        return number

    def after_cancel(self, timer: Any) -> None:
        """Cancel a pending timer or idle callback of this loop; anything
        else (a fired or cancelled id, another loop's, not an id) is a no-op."""
        try:
            entry = self._pending.pop(timer, None)
        except TypeError:                      # unhashable: not an id
            return
        if entry is None:
            return
        entry[2] = entry[3] = None             # dead; drop the references now
        if entry[0] is not None:               # (idle: skipped when its round comes)
            self._cancels += 1

    def after_info(self, timer: TimerId | None = None) -> Any:
        """The TimerIds still pending, timers and idle callbacks, oldest
        first; or, given one of them, ``(callback, args, "timer" or
        "idle")`` (Tcl's ``after info id``).  Raises ValueError for an id
        that is not pending."""
        if timer is None:
            return list(self._pending)
        entry = self._pending.get(timer) if isinstance(timer, int) else None
        if entry is None:
            raise ValueError(f"after#{timer} is not a pending timer or idle callback")
        return entry[2], entry[3], "idle" if entry[0] is None else "timer"

    def _next_deadline(self) -> float | None:
        """The earliest live deadline, or None.  Sweeps the heap if dead
        entries have piled up, else drops those on top."""
        heap = self._heap
        if self._cancels > _SWEEP_MIN and 2 * self._cancels > len(heap):
            heap[:] = [e for e in heap if e[2] is not None]
            heapify(heap)
            self._cancels = 0
        while heap and heap[0][2] is None:
            heappop(heap)
        return heap[0][0] if heap else None

    def _run_timers(self) -> int:
        """Run the timers that are due and were made before this call;
        returns how many ran."""
        heap = self._heap
        now = self._clock()
        boundary = next(_numbers)
        ran = 0
        while heap and heap[0][0] <= now and heap[0][1] < boundary:
            ran += self._fire(heappop(heap))
        return ran

    def _run_idle(self) -> int:
        """Run one generation of idle callbacks; returns how many ran."""
        idle = self._idle
        boundary = next(_numbers)
        ran = 0
        while idle and idle[0][1] < boundary:
            ran += self._fire(idle.popleft())
        return ran

    def _fire(self, entry: list) -> int:
        """Run an entry taken off its queue, unless it is dead; 1 if it ran."""
        callback, args = entry[2], entry[3]
        if callback is None:
            return 0
        # No longer pending before it runs: a cancel from inside is a no-op.
        del self._pending[entry[1]]
        entry[2] = entry[3] = None
        try:
            callback(*args)
        except Exception as exc:
            self.report(exc)
        return 1
