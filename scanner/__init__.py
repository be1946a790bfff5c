"""scanner: an async-connect TCP scanner on evloop.

Every (host, port) is connected with `evloop.open_async`, watched for
``writable`` with a timeout, and classified with ``ch.error()`` -- Tcl's
``fconfigure -error`` -- as ``open``, ``refused``, ``timeout``,
``unreachable`` or ``error``.  Running out of descriptors delays a target;
it never drops or misreports one.

- `scanner.targets`: target and port parsing (base form ``127.0.0``, CIDR,
  ranges, names, IPv6), expanded lazily.
- `scanner.scan`: `Scanner` (inside a running evloop program) and `scan`
  (an iterator of `Result` that drives the loop itself).
- `scanner.cli`: ``python -m scanner`` / ``evscan``.

::

    import scanner

    for r in scanner.scan(["127.0.0.1"], [22, 80], timeout=1.0):
        print(r.host, r.port, r.state, r.detail)
"""

from __future__ import annotations

from .scan import (
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
    "Targets", "parse_targets", "parse_ports",
]
