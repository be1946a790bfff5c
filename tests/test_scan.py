"""scanner.scan: the Scanner and scan() on loopback and on the test subnet.

Loopback: the `lab` fixture takes one port P on every address of a /24 of
127/8 (so no other test or program can answer there): listeners on a few
addresses (open), a listener whose accept queue is full on one (the kernel
drops SYNs: silent, a timeout), and sockets bound but not listening on all
the others (refused).  The test subnet (`tnet`) gives the remaining kinds.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from conftest import Lab, open_sockets, wait_for

import evloop
from scanner.scan import MAX_CONCURRENCY, Scanner, classify, default_concurrency, scan
from scanner.targets import Targets

# The package exports the function scan() under the module's own name, so
# ``import scanner.scan as m`` gives the function; the module is looked up.
scan_mod = importlib.import_module("scanner.scan")

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lab():
    lb = Lab()
    yield lb
    lb.close()


def _let_time_pass(loop: evloop.Loop, seconds: float) -> None:
    """Run ``loop`` for ``seconds`` of its clock (fake: at once)."""
    later = evloop.Var()
    loop.after(seconds * 1000, later.set, True)
    loop.vwait(later)


# ------------------------------------------------------------ classification

@pytest.mark.parametrize("code,state", [
    (None, "open"),
    (errno.ECONNREFUSED, "refused"),
    (errno.EHOSTUNREACH, "unreachable"),
    (errno.ENETUNREACH, "unreachable"),
    (errno.EACCES, "unreachable"),
    (errno.EPERM, "unreachable"),
    (errno.EINVAL, "error"),
    (errno.ETIMEDOUT, "error"),
])
def test_classify_maps_the_connect_error_to_a_state(code, state):
    assert classify(None if code is None else OSError(code, os.strerror(code))) == state


# ------------------------------------------------------------------ loopback

def test_loopback_block_gives_open_refused_and_timeout_each_exactly_once(lab, autojump_loop):
    start = autojump_loop.time()
    results = list(scan(f"{lab.net}.0/28", lab.port, timeout=0.5, loop=autojump_loop))
    assert autojump_loop.time() - start == 0.5          # one batch, one timeout
    assert sorted(r.host for r in results) == sorted(lab.addr(n) for n in range(16))
    for r in results:
        assert r.port == lab.port
        assert r.state == lab.expected(r.host), r
        if r.state == "open":
            assert r.detail == f"{r.host}:{lab.port}"       # the peer name
        elif r.state == "refused":
            assert r.detail == os.strerror(errno.ECONNREFUSED)
        assert r.name is None


def test_results_stream_before_the_scan_ends(lab, autojump_loop):
    started = autojump_loop.time()
    it = scan([lab.addr(12), lab.addr(3)], lab.port, timeout=1.5, loop=autojump_loop)
    first = next(it)
    assert first.state == "open" and autojump_loop.time() == started
    rest = list(it)
    assert [r.state for r in rest] == ["timeout"]
    assert autojump_loop.time() - started == 1.5


def test_silent_targets_time_out_together_not_one_after_another(lab, autojump_loop):
    started = autojump_loop.time()
    seen = [(r, autojump_loop.time() - started)
            for r in scan([lab.addr(n) for n in lab.SILENT], lab.port, timeout=0.5,
                          loop=autojump_loop)]
    assert [r.state for r, _ in seen] == ["timeout"] * len(lab.SILENT)
    assert all(r.detail == "no answer within 0.5 s" for r, _ in seen)
    assert {elapsed for _, elapsed in seen} == {0.5}


def test_a_connect_started_while_others_wait_gets_its_whole_timeout(
        lab, autojump_loop, autojump_clock):
    # Two slots: the silent .12 and the open .3 start together; .3 answers
    # 0.1 s later (the test moves the clock when it does) and frees its slot
    # for the silent .13, which must not time out with .12 (timeouts are
    # shared per batch of connects, see scanner.scan).  .3 answers in the
    # pass that ends the first batch, so .13 joins it and the batch's timer
    # starts at the end of that pass: .12 waits the timeout plus that pass
    # (0.1 s here), .13 exactly its whole timeout.
    loop, timeout = autojump_loop, 0.4
    seen: list = []

    def on_result(r):
        if r.state == "open":
            autojump_clock.advance(0.1)
        seen.append((r.host, r.state, loop.time()))

    start = loop.time()
    s = Scanner([lab.addr(12), lab.addr(3), lab.addr(13)], lab.port, timeout=timeout,
                concurrency=2, loop=loop, on_result=on_result)
    s.start()
    wait_for(loop, lambda: s.finished)
    assert [(h, st, t - start) for h, st, t in seen] == [
        (lab.addr(3), "open", 0.1), (lab.addr(12), "timeout", 0.1 + timeout),
        (lab.addr(13), "timeout", 0.1 + timeout)]


def test_timeouts_need_a_few_timers_not_one_per_connect(lab, autojump_loop, autojump_clock):
    loop = autojump_loop
    s = Scanner([lab.addr(n) for n in lab.SILENT], lab.port, timeout=0.3, loop=loop)
    s.start()
    wait_for(loop, lambda: s.in_flight == len(lab.SILENT))
    assert len(set(loop.after_info()) - {autojump_clock.probe}) <= 2
    wait_for(loop, lambda: s.finished)
    assert s.counts["timeout"] == len(lab.SILENT)
    assert set(loop.after_info()) - {autojump_clock.probe} == set()


def test_many_ports_every_pair_reported_once(lab):
    ports = [lab.port, 1, 2]      # ports 1 and 2: nobody listens on 127/8 there...
    results = list(scan(f"{lab.net}.0-7", ports, timeout=1.0))
    pairs = Counter((r.host, r.port) for r in results)
    assert len(pairs) == 8 * 3 and set(pairs.values()) == {1}
    for r in results:
        if r.port == lab.port:
            assert r.state == lab.expected(r.host)
        else:
            assert r.state in ("refused", "open")   # ...unless a root service does


def test_broadcast_address_fails_at_once_and_is_unreachable():
    # connect() itself fails (ENETUNREACH, a broadcast route): no raise, the
    # error comes through ch.error() like any other.
    [r] = scan("127.255.255.255", 9, timeout=1.0)
    assert r.state == "unreachable"
    assert r.detail == os.strerror(errno.ENETUNREACH)


def test_host_name_is_resolved_and_reported_with_its_address(lab):
    [r] = scan("localhost", 9, timeout=1.0)
    assert (r.host, r.name) == ("127.0.0.1", "localhost")


def test_a_slow_name_lookup_does_not_hold_up_the_other_targets(lab, loop, monkeypatch):
    # DNS is faked (the machine has none to ask); only the name is slow.
    real = socket.getaddrinfo
    answered = threading.Event()

    def getaddrinfo(host, *args, **kwargs):
        if host == "slow.example":
            answered.wait(10)
            host = lab.addr(5)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    seen: list = []
    s = Scanner(["slow.example", lab.addr(3), lab.addr(4)], lab.port, timeout=1.0,
                loop=loop, on_result=seen.append)
    s.start()
    try:
        wait_for(loop, lambda: len(seen) == 2)
        assert {(r.host, r.state) for r in seen} == {(lab.addr(3), "open"),
                                                     (lab.addr(4), "refused")}
        assert not s.finished and s.in_flight == 1
    finally:
        answered.set()
    wait_for(loop, lambda: s.finished)
    assert (seen[2].host, seen[2].state, seen[2].name) == (lab.addr(5), "open", "slow.example")


def test_name_that_does_not_resolve_is_an_error_result():
    # .invalid fails without a DNS query (RFC 6761, scanner.targets).
    [r] = scan("no-such-host.invalid", 80, timeout=1.0)
    assert (r.host, r.port, r.state, r.name) == ("no-such-host.invalid", 80, "error",
                                                "no-such-host.invalid")


def test_name_resolving_to_an_excluded_address_is_dropped_from_the_total(loop):
    done = []
    s = Scanner("localhost", 9, timeout=1.0, exclude="127.0.0.1", loop=loop,
                on_result=done.append, on_done=lambda sc: done.append("done"))
    assert s.total == 1
    s.start()
    wait_for(loop, lambda: s.finished)
    assert done == ["done"] and (s.total, s.done, s.excluded) == (0, 0, 1)


@pytest.mark.parametrize("kwargs", [
    dict(targets="127.0.0.300", ports=80),
    dict(targets="127.0.0.1", ports=0),
    dict(targets="127.0.0.1", ports="80-70"),
    dict(targets="127.0.0.1", ports=80, timeout=0),
    dict(targets="127.0.0.1", ports=80, timeout=float("nan")),
    dict(targets="127.0.0.1", ports=80, concurrency=0),
    dict(targets="127.0.0.1 ::1/64", ports=80),
])
def test_bad_arguments_raise_value_error_before_any_connection(monkeypatch, kwargs):
    calls = []
    monkeypatch.setattr(scan_mod.evloop, "open_async", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        scan(**kwargs)
    assert calls == []


def test_nothing_is_sent_before_the_first_next(monkeypatch):
    calls = []
    monkeypatch.setattr(scan_mod.evloop, "open_async", lambda *a, **k: calls.append(a))
    it = scan("127.0.0.1", 9)
    assert calls == []
    it.close()


# ------------------------------------------------------------------ Scanner

def test_scanner_start_returns_at_once_and_done_fires_once_after_the_last_result(lab, autojump_loop):
    loop = autojump_loop
    events: list = []
    s = Scanner(f"{lab.net}.0/28", lab.port, timeout=0.5, loop=loop,
                on_result=events.append, on_done=lambda sc: events.append("done"))
    assert s.start() is s
    assert events == [] and s.done == 0 and s.total == 16
    wait_for(loop, lambda: s.finished, timeout=5)
    assert events[-1] == "done" and events.count("done") == 1
    assert len(events) == 17 and s.done == s.total == 16 and s.in_flight == 0
    assert s.counts == {"open": 3, "refused": 9, "timeout": 4, "unreachable": 0, "error": 0}
    _let_time_pass(loop, 0.6)   # nothing more: no late timeout
    assert len(events) == 17


def test_cancel_closes_sockets_in_flight_and_no_result_follows(lab, autojump_loop):
    loop = autojump_loop
    before = open_sockets()
    got: list = []
    done: list = []

    def on_result(r):
        got.append(r)
        if r.state == "open":
            s.cancel()

    # The silent address goes first so it is in flight when the open one answers.
    s = Scanner([lab.addr(12), lab.addr(3)], lab.port, timeout=2.0, loop=loop,
                on_result=on_result, on_done=done.append)
    s.start()
    wait_for(loop, lambda: s.finished, timeout=5)
    assert [r.state for r in got] == ["open"]
    assert done == [s] and s.cancelled and s.in_flight == 0
    _let_time_pass(loop, 3.0)   # past the 2 s timeout of the silent one
    assert len(got) == 1 and not open_sockets() - before


def test_closing_the_generator_early_cancels_the_scan(lab):
    before = open_sockets()
    it = scan([lab.addr(12), lab.addr(3)], lab.port, timeout=5.0)
    assert next(it).state == "open"
    it.close()
    assert not open_sockets() - before


def test_exception_in_on_result_goes_to_bgerror_and_the_scan_goes_on(lab, loop):
    errors: list = []
    loop.bgerror(errors.append)
    seen: list = []

    def on_result(r):
        seen.append(r)
        raise RuntimeError("boom")

    s = Scanner(f"{lab.net}.0-7", lab.port, timeout=1.0, loop=loop, on_result=on_result)
    s.start()
    wait_for(loop, lambda: s.finished, timeout=5)
    assert len(seen) == 8 and len(errors) == 8


# ------------------------------------------------------- descriptor shortage

def _flaky_open_async(monkeypatch, fail):
    """Make open_async raise an errno whenever ``fail(call_number)`` says."""
    real = evloop.open_async
    calls = [0]

    def fake(host, port, loop=None):
        calls[0] += 1
        code = fail(calls[0])
        if code:
            raise OSError(code, os.strerror(code))
        return real(host, port, loop)

    monkeypatch.setattr(scan_mod.evloop, "open_async", fake)
    return calls


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EAGAIN])
def test_no_resources_requeues_the_target_and_gives_the_same_results(
        lab, monkeypatch, code, jump_loop):
    spec = f"{lab.net}.0-12"            # one silent address among them
    reference = sorted(scan(spec, lab.port, timeout=0.5, loop=jump_loop))
    calls = _flaky_open_async(monkeypatch, lambda n: code if n % 3 == 0 else 0)
    again = sorted(scan(spec, lab.port, timeout=0.5, concurrency=10, loop=jump_loop))
    assert again == reference and calls[0] > 13


def test_no_resources_with_nothing_in_flight_retries_after_a_moment(lab, monkeypatch):
    # The first five attempts fail while nothing is in flight: only the
    # retry timer can bring the scan forward.
    _flaky_open_async(monkeypatch, lambda n: errno.EMFILE if n <= 5 else 0)
    results = list(scan([lab.addr(3), lab.addr(4)], lab.port, timeout=1.0, concurrency=1))
    assert [(r.host, r.state) for r in results] == [(lab.addr(3), "open"), (lab.addr(4), "refused")]


def test_other_socket_failure_is_that_targets_error(lab, monkeypatch):
    _flaky_open_async(monkeypatch, lambda n: errno.EAFNOSUPPORT if n == 1 else 0)
    results = list(scan([lab.addr(3), lab.addr(5)], lab.port, timeout=1.0, concurrency=1))
    assert [(r.state, r.detail) for r in results] == [
        ("error", os.strerror(errno.EAFNOSUPPORT)), ("open", f"{lab.addr(5)}:{lab.port}")]


# A scan under a descriptor limit, on a FakeClock that jumps (conftest).
_CHILD = """
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.path.insert(0, "tests")
import evloop
from fakeclock import FakeClock
from scanner.scan import scan
clock = FakeClock(autojump_threshold=0)         # loopback: nothing in flight to overtake
loop = clock.attach(evloop.Loop(clock=clock))
conc = None if sys.argv[4] == "none" else int(sys.argv[4])
for r in scan(sys.argv[2], int(sys.argv[3]), timeout=float(sys.argv[5]), concurrency=conc,
              loop=loop):
    print(json.dumps(list(r)))
"""


@pytest.mark.parametrize("concurrency", ["none", "1000"])
def test_low_descriptor_limit_gives_exactly_the_unconstrained_results(lab, concurrency, jump_loop):
    target = f"{lab.net}.0/24"
    reference = sorted(list(r) for r in scan(target, lab.port, timeout=0.5, loop=jump_loop))
    out = subprocess.run([sys.executable, "-c", _CHILD, "64", target, str(lab.port), concurrency, "0.5"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    constrained = sorted(json.loads(line) for line in out.stdout.splitlines())
    assert constrained == reference
    assert Counter(r[2] for r in reference) == {"refused": 237, "open": 3, "timeout": 16}


def test_default_concurrency_follows_the_descriptor_limit(monkeypatch):
    import resource
    for soft, want in [(64, 48), (1024, 1024 - 32), (20000, MAX_CONCURRENCY),
                       (resource.RLIM_INFINITY, MAX_CONCURRENCY), (4, 3)]:
        monkeypatch.setattr(scan_mod.resource, "getrlimit", lambda _r, s=soft: (s, s))
        assert default_concurrency() == want


# -------------------------------------------------------------- test subnet

def _check_against_truth(testnet_module, tnet, results, pairs):
    assert Counter((r.host, r.port) for r in results) == Counter(pairs)
    wrong = [(r, testnet_module.expected(tnet, r.host, r.port)) for r in results
             if r.state != testnet_module.expected(tnet, r.host, r.port)["result"]]
    assert wrong == []


def test_testnet_v4_block_every_kind_within_one_timeout(tnet, testnet_module, autojump_loop):
    # The silent and absent hosts time out at exactly the (fake) timeout;
    # the others answer at once (testnet turns ICMP rate limits off).
    timeout = 1.5
    started = autojump_loop.time()
    with testnet_module.inside(tnet["name"]):
        results = list(scan(tnet["subnet"], 80, timeout=timeout, loop=autojump_loop))
    elapsed = autojump_loop.time() - started
    hosts = [str(a) for a in Targets(tnet["subnet"])]
    _check_against_truth(testnet_module, tnet, results, [(h, 80) for h in hosts])
    assert elapsed == timeout
    states = Counter(r.state for r in results)
    assert set(states) == {"open", "refused", "timeout", "unreachable", "error"}
    for r in results:
        if r.state in ("unreachable", "error"):
            assert r.detail == os.strerror(errno.__dict__[
                testnet_module.expected(tnet, r.host, 80)["errno"]])


def test_testnet_several_ports_open_hosts_refuse_the_others(tnet, testnet_module, autojump_loop):
    spec = f"{tnet['subnet'].rsplit('.', 1)[0]}.1-15"
    ports = [tnet["ports"][0], 81]
    with testnet_module.inside(tnet["name"]):
        results = list(scan(spec, ports, timeout=1.0, loop=autojump_loop))
    hosts = [str(a) for a in Targets(spec)]
    _check_against_truth(testnet_module, tnet, results, [(h, p) for h in hosts for p in ports])
    opened = [r for r in results if r.state == "open"]
    assert len(opened) == 10 and all(r.detail == f"{r.host}:{r.port}" for r in opened)


def test_testnet_v6_block_matches_the_truth(tnet, testnet_module):
    # Real time: a v6 rejected host's ICMP error is kept as a soft error
    # and reported when the SYN is retried (~1 s), within the 1.5 s.
    if not tnet.get("subnet6"):
        pytest.skip("testnet without IPv6")
    prefix = tnet["subnet6"].split("/")[0]
    spec = f"{prefix}/120"
    with testnet_module.inside(tnet["name"]):
        results = list(scan(spec, 80, timeout=1.5))
    _check_against_truth(testnet_module, tnet, results,
                         [(str(a), 80) for a in Targets(spec)])
    assert any(r.state == "open" and r.detail.startswith("[") for r in results)


def test_testnet_low_descriptor_limit_gives_the_same_results(tnet, testnet_module, autojump_loop):
    with testnet_module.inside(tnet["name"]):
        reference = sorted(list(r) for r in scan(tnet["subnet"], 80, timeout=0.5, loop=autojump_loop))
    out = testnet_module.run(
        tnet["name"], [sys.executable, "-c", _CHILD, "64", tnet["subnet"], "80", "1000", "0.5"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    assert sorted(json.loads(line) for line in out.stdout.splitlines()) == reference


def test_testnet_v6_rejected_host_with_a_short_timeout_is_still_unreachable(
        tnet, testnet_module, autojump_loop):
    # The ICMPv6 error comes at once but is kept as a soft error until the
    # SYN is retried (~1 s): the socket is not writable yet when a 0.5 s
    # timeout ends (on the fake clock: a few tens of real ms), and SO_ERROR
    # read then gives the right answer.
    addrs = tnet["kinds"]["rejected"].get("addrs6")
    if not addrs:
        pytest.skip("testnet without IPv6 rejected hosts")
    with testnet_module.inside(tnet["name"]):
        results = list(scan(addrs, 80, timeout=0.5, loop=autojump_loop))
    assert sorted(r.host for r in results) == sorted(addrs)
    assert {(r.state, r.detail) for r in results} == {
        ("unreachable", os.strerror(errno.EHOSTUNREACH))}
