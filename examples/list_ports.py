#!/usr/bin/env python3
"""List the ports a port manager has allocated.

The Python version of the portAllocator manual's Example 2::

    set p [::portAllocator create remote -hostname somehost.nscl.msu.edu]
    set usage [$p listPorts]
    foreach allocation $usage {
      set port        [lindex $allocation 0]
      set application [lindex $allocation 1]
      set user        [lindex $allocation 2]
      puts "Port $port allocated to $application run by $user"
    }

    python examples/list_ports.py [HOST] [--port P]

HOST defaults to localhost; the port is found as PortAllocator does
(/var/tmp/daqportmgr/listen.port, then ~/.daqportmgr/listen.port, each
only if root or you own it; else 30000) unless --port is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runnable from a clone without installing: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portalloc.client import PortAllocator, PortManagerError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", nargs="?", default="localhost",
                        help="host of the port manager (default: localhost)")
    parser.add_argument("--port", type=int, default=None,
                        help="port of the port manager (default: listen.port, else 30000)")
    args = parser.parse_args(argv)

    allocator = PortAllocator(args.host, args.port)
    try:
        usage = allocator.list_ports()
    except PortManagerError as exc:
        print(f"list_ports: {exc}", file=sys.stderr)
        return 1
    # A name may hold a lone surrogate, which strict UTF-8 can't write;
    # Tcl's puts writes it as three bytes, and so do we.
    sys.stdout.reconfigure(errors="surrogatepass")
    for port, application, user in usage:
        print(f"Port {port} allocated to {application} run by {user}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
