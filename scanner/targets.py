"""Targets and ports for the scanner: parsing, excludes, lazy expansion.

How a target moves from the command line to a (host, port) pair
----------------------------------------------------------------

1. **Parse, all at once, before any socket exists.**  ``Targets(spec,
   exclude)`` splits the spec (a string, or a list of strings, each
   separated by commas and/or whitespace) into tokens and turns each token
   into either an interval of integer addresses ``[lo, hi]`` of one IP
   version, or a :class:`Name`.  Every syntax error raises ``ValueError``
   here, so a scan never starts half-valid.

   ===========================  ==========================================
   ``192.168.0``                the Tcl scan.tcl base form: .1 to .254
   ``10.0.0.0/24``              every address, network and broadcast
                                included (host bits are ignored, as nmap
                                does: ``10.0.0.7/24`` is the same block)
   ``10.0.0.1-40``              last-octet range, both ends included
   ``10.0.0.250-10.0.1.5``      full range, may cross octet boundaries
   ``10.0.0.1``, ``::1``        one address (``[::1]`` is accepted too)
   ``2001:db8::/112``           IPv6 block, at most 65536 addresses
   ``2001:db8::1-2001:db8::ff`` IPv6 range, at most 65536 addresses
   ``example.com``              host name, syntax-checked, resolved later
   ===========================  ==========================================

   IPv6 blocks are capped at :data:`MAX_V6_BLOCK` (2**16, a /112) per
   token: a /64 cannot be scanned exhaustively and is almost always a
   typo for an address.  IPv4 is not capped (a /8 is fine, see 3).
   Scoped IPv6 addresses (``fe80::1%eth0``) are refused.

2. **Excludes are interval arithmetic.**  Included intervals are clipped
   against a sorted list of disjoint intervals (the excludes plus every
   interval included so far), so an address given twice is scanned once,
   at its first position, and excluding a /16 from a /8 costs a few
   integers, never 65536 strings.  Names are matched by name only
   (case-insensitive, trailing dot ignored): excluding ``example.com``
   drops that name, and excluding an address cannot drop a name before it
   is resolved.  After resolving, the scanner may ask
   ``targets.excluded(addr)`` to honour address excludes for names too.

3. **Expansion is lazy.**  A ``Targets`` holds only its intervals and
   names; iterating it yields address strings (and :class:`Name` markers,
   in spec order) one at a time, and may be repeated.  ``len(targets)``
   is the number of items iteration yields: distinct addresses after
   excludes, plus one per distinct name (a name is one target, however
   many addresses it resolves to).  ``Targets("10.0.0.0/8")`` has length
   16777216 and costs a few hundred bytes.

4. **Pairs are interleaved in blocks.**  :func:`iter_pairs` takes up to
   ``block`` hosts (default 256), yields every host with the first port,
   then every host with the second, and so on, then the next block.
   Consecutive connections therefore go to different hosts (kinder to
   each target than host-major order, which would put all of a host's
   ports in flight at once), while every host's results still complete
   within one block, so a per-host report never waits for the end of a
   /8.  ``block=1`` is plain host-major order; a /24 with the default
   block is plain port-major order, as the Tcl script scans.

5. **Names are resolved off the loop.**  ``getaddrinfo`` blocks, for
   seconds when DNS is slow, so a :class:`Name` is handed to a
   :class:`Resolver`, which runs the lookup in a daemon worker thread and
   delivers ``callback(name, addrs, error, *args)`` through ``post`` --
   pass ``loop.call_soon_threadsafe`` and the callback runs on the loop's
   thread.  Results are cached, and concurrent requests for one name share
   one lookup, so a name repeated for every port is resolved once.

Use from the scanner core::

    from scanner.targets import Targets, Name, Resolver, iter_pairs, parse_ports

    targets = Targets(spec, exclude=exclude)       # ValueError: nothing sent
    ports = parse_ports(port_spec)                 # ValueError likewise
    total = len(targets) * len(ports)              # for progress
    pairs = iter_pairs(targets, ports)             # lazy (host, port) pairs
    resolver = Resolver(post=loop.call_soon_threadsafe)

    def refill():                                  # called while below the fd limit
        host, port = next(pairs)                   # StopIteration: all queued
        if isinstance(host, Name):
            resolver.resolve(host, on_resolved, port)
        else:
            connect(host, port)

    def on_resolved(name, addrs, error, port):     # runs on the loop thread
        if error is not None:
            report(str(name), port, "error", error.strerror or str(error))
        elif not targets.excluded(addrs[0]):
            connect(addrs[0], port)                # first address, as nmap does

    # on cancel/finish: resolver.close() -- no callback is posted after it.

Ports (:func:`parse_ports`) keep the order given, first occurrence wins:
the user's order is a statement of priority and costs nothing to keep.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "MAX_V6_BLOCK",
    "Name",
    "Resolver",
    "Targets",
    "iter_pairs",
    "parse_ports",
    "parse_targets",
    "resolve",
]

#: Largest IPv6 block or range one target token may name (a /112).
MAX_V6_BLOCK = 1 << 16

_SPLIT = re.compile(r"[\s,]+")
_BASE_FORM = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


# ---------------------------------------------------------------- ports

def parse_ports(spec: str | int | Iterable[str | int]) -> list[int]:
    """Parse a port specification into a list of distinct ports.

    ``spec`` is an int, a string such as ``"80"``, ``"22,80,443"``,
    ``"8000-8010"`` or a mixture (commas and/or whitespace separate items;
    ``"-1024"`` means 1-1024 and ``"60000-"`` means 60000-65535), or an
    iterable of ints and such strings.

    Returns the ports in the order first given, duplicates dropped.
    Raises ``ValueError`` for port 0, ports above 65535, reversed ranges,
    anything that is not a number or range, and an empty spec; ``TypeError``
    for items that are neither int nor str.
    """
    items: Iterable[str | int]
    if isinstance(spec, (str, int)):
        items = [spec]
    else:
        items = spec
    seen = bytearray(65536)
    out: list[int] = []
    for item in items:
        for lo, hi in _port_ranges(item):
            for p in range(lo, hi + 1):
                if not seen[p]:
                    seen[p] = 1
                    out.append(p)
    if not out:
        raise ValueError(f"no ports given in {spec!r}")
    return out


def _port_ranges(item: str | int) -> Iterator[tuple[int, int]]:
    # bool is an int subclass; True as "port 1" is always a caller's bug.
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        raise TypeError(f"port must be an int or str, not {type(item).__name__}")
    if isinstance(item, int):
        yield _check_port(item, item), _check_port(item, item)
        return
    for tok in _SPLIT.split(item.strip()):
        if not tok:
            continue
        lo_s, dash, hi_s = tok.partition("-")
        if not dash:
            p = _port_number(lo_s, tok)
            yield p, p
            continue
        lo = _port_number(lo_s, tok) if lo_s else 1
        hi = _port_number(hi_s, tok) if hi_s else 65535
        if lo > hi:
            raise ValueError(f"bad port range {tok!r}: reversed ({lo} > {hi})")
        yield lo, hi


def _port_number(text: str, tok: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"bad port {tok!r}: not a number or a range N-M")
    return _check_port(int(text), tok)


def _check_port(p: int, tok: object) -> int:
    if not 1 <= p <= 65535:
        raise ValueError(f"bad port {tok!r}: {p} is not in 1-65535")
    return p


# ---------------------------------------------------------------- targets

@dataclass(frozen=True)
class Name:
    """A host name in a target list, to be resolved by the scanner.

    ``str(name)`` is the name as given.  Iterating :class:`Targets` yields
    ``Name`` objects where the spec had names, never resolved addresses.
    """

    name: str

    def __str__(self) -> str:
        return self.name

    @property
    def key(self) -> str:
        """Comparison key: DNS names are case-insensitive; the root dot is implied."""
        return self.name.rstrip(".").lower()


class _Intervals:
    """Sorted, disjoint, non-adjacent closed intervals of integers."""

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []

    def __contains__(self, x: int) -> bool:
        i = bisect.bisect_right(self._lo, x) - 1
        return i >= 0 and self._hi[i] >= x

    def gaps(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi] not covered, in ascending order."""
        out = []
        cur = lo
        i = bisect.bisect_left(self._hi, lo)    # first interval ending at/after lo
        while i < len(self._lo) and self._lo[i] <= hi:
            if self._lo[i] > cur:
                out.append((cur, self._lo[i] - 1))
            cur = max(cur, self._hi[i] + 1)
            i += 1
        if cur <= hi:
            out.append((cur, hi))
        return out

    def add(self, lo: int, hi: int) -> None:
        """Cover [lo, hi], merging with overlapping or adjacent intervals."""
        i = bisect.bisect_left(self._hi, lo - 1)
        j = bisect.bisect_right(self._lo, hi + 1)
        if i < j:
            lo = min(lo, self._lo[i])
            hi = max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]


class Targets:
    """A parsed, lazily expanded set of scan targets.

    ``Targets(spec, exclude=None)``: ``spec`` and ``exclude`` are each a
    string (items separated by commas and/or whitespace), or an iterable
    of such strings (``ipaddress`` objects and :class:`Name` are accepted
    too); the forms are listed in the module docstring.

    Iterating yields address strings (IPv6 compressed) and :class:`Name`
    markers in spec order, each distinct target once; ``len()`` is how
    many items that is.  Raises ``ValueError`` for a malformed token or an
    empty spec, ``TypeError`` for an item of another type.
    """

    def __init__(self, spec: object, exclude: object = None) -> None:
        self.spec = spec
        self.exclude = exclude
        self._ex = {4: _Intervals(), 6: _Intervals()}
        self._ex_names: set[str] = set()
        if exclude is not None:
            for item in _parse_items(exclude):
                if isinstance(item, Name):
                    self._ex_names.add(item.key)
                else:
                    self._ex[item[0]].add(item[1], item[2])

        items = list(_parse_items(spec))
        if not items:
            raise ValueError(f"no targets given in {spec!r}")
        covered = {4: _Intervals(), 6: _Intervals()}
        for v in (4, 6):
            for lo, hi in zip(self._ex[v]._lo, self._ex[v]._hi):
                covered[v].add(lo, hi)
        seen_names = set(self._ex_names)
        self._segments: list = []     # (version, lo, hi) or Name, in spec order
        self._addresses = 0
        for item in items:
            if isinstance(item, Name):
                if item.key not in seen_names:
                    seen_names.add(item.key)
                    self._segments.append(item)
                continue
            v, lo, hi = item
            for glo, ghi in covered[v].gaps(lo, hi):
                self._segments.append((v, glo, ghi))
                self._addresses += ghi - glo + 1
            covered[v].add(lo, hi)
        self.names: tuple[Name, ...] = tuple(
            s for s in self._segments if isinstance(s, Name))
        #: Items iteration yields: distinct addresses plus distinct names.
        self.count: int = self._addresses + len(self.names)
        # Index of each segment's first item: item i is found by bisection,
        # so any part of a /8 can be had without walking to it.
        self._starts: list[int] = []
        first = 0
        for seg in self._segments:
            self._starts.append(first)
            first += 1 if isinstance(seg, Name) else seg[2] - seg[1] + 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str | Name]:
        return self.items(0, self.count)

    def __getitem__(self, i: int) -> str | Name:
        """Item ``i`` of the iteration order (negative counts from the end),
        found without iterating; IndexError outside it."""
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"target index {i} out of range")
        j = bisect.bisect_right(self._starts, i) - 1
        seg = self._segments[j]
        if isinstance(seg, Name):
            return seg
        n = seg[1] + i - self._starts[j]
        if seg[0] == 4:
            return socket.inet_ntoa(n.to_bytes(4, "big"))
        return str(ipaddress.IPv6Address(n))

    def items(self, start: int, stop: int) -> Iterator[str | Name]:
        """Items ``start`` to ``stop - 1`` of the iteration order, lazily
        (the first found by bisection, the rest by walking)."""
        start, stop = max(0, start), min(stop, self.count)
        if start >= stop:
            return
        j = bisect.bisect_right(self._starts, start) - 1
        left = stop - start
        skip = start - self._starts[j]
        ntoa = socket.inet_ntoa
        for seg in self._segments[j:]:
            if isinstance(seg, Name):
                yield seg
                left -= 1
            else:
                lo = seg[1] + skip
                hi = min(seg[2] + 1, lo + left)
                left -= hi - lo
                if seg[0] == 4:
                    for n in range(lo, hi):
                        yield ntoa(n.to_bytes(4, "big"))
                else:
                    for n in range(lo, hi):
                        yield str(ipaddress.IPv6Address(n))
            skip = 0
            if left <= 0:
                return

    @property
    def addresses(self) -> int:
        """Number of distinct addresses (names not counted)."""
        return self._addresses

    def __contains__(self, target: object) -> bool:
        """True if iteration yields ``target`` (an address string or a name)."""
        if isinstance(target, Name):
            return any(n.key == target.key for n in self.names)
        try:
            ip = ipaddress.ip_address(str(target).strip("[]"))
        except ValueError:
            return any(n.key == str(target).rstrip(".").lower() for n in self.names)
        n = int(ip)
        return any(not isinstance(s, Name) and s[0] == ip.version and s[1] <= n <= s[2]
                   for s in self._segments)

    def excluded(self, target: str | Name) -> bool:
        """True if ``target`` (an address string or a name) matches an exclude.

        Meant for addresses a :class:`Name` resolved to, which the excludes
        could not see at parse time.
        """
        if isinstance(target, Name):
            return target.key in self._ex_names
        try:
            ip = ipaddress.ip_address(str(target).strip("[]"))
        except ValueError:
            return str(target).rstrip(".").lower() in self._ex_names
        return int(ip) in self._ex[ip.version]

    def __repr__(self) -> str:
        ex = f", exclude={self.exclude!r}" if self.exclude is not None else ""
        return f"Targets({self.spec!r}{ex}) <{self.count} targets>"


def parse_targets(spec: object, exclude: object = None) -> Targets:
    """Same as ``Targets(spec, exclude)``; see :class:`Targets`."""
    return Targets(spec, exclude)


def _parse_items(spec: object) -> Iterator[tuple[int, int, int] | Name]:
    if isinstance(spec, (str, Name)) or isinstance(
            spec, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                   ipaddress.IPv4Network, ipaddress.IPv6Network)):
        spec = [spec]
    for entry in spec:  # type: ignore[attr-defined]
        if isinstance(entry, (Name, ipaddress.IPv4Address, ipaddress.IPv6Address,
                              ipaddress.IPv4Network, ipaddress.IPv6Network)):
            entry = str(entry)
        if not isinstance(entry, str):
            raise TypeError(f"target must be a str, not {type(entry).__name__}")
        for tok in _SPLIT.split(entry.strip()):
            if tok:
                yield _parse_token(tok)


def _parse_token(tok: str) -> tuple[int, int, int] | Name:
    """One token -> (version, lo, hi) or Name; ValueError when malformed."""
    if "%" in tok:
        raise ValueError(f"bad target {tok!r}: scoped IPv6 addresses are not supported")
    if "/" in tok:
        try:
            net = ipaddress.ip_network(tok.strip("[]"), strict=False)
        except ValueError as e:
            raise ValueError(f"bad target {tok!r}: not an address/prefix ({e})") from None
        return _span(tok, net.version, int(net.network_address), int(net.broadcast_address))

    left, dash, right = tok.partition("-")
    first = _literal(left.strip("[]")) if dash else None
    if first is not None:
        if right.isascii() and right.isdigit() and first.version == 4:
            last_octet = int(right)
            if last_octet > 255:
                raise ValueError(f"bad target {tok!r}: range end {last_octet} is not 0-255")
            end = (int(first) & ~0xFF) | last_octet
        else:
            last = _literal(right.strip("[]"))
            if last is None:
                raise ValueError(f"bad target {tok!r}: range end {right!r} is not an address"
                                 " (or, for IPv4, a last octet)")
            if last.version != first.version:
                raise ValueError(f"bad target {tok!r}: range mixes IPv4 and IPv6")
            end = int(last)
        if end < int(first):
            last_s = (ipaddress.IPv4Address(end) if first.version == 4
                      else ipaddress.IPv6Address(end))
            raise ValueError(f"bad target {tok!r}: range is reversed ({first} > {last_s})")
        return _span(tok, first.version, int(first), end)

    m = _BASE_FORM.match(tok)
    if m:
        octets = [_octet(o, tok) for o in m.groups()]
        base = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8)
        return 4, base | 1, base | 254

    ip = _literal(tok.strip("[]") if tok.startswith("[") else tok)
    if ip is not None:
        n = int(ip)
        return ip.version, n, n
    return Name(_check_name(tok))


def _span(tok: str, version: int, lo: int, hi: int) -> tuple[int, int, int]:
    size = hi - lo + 1
    if version == 6 and size > MAX_V6_BLOCK:
        # Blocks are powers of two; 2**64 reads better than 20 digits.
        shown = f"2**{size.bit_length() - 1}" if size & (size - 1) == 0 else str(size)
        raise ValueError(f"bad target {tok!r}: {shown} IPv6 addresses; at most"
                         f" {MAX_V6_BLOCK} (a /112) per target")
    return version, lo, hi


def _literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _octet(text: str, tok: str) -> int:
    # Leading zeros are refused for the same reason ipaddress refuses them:
    # inet_aton reads 010 as octal 8.
    if len(text) > 1 and text[0] == "0" or int(text) > 255:
        raise ValueError(f"bad target {tok!r}: {text!r} is not an octet 0-255")
    return int(text)


def _check_name(tok: str) -> str:
    """Syntax-check a host name (RFC 1123 labels); return it unchanged."""
    bad = (f"bad target {tok!r}: not an IPv4/IPv6 address, CIDR block, range,"
           " base form a.b.c, or host name")
    try:
        # IDNs travel as their ASCII (punycode) form; the original is kept.
        ascii_name = tok.encode("idna").decode("ascii") if not tok.isascii() else tok
    except UnicodeError:
        raise ValueError(bad) from None
    labels = ascii_name[:-1].split(".") if ascii_name.endswith(".") else ascii_name.split(".")
    if len(ascii_name.rstrip(".")) > 253 or not all(_LABEL.match(lb) for lb in labels):
        raise ValueError(bad)
    # A top-level domain is never all digits (RFC 3696 2) and in practice
    # always has a letter: 10.0, 256.1.1.1, 1.2.3.4.5 and 10.0.0-2 are
    # mistyped addresses, not names.
    if not any(c.isalpha() for c in labels[-1]):
        raise ValueError(bad)
    return tok


# ---------------------------------------------------------------- pairs

def iter_pairs(targets: Targets | object, ports: str | int | Iterable[str | int],
               *, block: int = 256) -> Iterator[tuple[str | Name, int]]:
    """Yield every (host, port) pair lazily, interleaved in blocks of hosts.

    ``targets`` is a :class:`Targets` or anything ``Targets()`` accepts;
    ``ports`` anything :func:`parse_ports` accepts.  Hosts are taken
    ``block`` at a time; within a block the order is port-major (every
    host with the first port, then every host with the second, ...).
    ``block=1`` gives host-major order.  ``host`` is an address string or
    a :class:`Name` for the scanner to resolve.  Bad targets, ports or
    ``block`` raise ``ValueError`` from this call, not from the first
    ``next()``.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, not {block}")
    if not isinstance(targets, Targets):
        targets = Targets(targets)
    return _pairs(targets, parse_ports(ports), block)


def _pairs(targets: Targets, ports: list[int],
           block: int) -> Iterator[tuple[str | Name, int]]:
    hosts = iter(targets)
    while chunk := list(itertools.islice(hosts, block)):
        for port in ports:
            for host in chunk:
                yield host, port


# ---------------------------------------------------------------- names

def _is_invalid_tld(name: str) -> bool:
    # RFC 6761 6.4: APIs SHOULD answer names under .invalid negatively at
    # once, without asking DNS.  That also keeps such lookups off the wire.
    return name.rstrip(".").lower().rsplit(".", 1)[-1] == "invalid"


def _lookup(name: str, family: int,
            getaddrinfo: Callable[..., list]) -> list[str]:
    if _is_invalid_tld(name):
        raise socket.gaierror(socket.EAI_NONAME, f"{name}: name under .invalid (RFC 6761)")
    infos = getaddrinfo(name, None, family, socket.SOCK_STREAM)
    addrs = list(dict.fromkeys(info[4][0] for info in infos))
    if not addrs:
        raise socket.gaierror(socket.EAI_NONAME, f"{name}: no addresses")
    return addrs


def resolve(name: str | Name, family: int = 0) -> list[str]:
    """Resolve a host name now, blocking; return its distinct addresses.

    The order is getaddrinfo's (RFC 6724 preference).  ``family`` is
    ``socket.AF_INET``, ``AF_INET6`` or 0 for both.  Raises ``OSError``
    (``socket.gaierror``) when the name does not resolve.  Names under
    ``.invalid`` fail at once without a DNS query.  Never call this on an
    event loop's thread; use :class:`Resolver`.
    """
    return _lookup(str(name), family, socket.getaddrinfo)


class Resolver:
    """Resolve names in worker threads; deliver results through ``post``.

    ``Resolver(post=None, workers=4, family=0)``.  ``post(fn, *args)``
    must arrange for ``fn(*args)`` to be called, typically on an event
    loop's thread: pass ``evloop``'s ``loop.call_soon_threadsafe``.  With
    ``post=None`` a callback runs at once in whichever thread has the
    answer (a worker, or the caller of ``resolve()`` for a cached one);
    that suits scripts and tests, not an event loop.

    Workers are daemon threads started on demand (a lookup stuck in DNS
    must not keep the process alive at exit).  A thread keeps the network
    namespace it was started in: under ``testnet.inside()`` create the
    Resolver's first lookups inside the block, or resolve before.
    """

    def __init__(self, post: Callable[..., object] | None = None, workers: int = 4,
                 family: int = 0, *, getaddrinfo: Callable[..., list] | None = None) -> None:
        self._post = post if post is not None else (lambda fn, *a: fn(*a))
        self._max_workers = max(1, workers)
        self._family = family
        # getaddrinfo is injectable so tests can simulate DNS failure offline.
        self._getaddrinfo = getaddrinfo or socket.getaddrinfo
        self._lock = threading.Lock()
        self._work: deque[str] = deque()
        self._wake = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._cache: dict[str, tuple[list[str] | None, OSError | None]] = {}
        self._waiting: dict[str, list[tuple[Name, Callable[..., object], tuple]]] = {}
        self._closed = False

    def resolve(self, name: str | Name, callback: Callable[..., object], *args: object) -> None:
        """Look up ``name``; later, ``post(callback, name, addrs, error, *args)``.

        ``name`` is passed back as a :class:`Name`; exactly one of
        ``addrs`` (a non-empty list of address strings) and ``error`` (an
        ``OSError``) is ``None``.  Unless ``post`` is ``None``, the callback
        is never called from inside ``resolve()``, even for a cached
        answer.  Answers, failures included, are cached for the life of
        the Resolver (one scan).  No callback runs after
        :meth:`close` returns (when ``post`` runs callbacks on the thread
        that calls ``close()``, as ``call_soon_threadsafe`` does), and
        ``resolve()`` then raises ``RuntimeError``.
        """
        n = name if isinstance(name, Name) else Name(name)
        with self._lock:
            if self._closed:
                raise RuntimeError("Resolver is closed")
            cached = self._cache.get(n.key)
            if cached is None:
                waiters = self._waiting.get(n.key)
                if waiters is not None:         # a lookup is already running
                    waiters.append((n, callback, args))
                    return
                self._waiting[n.key] = [(n, callback, args)]
                self._work.append(n.name)
                if self._idle == 0 and len(self._threads) < self._max_workers:
                    t = threading.Thread(target=self._worker, daemon=True,
                                         name=f"resolver-{len(self._threads)}")
                    self._threads.append(t)
                    t.start()
                self._wake.notify()
                return
        self._post(self._deliver, callback, n, cached[0], cached[1], args)

    def _deliver(self, callback: Callable[..., object], name: Name,
                 addrs: list[str] | None, error: OSError | None, args: tuple) -> None:
        # Checked where the callback runs, so close() on the loop thread
        # also stops deliveries that were posted just before it.
        if not self._closed:
            callback(name, addrs, error, *args)

    def close(self) -> None:
        """Stop: pending callbacks are dropped and idle workers exit."""
        with self._lock:
            self._closed = True
            self._work.clear()
            self._waiting.clear()
            self._wake.notify_all()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _worker(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                while not self._work and not self._closed:
                    self._wake.wait()
                self._idle -= 1
                if self._closed:
                    return
                name = self._work.popleft()
            addrs: list[str] | None = None
            error: OSError | None = None
            try:
                addrs = _lookup(name, self._family, self._getaddrinfo)
            except OSError as e:
                error = e
            except Exception as e:           # e.g. UnicodeError from the idna codec
                error = OSError(f"{name}: {e}")
            key = name.rstrip(".").lower()
            with self._lock:
                if self._closed:
                    return
                self._cache[key] = (addrs, error)
                waiters = self._waiting.pop(key, [])
            for n, cb, args in waiters:
                self._post(self._deliver, cb, n, addrs, error, args)
