#!/usr/bin/env python3
"""scan.py BASE PORT -- which of BASE.1 to BASE.254 accept TCP on PORT?

Pat Thoyts' scan.tcl (Tcl wiki, 2003) on evloop: ``socket -async`` is
``open_async``, the writable fileevent says the connect is over, and
``fconfigure -error`` -- ``ch.error()``, as kostix suggests on the same
page -- says how it went.  Output is Tcl's ``parray hosts``.  Differences:
hosts .1 to .254 (the Tcl loop stops at .249); the peer is shown
numerically (Tcl's -peername looks the name up, which blocks and asks DNS
about every address); the timer is cancelled when the connect ends (Tcl's
``shutdown`` ran twice per host); and a host that finds no free
descriptor (``socket -async`` raises then) waits for one instead of
killing the scan.
"""

import errno
import os
import re
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout

import evloop  # noqa: E402
from scanner.targets import Targets  # noqa: E402

NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN}
hosts = {}                  # the Tcl script's array: host -> peer name
nodes = evloop.Var(0)       # hosts not finished yet
waiting = deque()           # hosts still to connect


def scan(base, port):
    waiting.extend(Targets(base))           # the base form: .1 to .254
    nodes.set(len(waiting))
    connect_waiting(port)


def connect_waiting(port):
    while waiting:
        try:
            s = evloop.open_async(waiting[0], port)
        except OSError as exc:
            if exc.errno not in NO_RESOURCES:
                raise
            if nodes.get() == len(waiting):     # nothing in flight to wait for
                evloop.after(20, connect_waiting, port)
            return                              # else: when a socket closes
        host = waiting.popleft()
        timer = evloop.after(2000, shutdown, s, port)
        evloop.fileevent(s, "writable", connected, host, port, s, timer)


def connected(host, port, s, timer):
    evloop.after_cancel(timer)
    try:
        if s.error() is None:
            # A peer that resets right after the handshake makes
            # peername() fail: it was still open.  Whatever happens here,
            # shutdown must run, or vwait would wait for this host for ever.
            try:
                addr, peer_port = s.peername()
            except OSError:
                addr, peer_port = host, port
            hosts[host] = f"{addr} {addr} {peer_port}"
    finally:
        shutdown(s, port)


def shutdown(s, port):
    s.close()
    nodes.set(nodes.get() - 1)
    connect_waiting(port)


def parray(name, array):
    keys = sorted(array)
    width = max((len(k) for k in keys), default=0) + len(name) + 2
    for k in keys:
        print(f"{f'{name}({k})':<{width}} = {array[k]}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or not re.fullmatch(r"\d+\.\d+\.\d+", sys.argv[1]) \
            or not sys.argv[2].isdigit() or not 0 < int(sys.argv[2]) < 65536:
        sys.exit("usage: scan.py BASE PORT   (BASE like 127.0.0: scans .1 to .254)")
    try:
        scan(sys.argv[1], int(sys.argv[2]))
    except ValueError as exc:                   # an octet above 255
        sys.exit(f"scan.py: {exc}")
    while nodes.get() > 0:
        evloop.vwait(nodes)
    try:
        parray("hosts", hosts)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): no traceback; point stdout at
        # /dev/null so the interpreter's last flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
