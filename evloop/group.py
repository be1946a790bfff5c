"""Watch groups: many sockets watched through one descriptor of the loop.

Why a group
-----------
A program that starts thousands of short-lived connects (a scanner, a
health checker, a crawler's connect stage) pays the loop's per-descriptor
bookkeeping for each: a handler record, a registration with the loop's
selector, a change noted and applied before the next poll, a dispatch
through the channel's own handler.  For a socket that is watched once and
then closed, that bookkeeping costs about as much as the connect itself.

A `WatchGroup` is libuv's and Tcl's "one more notifier under the notifier"
in a few lines: on Linux it is an epoll descriptor of its own (epoll
descriptors nest: the group's descriptor polls readable while any member
is ready).  The loop sees that one descriptor, through its public
``fileevent``, as it sees any other; the members are registered with the
group's epoll directly, one ``epoll_ctl`` each, and when the group's
descriptor is readable the group polls it without waiting and calls its
callback once with everything that is ready: a list of ``(key, event)``,
the key each member was added with and the event it was added for.

Kernel facts this leans on:

- epoll reports an error or a hang-up whether or not it was asked, so a
  member added for ``"writable"`` whose connect failed is reported as
  ``"writable"`` (as the loop itself does), and ``ch.error()`` says why.
- Closing a socket removes it from every epoll set, once the last
  descriptor of the socket is closed: a member that is closed is dropped
  from the group by the kernel, with no call, and gets no more events.  Its
  key stays in the group's table (not the kernel's) until the number is
  added again or the group closes, so it costs memory bounded by the
  descriptor limit, never a wrong event.  (A member ``dup()``ed elsewhere
  stays registered while the duplicate is open: `discard` it first.)
- Keys are looked up when the group polls, before the callback runs: a
  member the callback closes, and a new member that gets the same
  descriptor number, never exchange events.  Members added during the
  callback are not in the batch it was given.
- The group's epoll is level-triggered: a member that stays ready (a
  connected socket stays writable) is reported on every pass until it is
  discarded or closed.  Up to 1024 members are reported per call; if more
  are ready, the group's descriptor stays readable and the next pass of
  the loop brings the rest.

What a member is: anything with ``fileno()`` -- a `Channel`, a socket.  The
group watches the descriptor itself, below any channel buffering: for a
`Channel`, "readable" means the socket has input, not that the channel's
buffer holds some, and the channel's own handlers are not involved (its
background flush keeps working through the loop).  That is what a connect
probe, or a wait for a peer's first bytes, needs.

Elsewhere (no ``select.epoll``, or no descriptor left for one) the group
falls back to one ``fileevent`` per member on the loop, with the same
callback and batches of one: the API works everywhere, only the cost
differs.  In the fallback the group's handler *is* the member's handler
for that event (``loop.fileevent(ch, event)`` returns it), and
``nested`` is False.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from .loop import Loop, get_loop

__all__ = ["WatchGroup"]

_EPOLL: Any = getattr(select, "epoll", None)
_MASKS = {"readable": getattr(select, "EPOLLIN", 1),
          "writable": getattr(select, "EPOLLOUT", 4)}
# Events read per poll (epoll_wait's maxevents).  More than this ready at
# once: the group's descriptor stays readable and the loop calls again.
_MAX_EVENTS = 1024


class WatchGroup:
    """Sockets and channels watched through one descriptor of the loop.

    ``WatchGroup(callback, loop=None, *, nested=True)``: ``callback(ready)``
    runs once per readiness of the group, ``ready`` a list of ``(key,
    event)`` for the members that are ready (see `add`).  An exception in
    it goes to the loop's ``bgerror`` handler and the group goes on.
    ``loop`` defaults to the calling thread's loop.  ``nested=False`` asks
    for the per-member fallback even where epoll exists (``nested`` tells
    which one the group got).  See the module notes for what the kernel
    does and for the fallback.
    """

    __slots__ = ("_callback", "_loop", "_ep", "_register", "_modify", "_poll",
                 "_members", "_closed")

    def __init__(self, callback: Callable[[list[tuple[Any, str]]], Any],
                 loop: Loop | None = None, *, nested: bool = True) -> None:
        if not callable(callback):
            raise TypeError(f"WatchGroup callback must be callable, not {callback!r}")
        self._callback = callback
        self._loop = loop if loop is not None else get_loop()
        self._closed = False
        # Descriptor -> (key, event); in the fallback, -> (member, key, event).
        self._members: dict[int, tuple] = {}
        self._ep: Any = None
        if nested and _EPOLL is not None:
            try:
                self._ep = _EPOLL()
            except OSError:
                self._ep = None         # no descriptor for it: per member
        if self._ep is not None:
            self._register = self._ep.register
            self._modify = self._ep.modify
            self._poll = self._ep.poll
            self._loop.fileevent(self._ep.fileno(), "readable", self._on_ready)

    def __repr__(self) -> str:
        how = "closed" if self._closed else "nested" if self._ep is not None else "fallback"
        return f"<WatchGroup {how}, {len(self._members)} members>"

    @property
    def nested(self) -> bool:
        """True when the members are watched through an epoll of the
        group's own; False in the per-member fallback (or once closed)."""
        return self._ep is not None

    def fileno(self) -> int:
        """The group's own descriptor (-1 in the fallback or once closed)."""
        return self._ep.fileno() if self._ep is not None else -1

    def add(self, ch: Any, event: str, key: Any) -> None:
        """Watch ``ch`` (a `Channel`, a socket: anything with ``fileno()``)
        for ``event``, ``"readable"`` or ``"writable"``; ``key`` is what the
        callback will be given for it.  Adding a member again replaces its
        event and key.  Raises ValueError for a bad event name, a closed
        member or a closed group; OSError if the kernel refuses the
        descriptor (a regular file)."""
        mask = _MASKS.get(event)
        if mask is None:
            raise ValueError(f"bad event name {event!r}: must be 'readable' or 'writable'")
        if self._closed:
            raise ValueError("add to a closed WatchGroup")
        fd = ch.fileno()
        if fd < 0:
            raise ValueError("add of a closed channel or socket")
        if self._ep is None:
            self._add_fallback(ch, fd, event, key)
            return
        try:
            self._register(fd, mask)
        except FileExistsError:
            # Added before (or a member closed while a dup of it lives on).
            self._modify(fd, mask)
        self._members[fd] = (key, event)

    def discard(self, ch: Any) -> None:
        """Stop watching ``ch``; nothing happens if it is not a member (or
        is closed: the kernel dropped it then)."""
        fd = ch.fileno()
        if fd < 0:
            return
        entry = self._members.pop(fd, None)
        if entry is None:
            return
        if self._ep is not None:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass                    # closed and its number reused
        elif entry[0] is ch:
            self._loop.fileevent(ch, entry[2], None)

    def close(self) -> None:
        """Stop watching every member (they stay open) and give the group's
        descriptor back.  No callback follows.  Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        members, self._members = self._members, {}
        if self._ep is not None:
            ep, self._ep = self._ep, None
            self._loop.forget(ep.fileno())
            ep.close()
            return
        for member, _, event in members.values():
            if member.fileno() >= 0:
                self._loop.fileevent(member, event, None)

    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    # ------------------------------------------------------------ dispatch

    def _on_ready(self) -> None:
        """The group's descriptor is readable: hand what is ready to the
        callback, keys looked up now (see the module notes)."""
        if self._closed:
            return
        get = self._members.get
        ready = [entry for fd, _ in self._poll(0, _MAX_EVENTS)
                 if (entry := get(fd)) is not None]
        if ready:
            self._call(ready)

    def _call(self, ready: list) -> None:
        # The loop deletes a handler that raises; the group's handler must
        # survive a callback that does.
        try:
            self._callback(ready)
        except Exception as exc:
            self._loop.report(exc)

    def _add_fallback(self, ch: Any, fd: int, event: str, key: Any) -> None:
        old = self._members.get(fd)
        if old is not None and old[0] is ch and old[2] != event:
            self._loop.fileevent(ch, old[2], None)
        self._loop.fileevent(ch, event, self._on_member, key, event)
        self._members[fd] = (ch, key, event)

    def _on_member(self, key: Any, event: str) -> None:
        if not self._closed:
            self._call([(key, event)])
