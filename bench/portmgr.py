#!/usr/bin/env python3
"""Port manager benchmark: portalloc.server against the original NSCLDAQ server.

A benchmark, not a test; nothing in CI runs it.  It puts the same load on

- ``ours``: ``python -m portalloc.server`` (this project, on evloop);
- ``original``: NSCLDAQ's ``DaqPortManager.tcl`` under ``tclsh``, from the
  directory named by ``--original`` or ``$NSCLDAQ_SERVER_DIR`` (it holds
  ``bin/DaqPortManager.tcl`` and ``TclLibs/``; tcllib's snit and log must be
  installed).  The original writes ``/var/tmp/daqportmgr/ports.txt`` whatever
  it is told, so it runs in a private mount namespace with a tmpfs on
  ``/var/tmp`` (``unshare -m``, root only), as tests/conftest.py runs it.
  Without the directory, or without root, its column is skipped.  Its
  source is public (NSCLDAQ, GPL) and is not part of this repository: the
  directory holds ``bin/DaqPortManager.tcl`` and, in ``TclLibs/``,
  ``ConnectionManager.tcl``, ``PortManager.tcl``, ``Log.tcl`` and a
  ``pkgIndex.tcl`` made with ``pkg_mkIndex``;
- ``trivial``: a server written in this file with bare ``select.epoll``
  that answers ``GIMME`` with a counter and ``LIST`` with a canned reply of
  the right length in one ``send``.  It does none of a port manager's work,
  so its figures are the ceiling this load generator can measure at all:
  where ``ours`` comes close to it, the generator, not the server, is the
  limit.

Workloads, all on 127.0.0.1:

gimme
    ``--clients`` (500) clients start at once; each connects, sends
    ``GIMME svcK bench`` (25 application names, so LIST numbers repeats
    ``svcK_1``, ``svcK_2`` ...) and holds its connection.  Once all have
    their reply, one LIST must show exactly the ports they were given; then
    all close, and LIST is asked until it is empty ("freed" is the time
    from the closes to the empty LIST).  ``--rounds`` (5) rounds.  GIMME/s
    = clients served per second, connect included; latency = GIMME sent
    to reply read.
list
    With the last round's clients holding (500 entries), ``--list-conns``
    (8) connections send LIST back to back for ``--list-seconds`` (3) s,
    one request in flight each.  LIST/s = replies per second.
verify-user (ours only)
    The gimme workload again on a fresh ``ours`` and a fresh ``ours
    --verify-user`` (which asks the kernel who owns each client's socket --
    ours asks in both, for the log -- and compares it with the user named),
    alternating, ``--rounds`` rounds each: the cost of the check, as GIMME/s
    and server CPU per GIMME.
slowloris
    The gimme workload on a fresh server while ``--slowloris`` (1,000)
    connections are held open, each having sent half a request line and
    nothing more (the idle timeout, 60 s, is longer than the run): GIMME/s
    beside the same server's without them.  Afterwards the slow connections
    must still be open (or, for ours, closed only by its idle timeout).
holders
    A fresh server with 11,000 ports; ``--holders`` (10,000) clients, 500
    connecting at a time, each takes a port and holds it.  Reports how many
    hold a port at the end and the server's resident memory (VmRSS, at
    1,000 holders and at the end, and VmHWM, its peak).  The original uses select(), which cannot watch a
    descriptor past 1023 (FD_SETSIZE): it aborts near 1,015 clients.

The last column says how many times better ours is where both ran:
ours/original for rates, original/ours for latency, CPU and memory.
"server CPU"
is the server process's user+system time per request (from /proc), which
the machine's other work disturbs less than wall time; "generator CPU" is
this process's CPU time over wall time in the phase: near 100 %, the
generator was the bottleneck.  Every server gets ``RLIMIT_NOFILE`` at the
hard limit, and writes its files (usage file, log) to a tmpfs.

Run from the repository root, one benchmark at a time on the machine::

    flock /tmp/bench.lock python bench/portmgr.py [--original DIR] [--quick]
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import quantiles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portalloc.protocol import parse_list  # noqa: E402

HOST = "127.0.0.1"
GIMME_RANGE = (23001, 24000)     # below the ephemeral range: the clients'
HOLDERS_RANGE = (10001, 21000)   # own ports never collide with the pool
APPS = 25                        # distinct application names per round
WINDOW = 500                     # clients connecting at once, holders phase
TIMEOUT = 60.0                   # seconds without progress: give up


# ------------------------------------------------------------------ servers

@dataclass
class Server:
    """A server process under test, listening on ``port``."""

    name: str
    proc: subprocess.Popen
    port: int
    workdir: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        """User + system seconds the server has used so far."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the server, in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        values = {k: int(v.split()[0]) for k, _, v in
                  (line.partition(":") for line in status.splitlines()) if k in ("VmRSS", "VmHWM")}
        return values["VmRSS"], values["VmHWM"]

    def stop(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _nofile_at_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _wait_listening(proc: subprocess.Popen, port: int, name: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} server exited with status {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{name} server did not start listening") from None
            time.sleep(0.02)


def _workdir() -> Path:
    # A tmpfs for the servers' files, so that no disk is measured.
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix="portmgr-bench-", dir=base))


def start_ours(ports: tuple[int, int], *extra: str) -> Server:
    work, port = _workdir(), _free_port()
    argv = [sys.executable, "-m", "portalloc.server", "--listen", str(port),
            "--ports", f"{ports[0]}-{ports[1]}",
            "--portfile", str(work / "listen.port"), "--usagefile", str(work / "ports.txt"),
            "--log", str(work / "portmanager.log"), "--pidfile", str(work / "pm.pid"), *extra]
    proc = subprocess.Popen(argv, cwd=ROOT, preexec_fn=_nofile_at_hard_limit,
                            stdout=subprocess.DEVNULL)
    _wait_listening(proc, port, "ours")
    return Server("ours", proc, port, work)


def start_original(ports: tuple[int, int], directory: Path) -> Server:
    work, port = _workdir(), _free_port()
    tclsh = shutil.which("tclsh8.6") or shutil.which("tclsh")
    inner = (f"mount -t tmpfs none /var/tmp && mkdir -p /var/tmp/daqportmgr && exec {tclsh} "
             f"{directory / 'bin' / 'DaqPortManager.tcl'} -listen {port} "
             f"-ports {ports[0]}-{ports[1]} -log {work / 'portmanager.log'} "
             f"-portfile {work / 'listen.port'} -pidfile {work / 'pm.pid'}")
    # unshare and sh both exec, so the Popen's pid is tclsh's own.
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", inner], preexec_fn=_nofile_at_hard_limit,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_listening(proc, port, "original")
    return Server("original", proc, port, work)


def start_trivial(ports: tuple[int, int]) -> Server:
    work, port = _workdir(), _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--trivial-server", str(port),
                             str(ports[0])], preexec_fn=_nofile_at_hard_limit)
    _wait_listening(proc, port, "trivial")
    return Server("trivial", proc, port, work)


def original_unavailable(directory: Path | None) -> str | None:
    """Why the original can't run here, or None."""
    if directory is None:
        return "no --original DIR or NSCLDAQ_SERVER_DIR"
    if not (directory / "bin" / "DaqPortManager.tcl").exists():
        return f"{directory}/bin/DaqPortManager.tcl not found"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare (it writes /var/tmp/daqportmgr)"
    tclsh = shutil.which("tclsh8.6") or shutil.which("tclsh")
    if tclsh is None:
        return "tclsh not found"
    check = subprocess.run([tclsh], input="package require snit; package require log",
                           text=True, capture_output=True)
    if check.returncode != 0:
        return "tcllib (snit, log) is not installed"
    return None


def _trivial_server(port: int, first_port: int) -> None:
    """The ceiling: epoll, one recv and one send per event, nothing else.

    It keeps only a count of the ports handed out, so that LIST has the
    right number of lines (all canned, cached per count).
    """
    listener = socket.create_server((HOST, port), backlog=socket.SOMAXCONN)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, list] = {}          # fd -> [socket, unread bytes, ports held]
    held, counter = 0, 0
    lists: dict[int, bytes] = {}
    while True:
        for fd, _ in ep.poll():
            if fd == listener.fileno():
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[sock.fileno()] = [sock, b"", 0]
                    ep.register(sock.fileno(), select.EPOLLIN)
                continue
            conn = conns[fd]
            try:
                data = conn[0].recv(65536)
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                conn[0].close()
                held -= conn[2]
                del conns[fd]
                continue
            *lines, conn[1] = (conn[1] + data).split(b"\n")
            out = []
            for line in lines:
                if line.startswith(b"GIMME"):
                    out.append(b"OK %d\r\n" % (first_port + counter % 10000))
                    counter += 1
                    held += 1
                    conn[2] += 1
                else:
                    reply = lists.get(held)
                    if reply is None:
                        reply = lists[held] = b"OK %d\r\n" % held + b"".join(
                            b"%d svc bench\r\n" % (first_port + i) for i in range(held))
                    out.append(reply)
            conn[0].sendall(b"".join(out))       # blocking socket: it all goes


# ------------------------------------------------------------ the load

@dataclass
class Holding:
    """Clients that asked for a port at once, and what came of it."""

    socks: list[socket.socket] = field(default_factory=list)   # holding a port
    ports: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)        # GIMME -> reply, s
    failures: Counter = field(default_factory=Counter)
    elapsed: float = 0.0


def hold(server: Server, n: int, window: int) -> Holding:
    """Start ``n`` clients, at most ``window`` at a time between connect and
    reply; each sends one GIMME and keeps its connection if it got a port."""
    result = Holding()
    ep = select.epoll()
    pending: dict[int, list] = {}       # fd -> [socket, time GIMME sent or 0, reply, index]
    started = done = 0
    t0 = last_progress = time.perf_counter()
    while done < n:
        while started < n and len(pending) < window:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((HOST, server.port))
            if err not in (0, errno.EINPROGRESS):
                result.failures[f"connect: {os.strerror(err)}"] += 1
                sock.close()
                done += 1
            else:
                pending[sock.fileno()] = [sock, 0.0, b"", started]
                ep.register(sock.fileno(), select.EPOLLOUT)
            started += 1
        events = ep.poll(1.0)
        now = time.perf_counter()
        if events:
            last_progress = now
        elif now - last_progress > TIMEOUT or not server.alive:
            for sock, *_ in pending.values():
                result.failures["no reply (server gone or stuck)"] += 1
                sock.close()
            done += len(pending)
            pending.clear()
            break
        for fd, _ in events:
            entry = pending[fd]
            sock = entry[0]
            failure = None
            if entry[1] == 0.0:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failure = f"connect: {os.strerror(err)}"
                else:
                    sock.send(b"GIMME svc%d bench\n" % (entry[3] % APPS))
                    entry[1] = time.perf_counter()
                    ep.modify(fd, select.EPOLLIN)
                    continue
            else:
                try:
                    data = sock.recv(256)
                except OSError as exc:
                    data, failure = b"", f"reply: {exc.strerror}"
                if data:
                    entry[2] += data
                    if not entry[2].endswith(b"\n"):
                        continue
                    result.latencies.append(time.perf_counter() - entry[1])
                    words = entry[2].split()
                    if words[:1] == [b"OK"]:
                        ep.unregister(fd)
                        del pending[fd]
                        result.socks.append(sock)
                        result.ports.append(int(words[1]))
                        done += 1
                        continue
                    failure = entry[2].decode(errors="replace").strip()
                elif failure is None:
                    failure = "reply: connection closed"
            ep.unregister(fd)
            del pending[fd]
            sock.close()
            result.failures[failure] += 1
            done += 1
    result.elapsed = time.perf_counter() - t0
    ep.close()
    return result


def list_once(server: Server) -> list[list[str]]:
    """One LIST on a fresh connection: its entries, as Tcl lists."""
    with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"LIST\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{server.name}: connection closed during LIST")
            data += chunk
            lines = data.split(b"\r\n")
            head = parse_list(lines[0].decode()) if len(lines) > 1 else None
            if head is not None:
                if head[0] != "OK":
                    raise RuntimeError(f"{server.name}: LIST answered {lines[0]!r}")
                if len(lines) > int(head[1]) + 1:
                    return [parse_list(line.decode()) for line in lines[1:int(head[1]) + 1]]


def release(server: Server, holding: Holding) -> float:
    """Close every holder; return the seconds until LIST shows nothing."""
    t0 = time.perf_counter()
    for sock in holding.socks:
        sock.close()
    holding.socks.clear()
    while list_once(server):
        if time.perf_counter() - t0 > TIMEOUT:
            raise RuntimeError(f"{server.name}: ports still held {TIMEOUT:.0f} s after release")
    return time.perf_counter() - t0


@dataclass
class ListLoad:
    replies: int = 0
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    wrong: int = 0          # replies whose first line was not OK <expected>


def list_load(server: Server, conns: int, seconds: float, expected: int) -> ListLoad:
    """``conns`` connections sending LIST back to back for ``seconds``."""
    result = ListLoad()
    ep = select.epoll()
    head = b"OK %d\r\n" % expected
    state: dict[int, list] = {}     # fd -> [socket, time sent, newlines seen, reply so far]
    for _ in range(conns):
        sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        sock.setblocking(False)
        ep.register(sock.fileno(), select.EPOLLIN)
        state[sock.fileno()] = [sock, 0.0, 0, bytearray()]
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    for entry in state.values():
        entry[0].send(b"LIST\n")
        entry[1] = time.perf_counter()
    last = t0
    while state:
        events = ep.poll(TIMEOUT)
        if not events:
            raise RuntimeError(f"{server.name}: LIST replies stopped")
        for fd, _ in events:
            entry = state[fd]
            data = entry[0].recv(1 << 20)
            if not data:
                raise RuntimeError(f"{server.name}: connection closed during LIST")
            entry[2] += data.count(b"\n")
            entry[3] += data
            if entry[2] < expected + 1:
                continue
            last = time.perf_counter()
            result.latencies.append(last - entry[1])
            result.replies += 1
            result.wrong += not entry[3].startswith(head)
            entry[2] = 0
            entry[3].clear()
            if last < stop_at:
                entry[0].send(b"LIST\n")
                entry[1] = time.perf_counter()
            else:
                ep.unregister(fd)
                entry[0].close()
                del state[fd]
    result.elapsed = last - t0
    ep.close()
    return result


# ------------------------------------------------------ extra workloads

def gimme_rounds(server: Server, args) -> tuple[float, float]:
    """The gimme workload alone: (GIMME/s, server CPU µs per GIMME)."""
    served, elapsed, cpu = 0, 0.0, 0.0
    for _ in range(args.rounds):
        cpu0 = server.cpu()
        holding = hold(server, args.clients, args.clients)
        cpu += server.cpu() - cpu0
        served += len(holding.ports)
        elapsed += holding.elapsed
        release(server, holding)
    return served / elapsed, cpu / max(served, 1) * 1e6


def verify_cost(args) -> dict[str, float]:
    """GIMME/s and CPU per GIMME of ours without and with --verify-user,
    measured alternately (two servers each) so drift hits both alike."""
    fig: dict[str, list[float]] = {"plain": [], "verify": [], "plain cpu": [], "verify cpu": []}
    for _ in range(2):
        for key, extra in (("plain", ()), ("verify", ("--verify-user",))):
            server = start_ours(GIMME_RANGE, *extra)
            try:
                rate, cpu = gimme_rounds(server, args)
            finally:
                server.stop()
            fig[key].append(rate)
            fig[key + " cpu"].append(cpu)
    return {k: sum(v) / len(v) for k, v in fig.items()}


def slowloris(start, args) -> dict[str, float]:
    """GIMME/s of a fresh server without, then with ``args.slowloris``
    connections that sent half a request and stay silent."""
    server = start(GIMME_RANGE)
    try:
        base, _ = gimme_rounds(server, args)
        slow = []
        for i in range(args.slowloris):
            sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
            sock.sendall(b"GIMME slow%d be" % i)          # no line end, ever
            slow.append(sock)
        loaded, _ = gimme_rounds(server, args)
        # Still open?  A closed connection reads as EOF (or a reset) at once.
        still = 0
        for sock in slow:
            sock.setblocking(False)
            try:
                still += sock.recv(1) != b""
            except BlockingIOError:
                still += 1
            except OSError:
                pass
            sock.close()
        return {"base": base, "loaded": loaded, "still open": still}
    finally:
        server.stop()


# ------------------------------------------------------------- one server

def _pcts(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if len(latencies) < 2:
        return (latencies[0] * 1000,) * 2 if latencies else (float("nan"),) * 2
    q = quantiles(latencies, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


def bench_server(start, args) -> dict[str, object]:
    """Every workload on servers made by ``start(ports)``; the figures."""
    fig: dict[str, object] = {}
    server = start(GIMME_RANGE)
    validate = server.name != "trivial"
    try:
        lat: list[float] = []
        served = 0
        elapsed = freed = server_cpu = generator_cpu = 0.0
        failures: Counter = Counter()
        for round_no in range(args.rounds):
            cpu0, gen0 = server.cpu(), time.process_time()
            holding = hold(server, args.clients, args.clients)
            server_cpu += server.cpu() - cpu0
            generator_cpu += time.process_time() - gen0
            served += len(holding.ports)
            elapsed += holding.elapsed
            lat += holding.latencies
            failures += holding.failures
            if validate:
                listed = sorted(int(entry[0]) for entry in list_once(server))
                if listed != sorted(holding.ports) or len(set(listed)) != len(listed):
                    failures["LIST does not show exactly the ports handed out"] += 1
            if round_no < args.rounds - 1:
                freed = max(freed, release(server, holding))
        fig["gimme/s"] = served / elapsed
        fig["gimme p50"], fig["gimme p99"] = _pcts(lat)
        fig["gimme cpu"] = server_cpu / max(served, 1) * 1e6
        fig["gimme gen"] = generator_cpu / elapsed
        fig["gimme failures"] = failures

        cpu0, gen0 = server.cpu(), time.process_time()
        load = list_load(server, args.list_conns, args.list_seconds, len(holding.ports))
        fig["list/s"] = load.replies / load.elapsed
        fig["list p50"], fig["list p99"] = _pcts(load.latencies)
        fig["list cpu"] = (server.cpu() - cpu0) / max(load.replies, 1) * 1e6
        fig["list gen"] = (time.process_time() - gen0) / load.elapsed
        fig["list wrong"] = load.wrong
        fig["list entries"] = len(holding.ports)

        fig["freed"] = max(freed, release(server, holding)) * 1000
    finally:
        server.stop()

    if args.slowloris and server.name != "trivial":
        slow = slowloris(start, args)
        fig["slow base"], fig["slow loaded"] = slow["base"], slow["loaded"]
        fig["slow still"] = int(slow["still open"])

    if args.holders:
        server = start(HOLDERS_RANGE)
        try:
            rss0, _ = server.memory_kib()
            # The first thousand alone: a figure the original reaches too.
            first = min(args.holders, 1000)
            holding = hold(server, first, WINDOW)
            if server.alive and len(holding.ports) == first:
                fig["rss 1000"] = server.memory_kib()[0] / 1024
                more = hold(server, args.holders - first, WINDOW)
                holding.socks += more.socks
                holding.ports += more.ports
                holding.failures += more.failures
            fig["holders"] = len(holding.ports)
            fig["holders failures"] = holding.failures
            if server.alive:
                rss, hwm = server.memory_kib()
                fig["rss"], fig["hwm"] = rss / 1024, hwm / 1024
                fig["per holder"] = (rss - rss0) * 1024 / max(len(holding.ports), 1)
                if validate and len(list_once(server)) != len(holding.ports):
                    holding.failures["LIST count differs from the holders"] += 1
                release(server, holding)
            else:
                fig["died"] = _exit_text(server.proc.returncode)
                for sock in holding.socks:
                    sock.close()
        finally:
            server.stop()
    return fig


def _exit_text(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


# ------------------------------------------------------------------ report

def _cell(fig: dict | None, key: str, fmt: str) -> str:
    if fig is None or key not in fig:
        return "n/a"
    return fmt.format(fig[key])


def _ratio(a: dict | None, b: dict | None, key: str, higher_is_better: bool = True) -> str:
    if a is None or b is None or key not in a or key not in b or not b[key] or not a[key]:
        return ""
    r = a[key] / b[key] if higher_is_better else b[key] / a[key]
    return f"{r:.1f}x"


def report(figs: dict[str, dict | None], args) -> None:
    ours, orig, triv = figs.get("ours"), figs.get("original"), figs.get("trivial")
    rows = [
        (f"GIMME/s ({args.clients} clients, connect included)", "gimme/s", "{:,.0f}", True),
        ("GIMME latency p50, ms", "gimme p50", "{:.1f}", False),
        ("GIMME latency p99, ms", "gimme p99", "{:.1f}", False),
        ("server CPU per GIMME, µs", "gimme cpu", "{:.0f}", False),
        ("generator CPU / wall, GIMME", "gimme gen", "{:.0%}", None),
        (f"LIST/s ({args.list_conns} connections)", "list/s", "{:,.0f}", True),
        ("LIST latency p50, ms", "list p50", "{:.2f}", False),
        ("LIST latency p99, ms", "list p99", "{:.2f}", False),
        ("server CPU per LIST, µs", "list cpu", "{:.0f}", False),
        ("generator CPU / wall, LIST", "list gen", "{:.0%}", None),
        ("all ports free after disconnect, ms", "freed", "{:.0f}", None),
    ]
    if args.slowloris:
        rows += [
            ("GIMME/s, fresh server, no slow connections", "slow base", "{:,.0f}", True),
            (f"GIMME/s with {args.slowloris:,} slowloris connections open", "slow loaded",
             "{:,.0f}", True),
            (f"slowloris connections still open afterwards (of {args.slowloris:,})",
             "slow still", "{:,}", None),
        ]
    if args.holders:
        rows += [
            (f"holders reached (of {args.holders:,})", "holders", "{:,}", True),
            ("server RSS with 1,000 holders, MiB", "rss 1000", "{:.1f}", False),
            (f"server RSS with {args.holders:,} holders, MiB", "rss", "{:.1f}", False),
            ("server peak RSS (VmHWM), MiB", "hwm", "{:.1f}", False),
            ("RSS per holder, bytes", "per holder", "{:,.0f}", False),
        ]
    print()
    print("| workload | ours | original | trivial (ceiling) | ours vs original |")
    print("|---|---:|---:|---:|---:|")
    for label, key, fmt, better in rows:
        ratio = _ratio(ours, orig, key, better) if better is not None else ""
        print(f"| {label} | {_cell(ours, key, fmt)} | {_cell(orig, key, fmt)} | "
              f"{_cell(triv, key, fmt)} | {ratio} |")
    print()
    for name, fig in figs.items():
        if fig is None or name == "verify":
            continue
        notes = []
        for key in ("gimme failures", "holders failures"):
            if fig.get(key):
                notes.append(f"{key}: " + ", ".join(f"{v} x {k}" for k, v in fig[key].items()))
        if fig.get("list wrong"):
            notes.append(f"{fig['list wrong']} LIST replies with a wrong first line")
        if "died" in fig:
            notes.append(f"holders: the server {fig['died']} after {fig['holders']:,} holders")
        for note in notes:
            print(f"- {name}: {note}")
    if ours and orig:
        print()
        for what, key, target in (("GIMME/s", "gimme/s", 5), ("LIST/s", "list/s", 20)):
            r = ours[key] / orig[key]
            print(f"- {what}: ours/original = {r:.1f}x (target >= {target}x): "
                  f"{'met' if r >= target else 'NOT met'}")
    if ours and "rss" in ours:
        print(f"- {ours['holders']:,} holders: RSS {ours['rss']:.1f} MiB (target < 64 MiB): "
              f"{'met' if ours['rss'] < 64 and ours['holders'] == args.holders else 'NOT met'}")
    if ours and triv:
        for what, key in (("GIMME/s", "gimme/s"), ("LIST/s", "list/s")):
            print(f"- {what}: ours/trivial ceiling = {ours[key] / triv[key]:.2f}")
    verify = figs.get("verify")
    if verify:
        cost = 1 - verify["verify"] / verify["plain"]
        print()
        print("| --verify-user (ours, 2 servers each, alternating) | without | with | cost |")
        print("|---|---:|---:|---:|")
        print(f"| GIMME/s | {verify['plain']:,.0f} | {verify['verify']:,.0f} | {cost:.0%} |")
        print(f"| server CPU per GIMME, µs | {verify['plain cpu']:.0f} | "
              f"{verify['verify cpu']:.0f} | "
              f"{verify['verify cpu'] / verify['plain cpu'] - 1:+.0%} |")
        print(f"- --verify-user costs {cost:.0%} of GIMME/s (target <= 20%): "
              f"{'met' if cost <= 0.20 else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=Path, metavar="DIR",
                   default=os.environ.get("NSCLDAQ_SERVER_DIR") or None,
                   help="the original's directory (bin/DaqPortManager.tcl, TclLibs/); "
                        "default $NSCLDAQ_SERVER_DIR")
    p.add_argument("--clients", type=int, default=500, help="concurrent GIMME clients (500)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of GIMME clients (5)")
    p.add_argument("--list-conns", type=int, default=8, help="LIST connections (8)")
    p.add_argument("--list-seconds", type=float, default=3.0, help="LIST load duration (3)")
    p.add_argument("--holders", type=int, default=10_000,
                   help="concurrent holders for the memory figure (10000; 0 skips)")
    p.add_argument("--slowloris", type=int, default=1000,
                   help="slow connections held open during a GIMME run (1000; 0 skips)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the --verify-user cost measurement")
    p.add_argument("--only", choices=("ours", "original", "trivial"), action="append",
                   help="run only these servers")
    p.add_argument("--quick", action="store_true",
                   help="2 rounds, 1 s of LIST, 2,000 holders")
    p.add_argument("--trivial-server", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.trivial_server:
        _trivial_server(*args.trivial_server)
        return 0
    if args.quick:
        args.rounds, args.list_seconds, args.holders = 2, 1.0, min(args.holders, 2000)
    if args.clients < 1 or args.rounds < 1 or args.list_conns < 1 or args.holders < 0:
        p.error("counts must be positive")
    if args.clients > GIMME_RANGE[1] - GIMME_RANGE[0] + 1:
        p.error(f"at most {GIMME_RANGE[1] - GIMME_RANGE[0] + 1} clients")
    if args.holders > HOLDERS_RANGE[1] - HOLDERS_RANGE[0] + 1:
        p.error(f"at most {HOLDERS_RANGE[1] - HOLDERS_RANGE[0] + 1} holders")

    _nofile_at_hard_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < max(args.holders, args.clients + args.slowloris) + 100:
        p.error(f"the descriptor limit ({soft}) is too low for {args.holders} holders")
    tclsh = shutil.which("tclsh8.6") or shutil.which("tclsh")
    tcl_version = (subprocess.run([tclsh], input="puts [info patchlevel]", text=True,
                                  capture_output=True).stdout.strip() if tclsh else "none")
    print("$ " + " ".join(["python", *sys.argv]))
    print(f"python {platform.python_version()}, tclsh {tcl_version}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, Linux {platform.release()}")

    servers = args.only or ["ours", "original", "trivial"]
    why_not = original_unavailable(args.original) if "original" in servers else None
    starters = {"ours": start_ours, "trivial": start_trivial,
                "original": lambda ports: start_original(ports, args.original)}
    figs: dict[str, dict | None] = {}
    for name in ("ours", "original", "trivial"):
        if name not in servers:
            continue
        if name == "original" and why_not:
            print(f"original: skipped ({why_not})")
            figs[name] = None
            continue
        print(f"{name}: running ...", flush=True)
        figs[name] = bench_server(starters[name], args)
    if "ours" in servers and not args.no_verify:
        print("ours with and without --verify-user: running ...", flush=True)
        figs["verify"] = verify_cost(args)
    report(figs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
