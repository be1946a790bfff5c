"""The order of a scan: every (host, port) pair numbered, permuted, sharded.

The index space
---------------
A scan of ``H`` targets (a `Targets`, in its order) and ``P`` ports has
``T = H * P`` pairs, numbered ``0 .. T-1`` in the plain order that
`scanner.targets.iter_pairs` walks: blocks of 256 hosts, port-major within
a block (every host of the block with the first port, then with the second,
...).  `pair_at` turns a number into its pair by arithmetic and one
bisection in the targets, so nothing is ever listed: a /8 times 100 ports
costs a few integers.

Randomized order
----------------
``randomize=True`` visits position ``q`` (``0 <= q < T``) as pair
``perm(q)``, where ``perm`` is a bijection of ``[0, T)`` drawn from the
seed.  It is built as format-preserving encryption builds one: a bijection
``F`` of ``[0, 2**m)`` (the smallest power of two >= T) made of steps that
are each invertible on m-bit numbers -- multiply by an odd constant, add a
constant (both modulo ``2**m``), xor with a right shift of itself --
applied again to any value that lands at or above ``T`` ("cycle walking";
since ``2**m < 2T``, fewer than two steps on average).  Walking the cycle of
a bijection from a point inside ``[0, T)`` must come back inside it, so the
result is again a bijection.  Consecutive positions land far apart, so no
subnet or host gets a burst, as in zmap.

Why not zmap's own construction: zmap walks the multiplicative group
modulo a prime ``p > T`` (``x -> g*x mod p``), dropping values >= T.  That
is cheaper per step but sequential: how many dropped values a stretch of
the cycle holds is not known without walking it, so a shard of zmap's
order is of unknown size.  A bijection with random access makes a shard an
exact slice of positions, its size known before the first connect, the same
on every machine given the same seed, in constant memory.

Shards
------
Shard ``i`` of ``n`` is positions ``[i*T//n, (i+1)*T//n)`` of the order
(plain or randomized): the ``n`` shards are disjoint, cover every pair, and
differ in size by at most one.  Every machine computes its slice alone; the
only thing they must share is the command line (and, with ``randomize``,
the seed).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from .targets import Name, Targets

__all__ = ["Order", "parse_shard"]

# Hosts per block of the plain order (see scanner.targets.iter_pairs).
BLOCK = 256
# Steps of the mixing bijection; three rounds of multiply-add-xorshift
# spread neighbouring positions over the whole space.
_ROUNDS = 3


def parse_shard(spec: object) -> tuple[int, int]:
    """``"I/N"`` or an ``(i, n)`` pair -> ``(i, n)`` with ``0 <= i < n``.

    Raises ValueError for anything else (``"3/3"``, ``"1/0"``, ``"a/b"``).
    """
    if isinstance(spec, str):
        i_s, slash, n_s = spec.partition("/")
        if not slash or not (i_s.strip().isdigit() and n_s.strip().isdigit()):
            raise ValueError(f"bad shard {spec!r}: must be I/N with 0 <= I < N")
        i, n = int(i_s), int(n_s)
    else:
        try:
            i, n = spec  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(f"bad shard {spec!r}: must be (i, n) with 0 <= i < n") from None
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (i, n)):
            raise ValueError(f"bad shard {spec!r}: i and n must be integers")
    if not 0 <= i < n:
        raise ValueError(f"bad shard {i}/{n}: must be I/N with 0 <= I < N")
    return i, n


class Order:
    """The pairs one scan (or one shard of it) visits, in order, lazily.

    ``Order(targets, ports, shard=(0, 1), randomize=False, seed=None)``:
    ``targets`` a `Targets`, ``ports`` a list of ints.  ``len()`` is the
    number of pairs of this shard; iterating yields ``(host, port)`` with
    ``host`` an address string or a `Name`.  ``seed`` (any int; None: a
    random one, kept in ``.seed``) chooses the randomized order; the same
    seed gives the same order everywhere.
    """

    def __init__(self, targets: Targets, ports: Sequence[int],
                 shard: tuple[int, int] = (0, 1), randomize: bool = False,
                 seed: int | None = None) -> None:
        i, n = parse_shard(shard)
        self.targets = targets
        self.ports = list(ports)
        self.total = len(targets) * len(self.ports)     # the whole scan
        self.shard = (i, n)
        self.start = i * self.total // n
        self.stop = (i + 1) * self.total // n
        self.randomize = bool(randomize)
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 63)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, not {seed!r}")
        self.seed = seed
        self._bits = max(1, (self.total - 1).bit_length())
        rng = random.Random(seed)
        mask = (1 << self._bits) - 1
        shift = max(1, (self._bits + 1) // 2)
        self._steps = [(rng.getrandbits(self._bits) | 1, rng.getrandbits(self._bits), shift)
                       for _ in range(_ROUNDS)]
        self._mask = mask

    def __len__(self) -> int:
        return self.stop - self.start

    def pair_at(self, k: int) -> tuple[str | Name, int]:
        """Pair number ``k`` (0 <= k < total) of the plain order."""
        nports = len(self.ports)
        hosts = len(self.targets)
        size = BLOCK * nports
        full = hosts // BLOCK
        if k < full * size:
            block, off = divmod(k, size)
            width = BLOCK
        else:
            block, off = full, k - full * size
            width = hosts - full * BLOCK
        port_i, host_i = divmod(off, width)
        return self.targets[block * BLOCK + host_i], self.ports[port_i]

    def permute(self, q: int) -> int:
        """The pair number visited at position ``q`` of the randomized order."""
        total, mask = self.total, self._mask
        x = q
        while True:
            for mul, add, shift in self._steps:
                x = (x * mul + add) & mask
                x ^= x >> shift
            if x < total:
                return x

    def __iter__(self) -> Iterator[tuple[str | Name, int]]:
        if self.randomize:
            return self._randomized()
        return self._plain(self.start, self.stop)

    def _randomized(self) -> Iterator[tuple[str | Name, int]]:
        permute, pair_at = self.permute, self.pair_at
        for q in range(self.start, self.stop):
            yield pair_at(permute(q))

    def _plain(self, start: int, stop: int) -> Iterator[tuple[str | Name, int]]:
        """Positions ``start`` to ``stop - 1`` of the plain order, a block of
        hosts at a time (listed once per block, not looked up per pair)."""
        ports, targets = self.ports, self.targets
        nports, hosts = len(ports), len(targets)
        full = hosts // BLOCK
        k = start
        while k < stop:
            if k < full * BLOCK * nports:
                block, off = divmod(k, BLOCK * nports)
                first, width = block * BLOCK, BLOCK
            else:
                first, off = full * BLOCK, k - full * BLOCK * nports
                width = hosts - first
            chunk = list(targets.items(first, first + width))
            end = min(stop, k + width * nports - off)
            port_i, host_i = divmod(off, width)
            left = end - k
            while left > 0:
                port = ports[port_i]
                part = chunk[host_i:host_i + left]
                for host in part:
                    yield host, port
                left -= len(part)
                port_i += 1
                host_i = 0
            k = end
