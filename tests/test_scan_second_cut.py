"""scanner.scan, second cut: resets after the handshake, local shortages,
the loop's clock, and the new controls (rate, shard, randomize, skip, banner).

Loopback only, on addresses of 127/8 picked at random per test, plus a
private network namespace (``unshare -n``) where the local port range is
made tiny to run out of local ports for real.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from conftest import open_sockets, wait_for

import evloop
from scanner import Scanner, classify, scan
from scanner.files import read_results_file
from scanner.order import Order, parse_shard
from scanner.scan import BANNER_MAX
from scanner.targets import Targets, iter_pairs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(30)


def _reset(listener: socket.socket) -> None:
    """Accept one connection and close it with SO_LINGER 0: the kernel
    sends RST at once (no FIN, no TIME_WAIT)."""
    listener.settimeout(5)
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# ------------------------------------------------------ reset after connect

@pytest.mark.parametrize("code", [errno.ECONNRESET, errno.EPIPE])
def test_classify_reset_after_the_handshake_is_open(code):
    assert classify(OSError(code, os.strerror(code))) == "open"


@pytest.mark.parametrize("extra_ports", [0, 6])
def test_port_that_accepts_and_resets_at_once_is_open_5_of_5(ports, loop, extra_ports):
    # The connects start in the first pass; the peer then accepts and
    # resets before the scanner's writable handler runs, so SO_ERROR reads
    # ECONNRESET -- the order that made multi-port scans say "error".
    [listener] = ports.listen()
    port = listener.getsockname()[1]
    spec = [port, *ports.closed(extra_ports)]
    for _ in range(5):
        seen: list = []
        s = Scanner(ports.host, spec, timeout=2.0, loop=loop, on_result=seen.append)
        s.start()
        loop.run_once(0)                    # the connects are started
        assert s.in_flight == len(spec)
        _reset(listener)
        wait_for(loop, lambda s=s: s.finished)
        by_port = {r.port: r for r in seen}
        assert (by_port[port].state, by_port[port].detail) == ("open", f"{ports.host}:{port}")
        assert Counter(r.state for r in seen) == Counter(open=1, refused=extra_ports)


# ------------------------------------------------------------ the loop's clock

def test_timeouts_and_elapsed_follow_the_loops_clock(ports, jump_loop):
    # A 30 s timeout on a fake clock: over at once in real time, and the
    # scanner's own measure of time (elapsed) is the loop's.
    silent = ports.silent()
    started = time.monotonic()
    results = list(scan(ports.host, silent, timeout=30.0, loop=jump_loop))
    assert [r.state for r in results] == ["timeout"]
    assert time.monotonic() - started < 2.0
    s = Scanner(ports.host, silent, timeout=30.0, loop=jump_loop)
    s.start()
    wait_for(jump_loop, lambda: s.finished)
    assert 30.0 <= s.elapsed < 30.1


def test_rate_limit_spaces_the_connects_on_the_loops_clock(ports, jump_loop):
    closed = ports.closed(21)
    starts: list[float] = []
    s = Scanner(ports.host, closed, timeout=1.0, loop=jump_loop, rate=10,
                on_result=lambda r: starts.append(jump_loop.time()))
    s.start()
    wait_for(jump_loop, lambda: s.finished)
    assert s.done == 21 and s.counts["refused"] == 21
    # 21 connects at 10 a second: the last starts 2 s after the first.
    assert 1.98 <= s.elapsed <= 2.05
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.09


def test_rate_limit_holds_in_real_time(ports, loop):
    closed = ports.closed(31)
    started = time.monotonic()
    results = list(scan(ports.host, closed, timeout=1.0, loop=loop, rate=100))
    elapsed = time.monotonic() - started
    assert len(results) == 31
    assert 0.29 <= elapsed < 0.6


def test_a_high_rate_is_reached_although_timers_wake_late(ports, loop):
    # Timers fire up to a millisecond late; a rate limit that forgot that
    # lateness at every wakeup would come out near 1000/s whatever was asked.
    closed = ports.closed(1)[0]
    base = ports.host.rsplit(".", 2)[0]
    s = Scanner(f"{base}.0.0/23", closed, timeout=1.0, loop=loop, rate=4000)
    s.start()
    wait_for(loop, lambda: s.finished)
    assert s.counts["refused"] == 512
    assert 0.11 <= s.elapsed < 0.2     # 512 at 4000/s: 0.128 s, less 10 ms let early


# ------------------------------------------------------------- local shortage

_NETNS_CHILD = r"""
import json, socket, struct, subprocess, sys
sys.path.insert(0, "tests")
import evloop
from fakeclock import FakeClock
from scanner import Scanner
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
# One usable local port for connects: a second connect to the same
# destination finds none (EADDRNOTAVAIL) while the first is held.
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40001\n")
L = socket.socket(); L.bind(("127.0.0.1", 0)); L.listen(16)
P = L.getsockname()[1]
held = socket.create_connection(("127.0.0.1", P))

mode = sys.argv[1]
clock = FakeClock(autojump_threshold=0)     # retries and timeouts pass at once
loop = clock.attach(evloop.Loop(clock=clock))
seen = []
s = Scanner("127.0.0.1", P, timeout=2.0, loop=loop, on_result=seen.append)
s.start()
if mode == "later":
    while loop.time() < 0.2:                # ten retries find no local port
        loop.run_once(0.02)
    print(json.dumps({"waiting": [s.done, s.finished]}))
    held.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    held.close()                    # RST: the local port is free at once
for _ in range(10000):
    if s.finished:
        break
    loop.run_once(0.02)
print(json.dumps({"results": [list(r[:3]) for r in seen],
                  "failure": s.failure.errno if s.failure else None,
                  "elapsed": s.elapsed}))
"""


def _in_private_netns(mode: str) -> list[dict]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace")
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", _NETNS_CHILD, mode],
                       capture_output=True, text=True, timeout=20, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip(f"no private network namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_no_local_port_delays_the_target_until_one_is_free():
    waiting, final = _in_private_netns("later")
    assert waiting == {"waiting": [0, False]}       # not an error result: waiting
    assert final["results"] == [["127.0.0.1", final["results"][0][1], "open"]]
    assert final["failure"] is None


def test_no_local_port_with_nothing_in_flight_stops_the_scan_instead_of_spinning():
    [final] = _in_private_netns("never")
    assert final["results"] == [] and final["failure"] == errno.EADDRNOTAVAIL
    assert 1.0 <= final["elapsed"] < 1.2            # loop time: about one second


_NOFILE_CHILD = r"""
import os, resource, sys
sys.path.insert(0, "tests")
import evloop
from fakeclock import FakeClock
from scanner import scan

clock = FakeClock(autojump_threshold=0)     # the second of waiting passes at once
loop = clock.attach(evloop.Loop(clock=clock))
used = len(os.listdir("/proc/self/fd")) - 1     # less listdir's own
resource.setrlimit(resource.RLIMIT_NOFILE, (used, used))
try:
    print(list(scan("127.0.0.1", 9, timeout=1.0, loop=loop)))
except OSError as exc:
    print("OSError", exc.errno)
"""


def test_scan_raises_when_not_even_one_socket_can_be_had():
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _NOFILE_CHILD], capture_output=True, text=True,
                       timeout=20, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.split() == ["OSError", str(errno.EMFILE)], r.stderr
    assert time.monotonic() - started < 1.0


# --------------------------------------------------------------- the order

def test_shards_are_disjoint_and_cover_every_pair_with_and_without_randomize():
    targets = Targets("10.0.0.0/23 10.0.9.1-9 10.0.10.0/25")
    port_list = [1, 2, 3]
    everything = list(iter_pairs(targets, port_list))
    for randomize in (False, True):
        for n in (1, 2, 5, 7):
            shards = [list(Order(targets, port_list, (i, n), randomize, seed=11))
                      for i in range(n)]
            union = [p for sh in shards for p in sh]
            assert len(union) == len(set(union)) == len(everything)
            assert set(union) == set(everything)
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_randomized_order_is_fixed_by_the_seed_and_spreads_the_targets():
    targets = Targets("10.0.0.0/16")
    a = list(itertools.islice(Order(targets, [80], randomize=True, seed=3), 64))
    b = list(itertools.islice(Order(targets, [80], randomize=True, seed=3), 64))
    c = list(itertools.islice(Order(targets, [80], randomize=True, seed=4), 64))
    assert a == b and a != c
    # No burst on one /24: 64 consecutive pairs fall in many third octets.
    assert len({h.split(".")[2] for h, _ in a}) > 40
    assert list(itertools.islice(Order(targets, [80]), 3)) == [("10.0.0.0", 80), ("10.0.0.1", 80),
                                              ("10.0.0.2", 80)]


def test_plain_order_is_the_order_iter_pairs_gives():
    targets = Targets("10.0.0.0/23 10.0.9.1-9 localhost")
    assert list(Order(targets, [5, 6])) == list(iter_pairs(targets, [5, 6]))


@pytest.mark.parametrize("randomize", [False, True])
def test_a_slash_8_times_100_ports_costs_no_list(randomize):
    tracemalloc.start()
    try:
        s = Scanner("127.0.0.0/8", "1-100", randomize=randomize, seed=1, shard=(97, 100),
                    loop=evloop.Loop())
        it = iter(s.order)
        first = [next(it) for _ in range(1000)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        s.loop.close()
    assert s.total == (1 << 24) * 100 // 100
    assert len(set(first)) == 1000
    assert peak < 2_000_000


@pytest.mark.parametrize("spec", ["3/3", "1/0", "-1/2", "a/b", "2", (3, 3), (0, 0), ("0", 2)])
def test_bad_shard_is_refused(spec):
    with pytest.raises(ValueError):
        parse_shard(spec)


@pytest.mark.parametrize("kwargs", [
    dict(rate=0), dict(rate=-5), dict(rate=float("inf")), dict(shard="3/3"),
    dict(shard=(1, 2), randomize=True), dict(banner_timeout=0), dict(seed="x", randomize=True),
])
def test_bad_controls_raise_value_error_before_any_connection(ports, kwargs):
    [listener] = ports.listen()
    listener.setblocking(False)
    with pytest.raises(ValueError):
        scan(ports.host, listener.getsockname()[1], **kwargs)
    with pytest.raises(BlockingIOError):
        listener.accept()                   # nobody connected


# ------------------------------------------------------------- skip, resume

def test_skip_leaves_out_those_pairs_and_counts_them(ports, loop):
    closed = ports.closed(4)
    skip = [(ports.host, closed[1]), (ports.host, closed[3]), ("127.0.0.1", 1)]
    s = Scanner(ports.host, closed, timeout=1.0, loop=loop, skip=skip)
    got: list = []
    s.on_result = got.append
    s.start()
    wait_for(loop, lambda: s.finished)
    assert sorted(r.port for r in got) == sorted([closed[0], closed[2]])
    assert (s.total, s.done, s.skipped) == (2, 2, 2)


def test_result_file_with_a_torn_last_line_gives_the_complete_lines(tmp_path):
    path = tmp_path / "scan.jsonl"
    path.write_text(
        json.dumps({"type": "result", "host": "127.0.0.1", "port": 22, "state": "open",
                    "detail": "x"}) + "\n"
        + json.dumps({"type": "result", "host": "0:0::1", "port": 80, "state": "refused",
                      "detail": "y", "name": "LocalHost."}) + "\n"
        + json.dumps({"type": "summary", "total": 3}) + "\n"
        + '{"type": "result", "host": "127.0.0.1", "po')
    assert read_results_file(str(path)) == {("127.0.0.1", 22), ("::1", 80), ("localhost", 80)}


@pytest.mark.parametrize("text", ["not json\n{}\n", "[1, 2]\n", '{"type": "result"}\n',
                                  "127.0.0.1:22 open 127.0.0.1:22\n"])
def test_a_file_that_is_not_jsonl_results_is_refused(tmp_path, text):
    path = tmp_path / "scan.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match="resume file"):
        read_results_file(str(path))


# ----------------------------------------------------------------- banners

def _serve_once(listener: socket.socket, payload: bytes, close: bool = True) -> threading.Thread:
    def run() -> None:
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.sendall(payload)
        if close:
            conn.close()
        else:
            held.append(conn)
    held: list = []
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_banner_is_what_the_port_says_first(ports, loop):
    a, b = ports.listen(2)
    closed = ports.closed(1)[0]
    _serve_once(a, b"SSH-2.0-test\r\n")
    _serve_once(b, b"x" * 1000 + b"\xff")
    results = {r.port: r for r in scan(ports.host, [a.getsockname()[1], b.getsockname()[1], closed],
                                       timeout=2.0, loop=loop, banner=True)}
    assert results[a.getsockname()[1]].banner == "SSH-2.0-test\r\n"
    assert results[b.getsockname()[1]].banner == "x" * BANNER_MAX
    assert (results[closed].state, results[closed].banner) == ("refused", None)
    plain = list(scan(ports.host, closed, timeout=1.0, loop=loop))
    assert plain[0].banner is None


def test_a_quiet_port_gives_an_empty_banner_after_the_banner_timeout(ports, jump_loop):
    [listener] = ports.listen()              # accepted by the kernel, never answered
    s = Scanner(ports.host, listener.getsockname()[1], timeout=1.0, loop=jump_loop,
                banner=True, banner_timeout=5.0)
    got: list = []
    s.on_result = got.append
    s.start()
    wait_for(jump_loop, lambda: s.finished)
    assert [(r.state, r.banner) for r in got] == [("open", "")]
    assert 5.0 <= s.elapsed < 5.1


def test_cancel_during_a_banner_closes_it(ports, loop):
    [listener] = ports.listen()
    before = open_sockets()
    s = Scanner(ports.host, listener.getsockname()[1], timeout=1.0, loop=loop,
                banner=True, banner_timeout=10.0)
    s.start()
    wait_for(loop, lambda: s.in_flight == 1 and loop.after_info() != [])
    loop.run_once(0.05)
    probe = open_sockets() - before
    assert probe                             # the connection reading the banner
    s.cancel()
    assert s.finished and not probe & open_sockets()


# ---------------------------------------------------- examples/scan.py race

def _load_example():
    spec = importlib.util.spec_from_file_location("scan_example", ROOT / "examples" / "scan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_handler_survives_a_reset_between_error_and_peername(ports, loop):
    # The state the race leaves: error() has said "no error" and then the
    # peer's reset arrives, so peername() fails.  Made for real: the reset
    # is taken first (reading SO_ERROR clears it), then the handler runs.
    ex = _load_example()
    [listener] = ports.listen()
    port = listener.getsockname()[1]
    ch = evloop.open_async(ports.host, port, loop)
    _reset(listener)
    wait_for(loop, lambda: ch.error() is not None)  # the reset, now consumed
    ex.nodes.set(1)
    errors: list = []
    loop.bgerror(errors.append)
    timer = loop.after(5000, ex.shutdown, ch, port)
    loop.fileevent(ch, "writable", ex.connected, ports.host, port, ch, timer)
    wait_for(loop, lambda: ex.nodes.get() == 0, timeout=3)
    assert errors == []
    assert ex.hosts == {ports.host: f"{ports.host} {ports.host} {port}"}


# ------------------------------------------------------------- test subnet

def test_testnet_banners_of_the_open_hosts(tnet, testnet_module):
    spec = f"{tnet['subnet'].rsplit('.', 1)[0]}.1-12"
    port = tnet["ports"][0]
    with testnet_module.inside(tnet["name"]):
        results = list(scan(spec, port, timeout=1.0, banner=True, banner_timeout=1.0))
    opened = {r.host: r.banner for r in results if r.state == "open"}
    assert opened == {h: f"testnet open {h} {port}\r\n" for h in Targets(
        f"{tnet['subnet'].rsplit('.', 1)[0]}.1-10")}
    assert all(r.banner is None for r in results if r.state != "open")


def test_testnet_shards_with_randomize_match_the_truth(tnet, testnet_module):
    spec = f"{tnet['subnet'].rsplit('.', 1)[0]}.1-40"
    results = []
    with testnet_module.inside(tnet["name"]):
        for i in range(3):
            results += scan(spec, 80, timeout=1.0, shard=(i, 3), randomize=True, seed=9)
    assert sorted(r.host for r in results) == sorted(Targets(spec))
    assert all(r.state == testnet_module.expected(tnet, r.host, 80)["result"] for r in results)


# ------------------------------------------------- both ways of watching

@pytest.mark.parametrize("own_epoll", [True, False])
def test_probes_watched_by_their_own_epoll_or_per_channel_give_the_same_answers(
        ports, jump_loop, monkeypatch, own_epoll):
    # Linux: the probes share one epoll the loop watches (evloop.WatchGroup);
    # elsewhere, or without a descriptor for it, the group gives each
    # channel a writable fileevent of its own.  Both must classify alike.
    scan_mod = sys.modules["scanner.scan"]
    if not own_epoll:
        monkeypatch.setattr(scan_mod, "WatchGroup",
                            functools.partial(evloop.WatchGroup, nested=False))
    [listener] = ports.listen()
    closed = ports.closed(20)
    silent = ports.silent()
    spec = [listener.getsockname()[1], silent, *closed]
    results = list(scan(ports.host, spec, timeout=0.3, loop=jump_loop, concurrency=8))
    assert Counter(r.state for r in results) == Counter(open=1, refused=20, timeout=1)
    assert jump_loop.after_info() == []
