#!/usr/bin/env python3
"""Scanner benchmark: scanner.scan against a bare epoll loop, asyncio and nmap -sT.

A benchmark, not a test.  Every run is a fresh process timed by wall clock
(interpreter start included, as a user sees it), best of ``--repeat``:

- ``evloop``: ``scanner.scan`` (this project), default concurrency;
- ``bare epoll``: the least a Python scanner can do -- ``socket`` +
  ``connect_ex`` + one ``select.epoll``, ``SO_ERROR`` on ``EPOLLOUT``,
  timeouts by start time, the same concurrency: the floor the scanner's
  layers (evloop's channels and loop, the scanner's bookkeeping) are
  measured against;
- ``asyncio``: the straightforward asyncio scanner -- one task per target,
  ``asyncio.open_connection`` under ``asyncio.wait_for``, bounded by an
  ``asyncio.Semaphore`` of the same size as evloop's default concurrency;
- ``nmap -sT -n`` (with its host discovery) and ``nmap -sT -n -Pn``, where
  nmap is installed (``-n``: no reverse DNS, which would leave the machine),
  with the same timeout (one try, ``--max-retries 0``, answered within
  ``--initial/min/max-rtt-timeout`` of 2 s; without them nmap lowers its
  timeout to what the fast answers suggest and calls a silent host filtered
  after a fraction of a second) and the same parallelism
  (``--min-parallelism``/``--max-parallelism``: evloop's default
  concurrency).

Workloads, one port each:

- ``127.0.0.0/24`` and ``127.0.0.0/16`` on port 9 (loopback; nearly all
  refused -- the per-connect cost);
- the testnet /24 (``shared/testnet``: open, closed, silent, rejected,
  unreachable, prohibited, blackhole and absent hosts) at a 2 s timeout,
  run on the scanner side of the test namespaces; skipped where testnet is
  unavailable (not root);
- the same under ``RLIMIT_NOFILE`` 256: evloop at its default (which follows
  the limit) and at ``--concurrency 1000`` (forcing EMFILE and requeueing),
  asyncio with a semaphore of 1000 (what a script written for a normal limit
  does).

"agree" compares each run's per-host states with evloop's unconstrained run
of the same workload (nmap's ``closed`` is ``refused``; its ``filtered`` is
taken to match timeout, unreachable and error, which it does not tell
apart).  Prints a Markdown table.

Then the second cut's figures: the /16 speed against nmap ``-Pn`` and the
bare loop; the silent test subnet against one timeout; ``--rate 5000``
(connects/s achieved on a loopback /18, from the CLI's JSON summary); and
the resident memory of ``evscan 127.0.0.0/8 -p 1-10`` sampled each second
for 10 s (then SIGTERM: the summary must still come, exit 143).

Run from the repository root: ``python bench/scan.py [--repeat 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTNET_DIR = Path(os.environ.get("TESTNET_DIR", ROOT.parent / "shared" / "testnet"))
sys.path.insert(0, str(ROOT))

COARSE = {"open": "open", "refused": "refused", "closed": "refused",
          "timeout": "filtered", "unreachable": "filtered", "error": "filtered",
          "filtered": "filtered"}


# ------------------------------------------------------------------ workers

def _worker_evloop(target: str, port: int, timeout: float, concurrency: int | None) -> None:
    from scanner.scan import scan
    # Lines collected and written once, as the bare loop does.
    out = [f"{r.host} {r.state}\n" for r in scan(target, port, timeout=timeout,
                                                 concurrency=concurrency)]
    sys.stdout.write("".join(out))


def _worker_bare(target: str, port: int, timeout: float, concurrency: int | None) -> None:
    import errno
    import select
    import socket

    from scanner.scan import default_concurrency
    from scanner.targets import Targets

    conc = concurrency or default_concurrency()
    unreachable = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}
    ep = select.epoll()
    hosts = iter(Targets(target))
    flight: dict[int, tuple[socket.socket, str, float]] = {}   # in start order
    out: list[str] = []
    clock = time.monotonic
    more = True
    while more or flight:
        while more and len(flight) < conc:
            host = next(hosts, None)
            if host is None:
                more = False
                break
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.setblocking(False)
            code = s.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):      # a route refused at once
                s.close()
                out.append(f"{host} {'unreachable' if code in unreachable else 'error'}\n")
                continue
            fd = s.fileno()
            flight[fd] = (s, host, clock())
            ep.register(fd, select.EPOLLOUT)
        oldest = next(iter(flight.values()))[2] if flight else clock()
        for fd, _ in ep.poll(max(0.0, oldest + timeout - clock())):
            s, host, _ = flight.pop(fd)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            s.close()
            state = ("open" if err == 0 else "refused" if err == errno.ECONNREFUSED
                     else "unreachable" if err in unreachable else "error")
            out.append(f"{host} {state}\n")
        now = clock()
        while flight:
            fd, (s, host, started) = next(iter(flight.items()))
            if now - started < timeout:
                break
            del flight[fd]
            s.close()
            out.append(f"{host} timeout\n")
    sys.stdout.write("".join(out))


def _worker_asyncio(target: str, port: int, timeout: float, concurrency: int | None) -> None:
    import asyncio
    import errno

    from scanner.scan import default_concurrency
    from scanner.targets import Targets

    unreachable = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}

    async def probe(host: str, sem: asyncio.Semaphore) -> str:
        async with sem:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except TimeoutError:
                return "timeout"
            except ConnectionRefusedError:
                return "refused"
            except OSError as exc:
                return "unreachable" if exc.errno in unreachable else "error"
            writer.close()
            return "open"

    async def main() -> None:
        sem = asyncio.Semaphore(concurrency or default_concurrency())
        hosts = list(Targets(target))
        states = await asyncio.gather(*(probe(h, sem) for h in hosts))
        sys.stdout.write("".join(f"{h} {s}\n" for h, s in zip(hosts, states)))

    asyncio.run(main())


def _parse_nmap(text: str) -> dict[str, str]:
    # Grepable output: "Host: 127.0.0.1 ()\tPorts: 9/closed/tcp//discard///"
    states = {}
    for m in re.finditer(r"^Host: (\S+) .*?Ports: \d+/([a-z|]+)/", text, re.M):
        states[m.group(1)] = m.group(2)
    return states


# ------------------------------------------------------------------ running

def _limit(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return preexec


def _run(argv: list[str], prefix: list[str], nofile: int | None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(prefix + argv, capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=_limit(nofile) if nofile else None, timeout=600)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}: {proc.stderr[-500:]}")
    return elapsed, proc.stdout


def _impls(have_nmap: bool, port: int, timeout: float) -> dict[str, object]:
    py = [sys.executable, str(Path(__file__).resolve())]

    def ours(name: str, conc: str = "none"):
        return lambda t: (py + ["--worker", name, t, str(port), str(timeout), conc], None)

    impls: dict[str, object] = {
        "evloop": ours("evloop"),
        "bare epoll": ours("bare"),
        "asyncio": ours("asyncio"),
    }
    if have_nmap:
        from scanner.scan import default_concurrency
        parallelism = str(default_concurrency())
        ms = f"{int(timeout * 1000)}ms"
        same = ["--max-retries", "0", "--initial-rtt-timeout", ms, "--min-rtt-timeout", ms,
               "--max-rtt-timeout", ms,
               "--min-parallelism", parallelism, "--max-parallelism", parallelism]
        impls["nmap -sT -n"] = lambda t: (["nmap", "-sT", "-n", *same, "-p", str(port),
                                           "-oG", "-", t], "nmap")
        impls["nmap -sT -n -Pn"] = lambda t: (["nmap", "-sT", "-n", "-Pn", *same, "-p", str(port),
                                               "-oG", "-", t], "nmap")
    return impls


def _states(stdout: str, kind: str | None) -> dict[str, str]:
    if kind == "nmap":
        return _parse_nmap(stdout)
    return dict(line.split(" ", 1) for line in stdout.splitlines())


def _agree(states: dict[str, str], ref: dict[str, str]) -> str:
    same = sum(1 for h, s in ref.items() if COARSE.get(states.get(h, "missing")) == COARSE[s])
    if states.keys() == ref.keys() and all(states[h] == ref[h] for h in ref):
        return f"{same}/{len(ref)} exact"
    return f"{same}/{len(ref)}"


def _bench(label: str, target: str, port: int, timeout: float, repeat: int,
           prefix: list[str], have_nmap: bool, limited: bool, rows: list) -> None:
    impls = _impls(have_nmap, port, timeout)
    runs: list[tuple[str, object, int | None]] = [(n, f, None) for n, f in impls.items()]
    if limited:
        py = [sys.executable, str(Path(__file__).resolve())]
        runs += [
            ("evloop, NOFILE 256", impls["evloop"], 256),
            ("evloop, NOFILE 256, --concurrency 1000",
             lambda t: (py + ["--worker", "evloop", t, str(port), str(timeout), "1000"], None), 256),
            ("asyncio, NOFILE 256, semaphore 1000",
             lambda t: (py + ["--worker", "asyncio", t, str(port), str(timeout), "1000"], None), 256),
        ]
    best: dict[str, float] = {}
    out: dict[str, dict[str, str]] = {}
    for _ in range(repeat):                  # interleaved: drift hits all alike
        for name, make, nofile in runs:
            argv, kind = make(target)        # type: ignore[operator]
            elapsed, stdout = _run(argv, prefix, nofile)
            if elapsed < best.get(name, float("inf")):
                best[name] = elapsed
            out[name] = _states(stdout, kind)
    ref = out["evloop"]
    n = len(ref)
    for name, _, _ in runs:
        counts = Counter(COARSE[s] if name.startswith("nmap") else s for s in out[name].values())
        rows.append((label, name, best[name], n / best[name], best[name] / best["evloop"],
                     _agree(out[name], ref),
                     ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))))
        print(f"  {label:<28} {name:<40} {best[name]:7.2f} s", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--quick", action="store_true", help="skip the /16 workload")
    ap.add_argument("--no-testnet", action="store_true")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the --rate and memory runs")
    ap.add_argument("--worker", nargs=5, metavar=("IMPL", "TARGET", "PORT", "TIMEOUT", "CONC"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, target, port, timeout, conc = args.worker
        fn = {"evloop": _worker_evloop, "bare": _worker_bare}.get(impl, _worker_asyncio)
        fn(target, int(port), float(timeout), None if conc == "none" else int(conc))
        return 0

    have_nmap = shutil.which("nmap") is not None
    rows: list = []
    _bench("127.0.0.0/24 port 9", "127.0.0.0/24", 9, 2.0, args.repeat, [], have_nmap, False, rows)
    if not args.quick:
        _bench("127.0.0.0/16 port 9", "127.0.0.0/16", 9, 2.0, args.repeat, [], have_nmap, True, rows)
    testnet_note = ""
    if not args.no_testnet and (TESTNET_DIR / "testnet.py").exists():
        sys.path.insert(0, str(TESTNET_DIR))
        import testnet
        name = f"bench{os.getpid()}"
        try:
            desc = testnet.up(name)
        except testnet.Unavailable as exc:
            testnet_note = f"testnet unavailable: {exc}"
        else:
            try:
                prefix = testnet.command(name, [])
                _bench(f"testnet {desc['subnet']} port 80, 2 s", desc["subnet"], 80, 2.0,
                       args.repeat, prefix, have_nmap, True, rows)
            finally:
                testnet.down(name)

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    from scanner.scan import default_concurrency
    print(f"\n{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs,"
          f" RLIMIT_NOFILE {soft} (evloop default concurrency {default_concurrency()}),"
          f" best of {args.repeat}, wall clock of a fresh process"
          + ("" if have_nmap else "; nmap not installed") + "\n")
    print("| workload | scanner | time | targets/s | time / evloop | agree with evloop | states |")
    print("|---|---|---:|---:|---:|---|---|")
    for label, name, t, rate, ratio, agree, states in rows:
        print(f"| {label} | {name} | {t:.2f} s | {rate:,.0f} | {ratio:.2f} | {agree} | {states} |")
    if testnet_note:
        print(f"\n{testnet_note}")
    _second_cut(rows, args.no_extras)
    return 0


def _best(rows: list, label: str, name: str) -> float | None:
    for row in rows:
        if row[0] == label and row[1] == name:
            return row[2]
    return None


def _second_cut(rows: list, no_extras: bool) -> None:
    """The issue's targets, from the rows above and two more runs."""
    print("\n| figure | value | target |")
    print("|---|---:|---|")
    ours = _best(rows, "127.0.0.0/16 port 9", "evloop")
    nmap = _best(rows, "127.0.0.0/16 port 9", "nmap -sT -n -Pn")
    bare = _best(rows, "127.0.0.0/16 port 9", "bare epoll")
    if ours and nmap:
        print(f"| /16 speed vs nmap -sT -n -Pn (nmap time / ours) | {nmap / ours:.2f}x | >= 1.0x |")
    if ours and bare:
        print(f"| /16 time vs bare epoll loop (ours / bare) | {ours / bare:.2f}x | <= 1.2x |")
    for row in rows:
        if row[0].startswith("testnet") and row[1] == "evloop":
            print(f"| silent testnet /24, 2 s timeout (time / timeout) | {row[2] / 2.0:.2f}x"
                  " | <= 1.1x (process start included) |")
    if no_extras:
        return
    cmd = [sys.executable, "-m", "scanner"]
    started = time.perf_counter()
    proc = subprocess.run(cmd + ["127.0.0.0/18", "-p", "9", "--rate", "5000", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    wall = time.perf_counter() - started
    summary = json.loads(proc.stdout.splitlines()[-1])
    achieved = summary["done"] / summary["elapsed"]
    print(f"| --rate 5000 on 127.0.0.0/18 (connects/s, scan time) | {achieved:,.0f}"
          f" ({achieved / 5000 - 1:+.1%}; {summary['elapsed']:.2f} s, {wall:.2f} s with start)"
          " | within 5% of 5,000 |")
    import tempfile
    sink = tempfile.TemporaryFile()
    proc2 = subprocess.Popen(cmd + ["127.0.0.0/8", "-p", "1-10", "--json", "--timeout", "2"],
                             stdout=sink, stderr=subprocess.PIPE, cwd=ROOT)
    samples = []
    for _ in range(10):
        time.sleep(1.0)
        with open(f"/proc/{proc2.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        samples.append(rss)
    proc2.send_signal(signal.SIGTERM)
    proc2.communicate(timeout=30)
    sink.seek(max(0, sink.seek(0, 2) - 4096))
    last = json.loads(sink.read().decode().strip().splitlines()[-1])
    sink.close()
    done = (f"summary: {last['done']:,} of {last['total']:,} done,"
            f" interrupted {last['interrupted']}")
    print(f"| RSS of 127.0.0.0/8 x 10 ports, each second for 10 s (MiB) |"
          f" {' '.join(f'{k / 1024:.1f}' for k in samples)} | flat |")
    print(f"| ... then SIGTERM | exit {proc2.returncode}: {done[:90]} | 143, summary |")


if __name__ == "__main__":
    sys.exit(main())
