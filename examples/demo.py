#!/usr/bin/env python3
"""A tour of the toolkit: the three pieces in one single-threaded program.

    python examples/demo.py

Everything runs on one evloop loop, on loopback only, and nothing blocks:

1. a port manager (`portalloc.PortManagerServer`) starts on a free port and
   hands out ports from a small range;
2. an echo service asks it for a port (`portalloc.AsyncPortAllocator`) and
   listens there (`evloop.server`, ``fileevent``, ``gets``/``puts``);
3. a client connects with ``open_async``, checks ``error()`` (Tcl's
   ``fconfigure -error``), sends a line and reads the echo;
4. the scanner (`scanner.Scanner`) sweeps the manager's whole range and
   finds the one open port among the refused ones;
5. the manager's LIST shows who holds the port; the echo service releases
   it, and LIST shows it free again.

Each step is a callback that starts the next: the shape of every Tcl
event-driven program, and of every program built on evloop.  Exits 0 when
every step worked, 1 otherwise.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout

import evloop  # noqa: E402
from portalloc import AsyncPortAllocator  # noqa: E402
from portalloc.server import PortManagerServer  # noqa: E402
from scanner import Scanner  # noqa: E402

RANGE = (47001, 47020)          # the ports the demo's manager hands out


def say(text: str) -> None:
    print(text, flush=True)


def echo(ch: evloop.Channel) -> None:
    """The echo service's readable handler: send each line back."""
    line = ch.gets()
    if line is not None:
        ch.puts(line)
    elif ch.eof():
        ch.close()


class Demo:
    def __init__(self, workdir: str) -> None:
        self.status = evloop.Var()          # vwait on it: the exit status
        self.manager = PortManagerServer(ports=RANGE, port=0, host="127.0.0.1",
                                         usage_file=f"{workdir}/ports.txt")
        say(f"1. port manager on 127.0.0.1:{self.manager.port}, "
            f"handing out ports {RANGE[0]}-{RANGE[1]}")
        self.allocator = AsyncPortAllocator("127.0.0.1", self.manager.port)
        self.allocator.allocate_port("demo-echo", self.got_port)

    def got_port(self, port: int | None, error: BaseException | None) -> None:
        if error is not None:
            return self.fail(f"no port: {error}")
        self.service = evloop.server(
            lambda ch, host, peer_port: evloop.fileevent(ch, "readable", echo, ch),
            port, host="127.0.0.1")
        say(f"2. echo service got port {port} and listens on it")
        self.client = evloop.open_async("127.0.0.1", port)
        evloop.fileevent(self.client, "writable", self.connected)

    def connected(self) -> None:
        ch = self.client
        evloop.fileevent(ch, "writable", None)
        error = ch.error()                  # how did the connect go?
        if error is not None:
            return self.fail(f"connect failed: {error}")
        ch.puts("hello, event loop")
        evloop.fileevent(ch, "readable", self.answered)

    def answered(self) -> None:
        line = self.client.gets()
        if line is None:
            return                          # not all of it yet: called again
        say(f"3. client sent a line and got back {line!r}")
        self.client.close()
        self.open_ports = []
        Scanner(["127.0.0.1"], f"{RANGE[0]}-{RANGE[1]}", timeout=1.0,
                on_result=self.scanned_one, on_done=self.scanned).start()

    def scanned_one(self, result) -> None:
        if result.state == "open":
            self.open_ports.append(result)

    def scanned(self, scan: Scanner) -> None:
        counts = ", ".join(f"{n} {state}" for state, n in scan.counts.items() if n)
        say(f"4. scanner swept {scan.total} ports in {scan.elapsed * 1000:.0f} ms: {counts}")
        for r in self.open_ports:
            say(f"   open: {r.host}:{r.port}")
        self.allocator.list_ports(self.listed_before)

    def listed_before(self, allocations, error) -> None:
        if error is not None:
            return self.fail(f"LIST failed: {error}")
        self.show("5. LIST while the service runs", allocations)
        self.service.close()
        self.allocator.release()            # dropping the connection frees the port
        self.checker = AsyncPortAllocator("127.0.0.1", self.manager.port)
        self.checker.list_ports(self.listed_after)

    def listed_after(self, allocations, error) -> None:
        if error is not None:
            return self.fail(f"LIST failed: {error}")
        if allocations:
            # The manager frees the port when it sees our connection close;
            # this LIST raced ahead of that.  Ask again in a moment.
            evloop.after(20, self.checker.list_ports, self.listed_after)
            return
        self.show("   LIST after the service released its port", allocations)
        self.manager.close()
        self.status.set(0)

    def show(self, heading: str, allocations) -> None:
        say(f"{heading}: {len(allocations)} allocation(s)")
        for a in allocations:
            say(f"   Port {a.port} allocated to {a.application} run by {a.user}")

    def fail(self, message: str) -> None:
        print(f"demo: {message}", file=sys.stderr)
        self.status.set(1)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="evloop-demo-") as workdir:
        demo = Demo(workdir)
        timer = evloop.after(10_000, demo.fail, "timed out after 10 s")
        status = evloop.vwait(demo.status)
        evloop.after_cancel(timer)
    return status


if __name__ == "__main__":
    sys.exit(main())
