#!/usr/bin/env python3
"""Allocate a service port from the local port manager and serve on it.

The Python version of the portAllocator manual's Example 1::

    package require portAllocator
    set p [::portAllocator create local]
    set port [$p allocatePort]
    socket -server handleConnections $port

Here ``handleConnections`` echoes every line back.  The program prints
``Listening on port P`` once it listens, and serves until SIGTERM or SIGINT;
then it closes the listener and releases the port.  The port stays
allocated to APPLICATION (default ``echo``) for as long as we run, so
``portalloc list`` (or ``examples/list_ports.py``) shows who has it.

    python examples/allocate_and_serve.py [--application NAME]
                                          [--manager-host H] [--manager-port P]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

# Runnable from a clone without installing: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evloop  # noqa: E402
from portalloc.client import PortAllocator, PortManagerError  # noqa: E402


def handle_connection(ch: evloop.Channel, host: str, port: int) -> None:
    """socket -server's callback: echo each line the client sends."""
    evloop.fileevent(ch, "readable", echo, ch)


def echo(ch: evloop.Channel) -> None:
    try:
        line = ch.gets()
    except OSError:              # the client reset the connection
        ch.close(force=True)
        return
    if line is not None:
        ch.puts(line)
    elif ch.eof():
        ch.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--application", default="echo",
                        help="name to register the port under (default: echo)")
    parser.add_argument("--manager-host", default="localhost",
                        help="host of the port manager (default: localhost)")
    parser.add_argument("--manager-port", type=int, default=None,
                        help="port of the port manager (default: listen.port, else 30000)")
    args = parser.parse_args(argv)

    allocator = PortAllocator(args.manager_host, args.manager_port)
    try:
        port = allocator.allocate_port(args.application)
    except PortManagerError as exc:
        print(f"allocate_and_serve: {exc}", file=sys.stderr)
        return 1

    loop = evloop.get_loop()
    server = evloop.server(handle_connection, port)
    loop.on_signal(signal.SIGTERM, loop.stop)
    loop.on_signal(signal.SIGINT, loop.stop)
    print(f"Listening on port {port}", flush=True)
    loop.run()

    server.close()
    allocator.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
