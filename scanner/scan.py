"""The scanner core: connect to every (host, port) at once, within limits.

How a target moves from queued to classified
--------------------------------------------
A scan starts from a `Targets` and a port list, both parsed before anything
is sent (a bad one raises ``ValueError``, as does any other bad argument).
Nothing is expanded up front: an `Order` (``scanner.order``) numbers every
pair and hands out this scan's share of them -- all, or one shard; in the
plain order or a seeded pseudo-random one -- one ``(host, port)`` at a
time, so a /8 costs what its in-flight connections cost, never a list of
sixteen million.  A pair in ``skip`` (a resumed scan) is dropped as it
comes out and no longer counted in ``total``.

*Queued.*  A pair waits in that lazy iterator, or -- if it was tried once
and the kernel had no room for it, or it is the address a host name
resolved to, or the rate limit held it back -- at the front of a small
``ready`` deque, which is always served first, so such a pair keeps its
place in line.

*Rate.*  With ``rate``, connects follow a virtual schedule on the loop's
clock (GCRA): the next may start once ``loop.time()`` reaches its due
time, less a 10 ms tolerance for a timer that woke late; when it is not
yet due, one timer brings the scan back then.

*Slots.*  At most ``concurrency`` pairs are between "taken from the queue"
and "classified" at any moment.  The default is the soft ``RLIMIT_NOFILE``
minus some descriptors left for the rest of the program, capped at
`MAX_CONCURRENCY`.  The limit is also learnt: when ``open_async`` raises
EMFILE, ENFILE, ENOBUFS, ENOMEM or EAGAIN (no descriptor, no memory, no
local port: "could not try", which says nothing about the target), the pair
goes back to the front of the queue, the limit drops to the number of
connections in flight, and each completion frees a slot for it again.  The
limit creeps back up as results come in, in case the shortage was someone
else's.  EADDRNOTAVAIL (no free local port towards that destination) is
kept on the channel by ``open_async`` and read at ``writable``; it is
handled the same way.  If nothing at all is in flight, a short ``after``
tries again; a shortage that lasts a second of loop time with nothing in
flight will not end by itself (the program's own descriptors fill the
limit), and the scan stops: ``failure`` holds the OSError, ``on_done``
runs, `scan` raises it.  So running out of descriptors delays a target; it
never drops or misreports one, and never spins.

*Host names* take a slot while a worker thread resolves them (`Resolver`,
results come back through ``loop.call_soon_threadsafe``; each name is looked
up once per scan).  The first address is then queued at the front; a name
that does not resolve is classified ``error`` at once, and an address that
an ``exclude`` names is dropped from the total.

*In flight.*  ``evloop.open_async`` makes the socket and starts the connect
(Tcl's ``socket -async``).  Two things then watch it: the scan's
``evloop.WatchGroup`` (for ``writable``) and a timeout.  The group is one
descriptor of the loop (on Linux an epoll of its own, each probe one
``epoll_ctl`` in it), so thousands of probes cost the loop nothing per
probe, and closing a probe's channel drops it from the group in the
kernel.  Whichever comes first takes the pair out of the in-flight table
and closes the channel, so each pair is classified exactly once.
Connects that fail at once (an unreachable, prohibit or blackhole route; a
broadcast address) do not raise: the channel keeps the errno and the
socket still polls writable, so both ways of failing are one path here.

*Timeouts* are shared.  Every connect has the same timeout, so they expire
in the order they started.  The connects started in one pass of the loop
form a *batch*; when the pass ends (an ``after 0``) the batch gets one
``after(timeout)`` timer, and when it fires, every pair of that batch still
in flight has timed out.  The in-flight table is a dict in start order, so
those pairs are at its front.  A connect thus waits at least the timeout,
and at most one pass longer; a /16 needs a few dozen timers instead of
65536 that are nearly all cancelled.

*Classified.*  On ``writable``, ``ch.error()`` -- Tcl's ``fconfigure
-error``, read exactly once -- decides: ``None`` is ``open`` (the detail is
``ch.peername()``; so is ECONNRESET or EPIPE: the peer accepted and reset
before we looked, and only a completed handshake can be reset),
ECONNREFUSED is ``refused``, EHOSTUNREACH, ENETUNREACH,
EACCES and EPERM are ``unreachable``, anything else (EINVAL from a
blackhole route, ...) is ``error`` with the OS message.  On a loopback or
LAN refusal, ``connect()`` returns EINPROGRESS with ``SO_ERROR`` already
set, and the event arrives on the next poll: nothing may read ``SO_ERROR``
before the writable handler, or a refused port reads as open.  When its
batch's timer fires first the pair is a ``timeout`` -- unless the kernel already
holds an error for the socket (an ICMPv6 unreachable is kept as a soft
error until the SYN is retried), which is then the answer.

*Banner.*  With ``banner``, an open connection keeps its slot: the channel
turns binary, its ``writable`` handler makes way for a ``readable`` one, and
what the peer sends first is collected until `BANNER_MAX` bytes, end of
file (or a reset), or ``banner_timeout``; the result then carries it.

*Reported.*  The `Result` goes to ``on_result``; the counters (``done``,
``total``, ``counts``) are updated before, so a progress display called
from there is exact.  The freed slot is refilled at once.  When the queue
is empty and nothing is in flight, ``on_done`` runs once.  ``cancel()``
closes whatever is in flight; no ``on_result`` follows it.

`scan` wraps a `Scanner` in a generator that drives the loop itself
(``run_once``) and yields results as they come, so the first line of a /16
appears in milliseconds.

The per-target path allocates a Channel, an in-flight entry (keyed by the
channel), the group's entry for it and a Result, and makes no closure; a
refusal or an unreachable host is counted and reported without a further
call when there is nothing to settle.  Where the time goes, on a loopback
/16 (callgrind, user-space instructions per target): about 15k in the
system calls' Python wrappers that a bare socket+epoll loop pays too, 10k
in evloop (the Channel, the OSError that ``error()`` returns, the calls),
5k numbering the pairs (`Order`), 11k in the scanner's bookkeeping and
the group, 4k handing out results; the bare loop spends about 21k in all.
The kernel's share (socket, connect, epoll_ctl, close) is the same for
both and is most of the wall time.
"""

from __future__ import annotations

import errno
import math
import resource
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import evloop
from evloop import Channel, Loop, TimerId, WatchGroup

from .files import pair_key
from .order import Order, parse_shard
from .targets import Name, Resolver, Targets, parse_ports

__all__ = [
    "Result", "Scanner", "scan", "classify", "default_concurrency",
    "STATES", "OPEN", "REFUSED", "TIMEOUT", "UNREACHABLE", "ERROR",
    "MAX_CONCURRENCY", "BANNER_MAX",
]

OPEN, REFUSED, TIMEOUT, UNREACHABLE, ERROR = (
    "open", "refused", "timeout", "unreachable", "error")
#: The five states, in the order summaries list them.
STATES = (OPEN, REFUSED, TIMEOUT, UNREACHABLE, ERROR)

#: Upper bound of the default concurrency.  On loopback a /16 runs as fast
#: at 256 as at 4096 (the cost is per connect, not per connection in
#: flight); silent hosts need many in flight, and 4096 keeps a /16 of them
#: at 16 timeouts.
MAX_CONCURRENCY = 4096
# Descriptors left to the rest of the program (stdio, the loop's epoll and
# wakeup pair, the resolver, a log file, a listener of the caller's ...).
_HEADROOM = 32
# With nothing in flight and no descriptor to be had, try again this soon.
_RETRY_MS = 20
# Connects started per loop pass while filling the slots from a timer.
_BATCH = 256
# After a shortage, one more slot per this many results.
_REGROW_EVERY = 8

# open_async raises these when it could not even try: no descriptor, no
# memory, no local port.  They say nothing about the target.  EADDRNOTAVAIL
# (no free local port for this destination) is kept on the channel by
# today's open_async and comes through ch.error(); it is handled alike.
_NO_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                           errno.ENOMEM, errno.EAGAIN, errno.EADDRNOTAVAIL})
# With nothing of the scan in flight, a shortage that lasts this long (loop
# time) is not going to end by itself: the scan stops (Scanner.failure).
_STARVED_SECONDS = 1.0
# A connection reset (or a write to one that was) exists only after a
# completed handshake: the port is open.  A refused SYN reads ECONNREFUSED.
_AFTER_CONNECT = frozenset({errno.ECONNRESET, errno.EPIPE})
#: Bytes of a banner kept at most.
BANNER_MAX = 256
# How early a connect may start under a rate limit (seconds): a timer wakes
# the loop a little late, and the connects owed by then start at once.
# Without it the lateness of every wakeup would be lost, and 5000/s would
# come out near 1000/s (one connect per millisecond tick).
_RATE_TOLERANCE = 0.01
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.EACCES, errno.EPERM})


_new_tuple = tuple.__new__


class Result(NamedTuple):
    """One classified (host, port).

    ``host`` is the address connected to (for a name that did not resolve,
    the name); ``state`` one of `STATES`; ``detail`` the peer name
    (``host:port``) for ``open``, the OS message otherwise; ``name`` the
    host name the address came from, or None for an address target;
    ``banner`` what an open port said first (a scan with ``banner=True``;
    up to `BANNER_MAX` bytes, decoded as UTF-8 with other bytes as ``\\xNN``
    escapes), else None.
    """

    host: str
    port: int
    state: str
    detail: str
    name: str | None = None
    banner: str | None = None


def classify(error: OSError | None) -> str:
    """The state for what ``ch.error()`` returned after a connect.

    None is ``open``, and so are ECONNRESET and EPIPE (only a completed
    handshake can be reset); ECONNREFUSED is ``refused``; EHOSTUNREACH,
    ENETUNREACH, EACCES, EPERM ``unreachable``; any other error ``error``.
    """
    if error is None:
        return OPEN
    code = error.errno
    if code == errno.ECONNREFUSED:
        return REFUSED
    if code in _UNREACHABLE:
        return UNREACHABLE
    if code in _AFTER_CONNECT:
        return OPEN
    return ERROR


# Errors whose errno alone is the answer (no peer name, no banner, no retry).
_FINAL: dict[int | None, str] = {errno.ECONNREFUSED: REFUSED,
          **dict.fromkeys(_UNREACHABLE, UNREACHABLE)}


def _not_started(ch: Channel, event: str, key: Channel) -> None:
    raise RuntimeError("Scanner not started")


def default_concurrency() -> int:
    """Connections in flight by default: the soft RLIMIT_NOFILE less some
    headroom, at least 1, at most `MAX_CONCURRENCY`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONCURRENCY
    headroom = _HEADROOM if soft > 4 * _HEADROOM else soft // 4
    return max(1, min(MAX_CONCURRENCY, soft - headroom))


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listed(spec: Any) -> list:
    if spec is None:
        return []
    if isinstance(spec, (str, Name)) or not isinstance(spec, Iterable):
        return [spec]
    return list(spec)


def _message(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return float(value)


class Scanner:
    """A scan that runs inside an evloop program.

    ``Scanner(targets, ports, timeout=2.0, concurrency=None, loop=None,
    on_result=None, on_done=None, exclude=None, *, rate=None, shard=None,
    randomize=False, seed=None, skip=None, banner=False,
    banner_timeout=1.0)``: ``targets`` is a `Targets` or anything it
    accepts (``exclude`` likewise), ``ports`` anything `parse_ports`
    accepts; ``timeout`` in seconds per connect; ``concurrency``
    connections in flight at most (default: `default_concurrency`).
    ``rate``: at most this many connects started per second.  ``shard``:
    ``(i, n)`` or ``"i/n"``, scan only the i-th of n disjoint slices of the
    pairs (`scanner.order`).  ``randomize``: visit the pairs in a
    pseudo-random order chosen by ``seed`` (an int; required with more
    than one shard, so every shard uses the same order).  ``skip``: (host,
    port) pairs not to scan (they are not counted in ``total`` once
    met).  ``banner``: read what an open port says first, up to
    `BANNER_MAX` bytes within ``banner_timeout`` seconds, into
    ``Result.banner``.

    ``on_result(result)`` runs for each `Result`; ``on_done(scanner)``
    once, after the last result -- or from ``cancel()``, or when the scan
    stops for lack of sockets (``failure`` then holds the OSError).  An
    exception in a callback goes to the loop's ``bgerror`` handler; the
    scan goes on.  Every timeout, the rate and ``elapsed`` are on the
    loop's clock (``loop.time()``).

    Progress: ``total`` (pairs to classify), ``done``, ``skipped``,
    ``counts`` (per state), ``in_flight``, ``elapsed``; ``finished``,
    ``cancelled`` and ``failure``.  Raises ValueError (nothing is sent)
    for bad targets, ports or any other argument.
    """

    def __init__(self, targets: Any, ports: Any, timeout: float = 2.0,
                 concurrency: int | None = None, loop: Loop | None = None,
                 on_result: Callable[[Result], Any] | None = None,
                 on_done: Callable[[Scanner], Any] | None = None,
                 exclude: Any = None, *, rate: float | None = None,
                 shard: Any = None, randomize: bool = False, seed: int | None = None,
                 skip: Iterable[tuple[str, int]] | None = None,
                 banner: bool = False, banner_timeout: float = 1.0) -> None:
        if not isinstance(targets, Targets):
            targets = Targets(targets, exclude=exclude)
        elif exclude is not None:
            targets = Targets(targets.spec, exclude=_listed(targets.exclude) + _listed(exclude))
        ports = parse_ports(ports)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if concurrency is None:
            concurrency = default_concurrency()
        elif isinstance(concurrency, bool) or not isinstance(concurrency, int) \
                or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if rate is not None:
            rate = _positive("rate", rate)
        banner_timeout = _positive("banner_timeout", banner_timeout)
        shard = (0, 1) if shard is None else parse_shard(shard)
        if randomize and shard[1] > 1 and seed is None:
            raise ValueError("a randomized scan in shards needs a seed, the same for every shard")
        self.order = Order(targets, ports, shard, bool(randomize), seed)
        self._skip: set[tuple[str, int]] | None = None
        if skip is not None:
            self._skip = {pair_key(str(h), int(p)) for h, p in skip} or None
        self.targets = targets
        self.ports = ports
        self.timeout = float(timeout)
        self.concurrency = concurrency
        self.rate = rate
        self.shard: tuple[int, int] = shard
        self.randomize = bool(randomize)
        self.seed = self.order.seed
        self.banner = bool(banner)
        self.banner_timeout = banner_timeout
        self.loop = loop if loop is not None else evloop.get_loop()
        self.on_result = on_result
        self.on_done = on_done

        self.total = len(self.order)
        self.done = 0
        self.skipped = 0             # pairs of skip met (and not counted)
        self.excluded = 0            # resolved addresses dropped by an exclude
        self.counts = dict.fromkeys(STATES, 0)
        self.finished = False
        self.cancelled = False
        self.failure: OSError | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

        self._pairs = iter(self.order)
        self._ready: deque[tuple[str, int, str | None]] = deque()
        self._exhausted = False
        # In start order: channel -> (batch, host, port, name).
        self._flight: dict[Channel, tuple[int, str, int, str | None]] = {}
        # Watches the probes (see "In flight" in the module notes); each
        # probe's key is its channel, as in _flight.  Made by start().
        self._group: WatchGroup | None = None
        self._add: Callable[[Channel, str, Channel], None] = _not_started
        self._batch = 0              # the batch connects started now join
        self._sealing: TimerId | None = None   # ends the open batch this pass
        self._expiries: deque[TimerId] = deque()   # one per sealed batch
        # Open connections whose banner is being read: channel -> [host,
        # port, name, detail, bytes so far, timer].
        self._banners: dict[Channel, list] = {}
        self._busy = 0               # slots taken: connects, names, banners
        self._limit = concurrency    # lowered by a descriptor shortage
        self._credit = 0
        self._filling = False
        self._kick: TimerId | None = None
        self._starved_since: float | None = None
        self._resolver: Resolver | None = None
        self._timeout_ms = self.timeout * 1000.0
        # The rate limit as a virtual schedule (GCRA): a connect may start
        # once the clock reaches _due less the tolerance; each start moves
        # _due one interval on from max(_due, now).
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._tolerance = _RATE_TOLERANCE
        self._due = -math.inf

    # ------------------------------------------------------------ public

    @property
    def in_flight(self) -> int:
        """Targets taken from the queue and not yet classified."""
        return self._busy

    @property
    def elapsed(self) -> float:
        """Seconds since `start` on the loop's clock (until the end, once
        finished)."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else self.loop.time()
        return end - self.started_at

    def start(self) -> Scanner:
        """Begin; returns at once (the first connects run from the loop)."""
        if self.started_at is not None:
            raise RuntimeError("Scanner already started")
        self.started_at = self.loop.time()
        self._group = WatchGroup(self._on_ready, self.loop)
        self._add = self._group.add
        self._kick = self.loop.after(0, self._refill)
        return self

    def cancel(self) -> None:
        """Stop: close the connections in flight, drop the queue.

        No ``on_result`` follows; ``on_done`` runs now if it has not yet.
        Cancelling a finished scan does nothing.
        """
        if self.finished:
            return
        self.cancelled = True
        self._stop()

    def _stop(self) -> None:
        loop = self.loop
        loop.after_cancel(self._kick)
        for ch in self._flight:
            ch.close(force=True)
        self._flight.clear()
        for ch, entry in self._banners.items():
            loop.after_cancel(entry[5])
            ch.close(force=True)
        self._banners.clear()
        if self._resolver is not None:
            self._resolver.close()
        self._ready.clear()
        self._busy = 0
        self._finish()

    # ---------------------------------------------------------- the queue

    def _refill(self) -> None:
        """Timer entry point: the start, after a shortage with nothing in
        flight, and when the rate limit allows the next connect.  Starts at
        most `_BATCH` connects, then lets the loop poll (so the first
        results come while the slots are still being filled) and comes
        back."""
        self._kick = None
        if self._limit < 1:
            self._limit = 1
        self._fill(self._busy + _BATCH)
        if (self._kick is None and not self.finished and self._busy < self._limit
                and (self._ready or not self._exhausted)):
            self._kick = self.loop.after(0, self._refill)

    def _fill(self, upto: int | None = None) -> None:
        """Start connects until the slots are full (or ``upto`` are busy),
        the rate limit says wait, or the queue is empty; finish when
        nothing is left anywhere."""
        if self._filling or self.finished:
            return
        self._filling = True
        ready = self._ready
        skip = self._skip
        pairs = self._pairs
        connect = self._connect
        limit = self._limit if upto is None else min(upto, self._limit)
        try:
            while self._busy < limit:
                if ready:
                    host, port, name = ready.popleft()
                elif self._exhausted:
                    break
                else:
                    pair = next(pairs, None)
                    if pair is None:
                        self._exhausted = True
                        break
                    target, port = pair
                    if type(target) is Name:
                        if skip is not None and (target.key, port) in skip:
                            self._skip_one()
                        else:
                            self._resolve(target, port)
                        continue
                    host = target   # type: ignore[assignment]
                    if skip is not None and (host, port) in skip:
                        self._skip_one()
                        continue
                    name = None
                if self._interval and self._throttled():
                    ready.appendleft((host, port, name))
                    break
                if not connect(host, port, name):
                    break                   # out of descriptors, or finished
        finally:
            self._filling = False
        if self._busy == 0 and not self.finished:
            if ready:
                if self._kick is None:          # nothing will free a slot
                    self._kick = self.loop.after(_RETRY_MS, self._refill)
            elif self._exhausted:
                self._finish()

    def _throttled(self) -> bool:
        """True (and a timer set for the moment it ends) if the rate limit
        does not allow a connect now."""
        now = self.loop.time()
        due = self._due
        # A microsecond of slack: a timer's deadline is a whole millisecond
        # tick, and tick / 1000 may come out a hair short of ``due`` in
        # floating point.  Without the slack a clock that jumps to deadlines
        # (a test's) would wake, find itself short, and set a timer for the
        # same tick again, for ever.
        if now >= due - self._tolerance - 1e-6:
            return False
        if self._kick is None:
            self._kick = self.loop.after((due - self._tolerance - now) * 1000.0, self._refill)
        return True

    def _skip_one(self) -> None:
        self.total -= 1
        self.skipped += 1

    def _connect(self, host: str, port: int, name: str | None) -> bool:
        """Start one connect; False if the kernel had no room for it (the
        limit is then lowered) or the scan finished meanwhile."""
        loop = self.loop
        try:
            ch = evloop.open_async(host, port, loop)
        except OSError as exc:
            if exc.errno in _NO_RESOURCES:
                self._no_room(host, port, name, exc)
                return False
            # No socket for this address at all (EAFNOSUPPORT: no IPv6 here).
            self._busy += 1
            self._complete(host, port, ERROR, _message(exc), name)
            return not self.finished        # on_result may have cancelled
        self._busy += 1
        if self._interval:
            now = loop.time()
            self._due = (self._due if self._due > now else now) + self._interval
        if self._sealing is None:
            self._sealing = loop.after(0, self._seal)
        self._flight[ch] = (self._batch, host, port, name)
        self._add(ch, "writable", ch)
        return True

    def _no_room(self, host: str, port: int, name: str | None, exc: OSError) -> None:
        """The kernel had no descriptor, memory or local port for a connect:
        the pair goes back to the front of the queue and the limit drops to
        what is in flight.  With nothing in flight, only a retry after a
        moment can help, and a shortage that outlasts `_STARVED_SECONDS`
        stops the scan (``failure``) instead of retrying for ever."""
        self._ready.appendleft((host, port, name))
        self._limit = self._busy        # what fits; 0 waits for _refill
        self._credit = 0
        if self._busy == 0:
            now = self.loop.time()
            if self._starved_since is None:
                self._starved_since = now
            elif now - self._starved_since >= _STARVED_SECONDS:
                self.failure = exc
                self._stop()

    def _resolve(self, name: Name, port: int) -> None:
        if self._resolver is None:
            # Made on first use, on the loop's thread: its workers start
            # here, in this thread's network namespace.
            self._resolver = Resolver(post=self.loop.call_soon_threadsafe)
        self._busy += 1
        self._resolver.resolve(name, self._on_resolved, port)

    def _on_resolved(self, name: Name, addrs: list[str] | None,
                     error: OSError | None, port: int) -> None:
        if self.finished:
            return
        if error is not None or not addrs:
            self._complete(str(name), port, ERROR,
                           _message(error) if error else "no address", str(name))
            self._fill()
            return
        self._busy -= 1
        if self.targets.excluded(addrs[0]):
            self.total -= 1
            self.excluded += 1
        elif self._skip is not None and pair_key(addrs[0], port) in self._skip:
            self._skip_one()
        else:
            self._ready.appendleft((addrs[0], port, str(name)))
        self._fill()

    # ------------------------------------------------------- classifying

    def _on_ready(self, ready: list[tuple[Channel, str]]) -> None:
        """The group's callback: classify every connect that ended, then
        refill the slots once.  (The keys are channels, not descriptor
        numbers: a probe classified earlier in the batch, or timed out,
        is simply no longer in flight.)"""
        pop = self._flight.pop
        classify_one = self._classify
        complete = self._complete
        final = _FINAL.get
        counts = self.counts
        on_result = self.on_result
        ended = 0
        for ch, _ in ready:
            entry = pop(ch, None)
            if entry is None:
                continue
            ended += 1
            _, host, port, name = entry
            err = ch.error()
            if err is None or (state := final(err.errno)) is None:
                classify_one(ch, err, host, port, name)
            else:
                # The usual case on a subnet (refused, unreachable): the
                # errno alone decides.
                ch.close()          # nothing was written: nothing to drain
                if self._starved_since is None and self._limit >= self.concurrency:
                    # _complete with nothing to settle: the counters, then
                    # the result (no banner for a closed port).
                    self._busy -= 1
                    self.done += 1
                    counts[state] += 1
                    if on_result is not None:
                        try:
                            on_result(_new_tuple(Result, (host, port, state,
                                                          err.strerror or str(err), name, None)))
                        except Exception as exc:
                            self.loop.report(exc)
                else:
                    complete(host, port, state, err.strerror or str(err), name)
            if self.finished:
                return
        self._fill(self._busy + 2 * ended)  # replace them, and grow

    def _classify(self, ch: Channel, err: OSError | None, host: str, port: int,
                  name: str | None) -> None:
        """The connect of ``ch`` ended with ``err`` (what ``ch.error()``
        said): report it (or, for an open port with ``banner``, go on to
        read the banner; for a local shortage, queue the pair again).
        Starts no connect."""
        if err is None or err.errno in _AFTER_CONNECT:
            try:
                detail = _hostport(*ch.peername())
            except OSError:
                # Connected, then reset before we asked: it was open.
                detail = _hostport(host, port)
            if self.banner and err is None:
                self._read_banner(ch, host, port, name, detail)
                return
            state = OPEN
        elif err.errno in _NO_RESOURCES:
            # connect() found no free local port (EADDRNOTAVAIL): nothing
            # was sent; the pair waits like one that found no descriptor.
            ch.close(force=True)
            self._busy -= 1
            self._no_room(host, port, name, err)
            return
        else:
            state = classify(err)
            detail = _message(err)
        ch.close(force=True)        # also leaves the group (the kernel's doing)
        self._complete(host, port, state, detail, name)

    def _read_banner(self, ch: Channel, host: str, port: int, name: str | None,
                     detail: str) -> None:
        """Keep an open connection (and its slot) to read what the peer
        says first, until `BANNER_MAX` bytes, end of file or the banner
        timeout."""
        loop = self.loop
        if self._group is not None:
            self._group.discard(ch)
        ch.configure(translation="binary")
        timer = loop.after(self.banner_timeout * 1000.0, self._banner_over, ch)
        self._banners[ch] = [host, port, name, detail, bytearray(), timer]
        loop.fileevent(ch, "readable", self._on_banner, ch)

    def _on_banner(self, ch: Channel) -> None:
        buf = self._banners[ch][4]
        try:
            data = ch.read(BANNER_MAX - len(buf))
            ended = ch.eof()
        except OSError:             # reset while reading: still open
            data, ended = b"", True
        buf += data  # bytes: the channel is binary
        if ended or len(buf) >= BANNER_MAX:
            self._banner_over(ch)

    def _banner_over(self, ch: Channel) -> None:
        entry = self._banners.pop(ch, None)
        if entry is None:
            return
        host, port, name, detail, buf, timer = entry
        self.loop.after_cancel(timer)
        ch.close(force=True)
        self._complete(host, port, OPEN, detail, name,
                       bytes(buf[:BANNER_MAX]).decode("utf-8", "backslashreplace"))
        self._fill(self._busy + 2)

    def _seal(self) -> None:
        """End of the pass: the batch of connects started in it gets its timer."""
        self._sealing = None
        self._expiries.append(self.loop.after(self._timeout_ms, self._expire, self._batch))
        self._batch += 1

    def _expire(self, batch: int) -> None:
        """The timeout of ``batch``: its pairs still in flight timed out."""
        self._expiries.popleft()
        expired = []
        for ch, entry in self._flight.items():      # oldest first
            if entry[0] > batch:
                break
            expired.append(ch)
        for ch in expired:
            _, host, port, name = self._flight.pop(ch)
            # An ICMP error the kernel keeps as a soft error (IPv6 host
            # unreachable during the SYN) is already in SO_ERROR: it is the
            # better answer.  A connect still in progress reads None.
            err = ch.error()
            ch.close(force=True)
            if err is None:
                self._complete(host, port, TIMEOUT, f"no answer within {self.timeout:g} s", name)
            else:
                self._complete(host, port, classify(err), _message(err), name)
            if self.finished:               # cancelled from on_result
                return
        self._fill()

    def _complete(self, host: str, port: int, state: str, detail: str,
                  name: str | None, banner: str | None = None) -> None:
        """Count one result and hand it to ``on_result``."""
        if self._starved_since is not None:     # a connect got somewhere
            self._starved_since = None
        self._busy -= 1
        self.done += 1
        self.counts[state] += 1
        if self._limit < self.concurrency:
            self._credit += 1
            if self._credit >= _REGROW_EVERY:
                self._credit = 0
                self._limit += 1
        if self.on_result is not None:
            if banner is None and self.banner and state == OPEN:
                banner = ""
            try:
                # tuple.__new__: the NamedTuple's own __new__ is Python code.
                self.on_result(_new_tuple(Result, (host, port, state, detail, name, banner)))
            except Exception as exc:
                self.loop.report(exc)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.finished_at = self.loop.time()
        if self._group is not None:
            self._group.close()
        self.loop.after_cancel(self._sealing)
        self.loop.after_cancel(self._kick)
        for timer in self._expiries:
            self.loop.after_cancel(timer)
        self._expiries.clear()
        if self._resolver is not None:
            self._resolver.close()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception as exc:
                self.loop.report(exc)

    def __repr__(self) -> str:
        state = ("cancelled" if self.cancelled else "failed" if self.failure is not None
                 else "finished" if self.finished
                 else "running" if self.started_at is not None else "new")
        return (f"<Scanner {state} {self.done}/{self.total} done,"
                f" {self._busy} in flight>")


def scan(targets: Any, ports: Any, timeout: float = 2.0,
         concurrency: int | None = None, loop: Loop | None = None,
         *, exclude: Any = None, **options: Any) -> Iterator[Result]:
    """Scan every (host, port); yield each `Result` as it is classified.

    Arguments as for `Scanner` (``rate``, ``shard``, ``randomize``,
    ``seed``, ``skip``, ``banner``, ``banner_timeout`` as keywords).  Bad
    arguments raise ValueError here, before any connection.  The returned
    iterator drives ``loop`` (default: the thread's loop) while it waits,
    so other handlers on that loop keep running; nothing is sent until the
    first ``next()``.  Closing the iterator early (``break``, an exception,
    Ctrl-C) cancels the scan and closes its sockets.  When not even one
    socket can be had with nothing in flight (a descriptor limit too low
    for the program itself), the iterator raises that OSError after the
    results it has.
    """
    results: deque[Result] = deque()
    scanner = Scanner(targets, ports, timeout, concurrency, loop,
                      on_result=results.append, exclude=exclude, **options)
    return _drive(scanner, results)


def _drive(scanner: Scanner, results: deque[Result]) -> Iterator[Result]:
    run_once = scanner.loop.run_once
    pop = results.popleft
    scanner.start()
    try:
        while True:
            while results:
                yield pop()
            if scanner.finished:
                if scanner.failure is not None:
                    raise scanner.failure
                return
            run_once()
    finally:
        scanner.cancel()
