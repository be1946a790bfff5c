"""Timers and idle callbacks: the ``after`` half of the event loop.

Design of time
--------------
``after`` and ``after_idle`` return a `TimerId`: a plain number, unique in
the process and increasing (Tcl's ``after#N``).  The loop keeps every
pending one in a dict from number to entry, so "is this a pending id of
this loop?" is one lookup: ``after_cancel`` of anything else does nothing,
and ``after_info`` lists the dict.

An entry is a small list ``[deadline, number, callback, args]``.
``after`` counts in milliseconds, and so do its deadlines: the *tick* of a
timer is its deadline in whole milliseconds on the loop's clock, rounded
up (a timer never fires early; at most a millisecond late, which epoll's
own millisecond timeout rounds to anyway), and ``after(0)`` takes the
current tick, so it is due at once.  Timers are kept in *buckets*, one FIFO
queue (a deque) per tick, in a dict from tick to bucket, and the ticks in a
binary heap (``heapq``) of plain ints.  A program makes many timers per
millisecond (a timeout per request; a burst of ``after`` calls), so most
timers go into a bucket that exists, and a tick that falls due costs one
heap operation however many timers it holds; a general heap of timers
costs O(log n) list comparisons per timer, in and out.  Within a tick,
timers fire in the order they were made (Tcl's rule for equal deadlines).
Deadlines are on a monotonic clock (``time.monotonic`` unless the loop was
given another clock, as tests do); ticks are computed with a microsecond of
slack, so a clock that stands exactly on a millisecond (a test's fake
clock) is not pushed to the next one by floating-point noise.

``after(ms)`` itself does even less: it appends the entry, with its exact
deadline in seconds, to a list of timers not filed yet and notes the
soonest deadline there.  A pass files a few of them into their buckets, in
the order they were made, at once; a burst (more than ``_FILE_AT_ONCE``)
only when that soonest one may be due, computing its sleep from it
meanwhile.  Timers set far ahead, or
cancelled before they are due (a timeout per request), are never filed.
``after(0)`` goes straight into the bucket of the current tick, unless an
older timer not filed yet may fall in that tick: then it waits to be filed
after it.

Cancelling does not search: it sets the entry's callback to None and
leaves it in its bucket, until it comes to the front, or until a pass of
the loop, looking for the next deadline, finds that cancels since the last
sweep outnumber the timers still pending and rebuilds the buckets without
dead entries (as Tornado and asyncio sweep their heaps).  Scheduling and
cancelling cost O(1) (a new tick: O(log ticks)), and a program that cancels
nearly every timer it makes keeps about as much as is really pending.

A pass of the loop runs the timers that were due when it began, and no
others: it takes a fresh number as a boundary and takes from the buckets
only entries older than it.  So a timer that schedules ``after 0`` waits
for the next pass instead of starving file events, yet nothing is copied
into a batch first: entries are taken off their bucket one at a time, so a
``vwait`` nested in a timer callback runs the remaining due timers itself,
and an exception that escapes the loop (KeyboardInterrupt) leaves them in
place.

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
from math import ceil, floor
from typing import Any

__all__ = ["TimerId"]

TimerId = int
"""What ``after`` and ``after_idle`` return: the N of Tcl's ``after#N``."""

_INF = float("inf")

# A pass sweeps the buckets when more than this many cancels, and more
# than there are pending timers, have piled up since the last sweep.
_SWEEP_MIN = 256
# A pass files the timers made since the last one at once if they are at
# most this many; a bigger burst waits until its soonest may be due.
_FILE_AT_ONCE = 64
# Slack in milliseconds when turning a time into a tick: float noise must
# not move a deadline that is exactly on a millisecond to the next one.
_SLACK = 1e-3

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
        self._incoming: list[list] = []            # timers not filed yet, dead ones too
        self._soonest = _INF                       # no deadline in _incoming is earlier
        self._heap: list[int] = []                 # the ticks that have a bucket
        self._buckets: dict[int, deque[list]] = {} # tick -> its entries, dead ones too
        self._idle: deque[list] = deque()          # idle entries, dead ones too
        self._cancels = 0                          # cancels since the last sweep
        # Called when work is added (see Loop.on_new_work); None: nobody asks.
        self._new_work: Callable[[], Any] | None = None

    def after(self, ms: float, callback: Callable[..., Any], *args: Any) -> TimerId:
        """Run ``callback(*args)`` once, ``ms`` milliseconds from now (at
        once if ``ms`` <= 0); returns its TimerId.  Any finite delay works,
        however long.  Raises TypeError if ``callback`` is not callable,
        ValueError if ``ms`` is infinite or NaN."""
        if not callable(callback):
            raise TypeError(f"after needs a callable, not {callback!r}")
        if self._new_work is not None:
            self._new_work()
        if ms > 0:
            if ms == _INF:
                raise ValueError("after needs a finite delay, not inf")
            # Kept with its exact deadline, filed when it may be due.
            when = self._clock() + ms / 1000
            number = next(_numbers)
            entry = self._pending[number] = [when, number, callback, args]
            self._incoming.append(entry)
            if when < self._soonest:
                self._soonest = when
            return number
        if not ms > -_INF:
            raise ValueError(f"after needs a finite delay, not {ms!r}")
        # Due now: its tick (an int) is the current one.
        tick = floor(self._clock() * 1000.0 + _SLACK)
        number = next(_numbers)
        entry = self._pending[number] = [tick, number, callback, args]
        if self._soonest * 1000.0 - _SLACK <= tick:
            # An older timer not filed yet may fall in this tick: file this
            # one after it (the order within a tick).
            self._incoming.append(entry)
            return number
        try:
            self._buckets[tick].append(entry)
        except KeyError:                        # the first timer of its tick
            self._buckets[tick] = deque((entry,))
            heappush(self._heap, tick)
        return number

    def after_idle(self, callback: Callable[..., Any], *args: Any) -> TimerId:
        """Run ``callback(*args)`` when the loop has nothing else to do;
        returns its TimerId.  Raises TypeError if it is not callable."""
        if not callable(callback):
            raise TypeError(f"after_idle needs a callable, not {callback!r}")
        if self._new_work is not None:
            self._new_work()
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
        """The earliest live deadline (seconds on the loop's clock), or
        None.  Sweeps the buckets if dead entries have piled up, else drops
        those at the front of the first bucket."""
        if self._cancels > _SWEEP_MIN and self._cancels > len(self._pending):
            self._sweep()
        if 0 < len(self._incoming) <= _FILE_AT_ONCE:
            self._file()                        # cheap, and the answer exact
        heap, buckets = self._heap, self._buckets
        first = _INF
        while heap:
            tick = heap[0]
            bucket = buckets[tick]
            while bucket and bucket[0][2] is None:
                bucket.popleft()
            if bucket:
                first = tick
                break
            del buckets[tick]
            heappop(heap)
        if self._incoming:
            # A burst of timers is not filed yet: no earlier than the tick
            # of the soonest (cancelled since, maybe: then a pass finds
            # nothing to run, and files them).
            first = min(first, ceil(self._soonest * 1000.0 - _SLACK))
        return None if first == _INF else first / 1000.0

    def _file(self) -> None:
        """File the timers made since the last pass into their buckets;
        drop those cancelled since."""
        buckets, heap = self._buckets, self._heap
        for entry in self._incoming:
            if entry[2] is None:
                self._cancels -= 1              # nothing left to sweep
                continue
            when = entry[0]
            if type(when) is not int:       # an exact deadline: round it up
                when = entry[0] = ceil(when * 1000.0 - _SLACK)
            tick = when
            try:
                buckets[tick].append(entry)
            except KeyError:
                buckets[tick] = deque((entry,))
                heappush(heap, tick)
        self._incoming.clear()
        self._soonest = _INF

    def _sweep(self) -> None:
        """Rebuild the buckets (and the timers to file) without dead entries."""
        # In place: a pass further up the stack may hold these objects.
        self._incoming[:] = [e for e in self._incoming if e[2] is not None]
        if not self._incoming:
            self._soonest = _INF
        buckets = self._buckets
        for tick, bucket in list(buckets.items()):
            live = [e for e in bucket if e[2] is not None]
            if not live:
                del buckets[tick]
            elif len(live) < len(bucket):
                bucket.clear()
                bucket.extend(live)
        self._heap[:] = buckets
        heapify(self._heap)
        self._cancels = 0

    def _run_timers(self) -> int:
        """Run the timers that are due and were made before this call;
        returns how many ran."""
        now = floor(self._clock() * 1000.0 + _SLACK)
        if self._soonest * 1000.0 - _SLACK <= now:
            self._file()                        # some of them are due
        heap, buckets, pending = self._heap, self._buckets, self._pending
        boundary = next(_numbers)
        ran = 0
        while heap and heap[0] <= now:
            tick = heap[0]
            bucket = buckets[tick]
            while bucket:
                entry = bucket[0]
                if entry[1] >= boundary:
                    return ran              # made by this step: next pass
                bucket.popleft()
                callback = entry[2]
                if callback is None:
                    continue                # cancelled
                # No longer pending before it runs: a cancel from inside
                # is a no-op.  (_fire, inlined: this is the hot path.)
                args = entry[3]
                del pending[entry[1]]
                entry[2] = entry[3] = None
                ran += 1
                try:
                    callback(*args)
                except Exception as exc:
                    self.report(exc)
            if tick == now:
                # Kept, empty, for the after(0)s still to come within this
                # millisecond (a chain of them costs no heap operation);
                # _next_deadline lets it go if none came.
                break
            # Empty now; a vwait nested in a callback may have let go of it.
            if buckets.get(tick) is bucket and not bucket:
                del buckets[tick]
                if heap[0] == tick:
                    heappop(heap)
                else:
                    heap.remove(tick)
                    heapify(heap)
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
