#!/usr/bin/env python3
"""Reactor benchmark: evloop against asyncio and a minimal hand-written loop.

This is a benchmark, not a test; nothing in CI runs it.  It answers one
question: what does evloop's reactor cost per event, compared with

- asyncio's default loop (``_UnixSelectorEventLoop``, epoll) driven in
  callback style -- ``add_reader``/``add_writer``/``call_later``/
  ``call_soon``, no coroutines in the hot path -- the loop every Python
  programmer already has, and
- a minimal loop written in this file (``selectors.DefaultSelector``, a
  ``heapq`` of lists, a deque): no framework, no handles, no error
  routing.  It is the practical floor for a pure-Python reactor built on
  ``selectors``; evloop should not trail it.  (evloop polls epoll
  directly, without ``selectors``' key objects, which is most of its lead
  on the file-event workloads.)

Workloads (counts at ``--scale 1``; ops/s = completed operations per
second of wall time, measured with ``time.perf_counter``; ``--clock cpu``
measures this process's CPU time instead, which is steadier when other
work shares the machine):

timers
    200k timers with random 0-50 ms delays (fixed seed), scheduled in one
    burst, run until all have fired.  Scheduling takes longer than 50 ms
    in pure Python, so this is mostly schedule + pop + call cost.
cancel
    200k timers scheduled, all cancelled, then loop passes until the
    timer queue is empty (cancelled entries swept; none may fire).
pingpong
    100k one-byte round trips over an AF_UNIX socketpair; each end has a
    readable handler that reads one byte and writes one back.  Two events
    per round trip.
pingpong_idle
    The same, with 5,000 extra descriptors (2,500 socketpairs, both ends)
    registered readable that never become ready.  epoll makes this flat;
    a reactor that scans its handler table per pass would not be.
accept
    5,000 connections on 127.0.0.1 (64 in flight): the client connects
    non-blocking, waits writable, checks the error, sends a line; the
    server accepts, reads the line, replies with it and closes; the client
    reads the reply and closes.  evloop is used the way a user writes it:
    ``evloop.server``/``evloop.open_async``, ``Channel`` with ``fileevent``
    + ``gets``/``puts``/``error()``.  asyncio and the minimal loop use the
    same plain-socket code (``add_reader``/``add_writer`` callbacks, no
    protocols, no transports), so evloop also pays for its channel layer
    (decoding, line splitting, output queueing) here.

attached
    The ping-pong workload (no idle fds) with evloop attached to a
    running asyncio loop (``evloop.attach_asyncio``), against evloop alone
    and asyncio alone; target: attached/evloop >= 0.75x.  A second row
    puts one end on asyncio (``add_reader``) and the other on evloop, so
    every round trip crosses from one loop to the other (no target; it
    shows the cost of a service: one asyncio wake-up, two ``run_once(0)``).

Flatness checks (ns per event, lower is better, should not grow):
ping-pong with 0 vs 5,000 idle descriptors, and a chain of zero-delay
timers (each fire schedules the next, one loop pass per fire) with 1k vs
200k other timers pending far in the future (heap depth).

Options: ``--scale 0.1`` for a quick run, ``--repeat N`` keeps the best of
N runs (implementations interleaved so drift hits all alike), ``--only``
picks workloads, ``--impl`` picks implementations, ``--clock cpu`` times
CPU rather than wall time, ``--profile IMPL`` runs
each workload once under cProfile, ``--tcl`` also times the timer and
ping-pong workloads in tclsh 8.6 for orientation.

Run from the repository root: ``python bench/reactor.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import errno
import gc
import heapq
import io
import itertools
import os
import platform
import pstats
import random
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import deque
from time import monotonic, perf_counter, process_time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import evloop
except ImportError:  # the package is not written yet, or is broken
    evloop = None

SEED = 20240611
HOST = "127.0.0.1"
ACCEPT_CONCURRENCY = 64
FAR_MS = 3_600_000  # "pending" timers for the flatness check: an hour away

# What the workloads time with: wall time, or with --clock cpu the CPU time
# of this process (steadier on a busy machine; leaves out waiting).
_timer = perf_counter


def _noop(*args):
    pass


class BenchError(Exception):
    """A workload misbehaved (an exception inside a callback, a lost event)."""


# ---------------------------------------------------------------------------
# The minimal loop: the floor.
# ---------------------------------------------------------------------------

class MinimalLoop:
    """A reactor with nothing a benchmark does not need.

    Descriptors: one selector registration per fd; its ``data`` is a list
    ``[reader, rargs, writer, wargs, mask]`` that removal clears in place,
    so a handler removed earlier in a pass is not called later in it.
    Timers: a heap of lists ``[deadline, seq, callback, args]`` (lists
    compare in C; ``seq`` keeps equal deadlines FIFO and stops the
    comparison before the callback).  Cancelling or firing sets the
    callback to ``None``; cancelled entries are swept when they are more
    than half the heap.  Callbacks run without any error handling.
    """

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._fds: dict[int, list] = {}
        self._heap: list[list] = []
        self._seq = itertools.count().__next__
        self._ncancelled = 0
        self._soon: deque = deque()
        self._stopping = False

    # -- descriptors (same names as asyncio, so workload code is shared)

    def _set(self, fd: int, i: int, cb, args) -> None:
        h = self._fds.get(fd)
        if h is None:
            if cb is None:
                return
            h = [None, None, None, None, 0]
            self._fds[fd] = h
        h[i] = cb
        h[i + 1] = args
        mask = (1 if h[0] is not None else 0) | (2 if h[2] is not None else 0)
        if mask == h[4]:
            return
        if not h[4]:
            self._sel.register(fd, mask, h)
        elif mask:
            self._sel.modify(fd, mask, h)
        else:
            del self._fds[fd]
            self._sel.unregister(fd)
        h[4] = mask

    def add_reader(self, fd: int, cb, *args) -> None:
        self._set(fd, 0, cb, args)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None, None)

    def add_writer(self, fd: int, cb, *args) -> None:
        self._set(fd, 2, cb, args)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 2, None, None)

    # -- timers

    def call_later(self, delay: float, cb, *args) -> list:
        entry = [monotonic() + delay, self._seq(), cb, args]
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, entry: list) -> None:
        if entry[2] is not None:
            entry[2] = entry[3] = None
            self._ncancelled += 1

    def call_soon(self, cb, *args) -> None:
        self._soon.append((cb, args))

    def pending_timers(self) -> int:
        return len(self._heap)

    # -- running

    def run_once(self, timeout: float | None = None) -> None:
        heap = self._heap
        # Sweep cancelled entries once they are the majority of the heap.
        if self._ncancelled > 64 and 2 * self._ncancelled > len(heap):
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._ncancelled = 0
        # Poll timeout: zero if callbacks wait, else up to the next deadline
        # (the epoll selector rounds it up to a whole millisecond).
        if self._soon:
            timeout = 0
        elif heap:
            t = heap[0][0] - monotonic()
            if t < 0:
                t = 0
            if timeout is None or t < timeout:
                timeout = t
        # Dispatch ready descriptors; handler lists are cleared in place
        # on removal, so a stale entry does nothing.
        for key, mask in self._sel.select(timeout):
            h = key.data
            if mask & 1 and h[0] is not None:
                h[0](*h[1])
            if mask & 2 and h[2] is not None:
                h[2](*h[3])
        # Fire due timers.
        if heap:
            now = monotonic()
            pop = heapq.heappop
            while heap and heap[0][0] <= now:
                e = pop(heap)
                cb = e[2]
                if cb is None:
                    self._ncancelled -= 1
                    continue
                e[2] = None
                cb(*e[3])
        # Callbacks queued before this point; later ones wait a pass.
        soon = self._soon
        for _ in range(len(soon)):
            cb, args = soon.popleft()
            cb(*args)

    def run_forever(self) -> None:
        self._stopping = False
        while not self._stopping:
            self.run_once()

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        self._sel.close()


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------

def _raise_nofile(need: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit if `need` fds won't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < need:
        raise SystemExit(f"need {need} descriptors, RLIMIT_NOFILE hard limit is {hard}")


def _socketpairs(n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        socks += (a, b)
    return socks


def _new_asyncio_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    box: list = []

    def on_error(loop, context):
        box.append(context.get("exception") or RuntimeError(context["message"]))
        loop.stop()

    loop.set_exception_handler(on_error)
    loop._bench_errors = box  # type: ignore[attr-defined]
    return loop


def _new_evloop() -> evloop.Loop:
    loop = evloop.Loop()
    box: list = []

    def on_error(exc):
        box.append(exc)
        loop.stop()

    loop.bgerror(on_error)
    loop._bench_errors = box
    return loop


def _check(loop) -> None:
    errors = getattr(loop, "_bench_errors", None)
    if errors:
        raise BenchError(f"callback raised: {errors[0]!r}") from errors[0]


def _close_loop(loop) -> None:
    close = getattr(loop, "close", None)
    if close is not None:
        close()


def _run(loop) -> None:
    """Run a loop until a callback stops it."""
    if isinstance(loop, (MinimalLoop, asyncio.AbstractEventLoop)):
        loop.run_forever()
    else:
        loop.run()
    _check(loop)


# ---------------------------------------------------------------------------
# Workload: timers.  Returns (seconds, operations).
# ---------------------------------------------------------------------------

def timers_evloop(delays_ms: list[int]) -> tuple[float, int]:
    loop = _new_evloop()
    n = len(delays_ms)
    count = 0

    def fire():
        nonlocal count
        count += 1
        if count == n:
            loop.stop()

    after = loop.after
    t0 = _timer()
    for d in delays_ms:
        after(d, fire)
    _run(loop)
    t = _timer() - t0
    _close_loop(loop)
    return t, n


def timers_callback_style(loop, delays_ms: list[int]) -> tuple[float, int]:
    """asyncio and the minimal loop: call_later with seconds."""
    delays = [d / 1000 for d in delays_ms]
    n = len(delays)
    count = 0

    def fire():
        nonlocal count
        count += 1
        if count == n:
            loop.stop()

    call_later = loop.call_later
    t0 = _timer()
    for d in delays:
        call_later(d, fire)
    _run(loop)
    t = _timer() - t0
    _close_loop(loop)
    return t, n


# ---------------------------------------------------------------------------
# Workload: schedule and cancel.  Passes run until the queue is empty.
# ---------------------------------------------------------------------------

def _evloop_queue_len(loop) -> int | None:
    """Entries still held by evloop's timer heap, cancelled ones included.

    This peeks at internals (a benchmark may); None if it cannot tell.
    """
    for obj in (loop, getattr(loop, "_timers", None)):
        for name in ("heap", "_heap"):
            q = getattr(obj, name, None)
            if isinstance(q, list):
                return len(q)
    return None


def cancel_evloop(delays_ms: list[int]) -> tuple[float, int]:
    loop = _new_evloop()
    fired = 0

    def fire():
        nonlocal fired
        fired += 1

    after = loop.after
    cancel = loop.after_cancel
    t0 = _timer()
    ids = [after(d, fire) for d in delays_ms]
    for i in ids:
        cancel(i)
    # Run passes (update() never blocks) until nothing is pending.  If the
    # queue's length is visible, wait for the sweep to empty it too.
    loop.update()
    while loop.after_info() or _evloop_queue_len(loop):
        loop.update()
    t = _timer() - t0
    _check(loop)
    if fired:
        raise BenchError(f"{fired} cancelled timers fired")
    _close_loop(loop)
    return t, len(ids)


def cancel_asyncio(delays_ms: list[int]) -> tuple[float, int]:
    loop = _new_asyncio_loop()
    delays = [d / 1000 for d in delays_ms]
    fired = 0

    def fire():
        nonlocal fired
        fired += 1

    call_later = loop.call_later
    t0 = _timer()
    handles = [call_later(d, fire) for d in delays]
    for h in handles:
        h.cancel()
    # asyncio sweeps cancelled TimerHandles inside _run_once when they are
    # more than half of _scheduled; one pass normally empties it.
    while loop._scheduled:
        loop.call_soon(loop.stop)
        loop.run_forever()
    t = _timer() - t0
    _check(loop)
    if fired:
        raise BenchError(f"{fired} cancelled timers fired")
    _close_loop(loop)
    return t, len(handles)


def cancel_minimal(delays_ms: list[int]) -> tuple[float, int]:
    loop = MinimalLoop()
    delays = [d / 1000 for d in delays_ms]
    fired = 0

    def fire():
        nonlocal fired
        fired += 1

    call_later = loop.call_later
    cancel = loop.cancel
    t0 = _timer()
    entries = [call_later(d, fire) for d in delays]
    for e in entries:
        cancel(e)
    while loop.pending_timers():
        loop.run_once(0)
    t = _timer() - t0
    if fired:
        raise BenchError(f"{fired} cancelled timers fired")
    loop.close()
    return t, len(entries)


# ---------------------------------------------------------------------------
# Workload: ping-pong over a socketpair, optionally with idle descriptors.
# ---------------------------------------------------------------------------

def _pingpong_pair(n: int, stop):
    """A non-blocking socketpair (a, b) and its two readable handlers: b
    echoes each byte, a counts the round trips and sends the next, or
    calls ``stop()`` after the ``n``th.  One copy serves every loop, so all
    of them run the same handler code."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a_recv, a_send, b_recv, b_send = a.recv, a.send, b.recv, b.send
    count = 0

    def on_a():
        nonlocal count
        a_recv(1)
        count += 1
        if count == n:
            stop()
        else:
            a_send(b"x")

    def on_b():
        b_recv(1)
        b_send(b"x")

    return a, b, on_a, on_b


def pingpong_evloop(n: int, idle: int) -> tuple[float, int]:
    loop = _new_evloop()
    a, b, on_a, on_b = _pingpong_pair(n, loop.stop)
    idle_socks = _socketpairs(idle // 2)
    for s in idle_socks:
        loop.fileevent(s, "readable", _noop)
    loop.fileevent(a, "readable", on_a)
    loop.fileevent(b, "readable", on_b)
    t0 = _timer()
    a.send(b"x")
    _run(loop)
    t = _timer() - t0
    for s in (a, b, *idle_socks):
        loop.fileevent(s, "readable", None)
        s.close()
    _close_loop(loop)
    return t, n


def pingpong_callback_style(loop, n: int, idle: int) -> tuple[float, int]:
    """asyncio and the minimal loop: add_reader on raw descriptors."""
    a, b, on_a, on_b = _pingpong_pair(n, loop.stop)
    idle_socks = _socketpairs(idle // 2)
    for s in idle_socks:
        loop.add_reader(s.fileno(), _noop)
    loop.add_reader(a.fileno(), on_a)
    loop.add_reader(b.fileno(), on_b)
    t0 = _timer()
    a.send(b"x")
    _run(loop)
    t = _timer() - t0
    for s in (a, b, *idle_socks):
        loop.remove_reader(s.fileno())
        s.close()
    _close_loop(loop)
    return t, n


def pingpong_attached(n: int, mixed: bool = False) -> tuple[float, int]:
    """Ping-pong on evloop attached to asyncio; ``mixed``: end b on asyncio."""
    aio = _new_asyncio_loop()
    loop = _new_evloop()
    loop.bgerror(lambda exc: (loop._bench_errors.append(exc), aio.stop()))
    a, b, on_a, on_b = _pingpong_pair(n, aio.stop)
    loop.fileevent(a, "readable", on_a)
    if mixed:
        aio.add_reader(b.fileno(), on_b)
    else:
        loop.fileevent(b, "readable", on_b)
    handle = evloop.attach_asyncio(aio, loop=loop)
    t0 = _timer()
    a.send(b"x")
    aio.run_forever()
    t = _timer() - t0
    handle.detach()
    loop.fileevent(a, "readable", None)
    if mixed:
        aio.remove_reader(b.fileno())
    else:
        loop.fileevent(b, "readable", None)
    a.close()
    b.close()
    _check(loop)
    _check(aio)
    _close_loop(aio)
    _close_loop(loop)
    return t, n


def _attached_table(n: int, repeat: int) -> None:
    """Measure and print the rows of the "attached" workload."""
    runs = {"evloop alone": lambda: pingpong_evloop(n, 0),
            "asyncio alone": lambda: pingpong_callback_style(_new_asyncio_loop(), n, 0),
            "attached": lambda: pingpong_attached(n),
            "mixed": lambda: pingpong_attached(n, mixed=True)}
    best: dict[str, float | None] = dict.fromkeys(runs)
    for _ in range(repeat):  # interleaved, as the other workloads
        for name, fn in runs.items():
            rate = _measure(fn, 1)
            if best[name] is None or rate > best[name]:
                best[name] = rate
    ev, aio = best["evloop alone"], best["asyncio alone"]
    print(f"\nEmbedding ({n:,} ping-pong round trips/s):\n")
    print("| workload | evloop alone | asyncio alone | attached | attached/evloop | attached/asyncio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in (("attached", "both ends on evloop attached to asyncio"),
                        ("mixed", "one end on evloop attached, one on asyncio")):
        print(f"| {label} | {_fmt_rate(ev)} | {_fmt_rate(aio)} | {_fmt_rate(best[name])} | "
              f"{_fmt_ratio(best[name], ev)} | {_fmt_ratio(best[name], aio)} |")
    print("\nTarget: attached (both ends on evloop)/evloop alone >= 0.75x.")


# ---------------------------------------------------------------------------
# Workload: accept + connect + one line each way, on loopback.
# ---------------------------------------------------------------------------

def accept_evloop(n: int) -> tuple[float, int]:
    loop = _new_evloop()
    fileevent = loop.fileevent
    started = done = 0

    def on_accept(ch, host, port):
        fileevent(ch, "readable", server_read, ch)

    def server_read(ch):
        line = ch.gets()
        if line is None:
            if ch.eof():
                ch.close()
            return
        ch.puts(line)
        ch.close()

    srv = evloop.server(on_accept, 0, host=HOST, loop=loop)
    port = srv.port

    def start():
        nonlocal started
        started += 1
        ch = evloop.open_async(HOST, port, loop=loop)
        fileevent(ch, "writable", client_connected, ch)

    def client_connected(ch):
        fileevent(ch, "writable", None)
        err = ch.error()
        if err is not None:
            raise err
        ch.puts("ping")
        fileevent(ch, "readable", client_read, ch)

    def client_read(ch):
        nonlocal done
        line = ch.gets()
        if line is None:
            if ch.eof():
                raise BenchError("server closed before replying")
            return
        ch.close()
        done += 1
        if done == n:
            loop.stop()
        elif started < n:
            start()

    t0 = _timer()
    for _ in range(min(ACCEPT_CONCURRENCY, n)):
        start()
    _run(loop)
    t = _timer() - t0
    srv.close()
    _close_loop(loop)
    return t, n


def accept_callback_style(loop, n: int) -> tuple[float, int]:
    """asyncio and the minimal loop: plain non-blocking sockets, callbacks."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    addr = lsock.getsockname()
    add_reader, remove_reader = loop.add_reader, loop.remove_reader
    add_writer, remove_writer = loop.add_writer, loop.remove_writer
    started = done = 0

    def on_accept():
        while True:
            try:
                c, _ = lsock.accept()
            except BlockingIOError:
                return
            c.setblocking(False)
            fd = c.fileno()
            add_reader(fd, server_read, c, fd, bytearray())

    def server_read(c, fd, buf):
        data = c.recv(4096)
        if not data:
            remove_reader(fd)
            c.close()
            return
        buf += data
        if b"\n" not in data:
            return
        remove_reader(fd)
        if c.send(buf) != len(buf):  # a few bytes into an empty buffer
            raise BenchError("short send")
        c.close()

    def start():
        nonlocal started
        started += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        fd = s.fileno()
        add_writer(fd, client_connected, s, fd)

    def client_connected(s, fd):
        remove_writer(fd)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        if s.send(b"ping\n") != 5:
            raise BenchError("short send")
        add_reader(fd, client_read, s, fd, bytearray())

    def client_read(s, fd, buf):
        nonlocal done
        data = s.recv(4096)
        if not data:
            raise BenchError("server closed before replying")
        buf += data
        if b"\n" not in buf:
            return
        remove_reader(fd)
        s.close()
        done += 1
        if done == n:
            loop.stop()
        elif started < n:
            start()

    add_reader(lsock.fileno(), on_accept)
    t0 = _timer()
    for _ in range(min(ACCEPT_CONCURRENCY, n)):
        start()
    _run(loop)
    t = _timer() - t0
    remove_reader(lsock.fileno())
    lsock.close()
    _close_loop(loop)
    return t, n


# ---------------------------------------------------------------------------
# Flatness: a chain of zero-delay timers with many timers pending.
# ---------------------------------------------------------------------------

def chain_evloop(m: int, pending: int) -> tuple[float, int]:
    loop = _new_evloop()
    after = loop.after
    far = [after(FAR_MS + i % 1000, _noop) for i in range(pending)]
    count = 0

    def tick():
        nonlocal count
        count += 1
        if count == m:
            loop.stop()
        else:
            after(0, tick)

    t0 = _timer()
    after(0, tick)
    _run(loop)
    t = _timer() - t0
    for i in far:
        loop.after_cancel(i)
    _close_loop(loop)
    return t, m


def chain_asyncio(m: int, pending: int) -> tuple[float, int]:
    loop = _new_asyncio_loop()
    call_later = loop.call_later
    far = [call_later(FAR_MS / 1000 + i % 1000 / 1000, _noop) for i in range(pending)]
    count = 0

    def tick():
        nonlocal count
        count += 1
        if count == m:
            loop.stop()
        else:
            call_later(0, tick)

    t0 = _timer()
    call_later(0, tick)
    _run(loop)
    t = _timer() - t0
    for h in far:
        h.cancel()
    _close_loop(loop)
    return t, m


def chain_minimal(m: int, pending: int) -> tuple[float, int]:
    loop = MinimalLoop()
    call_later = loop.call_later
    for i in range(pending):
        call_later(FAR_MS / 1000 + i % 1000 / 1000, _noop)
    count = 0

    def tick():
        nonlocal count
        count += 1
        if count == m:
            loop.stop()
        else:
            call_later(0, tick)

    t0 = _timer()
    call_later(0, tick)
    _run(loop)
    t = _timer() - t0
    loop.close()
    return t, m


# ---------------------------------------------------------------------------
# The table of workloads.
# ---------------------------------------------------------------------------

IMPLS = ("evloop", "asyncio", "minimal")


def _workloads(scale: float) -> dict[str, dict]:
    """name -> {"label", "unit", "runs": {impl: zero-arg callable}}."""
    def count(x: int) -> int:
        return max(1, int(x * scale))

    rng = random.Random(SEED)
    delays = [rng.randint(0, 50) for _ in range(count(200_000))]
    n_pp = count(100_000)
    n_acc = count(5_000)
    n_chain = count(50_000)
    new_a, new_m = _new_asyncio_loop, MinimalLoop

    def w(label, unit, ev, aio, mini):
        return {"label": label, "unit": unit,
                "runs": {"evloop": ev, "asyncio": aio, "minimal": mini}}

    return {
        "timers": w(f"{len(delays):,} timers, 0-50 ms, all fire", "timers/s",
                    lambda: timers_evloop(delays),
                    lambda: timers_callback_style(new_a(), delays),
                    lambda: timers_callback_style(new_m(), delays)),
        "cancel": w(f"{len(delays):,} timers scheduled + cancelled", "timers/s",
                    lambda: cancel_evloop(delays),
                    lambda: cancel_asyncio(delays),
                    lambda: cancel_minimal(delays)),
        "pingpong": w(f"{n_pp:,} ping-pong round trips", "round trips/s",
                      lambda: pingpong_evloop(n_pp, 0),
                      lambda: pingpong_callback_style(new_a(), n_pp, 0),
                      lambda: pingpong_callback_style(new_m(), n_pp, 0)),
        "pingpong_idle": w(f"{n_pp:,} ping-pong round trips, 5,000 idle fds",
                           "round trips/s",
                           lambda: pingpong_evloop(n_pp, 5000),
                           lambda: pingpong_callback_style(new_a(), n_pp, 5000),
                           lambda: pingpong_callback_style(new_m(), n_pp, 5000)),
        "accept": w(f"{n_acc:,} accept+connect+line exchanges", "connections/s",
                    lambda: accept_evloop(n_acc),
                    lambda: accept_callback_style(new_a(), n_acc),
                    lambda: accept_callback_style(new_m(), n_acc)),
        # Flatness only (not in the main table).
        "chain_1k": w(f"{n_chain:,} chained 0 ms timers, 1k pending", "fires/s",
                      lambda: chain_evloop(n_chain, 1000),
                      lambda: chain_asyncio(n_chain, 1000),
                      lambda: chain_minimal(n_chain, 1000)),
        "chain_200k": w(f"{n_chain:,} chained 0 ms timers, 200k pending", "fires/s",
                        lambda: chain_evloop(n_chain, 200_000),
                        lambda: chain_asyncio(n_chain, 200_000),
                        lambda: chain_minimal(n_chain, 200_000)),
    }


MAIN = ("timers", "cancel", "pingpong", "pingpong_idle", "accept")
FLAT = ("chain_1k", "chain_200k")
EMBED = ("attached",)  # measured and printed by _attached_table


def _measure(fn, repeat: int) -> float | None:
    """Best ops/s over `repeat` runs of fn; fn returns (seconds, ops)."""
    best = None
    for _ in range(repeat):
        gc.collect()
        t, ops = fn()
        rate = ops / t
        best = rate if best is None or rate > best else best
    return best


# ---------------------------------------------------------------------------
# Tcl, for orientation.
# ---------------------------------------------------------------------------

_TCL_SCRIPT = r"""
# Prints: timers <n> <microseconds>, pingpong <n> <microseconds>
proc fire {} { if {[incr ::count] == $::n} { set ::done 1 } }
proc timers {n} {
    set ::count 0; set ::n $n
    expr {srand(1)}
    set t0 [clock microseconds]
    for {set i 0} {$i < $n} {incr i} { after [expr {int(rand() * 51)}] fire }
    vwait ::done
    puts "timers $n [expr {[clock microseconds] - $t0}]"
}
proc on_a {a_in a_out} {
    read $a_in 1
    if {[incr ::count] == $::n} { set ::done 1; return }
    puts -nonewline $a_out x
}
proc on_b {b_in b_out} { read $b_in 1; puts -nonewline $b_out x }
proc pingpong {n} {
    # Two pipes make a duplex pair: a -> b and b -> a.
    lassign [chan pipe] b_in a_out
    lassign [chan pipe] a_in b_out
    foreach ch [list $a_in $a_out $b_in $b_out] {
        fconfigure $ch -blocking 0 -buffering none -translation binary
    }
    set ::count 0; set ::n $n
    fileevent $a_in readable [list on_a $a_in $a_out]
    fileevent $b_in readable [list on_b $b_in $b_out]
    set t0 [clock microseconds]
    puts -nonewline $a_out x
    vwait ::done
    puts "pingpong $n [expr {[clock microseconds] - $t0}]"
    foreach ch [list $a_in $a_out $b_in $b_out] { close $ch }
}
foreach {what n} $argv { $what $n }
"""


def run_tcl(scale: float, timer_cap: int) -> dict[str, float] | None:
    """Time the timer and ping-pong workloads in tclsh; None without tclsh.

    Tcl keeps timers in a sorted linked list (tclTimer.c), so inserting a
    random deadline is O(n): the timer count is capped at `timer_cap`.
    Ping-pong runs over two pipes (Tcl 8.6 has no socketpair).
    """
    tclsh = shutil.which("tclsh8.6") or shutil.which("tclsh")
    if tclsh is None:
        return None
    n_timers = min(max(1, int(200_000 * scale)), timer_cap)
    n_pp = max(1, int(100_000 * scale))
    with tempfile.NamedTemporaryFile("w", suffix=".tcl", delete=False) as f:
        f.write(_TCL_SCRIPT)
    try:
        out = subprocess.run([tclsh, f.name, "timers", str(n_timers), "pingpong", str(n_pp)],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    result = {}
    for line in out.splitlines():
        what, n, us = line.split()
        result[what] = (int(n), int(n) / (int(us) / 1e6))
    return result


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------

def _fmt_rate(r: float | None) -> str:
    return "n/a" if r is None else f"{r:,.0f}"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def _fmt_ns(rate: float | None, events_per_op: int) -> str:
    return "n/a" if rate is None else f"{1e9 / (rate * events_per_op):,.0f} ns"


def _profile(workloads: dict, names: list[str], impl: str, top: int) -> None:
    for name in names:
        fn = workloads[name]["runs"][impl]
        prof = cProfile.Profile()
        gc.collect()
        prof.enable()
        t, ops = fn()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n### {impl} / {name}: {workloads[name]['label']} "
              f"({ops / t:,.0f} {workloads[name]['unit']} under the profiler)\n")
        print("```")
        # Skip pstats' preamble up to the column header.
        text = out.getvalue()
        print(text[text.find("   ncalls"):].rstrip())
        print("```")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every count (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="keep the best of N runs (default 3)")
    p.add_argument("--only", action="append", default=[],
                   help=f"workload(s) to run, comma-separated; any of {', '.join(MAIN + FLAT + EMBED)}"
                        ", or 'flat' for the flatness checks")
    p.add_argument("--impl", action="append", default=[],
                   help="implementation(s) to run, comma-separated (default all)")
    p.add_argument("--profile", metavar="IMPL", choices=IMPLS,
                   help="instead of timing, run each workload once under cProfile")
    p.add_argument("--top", type=int, default=20, help="rows of profile output (default 20)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time with perf_counter (default) or process_time (steadier on a busy machine)")
    p.add_argument("--tcl", action="store_true", help="also time timers and ping-pong in tclsh")
    p.add_argument("--tcl-timer-cap", type=int, default=20_000,
                   help="most timers given to Tcl (its timer list is O(n) per insert)")
    args = p.parse_args(argv)

    global _timer
    _timer = perf_counter if args.clock == "wall" else process_time
    only = [x for arg in args.only for x in arg.split(",") if x]
    if not only:
        names = list(MAIN + FLAT + EMBED)
    else:
        names = []
        for x in only:
            if x == "flat":
                names += FLAT
            elif x in MAIN + FLAT + EMBED:
                names.append(x)
            else:
                p.error(f"unknown workload {x!r}")
    impls = [x for arg in args.impl for x in arg.split(",") if x] or list(IMPLS)
    for x in impls:
        if x not in IMPLS:
            p.error(f"unknown implementation {x!r}")
    if evloop is None or not hasattr(evloop, "Loop"):
        if "evloop" in impls or args.profile == "evloop":
            print("note: evloop is not importable; its column is n/a", file=sys.stderr)
        impls = [x for x in impls if x != "evloop"]

    _raise_nofile(5000 + 2 * ACCEPT_CONCURRENCY + 256)
    workloads = _workloads(args.scale)

    if args.profile:
        if args.profile not in impls:
            p.error(f"cannot profile {args.profile}")
        _profile(workloads, [n for n in names if n not in EMBED], args.profile, args.top)
        return 0

    print(f"Python {platform.python_version()} on {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs, selector {selectors.DefaultSelector.__name__}, "
          f"scale {args.scale}, best of {args.repeat}, {args.clock} clock")
    print("asyncio: default loop, callback style (add_reader/add_writer/call_later, "
          "plain sockets, no protocols)\n")

    results: dict[str, dict[str, float | None]] = {}
    for name in [n for n in names if n not in EMBED]:
        results[name] = {impl: None for impl in IMPLS}
        best: dict[str, float | None] = {impl: None for impl in impls}
        for _ in range(args.repeat):  # interleave implementations
            for impl in impls:
                rate = _measure(workloads[name]["runs"][impl], 1)
                if best[impl] is None or rate > best[impl]:
                    best[impl] = rate
        results[name].update(best)
        r = results[name]
        print(f"  {name}: " + ", ".join(f"{i} {_fmt_rate(r[i])}" for i in impls),
              file=sys.stderr, flush=True)

    main_names = [n for n in names if n in MAIN]
    if main_names:
        print("| workload | evloop | asyncio | minimal | evloop/asyncio | evloop/minimal |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in main_names:
            r = results[name]
            w = workloads[name]
            print(f"| {w['label']} ({w['unit']}) | {_fmt_rate(r['evloop'])} | "
                  f"{_fmt_rate(r['asyncio'])} | {_fmt_rate(r['minimal'])} | "
                  f"{_fmt_ratio(r['evloop'], r['asyncio'])} | "
                  f"{_fmt_ratio(r['evloop'], r['minimal'])} |")
        print("\nTargets: evloop/asyncio >= 1.15x, evloop/minimal >= 0.90x.")

    flat_rows = []
    if "pingpong" in results and "pingpong_idle" in results:
        flat_rows.append(("ping-pong, per event (2 per round trip)", "0 idle fds",
                          "5,000 idle fds", results["pingpong"], results["pingpong_idle"], 2))
    if "chain_1k" in results and "chain_200k" in results:
        flat_rows.append(("0 ms timer chain, per fire (one pass each)", "1k pending",
                          "200k pending", results["chain_1k"], results["chain_200k"], 1))
    if flat_rows:
        print("\nFlatness (cost per event; the ratio should stay near 1.00):\n")
        print("| check | impl | small | large | large/small |")
        print("|---|---|---:|---:|---:|")
        for label, small_l, large_l, small, large, per in flat_rows:
            for impl in impls:
                ratio = (_fmt_ratio(small[impl], large[impl]))
                print(f"| {label} | {impl} | {small_l}: {_fmt_ns(small[impl], per)} | "
                      f"{large_l}: {_fmt_ns(large[impl], per)} | {ratio} |")

    if "attached" in names and "evloop" in impls:
        _attached_table(max(1, int(100_000 * args.scale)), args.repeat)

    if args.tcl:
        tcl = run_tcl(args.scale, args.tcl_timer_cap)
        if tcl is None:
            print("\n(no tclsh found)")
        else:
            print("\nTcl 8.6, for orientation (timers: sorted linked list, count capped; "
                  "ping-pong over two pipes):\n")
            print("| workload | tclsh | evloop | ratio evloop/tcl |")
            print("|---|---:|---:|---:|")
            for what, key in (("timers", "timers"), ("pingpong", "pingpong")):
                if what in tcl:
                    n, rate = tcl[what]
                    ev = results.get(key, {}).get("evloop")
                    print(f"| {what} ({n:,}) | {_fmt_rate(rate)} | {_fmt_rate(ev)} | "
                          f"{_fmt_ratio(ev, rate)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
