"""Embedding: an evloop `Loop` run by asyncio or by Tk, in the same thread.

How an attachment works
-----------------------
A loop that owns the thread (asyncio's ``run_forever``, Tk's ``mainloop``)
can run a guest loop if the guest gives it two things, as libuv does with
``uv_backend_fd`` and ``uv_backend_timeout``: one descriptor that becomes
readable when the guest has I/O ready (`Loop.backend_fd`, evloop's epoll
descriptor: epoll descriptors can themselves be polled), and the time until
the guest has work without I/O (`Loop.backend_timeout`: 0 now, seconds to
the next timer, None for "only I/O").  The host watches the descriptor
(``add_reader``, ``createfilehandler``) and keeps one timer for the
deadline (``call_later``, ``after``).  When either fires, the attachment
*services* the guest:

1. Run passes with ``run_once(0)`` (never blocking) until one finds nothing
   to do.  That empty pass is not wasted: evloop tells epoll of handler
   changes just before it polls (one ``epoll_ctl`` per descriptor per pass),
   so a change a handler made in the last busy pass (a background flush
   that now wants ``writable``) reaches epoll only then, and only then can
   the backend descriptor report it.  This costs one extra ``epoll_wait``
   (with a zero timeout) per service.
2. At most `MAX_PASSES` passes per service: a chain of zero-delay evloop
   timers, or a peer that never stops sending, would otherwise keep the
   host from running anything else.  When the bound is reached the guest
   still has work, and the attachment asks the host to service it again
   "soon" (``call_soon``, ``after 0``): the host first runs what it had
   ready, then comes back.  The reverse holds by construction: the host
   runs a service as one callback among its own, so a busy host delays
   evloop by at most one of its own iterations.
3. Re-arm the host timer from ``backend_timeout()``: None cancels it, 0 is
   "soon" as above, anything else is a timer at that delay.

evloop callbacks run inside ``run_once``, which hands their exceptions to
evloop's ``bgerror``; nothing of evloop's reaches asyncio's exception
handler or Tk's ``report_callback_exception``.

Work added from the host's side
-------------------------------
The host timer is re-armed after each service, from what evloop has then.
A timer, idle callback or handler change that *host* code adds to evloop
between services (an asyncio task calling ``loop.after``, a Tk button
starting a request) would not be seen until some other event woke the
loop, so the attachment asks the loop to tell it (`Loop.on_new_work`) and
then services it "soon", once, however many such calls came.  Work added
by evloop's own callbacks, during a service, needs no such call: the
service re-arms the host timer when its passes are done.

vwait while attached
--------------------
Tcl's ``vwait`` is a nested event loop, and in Tcl it is harmless under Tk
because Tk and fileevent share one notifier.  Here the host's events are
not evloop's: a ``vwait`` would run evloop passes only, and hold the host
(asyncio tasks, Tk redraws) for as long as it waits.  If the variable is set
by host code -- an asyncio task, a Tk button -- it never returns.  So while
a loop is attached, ``loop.vwait`` (and ``evloop.vwait`` on it) raises
RuntimeError at once, whoever calls it; wait for a host future instead
(``await handle.call(...)``), or ``detach()`` first.  A host that has gone
(asyncio loop closed, Tk root destroyed) detaches on the next vwait, which
then runs as usual.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .loop import Loop, get_loop

if TYPE_CHECKING:
    # Imported when used: a program that never embeds does not pay for
    # importing asyncio (tens of milliseconds) or tkinter.
    import asyncio

__all__ = ["attach_asyncio", "attach_tk", "Attachment", "AsyncioAttachment", "TkAttachment",
           "MAX_PASSES"]

#: Passes of the evloop loop per service before the host gets its turn back.
MAX_PASSES = 32

# One attachment per evloop loop: two hosts servicing the same loop would
# each run it inside the other's callbacks.
_attached: weakref.WeakKeyDictionary[Loop, Attachment] = weakref.WeakKeyDictionary()


class Attachment:
    """The link between an evloop loop and the host loop that runs it.

    ``loop`` is the evloop loop; ``attached`` tells whether the link still
    holds; ``detach()`` undoes it; ``wakeup()`` asks the host to service the
    loop soon (after code outside evloop's callbacks added evloop work).
    """

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._attached = True
        self._soon_pending = False
        self._servicing = False
        self._guarded = False
        loop.on_new_work(self._new_work)

    @property
    def attached(self) -> bool:
        """True until `detach` (or until the host is found gone)."""
        if self._attached and self._host_gone():
            self.detach()
        return self._attached

    def detach(self) -> None:
        """Stop servicing the loop from the host.  No evloop callback runs
        from the host after this returns; the loop keeps its handlers and
        timers, and can be run again (``run``, ``vwait``) or attached
        again.  Detaching twice does nothing."""
        if not self._attached:
            return
        self._attached = False
        if _attached.get(self.loop) is self:
            del _attached[self.loop]
        if self._guarded:
            self._guarded = False
            self.loop.on_vwait(None)
        self.loop.on_new_work(None)
        self._unhook()

    def wakeup(self) -> None:
        """Service the loop soon, from the host (coalesced: many calls before
        the host gets round to it cost one service)."""
        if self._attached and not self._soon_pending:
            self._soon_pending = True
            try:
                self._host_soon()
            except Exception:
                self._soon_pending = False
                self.detach()             # the host is gone

    def _new_work(self) -> None:
        """Host code added evloop work between services: service it soon.
        (During a service the re-arm at its end sees the work anyway.)"""
        if not self._servicing:
            self.wakeup()

    # ---------------------------------------------------------- the service

    def _service(self) -> None:
        """Run the loop's work that is ready now, then re-arm the host timer."""
        self._soon_pending = False
        if not self._attached:
            return
        run_once = self.loop.run_once
        self._servicing = True           # work added now is seen below
        try:
            for _ in range(MAX_PASSES):
                if not run_once(0):
                    break
                if not self._attached:
                    return               # a callback detached (or the host went)
            else:
                # Bounded: yield to the host, then go on.
                self.wakeup()
                return
            timeout = self.loop.backend_timeout()
        except Exception as exc:
            # Not a callback's exception (run_once reports those): the loop
            # itself failed, closed under us most likely.  Stop servicing a
            # loop that can't run, and tell evloop's bgerror, not the host.
            self.detach()
            self.loop.report(exc)
            return
        finally:
            self._servicing = False
        try:
            if timeout is None:
                self._host_cancel_timer()
            elif timeout <= 0:
                self._host_cancel_timer()
                self.wakeup()
            else:
                self._host_timer(timeout)
        except Exception:
            self.detach()                # the host refuses timers: it is gone

    def _guard_vwait(self) -> None:
        """Make ``loop.vwait`` refuse while attached (see the module notes)."""
        host = self._host_name

        def refuse() -> None:
            if self.attached:            # (a host found gone detaches here)
                raise RuntimeError(
                    f"vwait() on an evloop loop attached to {host} would hold {host} up "
                    f"(and never return if {host} code is to set the variable): "
                    "await a future or use the host's own wait, or detach() first")

        self.loop.on_vwait(refuse)
        self._guarded = True

    def __repr__(self) -> str:
        state = "attached" if self._attached else "detached"
        return f"<{type(self).__name__} {state} {self.loop!r}>"

    # ------------------------------------------------- what each host provides

    _host_name = "the host loop"

    def _host_gone(self) -> bool:
        raise NotImplementedError

    def _host_soon(self) -> None:
        raise NotImplementedError

    def _host_timer(self, delay: float) -> None:
        raise NotImplementedError

    def _host_cancel_timer(self) -> None:
        raise NotImplementedError

    def _unhook(self) -> None:
        raise NotImplementedError


def _claim(loop: Loop) -> None:
    """Refuse a second attachment of ``loop`` (a dead one is let go)."""
    old = _attached.get(loop)
    if old is not None and old.attached:
        raise RuntimeError(f"this evloop loop is already attached ({old!r}); detach() it first")


# ---------------------------------------------------------------------- asyncio

class AsyncioAttachment(Attachment):
    """An evloop loop serviced by an asyncio loop (see `attach_asyncio`).

    ``aio_loop`` is the asyncio loop.  `call` starts callback-style evloop
    work from a coroutine and returns a future of its callback.
    """

    _host_name = "asyncio"

    def __init__(self, loop: Loop, aio_loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.aio_loop = aio_loop
        self._timer: asyncio.TimerHandle | None = None
        self._fd = loop.backend_fd()
        # The epoll descriptor is level-triggered here: it stays readable
        # while evloop has ready events it has not yet taken.
        aio_loop.add_reader(self._fd, self._service)
        self._guard_vwait()
        _attached[loop] = self
        self.wakeup()                 # whatever was queued before attaching

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Start callback-style evloop work; return a future of its result.

        ``fn(*args, done)`` is called now; ``done(result, error=None)``,
        called later from an evloop callback, settles the future: with
        ``result``, or with the exception ``error`` when it is not None.
        That is the shape of `portalloc.AsyncPortAllocator`'s callbacks
        (``await h.call(alloc.list_ports)``) and fits ``on_done(scanner)``
        of `scanner.Scanner`.  An exception from ``fn`` itself is raised
        here.  Calls after the future is settled (or cancelled) are ignored.
        The loop is serviced as soon as the calling task yields, so the
        timers ``fn`` made are armed in the host.
        """
        fut: asyncio.Future[Any] = self.aio_loop.create_future()

        def done(result: Any = None, error: BaseException | None = None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        fn(*args, done)
        self.wakeup()
        return fut

    def _host_gone(self) -> bool:
        return self.aio_loop.is_closed()

    def _host_soon(self) -> None:
        self.aio_loop.call_soon(self._service)

    def _host_timer(self, delay: float) -> None:
        when = self.aio_loop.time() + delay
        timer = self._timer
        if timer is not None:
            # Keep the timer that is already set for (about) that moment: a
            # ping-pong that re-arms the same far deadline costs nothing.
            if not timer.cancelled() and abs(timer.when() - when) < 0.0005:
                return
            timer.cancel()
        self._timer = self.aio_loop.call_at(when, self._service)

    def _host_cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _unhook(self) -> None:
        self._host_cancel_timer()
        if not self.aio_loop.is_closed():
            self.aio_loop.remove_reader(self._fd)


def attach_asyncio(aio_loop: asyncio.AbstractEventLoop | None = None, *,
                   loop: Loop | None = None) -> AsyncioAttachment:
    """Run the evloop ``loop`` (default: this thread's) inside ``aio_loop``
    (default: the running asyncio loop), in this thread.

    evloop handlers and timers then fire while asyncio runs, and asyncio
    tasks are not held up by evloop work beyond `MAX_PASSES` passes at a
    time.  Returns an `AsyncioAttachment`; ``detach()`` undoes it, and
    closing the asyncio loop undoes it too.  Raises RuntimeError when no
    asyncio loop is given and none is running, or when ``loop`` is already
    attached; NotImplementedError from an asyncio loop without
    ``add_reader`` (Windows' proactor).
    """
    import asyncio
    if aio_loop is None:
        try:
            aio_loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("attach_asyncio() needs aio_loop= when no asyncio loop "
                               "is running in this thread") from None
    if aio_loop.is_closed():
        raise RuntimeError("attach_asyncio(): the asyncio loop is closed")
    loop = loop if loop is not None else get_loop()
    _claim(loop)
    return AsyncioAttachment(loop, aio_loop)


# --------------------------------------------------------------------------- Tk

class TkAttachment(Attachment):
    """An evloop loop serviced by Tk's event loop (see `attach_tk`).

    ``widget`` is the widget given to `attach_tk`; the attachment ends
    when it is destroyed.
    """

    _host_name = "Tk"

    def __init__(self, loop: Loop, widget: Any) -> None:
        super().__init__(loop)
        import tkinter
        self.widget = widget
        self._tk = widget.tk
        self._tcl_error = tkinter.TclError
        self._timer: str | None = None
        self._soon_id: str | None = None
        self._fd = loop.backend_fd()
        self._tk.createfilehandler(self._fd, tkinter.READABLE, self._readable)
        # When the widget goes, so does the attachment: a Tcl timer or file
        # handler must not outlive what it was set up for.  ("+" keeps the
        # application's own <Destroy> bindings.)
        self._path = str(widget)
        self._bind_id: str | None = widget.bind("<Destroy>", self._destroyed, "+")
        self._guard_vwait()
        _attached[loop] = self
        self.wakeup()

    def _readable(self, _fd: int, _mask: int) -> None:
        self._service()

    def _destroyed(self, event: Any) -> None:
        # A toplevel's <Destroy> binding also fires for each child.  By path
        # name: tkinter gives the name alone for a widget it can no longer
        # look up.
        if str(event.widget) == self._path:
            self.detach()

    def _host_gone(self) -> bool:
        try:
            return not self.widget.winfo_exists()
        except self._tcl_error:               # the application is destroyed
            return True

    def _host_soon(self) -> None:
        self._soon_id = self.widget.after(0, self._soon)

    def _soon(self) -> None:
        self._soon_id = None
        self._service()

    def _host_timer(self, delay: float) -> None:
        self._host_cancel_timer()
        # Whole milliseconds, rounded up: waking early would find nothing due.
        self._timer = self.widget.after(max(1, math.ceil(delay * 1000)), self._timed)

    def _timed(self) -> None:
        self._timer = None
        self._service()

    def _host_cancel_timer(self) -> None:
        if self._timer is not None:
            timer, self._timer = self._timer, None
            try:
                self.widget.after_cancel(timer)
            except self._tcl_error:
                pass

    def _unhook(self) -> None:
        self._host_cancel_timer()
        for ident in (self._soon_id,):
            if ident is not None:
                try:
                    self.widget.after_cancel(ident)
                except self._tcl_error:
                    pass
        self._soon_id = None
        self._soon_pending = False
        # Tcl's file handlers belong to the notifier, not to a widget: this
        # works even after the widget is gone.
        self._tk.deletefilehandler(self._fd)
        if self._bind_id is not None:
            bind_id, self._bind_id = self._bind_id, None
            # Our line only: tkinter's unbind(seq, funcid) (before 3.13)
            # removes every binding of the sequence, the program's too.
            try:
                script = self._tk.call("bind", self._path, "<Destroy>")
                kept = "\n".join(line for line in str(script).split("\n") if bind_id not in line)
                self._tk.call("bind", self._path, "<Destroy>", kept)
            except self._tcl_error:
                pass                      # the widget is gone, and its bindings
            try:
                self.widget.deletecommand(bind_id)
            except self._tcl_error:
                pass


def attach_tk(widget: Any, *, loop: Loop | None = None) -> TkAttachment:
    """Run the evloop ``loop`` (default: this thread's) inside Tk's event
    loop (``mainloop``, ``update``, ``wait_variable``), in this thread.

    ``widget`` is any tkinter widget, usually the root; its ``after`` and
    ``createfilehandler`` drive the loop, and destroying it detaches.
    Returns a `TkAttachment`.  Raises RuntimeError when ``loop`` is already
    attached, ``tkinter.TclError`` for a destroyed widget.
    """
    loop = loop if loop is not None else get_loop()
    _claim(loop)
    widget.winfo_exists()          # a destroyed application raises TclError here
    return TkAttachment(loop, widget)
