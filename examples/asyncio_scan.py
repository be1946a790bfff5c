#!/usr/bin/env python3
"""An asyncio program that runs a scanner.Scanner on evloop, in one thread.

asyncio owns the thread (``asyncio.run``); ``evloop.attach_asyncio()`` lets
it run evloop as well, so the callback-style `scanner.Scanner` works inside
a coroutine, and ``await handle.call(...)`` turns its ``on_done`` callback
into something to await.  Meanwhile asyncio keeps serving: without
arguments the program opens three asyncio listeners on 127.0.0.1 and
finds two ports that nobody listens on, scans those five ports, and the
listeners count the scanner's connections as they come::

    python examples/asyncio_scan.py            # its own listeners
    python examples/asyncio_scan.py 22 631     # given ports, on 127.0.0.1

Only 127.0.0.1 is scanned.  Prints one line per port (``port state
detail``), then what the asyncio side saw; exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

# Runnable from a clone without installing: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evloop  # noqa: E402
from scanner import Result, Scanner  # noqa: E402

HOST = "127.0.0.1"


def _closed_ports(n: int) -> list[int]:
    """Ports nobody listens on (bound, then let go, without listening)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def scan(ports: list[int], timeout: float) -> list[Result]:
    """Scan ``ports`` on 127.0.0.1 with evloop's Scanner; return the
    results in port order."""
    handle = evloop.attach_asyncio()
    results: list[Result] = []
    try:
        # on_done(scanner) settles the future; Scanner.start() returns at once.
        await handle.call(lambda done: Scanner(HOST, ports, timeout=timeout,
                                               on_result=results.append,
                                               on_done=done).start())
    finally:
        handle.detach()
    return sorted(results, key=lambda r: r.port)


async def main_async(ports: list[int], timeout: float) -> int:
    accepted = 0
    all_accepted = asyncio.Event()

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted >= len(servers):
            all_accepted.set()
        writer.close()

    servers = []
    if not ports:
        for _ in range(3):
            servers.append(await asyncio.start_server(count, HOST, 0))
        ports = [s.sockets[0].getsockname()[1] for s in servers] + _closed_ports(2)
    results = await scan(ports, timeout)
    for r in results:
        print(f"{r.port:5d} {r.state:<8} {r.detail}")
    if servers:
        # The scanner closes each connection as soon as it is classified;
        # asyncio accepts them in its own time.
        try:
            await asyncio.wait_for(all_accepted.wait(), 2.0)
        except TimeoutError:
            pass
        print(f"asyncio listeners accepted {accepted} connection(s) meanwhile")
        for s in servers:
            s.close()
            await s.wait_closed()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Scan ports of 127.0.0.1 with scanner.Scanner on evloop attached to asyncio.")
    parser.add_argument("ports", nargs="*", type=int, metavar="PORT",
                        help="ports to scan (default: three asyncio listeners of its own "
                             "and two closed ports)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="seconds per connect (default 1)")
    args = parser.parse_args(argv)
    if any(not 0 < p < 65536 for p in args.ports):
        parser.error("ports must be 1-65535")
    return asyncio.run(main_async(args.ports, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
