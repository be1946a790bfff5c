"""The reactor: one poller (epoll), a table of file events, timers and idle callbacks.

How a pass of the loop works
----------------------------
``Loop.run_once`` is the heartbeat of every program built on evloop.  Each
pass does the same things, in this order:

1. Decide how long it may sleep: not at all if callbacks from other threads
   or idle callbacks are waiting; otherwise until the nearest timer
   deadline (or for ever, or the caller's ``timeout``), but never more than
   a day at once: epoll takes an int of milliseconds, and a later deadline
   is simply slept towards again on the next pass.
2. Tell the poller what the handlers set or removed since the last
   pass now want, one change per descriptor however many ``fileevent``
   calls led to it (as Tcl's notifier and libuv do); then ask it which
   descriptors are ready.  The poller is epoll itself on Linux (``selectors``
   elsewhere): the loop keeps its own table of descriptors, so it needs
   none of the key objects ``selectors`` builds per ready event.  epoll
   reports an error or a hang-up even when it was not asked to: the loop
   takes it as readable and writable, so the handler that is set runs, and
   finds the error when it reads or writes (or asks ``ch.error()``).
3. Call the file-event handlers of the ready descriptors.  Each handler is
   looked up at the moment it is called, in the loop's table of
   registrations (*watches*): a handler removed earlier in the same pass
   does not run, and a descriptor closed in this pass has no watch any
   more; one registered since the poll (a new socket that got the number of
   one closed in this pass) is skipped, so it never receives events meant
   for the old one.
4. Run the timers that were due when this step began (one made now, even
   ``after 0``, waits for the next pass).
5. Run the callbacks queued from other threads before step 4 began.
6. If nothing at all ran in steps 3 to 5, run one generation of idle
   callbacks (``after idle``): idle means "no other event was ready".

Events, as ``vwait`` counts them.  ``vwait(var)`` runs passes until ``var``
is set, and returns as soon as the *event* that set it is done, counting
as Tcl's ``Tcl_DoOneEvent`` does: the handlers of one ready descriptor
(readable, then writable) are one event; the timers of step 4 are one
event; each callback of step 5 is one; an idle generation is one.  So in
the classic ``vwait(reply); after_cancel(timeout)`` a timeout that fell
due while the reply was read does not run first.  What that pass had not
done yet is kept (the iterator over the ready events, and how many
callbacks of step 5 are owed) and the next call of ``run_once`` finishes
it without polling: nothing is lost and nothing runs twice.  A ``vwait`` nested in a handler
works through the same pass in progress, as Tcl's nested loops share one
event queue; when the handler returns, the outer call goes on with what is
left of that pass, or returns if the nested one finished it.

The loop knows descriptors, timers and idle callbacks, and nothing of
channels (Tcl's notifier below its channel layer).  A `Channel` is a client
of the public calls like any other code: ``fileevent`` hands the call to an
object that keeps its own file events, the channel asks for the socket
events it needs, and buffered input that its handler has not seen yet is a
0 ms ``after`` of the channel's own.

An exception in any callback goes to the background-error handler
(``bgerror``) and the loop carries on.  A file-event handler that raises is
also deleted, as in Tcl, so a buggy handler cannot spin the CPU.  Other
exceptions (KeyboardInterrupt, SystemExit) leave the loop and lose nothing
that was waiting: what was due and did not run yet runs on the next pass.
"""

from __future__ import annotations

import select
import selectors
import signal as _signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .timers import Timers

__all__ = ["Loop", "Var", "get_loop", "set_loop"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# The bits of a ready descriptor as the poller reports them (epoll's): an
# error or hang-up (neither asked for) counts as readable and writable.
_IN, _OUT = 1, 4                        # EPOLLIN, EPOLLOUT
_READY_READ = ~_OUT                     # input, error, hang-up
_READY_WRITE = ~_IN                     # output, error, hang-up
_EVENTS = {"readable": _READ, "writable": _WRITE}
_SOCKET = socket.socket
# The longest one select() may sleep: epoll takes an int of milliseconds
# (2**31 ms is about 25 days); a later deadline is slept towards in steps.
_MAX_SLEEP = 86400.0
# fileevent's handler argument when none is given: a query.  (A default
# rather than ``*handler``, which would cost a tuple slice per call.)
_QUERY: Any = object()


class Var:
    """A variable that `Loop.vwait` can wait on (Tcl's ``vwait varName``)."""

    __slots__ = ("_value", "_version")

    def __init__(self, value: Any = None) -> None:
        self._value = value
        self._version = 0

    def get(self) -> Any:
        """Return the current value."""
        return self._value

    def set(self, value: Any) -> None:
        """Set the value; wakes every ``vwait`` on this variable, even if equal."""
        self._value = value
        self._version += 1

    def __repr__(self) -> str:
        return f"Var({self._value!r})"


class _Poller:
    """The loop's poller: epoll itself, with ``selectors``' register /
    modify / unregister calls (masks of EVENT_READ and EVENT_WRITE) but none
    of its bookkeeping.  ``selectors`` keeps a key object per descriptor and
    builds one per ready event, in Python; the loop keeps its own table
    (``_watches``), so here ``poll`` hands back epoll's ``(fd, bits)``
    pairs as they are, and the loop looks the watch up itself.
    """

    _BITS = (0, _IN, _OUT, _IN | _OUT)      # selectors' mask -> epoll's

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # poll(seconds) with -1 for no timeout; epoll rounds a timeout up
        # to a whole millisecond itself, as selectors does.
        self.poll = self._epoll.poll
        self.fileno = self._epoll.fileno
        self.close = self._epoll.close
        # OSError for a descriptor closed behind the loop's back, which the
        # kernel has dropped from epoll already: the loop ignores it.
        self.unregister = self._epoll.unregister

    def register(self, fd: int, events: int, data: Any = None) -> None:
        self._epoll.register(fd, self._BITS[events])

    def modify(self, fd: int, events: int, data: Any = None) -> None:
        self._epoll.modify(fd, self._BITS[events])


class _SelectorPoller:
    """The same calls on ``selectors.DefaultSelector``, where there is no
    epoll (kqueue, poll, select): its events are turned into epoll's bits."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self.close = self._selector.close

    def fileno(self) -> int:
        return self._selector.fileno()      # (poll and select have none)

    def register(self, fd: int, events: int, data: Any = None) -> None:
        self._selector.register(fd, events)

    def modify(self, fd: int, events: int, data: Any = None) -> None:
        self._selector.modify(fd, events)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        ready = self._selector.select(None if timeout < 0 else timeout)
        return [(key.fd, (_IN if mask & _READ else 0) | (_OUT if mask & _WRITE else 0))
                for key, mask in ready]


class _Watch:
    """The file events of one open descriptor: an entry of ``Loop._watches``.

    A new _Watch is made, and registered at once, each time a descriptor
    goes from "no handlers" to "some"; when the descriptor is forgotten the
    old one leaves the table and is made dead (``fd = -1``, no handlers), so
    an event of this pass for it finds nothing to call.  ``born`` is the
    loop's poll count at registration: a watch is given no event from a
    poll made before it existed.  ``mask`` is what the poller was last
    told; it catches up with the handlers before the next poll (see
    `Loop._apply_changes`).
    """

    __slots__ = ("fd", "owner", "reader", "reader_args",
                 "writer", "writer_args", "mask", "born")

    def __init__(self, fd: int, owner: Any) -> None:
        self.fd = fd
        self.owner = owner          # the object the handlers were set on
        self.reader: Callable[..., Any] | None = None
        self.reader_args: tuple = ()
        self.writer: Callable[..., Any] | None = None
        self.writer_args: tuple = ()
        self.mask = 0               # what the selector was last told to watch
        self.born = 0               # the loop's poll count when registered

    def wanted(self) -> int:
        """The events the handlers need now."""
        mask = _READ if self.reader is not None else 0
        if self.writer is not None:
            mask |= _WRITE
        return mask


def _default_bgerror(exc: BaseException) -> None:
    print("evloop: error in background callback:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)


class Loop(Timers):
    """A Tcl-style event loop on epoll (``selectors.DefaultSelector`` where
    there is no epoll).

    ``clock`` is the time source for timers (seconds, monotonic); tests pass
    a fake one to make timer ordering exact.  The timer methods
    (``after``, ``after_idle``, ``after_cancel``, ``after_info``) come from
    `evloop.timers.Timers`.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self._selector: Any = _Poller() if hasattr(select, "epoll") else _SelectorPoller()
        self._poll = self._selector.poll
        self._polls = 0         # polls so far: a watch registered since the
                                # last one gets none of its events
        self._clock = clock or time.monotonic
        # A test clock may decide how long the loop really sleeps until a
        # deadline on its own time (trio's Clock.deadline_to_sleep_time), so
        # a timeout test need not wait the timeout out.
        self._sleep_time: Callable[[float], float] = getattr(
            clock, "deadline_to_sleep_time", self._real_sleep_time)
        self._watches: dict[int, _Watch] = {}
        self._changed: set[_Watch] = set()   # watches whose mask is out of date
        self._threadsafe: deque[tuple[Callable[..., Any], tuple]] = deque()
        # The pass in progress (see _run): its stage, the ready events it
        # has not dispatched yet, and the callbacks from other threads it
        # still owes.
        self._events: Iterator[tuple[int, int]] | None = None
        self._threadsafe_due = 0
        self._vwait_hook: Callable[[], Any] | None = None   # see on_vwait
        self._bgerror: Callable[[BaseException], Any] = _default_bgerror
        self._stopping = False
        self._closed = False
        # The self-pipe: another thread (or a signal handler) writes a byte
        # to wake a loop that sleeps in select().
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.fileevent(self._wake_r, "readable", self._drain_wakeups)

    # ---------------------------------------------------------------- files

    def fileevent(self, ch: Any, event: str, callback: Any = _QUERY,
                  *args: Any) -> Callable[..., Any] | None:
        """Set, remove or query the handler for ``event`` on ``ch``.

        ``fileevent(ch, "readable", cb, *args)`` makes ``cb(*args)`` run
        whenever ``ch`` is readable, replacing any earlier handler;
        ``fileevent(ch, "readable", None)`` removes it;
        ``fileevent(ch, "readable")`` returns the current callable or None.
        ``ch`` is a socket, an integer descriptor, or an object that keeps
        its own file events: one with a ``fileevent(event, callback,
        *args)`` method, as `Channel` has, gets the call handed to it (a
        channel decides itself which socket events it needs; its events
        run on the loop it was made with).  ``event`` is ``"readable"`` or
        ``"writable"``.  Raises ValueError for any other event name and for
        a closed channel or socket, TypeError for a handler that is not
        callable, and OSError if the poller refuses the descriptor (a
        regular file, say); nothing is changed then.  (A descriptor the
        loop already watches is told of changes before the next poll; if
        the poller has lost it by then, closed behind the loop's back,
        its handlers are dropped and the OSError goes to bgerror.)

        Remove the handlers of a socket or descriptor before closing it
        yourself, best with `forget` (``Channel.close`` does so).  The loop never lets a reused
        descriptor number inherit the old handlers, but it can't see a close
        behind its back: a socket closed by an earlier handler of the same
        pass still gets the event that pass reported for it.
        """
        kind = type(ch)
        if kind is _SOCKET:
            fd = ch.fileno()
        elif kind is int:
            fd = ch
        elif hasattr(kind, "fileevent"):
            # The object keeps its own events (a Channel): the loop never
            # looks inside it.
            if callback is _QUERY:
                return ch.fileevent(event)
            return ch.fileevent(event, callback, *args)
        else:
            fd = _fileno(ch)
        bit = _EVENTS.get(event)
        if bit is None:
            raise ValueError(f"bad event name {event!r}: must be 'readable' or 'writable'")
        watch = self._watches.get(fd)
        if watch is not None and watch.owner is not ch:
            watch = self._watch_of(ch, fd)       # someone else's: stale?
        if callback is _QUERY:
            if watch is None:
                return None
            return watch.reader if bit == _READ else watch.writer
        if callback is not None:
            if not callable(callback):
                raise TypeError(f"fileevent handler must be callable or None, not {callback!r}")
            if fd < 0:
                raise ValueError("fileevent on a closed socket")
        elif watch is None:
            return None                        # nothing to remove
        if watch is None:
            watch = _Watch(fd, ch)
            if bit == _READ:
                watch.reader, watch.reader_args = callback, args
            else:
                watch.writer, watch.writer_args = callback, args
            self._register(watch)
            return None
        if bit == _READ:
            watch.reader, watch.reader_args = callback, args
        else:
            watch.writer, watch.writer_args = callback, args
        if type(watch.owner) is int and watch.reader is None and watch.writer is None:
            self._forget(fd)                    # see _change
        else:
            self._changed.add(watch)
            if self._new_work is not None:
                self._new_work()
        return None

    def _watch_of(self, ch: Any, fd: int) -> _Watch | None:
        """The watch through which ``ch`` (on descriptor ``fd``) is watched,
        or None.

        A watch made for another object is stale: that object's descriptor
        was closed, its handlers still set, and the number reused by ``ch``.
        It is dropped, so ``ch`` never inherits the old handlers.  An integer
        names whatever is open on that number, so it shares the watch of an
        object that still owns the number.  (A watch made for an integer
        can't tell that its descriptor was closed behind the loop's back:
        remove the handlers of a number before closing it.)
        """
        watch = self._watches.get(fd)
        if watch is None or watch.owner is ch:
            return watch
        if isinstance(ch, int) and _fileno(watch.owner) == fd:
            return watch
        self._forget(fd)
        return None

    def _register(self, watch: _Watch) -> None:
        """Register a new watch with the poller and keep it.

        At once rather than before the next pass, so that a descriptor the
        selector refuses (a regular file) raises OSError from `fileevent`,
        with nothing kept.
        """
        mask = watch.wanted()
        self._selector.register(watch.fd, mask, watch)
        watch.mask = mask
        watch.born = self._polls
        self._watches[watch.fd] = watch

    def _change(self, watch: _Watch) -> None:
        """Note that the handlers of a registered watch changed.

        The poller hears of it once, before the next poll, as in
        Tcl's notifier and libuv: a handler that swaps its writable handler
        for a readable one costs one ``modify`` rather than an unregister
        and a register, and one that sets and removes costs nothing.  Until
        then the poller may report an event that no handler wants any
        more, and the pass finds nothing to call.

        An integer is the exception: it can be closed and its number reused
        before the next pass without the loop knowing (a socket or Channel
        would be a different object), so a watch made for one and left
        without handlers is dropped at once.
        """
        if (watch.reader is None and watch.writer is None
                and isinstance(watch.owner, int)):
            self._forget(watch.fd)
        else:
            self._changed.add(watch)
            if self._new_work is not None:
                self._new_work()

    def _apply_changes(self) -> None:
        """Tell the poller what the changed watches want now; a watch
        that wants nothing is dropped.  A descriptor the poller no longer
        knows (closed behind the loop's back, its handlers still set) is
        dropped too, and the OSError reported."""
        changed = self._changed
        while changed:
            watch = changed.pop()
            if watch.fd < 0:
                continue                         # forgotten since
            mask = watch.wanted()
            if mask == watch.mask:
                continue
            if mask == 0:
                self._forget(watch.fd)
                continue
            try:
                self._selector.modify(watch.fd, mask, watch)
            except OSError as exc:
                self._forget(watch.fd)
                self.report(exc)
                continue
            watch.mask = mask

    def forget(self, ch: Any) -> None:
        """Remove both handlers of ``ch`` at once (Tcl's
        ``Tcl_DeleteFileHandler``).

        For a socket or descriptor the poller lets go of it now, rather
        than before the next poll as ``fileevent(ch, event, None)`` has it:
        call this just before closing a socket yourself, and the close
        costs the kernel no epoll bookkeeping.  An object that keeps its
        own events (a Channel) has both its handlers removed.  Nothing
        happens if ``ch`` has no handlers.
        """
        kind = type(ch)
        if kind is _SOCKET:
            fd = ch.fileno()
        elif kind is int:
            fd = ch
        elif hasattr(kind, "fileevent"):
            ch.fileevent("readable", None)
            ch.fileevent("writable", None)
            return
        else:
            fd = _fileno(ch)
        if fd >= 0:
            self._forget(fd)

    def _forget(self, fd: int) -> None:
        """Remove every handler of ``fd``; call this *before* closing it."""
        watch = self._watches.pop(fd, None)
        if watch is None:
            return
        # An fd closed behind our back: the kernel has dropped it from epoll
        # already (OSError; selectors swallows that, and raises KeyError
        # for an fd it lost on a failed modify).
        try:
            self._selector.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass
        # Dead: a pass in progress that still holds it calls nothing.
        watch.fd = -1
        watch.reader = watch.writer = None

    # ---------------------------------------------------------- other threads

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` in the loop's thread; safe from any thread.

        Also safe from a signal handler.  Wakes the loop if it is sleeping.
        Raises TypeError if ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"call_soon_threadsafe needs a callable, not {callback!r}")
        self._threadsafe.append((callback, args))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass          # the pipe is full: the loop is awake anyway
        except OSError:
            pass          # the loop was closed

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def on_signal(self, signum: int, callback: Callable[..., Any] | None, *args: Any) -> None:
        """Run ``callback(*args)`` in the loop when signal ``signum`` arrives.

        ``callback=None`` restores the default action.  Only from the main
        thread (Python delivers signals there).  Use it to stop ``run()``
        cleanly on SIGTERM or SIGINT: ``loop.on_signal(SIGTERM, loop.stop)``.
        """
        if callback is None:
            _signal.signal(signum, _signal.SIG_DFL if signum != _signal.SIGINT
                           else _signal.default_int_handler)
            return
        _signal.signal(signum, lambda _sig, _frame: self.call_soon_threadsafe(callback, *args))

    # -------------------------------------------------------------- errors

    def bgerror(self, *handler: Any) -> Callable[[BaseException], Any]:
        """Install, restore or query the background-error handler.

        ``bgerror(h)`` installs ``h(exc)`` and returns the previous handler;
        ``bgerror()`` returns the current one; ``bgerror(None)`` restores the
        default, which prints the traceback on stderr.
        """
        previous = self._bgerror
        if handler:
            new = handler[0]
            if new is not None and not callable(new):
                raise TypeError(f"bgerror handler must be callable or None, not {new!r}")
            self._bgerror = new if new is not None else _default_bgerror
        return previous

    def report(self, exc: BaseException) -> None:
        """Hand ``exc`` to the background-error handler, as the loop does
        with an exception from a callback.  Safe even when that handler
        raises: both exceptions are then printed on stderr, and nothing
        propagates to the caller."""
        try:
            self._bgerror(exc)
        except Exception as inner:          # the handler itself failed
            _default_bgerror(exc)
            _default_bgerror(inner)

    # ------------------------------------------------------------ time

    def time(self) -> float:
        """The loop's clock in seconds (monotonic; the clock the loop was
        given, if any).  Timer deadlines are on this clock."""
        return self._clock()

    # ------------------------------------------------------------ embedding

    def backend_fd(self) -> int:
        """A descriptor that becomes readable when the loop has I/O ready
        (libuv's ``uv_backend_fd``): the epoll descriptor on Linux.  A loop
        embedded in another watches it, and calls ``run_once(0)`` when it is
        readable or when `backend_timeout` has passed."""
        return self._selector.fileno()

    def backend_timeout(self) -> float | None:
        """Seconds until the loop has work without I/O (libuv's
        ``uv_backend_timeout``): 0 when it has work now (the rest of a pass
        that ``vwait`` left, callbacks from other threads, idle callbacks,
        a due timer), the time to the nearest timer otherwise, None when
        only I/O can wake it.  Call it just before waiting on `backend_fd`:
        it also hands the selector the handler changes made since the last
        pass, which `run_once` would otherwise do before its own poll."""
        if self._changed:
            self._apply_changes()   # so that backend_fd watches what handlers want
        if self._events is not None or self._threadsafe or self._idle:
            return 0.0
        if not self._heap and not self._incoming:
            return None
        deadline = self._next_deadline()
        if deadline is None:
            return None
        return self._sleep_time(deadline)

    def _real_sleep_time(self, deadline: float) -> float:
        return max(0.0, deadline - self._clock())

    def on_new_work(self, callback: Callable[[], Any] | None) -> Callable[[], Any] | None:
        """Have ``callback()`` called whenever a timer or an idle callback is
        added, or a handler change waits for the next poll; None removes it.
        Returns the previous one.

        For a host loop that runs this one (see `evloop.embed`): work added
        by the host's own code, between two passes, may move
        `backend_timeout` earlier or need a poll before `backend_fd` can
        show it, so the host must service the loop again.  The callback runs
        inside ``after``/``fileevent``: it should only note that a service
        is due.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"on_new_work needs a callable or None, not {callback!r}")
        previous, self._new_work = self._new_work, callback
        return previous

    def on_vwait(self, callback: Callable[[], Any] | None) -> Callable[[], Any] | None:
        """Have ``callback()`` called at the start of every `vwait`; an
        exception it raises comes out of ``vwait`` before anything runs.
        None removes it; returns the previous one.

        For a host loop that runs this one (see `evloop.embed`): a vwait
        would run evloop's passes only and hold the host up, so the
        attachment refuses it while it lasts.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"on_vwait needs a callable or None, not {callback!r}")
        previous, self._vwait_hook = self._vwait_hook, callback
        return previous

    # ------------------------------------------------------------ the pass

    def run_once(self, timeout: float | None = None) -> int:
        """Run one pass of the loop; returns the number of callbacks it ran.

        Waits at most ``timeout`` seconds for an event (None: until one
        comes; 0: not at all).  If a ``vwait`` returned in the middle of a
        pass, this finishes that pass instead, without waiting.
        """
        return self._run(timeout, None, 0)

    def _run(self, timeout: float | None, var: Var | None, version: int) -> int:
        """One pass, or the rest of one; returns the number of callbacks run.

        With ``var``, stops after the first event (see the module notes)
        after which ``var`` is no longer at ``version``.  The rest of the
        pass is kept: ``_events``, the iterator over the ready events not
        dispatched yet (None once step 3 is over), and ``_threadsafe_due``,
        the callbacks of step 5 not run yet; the next call resumes it.  A
        call nested in a handler works through the same pass (Tcl's nested
        loops share one event queue), so after callbacks that may have
        nested, each step checks that the pass is still where it left it.
        """
        ran = 0
        events = self._events
        fresh = events is None and self._threadsafe_due == 0
        if fresh:
            # 1. How long may we sleep?
            if self._threadsafe or self._idle:
                timeout = 0
            elif self._heap or self._incoming:
                deadline = self._next_deadline()
                if deadline is not None:
                    wait = self._sleep_time(deadline)
                    if timeout is None or wait < timeout:
                        timeout = wait
            if timeout is None:
                timeout = -1                # the poller's "no timeout"
            elif timeout > _MAX_SLEEP:
                timeout = _MAX_SLEEP        # epoll takes an int of ms at most
            elif timeout < 0:
                timeout = 0

            # 2. Poll, once the poller knows of the handler changes since
            # the last poll.  (epoll rounds the timeout up to a whole
            # millisecond, so a 0.4 ms wait does not become a busy loop.)
            if self._changed:
                self._apply_changes()
            self._polls += 1
            events = self._events = iter(self._poll(timeout))

        if events is not None:
            # 3. File events, to the watch the table has for each ready
            # descriptor, unless it was registered since the poll (its
            # number was another's when polled); the handlers of one
            # descriptor are one event.
            watches = self._watches
            polls = self._polls
            for fd, bits in events:
                watch = watches.get(fd)
                if watch is None or watch.born == polls:
                    continue
                if bits & _READY_READ and watch.reader is not None:
                    ran += 1
                    try:
                        watch.reader(*watch.reader_args)
                    except Exception as exc:
                        self._handler_failed(watch, _READ, exc)
                if bits & _READY_WRITE and watch.writer is not None:
                    ran += 1
                    try:
                        watch.writer(*watch.writer_args)
                    except Exception as exc:
                        self._handler_failed(watch, _WRITE, exc)
                if var is not None and var._version != version:
                    return ran
            if self._events is not events:
                return ran                  # a nested call went on from here
            self._events = None

            # 4. The timers that are due now: one event.  (Step 5's share is
            # fixed first: a vwait in a timer goes on to it, and the timers
            # left stay due for it.)
            if self._threadsafe:
                self._threadsafe_due = len(self._threadsafe)
            if (self._heap or self._incoming) and self._run_timers():
                ran += 1
                if var is not None and var._version != version:
                    return ran

        if self._threadsafe_due:
            # 5. Callbacks queued by other threads before step 4: one event each.
            queue = self._threadsafe
            while self._threadsafe_due:
                self._threadsafe_due -= 1
                callback, args = queue.popleft()
                ran += 1
                try:
                    callback(*args)
                except Exception as exc:
                    self.report(exc)
                if var is not None and var._version != version:
                    return ran

        # 6. Idle callbacks, one generation, only when nothing else happened.
        if fresh and not ran and self._idle:
            ran = self._run_idle()
        return ran

    def _handler_failed(self, watch: _Watch, bit: int, exc: Exception) -> None:
        """Report the exception of a file-event handler and delete it, as
        Tcl does: it would most likely raise again on the same event, pass
        after pass."""
        if watch.fd >= 0:
            if bit == _READ:
                watch.reader, watch.reader_args = None, ()
            else:
                watch.writer, watch.writer_args = None, ()
            self._change(watch)
        self.report(exc)

    # ----------------------------------------------------- running and waiting

    def run(self) -> None:
        """Run passes until `stop` is called."""
        self._stopping = False
        run = self._run
        while not self._stopping:
            run(None, None, 0)
        self._stopping = False

    def stop(self) -> None:
        """Make `run` return after the current pass; safe from signal handlers."""
        self._stopping = True
        self._wake()

    def vwait(self, var: Var) -> Any:
        """Run the loop until ``var`` is set; return its new value.

        Returns as soon as the event that set it is done, counting events
        as Tcl's ``Tcl_DoOneEvent`` does (see the module notes): what else
        was ready in that pass runs later, so ``vwait(reply)`` followed by
        ``after_cancel(timeout)`` works even when the timeout fell due
        while the reply was read.  Raises what the `on_vwait` hook raises
        (an embedding refuses a vwait that would hold its host up)."""
        if self._vwait_hook is not None:
            self._vwait_hook()
        version = var._version
        run = self._run
        while var._version == version:
            run(None, var, version)
        return var._value

    def update(self, idletasks: bool = False) -> None:
        """Run everything that is ready now, then return; never waits.

        ``idletasks=True`` runs only idle callbacks (Tcl's ``update
        idletasks``).
        """
        if idletasks:
            while self._idle:
                self._run_idle()
            return
        while True:
            resumed = self._events is not None or self._threadsafe_due > 0
            if not self._run(0, None, 0) and not resumed:
                return

    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def close(self) -> None:
        """Release the selector and the wakeup pipe; the loop can't run again."""
        if self._closed:
            return
        self._closed = True
        self._forget(self._wake_r.fileno())
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _fileno(ch: Any) -> int:
    """The descriptor of a socket (or anything with ``fileno()``) or int."""
    if isinstance(ch, int):
        return ch
    try:
        return ch.fileno()
    except AttributeError:
        raise TypeError(f"fileevent needs a Channel, socket or descriptor, not {ch!r}") from None


_local = threading.local()


def get_loop() -> Loop:
    """The calling thread's default loop, made on first use."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.closed():
        loop = _local.loop = Loop()
    return loop


def set_loop(loop: Loop | None) -> Loop | None:
    """Make ``loop`` the calling thread's default (None: forget it); returns
    the previous default (None if there was none), to put back later."""
    previous = getattr(_local, "loop", None)
    _local.loop = loop
    return previous

