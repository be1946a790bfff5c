"""portalloc: the NSCLDAQ TCP port manager, wire-compatible with the original.

A local server asks the manager for a port to listen on (``GIMME``), holds
it as long as its connection to the manager lives, and loses it the moment
that connection drops.  Anyone may ask which ports are in use (``LIST``).

Modules, in the order a newcomer might read them:

- `portalloc.protocol`: Tcl list quoting, as tclsh does it (the wire format).
- `portalloc.pool`: `PortPool`, the ports a manager hands out (bind probe,
  least-recently-released order).
- `portalloc.server`: `PortManagerServer` on evloop, and the
  ``portalloc-server`` command (``python -m portalloc.server``).  Import it
  from there: the package does not load the server, so that
  ``python -m portalloc.server`` runs it as a fresh module.
- `portalloc.files`: how the server writes its files so that no other user
  can steer the writes (random ``O_EXCL`` temporary names, safe
  directories, the pid-file lock).
- `portalloc.peer`: who owns the other end of a local connection, from the
  kernel (NETLINK_SOCK_DIAG, /proc/net/tcp): ``--verify-user``.
- `portalloc.client`: `PortAllocator` (blocking) and `AsyncPortAllocator`
  (callbacks, for evloop programs).
- `portalloc.cli`: the ``portalloc list|find|allocate`` command line.

``docs/security.md`` is the threat model the server and clients are built
against.

::

    from portalloc import PortAllocator

    port = PortAllocator().allocate_port("myserver")   # held until exit
"""

from __future__ import annotations

import evloop

__version__: str = evloop.__version__     # one distribution, one version

from .client import (  # noqa: E402
                     Allocation,
                     AsyncPortAllocator,
                     PortAllocationError,
                     PortAllocator,
                     PortManagerError,
                     PortManagerProtocolError,
                     PortManagerUnavailable,
)
from .pool import PoolError, PoolExhausted, PortPool, PortUnavailable
from .protocol import format_list, parse_list

__all__ = [
    "PortAllocator", "AsyncPortAllocator", "Allocation",
    "PortManagerError", "PortAllocationError", "PortManagerUnavailable",
    "PortManagerProtocolError",
    "PortPool", "PoolError", "PoolExhausted", "PortUnavailable",
    "format_list", "parse_list",
]
