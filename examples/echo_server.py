#!/usr/bin/env python3
"""Echo server: every line a client sends comes back to it.

    python examples/echo_server.py [PORT]      (default 2540; 0 picks a free port)

Prints ``listening on port N`` first, then a line per connection opened and
closed, and exits 0 on SIGTERM or SIGINT.  The Tcl original is Brent Welch's
echo service (Practical Programming in Tcl and Tk), beside its translation::

    proc EchoAccept {sock addr port} {        def accept(ch, host, port):
        puts "Accept $sock from $addr ..."        print("accept", host, ...)
        fconfigure $sock -buffering line          ch.configure(buffering="line")
        fileevent $sock readable \\                evloop.fileevent(ch, "readable",
            [list Echo $sock]                                      echo, ch, ...)
    }
    proc Echo {sock} {                        def echo(ch, host, port):
        if {[eof $sock] ||                        try:
                [catch {gets $sock line}]} {          line = ch.gets()
            close $sock                           except OSError:     # a read error
        } else {                                      line = None     # eof() is true
            puts $sock $line                      if line is not None:
        }                                             ch.puts(line)
    }                                             elif ch.eof():
                                                      ch.close()
    socket -server EchoAccept $port           server = evloop.server(accept, port)
    vwait forever                             evloop.vwait(forever)

The one difference: our channels are non-blocking, so ``gets`` returns None
(Tcl: -1 with ``fblocked``) while a line is incomplete, and the handler
simply waits to be called again.  A client that resets its connection is an
end of file in both (``ch.error()`` tells the reset, once); the ``catch``
and the ``except`` are for rarer read errors.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

# Run from a clone without installing: the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evloop  # noqa: E402


def accept(ch: evloop.Channel, host: str, port: int) -> None:
    print(f"accept {host} port {port}", flush=True)
    ch.configure(buffering="line")
    evloop.fileevent(ch, "readable", echo, ch, host, port)


def echo(ch: evloop.Channel, host: str, port: int) -> None:
    try:
        line = ch.gets()
    except OSError:                 # a read error other than a reset; eof() is true
        line = None                 # (a reset is an end of file, as in Tcl)
    if line is not None:
        ch.puts(line)
    elif ch.eof():
        ch.close()                  # queued echoes still drain in the background
        print(f"close {host} port {port}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        print("usage: echo_server.py [PORT]", file=sys.stderr)
        return 2
    port = int(argv[0]) if argv else 2540

    forever = evloop.Var()
    loop = evloop.get_loop()
    loop.on_signal(signal.SIGTERM, forever.set, "SIGTERM")
    loop.on_signal(signal.SIGINT, forever.set, "SIGINT")

    server = evloop.server(accept, port)
    print(f"listening on port {server.port}", flush=True)
    why = evloop.vwait(forever)
    server.close()
    print(f"stopped by {why}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
