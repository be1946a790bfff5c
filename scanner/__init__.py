"""scanner: an async-connect TCP scanner on evloop.

Every (host, port) is connected with `evloop.open_async`, watched for
``writable`` with a timeout, and classified with ``ch.error()`` -- Tcl's
``fconfigure -error`` -- as ``open``, ``refused``, ``timeout``,
``unreachable`` or ``error``.  Running out of descriptors delays a target;
it never drops or misreports one.

- `scanner.targets`: target and port parsing (base form ``127.0.0``, CIDR,
  ranges, names, IPv6), expanded lazily, any target found by its index.
- `scanner.order`: every (host, port) numbered; the plain order, a seeded
  pseudo-random one, and shards as exact slices of either.
- `scanner.files`: ``-iL`` target files and ``--resume`` result files.
- `scanner.scan`: `Scanner` (inside a running evloop program) and `scan`
  (an iterator of `Result` that drives the loop itself).
- `scanner.cli`: ``python -m scanner`` / ``evscan``.

::

    import scanner

    for r in scanner.scan(["127.0.0.1"], [22, 80], timeout=1.0):
        print(r.host, r.port, r.state, r.detail)
"""

from __future__ import annotations

from .files import read_results_file, read_targets_file
from .order import Order, parse_shard
from .scan import (
                   BANNER_MAX,
                   ERROR,
                   OPEN,
                   REFUSED,
                   STATES,
                   TIMEOUT,
                   UNREACHABLE,
                   Result,
                   Scanner,
                   classify,
                   default_concurrency,
                   scan,
)
from .targets import Targets, parse_ports, parse_targets

__all__ = [
    "scan", "Scanner", "Result", "classify", "default_concurrency",
    "STATES", "OPEN", "REFUSED", "TIMEOUT", "UNREACHABLE", "ERROR",
    "Targets", "parse_targets", "parse_ports", "BANNER_MAX",
    "Order", "parse_shard", "read_results_file", "read_targets_file",
]
