"""A clock that tests drive: trio's MockClock for evloop.

A Loop given ``clock=`` reads the time from it, and asks its
``deadline_to_sleep_time(deadline)`` how many real seconds to sleep before
the nearest timer (trio's ``Clock.deadline_to_sleep_time``).  Fake time
never moves by itself: the test moves it with ``advance``, or lets it jump
(``autojump_threshold``, trio's ``MockClock.autojump_threshold``).

Standard library and evloop only (no pytest), so a test's child process can
run a script on it; the fixtures are in conftest.py.
"""

from __future__ import annotations

import math
import select
import time

import evloop

__all__ = ["AUTOJUMP", "FakeClock"]

# "Sleep until I/O comes": finite, as epoll_wait needs (2**31 ms at most).
_FOREVER = 86400.0


class FakeClock:
    """A monotonic clock in fake seconds, for ``evloop.Loop(clock=...)``.

    ``clock()`` is the fake time; ``advance(s)`` moves it.  With the default
    ``autojump_threshold`` (infinity) time moves only when the test says so,
    and a loop waiting for a timer that is not due sleeps until I/O comes.

    With a finite ``autojump_threshold`` and the loop ``attach``-ed, fake
    time jumps to the nearest timer deadline once the loop has really found
    nothing to do (trio's ``MockClock.autojump_threshold``): a pass of the
    loop ran nothing after waiting at least the threshold (seen from an idle
    callback, which the loop runs only when nothing else ran), the loop
    reports no other work (``backend_timeout()``), and no I/O became ready
    on its descriptor (``backend_fd()``) for another threshold of real
    seconds.  Real I/O -- loopback sockets, a child's output, a thread's
    ``call_soon_threadsafe`` -- is thus always handled before a jump, as
    long as it comes within the threshold.  A pass whose caller did not let
    it wait (``update()``, ``run_once(0)``) never jumps.  ``jumps`` counts
    the jumps.

    ``autojump_threshold=0`` jumps at once: whenever the loop asks how long
    to sleep for a timer and no I/O is ready on its descriptor that very
    moment, the time becomes the timer's deadline, in any pass (trio's
    threshold 0).  I/O ready when the loop then polls still runs before the
    timers of that pass.  For loopback scans: the kernel completes a
    loopback handshake, or refuses it, within ``connect()`` itself, so
    nothing is in flight that a jump could overtake; each jump costs no
    real time, where a threshold costs two.
    """

    def __init__(self, start: float = 0.0, autojump_threshold: float = math.inf) -> None:
        self.now = float(start)
        self.autojump_threshold = autojump_threshold
        self.jumps = 0
        self._loop: evloop.Loop | None = None
        self._probe: evloop.TimerId | None = None    # the pending idle check
        self._armed_at = 0.0        # real time its pass was allowed to sleep
        self._skip = False          # the last check found a pass cut short
        self._asking = False        # inside our own backend_timeout() call
        self._deadline: float | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (ValueError if negative)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock can't go back ({seconds} s)")
        self.now += seconds

    def attach(self, loop: evloop.Loop) -> evloop.Loop:
        """Let autojump watch ``loop`` (made with ``clock=self``); returns it."""
        self._loop = loop
        return loop

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Real seconds the loop may sleep for a timer due at ``deadline``."""
        if self._asking:                    # our check asked the loop: note it
            self._deadline = deadline
            return 0.0
        if deadline <= self.now:
            return 0.0
        threshold, loop = self.autojump_threshold, self._loop
        if loop is None or threshold == math.inf:
            return _FOREVER
        if threshold == 0:
            # Jump at once, unless I/O is ready: then this pass handles it
            # and the next one asks again.
            if not select.select([loop.backend_fd()], [], [], 0)[0]:
                self.now = deadline
                self.jumps += 1
            return 0.0
        if self._probe is not None and self._pending(self._probe):
            return threshold
        if self._skip:
            # The last check ran in a pass cut short by its caller
            # (update() loops while a pass runs anything: a new check
            # each pass would keep it looping).  Let this pass run nothing.
            self._skip = False
            self._probe = None
            return threshold
        self._armed_at = time.monotonic()
        self._probe = loop.after_idle(self._check)
        return threshold

    @property
    def probe(self) -> evloop.TimerId | None:
        """The idle callback the clock has queued on its loop to check for
        quiet, or None (a test that lists ``after_info()`` leaves it out)."""
        return self._probe

    def _pending(self, timer: evloop.TimerId) -> bool:
        assert self._loop is not None
        try:
            self._loop.after_info(timer)
        except ValueError:
            return False
        return True

    def _check(self) -> None:
        """Idle callback: the pass that runs it ran nothing else.  Jump if
        the loop was let sleep, has nothing else to do, and no I/O comes."""
        self._probe = None
        loop, threshold = self._loop, self.autojump_threshold
        if loop is None or threshold == math.inf:
            return
        if time.monotonic() - self._armed_at < threshold / 2:
            self._skip = True               # update(), run_once(0): no jump
            return
        self._asking, self._deadline = True, None
        try:
            work = loop.backend_timeout()   # asks us for the nearest deadline
        finally:
            self._asking = False
        deadline = self._deadline
        if work is None or deadline is None or deadline <= self.now:
            return                          # no timer, or other work first
        # I/O in flight (a reply on loopback, a child's output, a thread's
        # wakeup) gets a whole threshold of real time to arrive.  epoll's
        # descriptor is readable while any watched descriptor is ready.
        ready, _, _ = select.select([loop.backend_fd()], [], [], threshold)
        if ready:
            return
        self.now = deadline
        self.jumps += 1


#: Real seconds of quiet before an autojumping clock jumps: far more than
#: loopback I/O between sockets of this process takes, small enough that a
#: jump costs a test nothing.
AUTOJUMP = 0.02
