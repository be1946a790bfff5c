"""The set of TCP ports a port manager hands out.

Shaped after gVisor's ``ports.PortManager``: ``reserve(port)`` takes a given
port or, with 0, picks one; ``release(port)`` gives it back;
``is_available(port)`` asks about one port; ``pick(test)`` walks candidates,
asking the caller's ``test(port)`` whether each suits, and stops at the first
that does.

Two things the original NSCLDAQ ``PortManager.tcl`` did not do:

*Bind probe.*  A pool only knows about its own reservations, but other
programs on the host may already listen on a port in the range.  By default
every candidate is checked with :func:`probe_port`, which binds it on every
address, IPv4 and IPv6, and closes it again; a port that cannot be bound is
skipped.  One socket does it: ``[::]`` with ``IPV6_V6ONLY`` off conflicts
with every IPv4 and every IPv6 socket on the port (on a host without IPv6,
``0.0.0.0`` does for IPv4).  The probe deliberately does *not* set ``SO_REUSEADDR``.
The port goes to an application we know nothing about; one that sets
``SO_REUSEADDR`` (Tcl, asyncio, most servers) could also bind over a
connection of the port's previous user lingering in ``TIME_WAIT``, but one
that does not set it would fail with ``EADDRINUSE``.  Probing without it
answers "can *any* server listen here now?", at the price of skipping a
recently used port for up to a minute, which the release order below makes
rare anyway.  The probe binds without listening: a bind that succeeds and is
closed leaves nothing behind in the kernel.

*Release order.*  The original kept a stack, so a port released by a client
that crashed was handed straight to the next client, which then raced with
stale connections to the old owner.  Here free ports form one queue in
least-recently-released order: it starts in ascending port order, picks
take from its head, a released port joins its tail, and a candidate that
fails the test moves to the tail too, so a port held by an outside program
is not probed first again on every pick.  A released port therefore comes
back only after every other free port has been handed out or tried: the
longest quarantine possible, with no timers, and an order tests can predict.

Every operation is O(1), except that ``pick`` costs one test per candidate
it rejects.  The pool is not thread-safe; the server uses it from its loop.
"""

from __future__ import annotations

import errno
import socket
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["PortPool", "PoolError", "PoolExhausted", "PortUnavailable", "probe_port"]

PortTest = Callable[[int], bool]


class PoolError(Exception):
    """Base of the errors a PortPool raises about ports."""


class PoolExhausted(PoolError):
    """No free port of the pool passed the test.

    Its message is the original server's reason, ``no free ports``, so the
    server can send ``FAIL {no free ports}`` from ``str(exc)``.
    """

    def __init__(self, message: str = "no free ports") -> None:
        super().__init__(message)


class PortUnavailable(PoolError):
    """A specific port was asked for and cannot be had."""


def probe_port(port: int) -> bool:
    """Return True if a TCP server could bind ``port`` on every address now.

    Binds ``[::]:port`` with ``IPV6_V6ONLY`` off, or ``0.0.0.0:port`` where
    the host has no usable IPv6, without ``SO_REUSEADDR`` (see the module
    doc), and closes the socket at once.  A port below 1024 that we may not
    bind counts as unavailable.  Never raises for a busy port; raises
    ValueError for a number that is not a port.
    """
    if not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port!r}")
    bound = _bind_ok(socket.AF_INET6, ("::", port))
    if bound is None:
        bound = _bind_ok(socket.AF_INET, ("0.0.0.0", port))
    return bound is not False       # None: no IP at all, nothing to conflict


# Errors that mean "this host has no such address family", not "port busy".
_NO_FAMILY = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}


def _bind_ok(family: int, address: tuple[str, int]) -> bool | None:
    """Bind a fresh TCP socket of ``family`` to ``address``: True if it
    bound, False if the port is taken, None if the host lacks the family."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in _NO_FAMILY:
            return None
        raise
    with sock:
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
        except OSError as exc:
            if exc.errno in _NO_FAMILY:
                return None
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EPERM):
                return False
            raise
    return True


class PortPool:
    """The ports ``low`` through ``high`` (inclusive), handed out once each.

    ``probe`` is the default test of a candidate (``probe_port``: a real
    bind); ``probe=None`` trusts the pool's own bookkeeping alone.
    """

    def __init__(self, low: int, high: int, *, probe: PortTest | None = probe_port) -> None:
        if not (isinstance(low, int) and isinstance(high, int) and 0 < low <= high < 65536):
            raise ValueError(f"invalid port range {low!r}-{high!r}")
        self.low = low
        self.high = high
        self._probe = probe
        # Free ports in least-recently-released order; an OrderedDict gives
        # O(1) removal of any port, which a deque would not.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(low, high + 1))
        self._reserved: set[int] = set()

    def __repr__(self) -> str:
        return (f"<PortPool {self.low}-{self.high}: "
                f"{len(self._reserved)} reserved, {len(self._free)} free>")

    @property
    def reserved(self) -> frozenset[int]:
        """The ports currently reserved."""
        return frozenset(self._reserved)

    def is_available(self, port: int) -> bool:
        """True if ``port`` is in the range and not reserved.

        Only the pool's own bookkeeping is consulted; no probe is made.
        """
        return port in self._free

    def pick(self, test: PortTest | None = None) -> int:
        """Return the first free port, in release order, that passes ``test``.

        ``test`` defaults to the pool's probe (or to accepting every free
        port when the pool has none).  The port is *not* reserved.  Ports
        that fail move to the back of the queue.  Raises PoolExhausted when
        every free port has been tried.
        """
        if test is None:
            test = self._probe
        for _ in range(len(self._free)):
            port = next(iter(self._free))
            if test is None or test(port):
                return port
            self._free.move_to_end(port)
        raise PoolExhausted()

    def reserve(self, port: int = 0, test: PortTest | None = None) -> int:
        """Reserve ``port``, or with 0 pick one, and return it.

        ``test`` replaces the pool's probe for this call.  Raises
        PoolExhausted when picking finds nothing, PortUnavailable when the
        given port is reserved already or fails the test, and ValueError
        when it is outside the range.
        """
        if port == 0:
            port = self.pick(test)
        else:
            if not self.low <= port <= self.high:
                raise ValueError(f"port {port} is outside the pool's range {self.low}-{self.high}")
            if port in self._reserved:
                raise PortUnavailable(f"port {port} is already reserved")
            check = test if test is not None else self._probe
            if check is not None and not check(port):
                raise PortUnavailable(f"port {port} is in use outside the pool")
        del self._free[port]
        self._reserved.add(port)
        return port

    def release(self, port: int) -> None:
        """Return a reserved ``port`` to the back of the free queue.

        Raises PoolError if it is not reserved.
        """
        try:
            self._reserved.remove(port)
        except KeyError:
            raise PoolError(f"port {port} is not reserved") from None
        self._free[port] = None
