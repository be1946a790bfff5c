#!/usr/bin/env python3
"""Echo client: send lines to an echo server and print what comes back.

    python examples/echo_client.py HOST PORT [LINES...]

Sends each LINE, or each line of standard input when none are given, and
prints every echo; exits 0 once all have come back, 1 if the server closed
the connection first.  The Tcl original, event-driven, beside its
translation::

    set s [socket $host $port]                ch = evloop.open(host, port)
    fconfigure $s -blocking 0 \\               ch.configure(blocking=False,
        -buffering line                                    buffering="line")
    fileevent $s readable Reply               evloop.fileevent(ch, "readable", reply)
    proc Reply {} {                           def reply():
        global s pending done                     line = ch.gets()
        if {[gets $s line] >= 0} {                if line is not None:
            puts $line                                print(line)
            incr pending -1                           pending -= 1 ...
            if {!$pending} {set done ok}              if not pending: done.set("ok")
        } elseif {[eof $s]} {                     elif ch.eof():
            set done eof                              done.set("eof")
        }
    }
    foreach line $argv {                      for line in lines:
        puts $s $line; incr pending               ch.puts(line); pending += 1
    }
    vwait done                                evloop.vwait(done)

Standard input is read the Tcl way too (``fileevent stdin readable``), so
echoes are printed as lines are typed.
"""

from __future__ import annotations

import codecs
import os
import sys
from pathlib import Path

# Run from a clone without installing: the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evloop  # noqa: E402


class EchoClient:
    """Counts the lines sent and the echoes still to come."""

    def __init__(self, ch: evloop.Channel) -> None:
        self.ch = ch
        self.pending = 0
        self.input_done = False
        self.done = evloop.Var()
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        evloop.fileevent(ch, "readable", self.reply)

    def send(self, line: str) -> None:
        self.ch.puts(line)
        self.pending += 1

    def finish_input(self) -> None:
        self.input_done = True
        self._check()

    def reply(self) -> None:
        line = self.ch.gets()
        if line is not None:
            print(line, flush=True)
            self.pending -= 1
            self._check()
        elif self.ch.eof():
            self.done.set("eof")

    def _check(self) -> None:
        if self.input_done and self.pending == 0:
            self.done.set("ok")

    # Standard input, as ``fileevent stdin readable``.
    def read_stdin(self) -> None:
        data = os.read(0, 65536)
        text = self._decoder.decode(data, final=not data)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.send(line.removesuffix("\r"))
        if not data:                                     # end of input
            evloop.fileevent(0, "readable", None)
            if self._partial:
                self.send(self._partial)
            self.finish_input()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[1].isdigit():
        print("usage: echo_client.py HOST PORT [LINES...]", file=sys.stderr)
        return 2
    host, port, lines = argv[0], int(argv[1]), argv[2:]
    try:
        ch = evloop.open(host, port)
    except OSError as exc:
        print(f"echo_client: can't connect to {host} port {port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    ch.configure(blocking=False, buffering="line")
    client = EchoClient(ch)

    if lines:
        for arg in lines:
            for line in arg.splitlines() or [""]:
                client.send(line)
        client.finish_input()
    else:
        try:
            evloop.fileevent(0, "readable", client.read_stdin)
        except PermissionError:          # a regular file: epoll can't watch it
            for line in sys.stdin.read().splitlines():
                client.send(line)
            client.finish_input()

    how = evloop.vwait(client.done)
    ch.close()
    if how != "ok":
        print("echo_client: the server closed the connection", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
