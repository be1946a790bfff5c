"""Fixtures every test area shares: a fresh loop, the test subnet, tclsh.

Each area (evloop, portalloc, scanner) may add its own fixtures below in a
section of its own.
"""

from __future__ import annotations

import atexit
import errno
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The shared/ folder (testnet and the design documents) sits beside the
# clone: ../shared from the repository root, or beside a folder above it;
# /work/shared where the clone was made elsewhere (CI clones into a fresh
# directory).  TESTNET_DIR overrides them.
def _find_testnet() -> Path:
    if "TESTNET_DIR" in os.environ:
        return Path(os.environ["TESTNET_DIR"])
    for place in (*ROOT.parents, Path("/work")):
        if (place / "shared" / "testnet" / "testnet.py").exists():
            return place / "shared" / "testnet"
    return ROOT.parent / "shared" / "testnet"


TESTNET_DIR = _find_testnet()


# Bytecode for the child processes.  The suite starts a few hundred Pythons
# (port managers, the command lines, examples); where PYTHONDONTWRITEBYTECODE
# is set, each would compile every module it imports from source again,
# about 40 ms a start.  The children instead share a bytecode cache of this
# session (PYTHONPYCACHEPREFIX: nothing is written beside the sources),
# removed at exit.  Python checks each cached file against its source's
# mtime and size, so an edit between runs is never missed.
_PYCACHE = tempfile.mkdtemp(prefix="evloop-tests-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)
os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from fakeclock import AUTOJUMP, FakeClock  # noqa: E402,F401  (tests import them from here)

import evloop  # noqa: E402


@pytest.fixture
def loop():
    """A fresh Loop, made the thread's default for the test, closed after."""
    lp = evloop.Loop()
    previous = evloop.set_loop(lp)
    yield lp
    evloop.set_loop(previous)
    lp.close()


# --- a clock the test drives ---
# FakeClock (tests/fakeclock.py: no pytest, so a child process can use it
# too) and its fixtures.

@pytest.fixture
def clock() -> FakeClock:
    """A FakeClock the test moves by hand (``clock.advance(s)``)."""
    return FakeClock()


@pytest.fixture
def fake_loop(clock):
    """A Loop on the ``clock`` fixture (not the thread's default)."""
    lp = clock.attach(evloop.Loop(clock=clock))
    yield lp
    lp.close()


@pytest.fixture
def autojump_clock() -> FakeClock:
    """A FakeClock that jumps after `AUTOJUMP` real seconds of nothing to do."""
    return FakeClock(autojump_threshold=AUTOJUMP)


@pytest.fixture
def autojump_loop(autojump_clock):
    """A Loop whose FakeClock jumps to the next timer whenever the loop has
    found nothing to do for `AUTOJUMP` real seconds: timeouts are exact
    (``loop.time()``) and cost no waiting.  Not the thread's default."""
    lp = autojump_clock.attach(evloop.Loop(clock=autojump_clock))
    yield lp
    lp.close()


@pytest.fixture
def jump_clock() -> FakeClock:
    """A FakeClock that jumps at once (``autojump_threshold=0``)."""
    return FakeClock(autojump_threshold=0)


@pytest.fixture
def jump_loop(jump_clock):
    """A Loop whose FakeClock jumps to the next timer whenever the loop
    would sleep for it and no I/O is ready: for loopback work, where the
    kernel has answered every connect before ``connect()`` returns.  Not
    the thread's default."""
    lp = jump_clock.attach(evloop.Loop(clock=jump_clock))
    yield lp
    lp.close()


def wait_for(loop: evloop.Loop, predicate, timeout: float = 5.0) -> None:
    """Run ``loop`` until ``predicate()`` is true; fail after ``timeout``
    real seconds (real, so a fake clock that does not move can't hang it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        loop.run_once(0.1)


def open_sockets() -> set[str]:
    """The sockets this process has open, as their ``socket:[inode]``
    names.  Compare sets, not counts: a socket of an earlier test that
    the garbage collector closes meanwhile changes the count."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:           # the one listdir itself used
            continue
        if link.startswith("socket:"):
            found.add(link)
    return found


def eventually(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds, for what another process does on
    its own schedule (a server noticing a closed connection); fail after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """Port ``port`` held on every address of a loopback /24, ``net``.0 to
    ``net``.255: a listener on the ``OPEN`` addresses, a full accept queue
    on the ``SILENT`` ones (the kernel drops further SYNs, so a connect
    hangs: a silent host), a socket bound but not listening elsewhere
    (refused).  ``held[n]`` is the socket bound on .n.  ``net`` defaults to
    a random free 127.x.y."""

    OPEN = (3, 5, 9)

    def __init__(self, net: str | None = None, silent=range(12, 28)) -> None:
        self.SILENT = tuple(silent)
        self.sockets: list[socket.socket] = []
        for _ in range(100):
            self.net = net or f"127.{random.randint(1, 254)}.{random.randint(0, 255)}"
            try:
                self._take()
                return
            except OSError as exc:
                self.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise RuntimeError("no free port on a loopback /24")

    def _take(self) -> None:
        self.port = 0
        self.held: dict[int, socket.socket] = {}
        for n in range(256):
            s = socket.socket()
            self.sockets.append(s)
            self.held[n] = s
            s.bind((self.addr(n), self.port))       # no SO_REUSEADDR: exclusive
            self.port = s.getsockname()[1]
            if n in self.OPEN:
                s.listen(64)
            elif n in self.SILENT:
                # One connection fills a backlog-0 accept queue; later SYNs
                # are dropped.
                s.listen(0)
                self.sockets.append(socket.create_connection((self.addr(n), self.port), timeout=5))

    def addr(self, n: int) -> str:
        return f"{self.net}.{n}"

    def expected(self, host: str) -> str:
        """The state a scan must report for ``host``."""
        n = int(host.rsplit(".", 1)[1])
        return "open" if n in self.OPEN else "timeout" if n in self.SILENT else "refused"

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()


class Ports:
    """Listeners and closed ports on one random loopback address, ``host``:
    ``listen(n)`` gives n listening sockets (on ``host`` or another
    address), ``closed(n)`` n ports bound but not listening (refused),
    ``silent()`` a port whose accept queue is full (SYNs dropped: a
    timeout)."""

    def __init__(self) -> None:
        self.host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        self.socks: list[socket.socket] = []

    def _bound(self, host: str | None = None) -> socket.socket:
        s = socket.socket()
        self.socks.append(s)
        s.bind((host or self.host, 0))
        return s

    def listen(self, n: int = 1, host: str | None = None) -> list[socket.socket]:
        out = []
        for _ in range(n):
            s = self._bound(host)
            s.listen(64)
            out.append(s)
        return out

    def closed(self, n: int = 1) -> list[int]:
        return [self._bound().getsockname()[1] for _ in range(n)]

    def silent(self) -> int:
        s = self._bound()
        s.listen(0)
        filler = socket.create_connection(s.getsockname(), timeout=5)
        self.socks.append(filler)
        return s.getsockname()[1]

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def ports():
    """A `Ports` on a random loopback address, closed after the test."""
    p = Ports()
    yield p
    p.close()


@pytest.fixture
def listener():
    """A plain listening socket on 127.0.0.1: (sock, port)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock, sock.getsockname()[1]
    sock.close()


@pytest.fixture
def refusing_port():
    """A port on 127.0.0.1 that surely refuses: bound by us, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def chpair(loop):
    """(channel, peer): a non-blocking Channel on one end of an AF_UNIX
    socketpair and the plain socket at the other end (blocking, 5 s
    timeout)."""
    a, b = socket.socketpair()
    b.settimeout(5)
    ch = evloop.Channel(a, loop)
    yield ch, b
    ch.close(force=True)
    b.close()


def read_until(fd: int, needle: bytes, timeout: float = 10.0) -> bytes:
    """Read descriptor ``fd`` (a pipe, a pty) until ``needle`` has come;
    return all that was read.  Fails at end of file or after ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen in {data!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before {needle!r}: {data!r}"
            data += chunk
    return data


@pytest.fixture(scope="session")
def tclsh() -> str:
    """Path of tclsh 8.6, or skip."""
    path = shutil.which("tclsh8.6") or shutil.which("tclsh")
    if path is None:
        pytest.skip("tclsh is not installed")
    return path


def _import_testnet():
    if not (TESTNET_DIR / "testnet.py").exists():
        pytest.skip(f"no testnet at {TESTNET_DIR}")
    sys.path.insert(0, str(TESTNET_DIR))
    import testnet
    return testnet


@pytest.fixture(scope="session")
def testnet_module():
    """The shared/testnet library (skip where it is missing)."""
    return _import_testnet()


@pytest.fixture(scope="session")
def tnet(testnet_module):
    """A sealed test subnet (open/closed/silent/unreachable hosts) for the
    whole session; skips where network namespaces can't be made."""
    name = f"pytest{os.getpid()}"
    try:
        desc = testnet_module.up(name)
    except testnet_module.Unavailable as exc:
        pytest.skip(f"test subnet unavailable: {exc}")
    yield desc
    testnet_module.down(name)


# --- portalloc server fixture ---
# A real `python -m portalloc.server` subprocess on a free listen port, its
# files in the test's tmp_path.  `start_portmgr(tmp_path, ...)` starts one
# with other options; the `portmgr` fixture starts one with the defaults.
# `start_original_portmgr` starts the original NSCLDAQ server (opt-in).


class PortManagerProcess:
    """A running port manager: ``.port`` (its listen port), ``.proc`` (the
    Popen), ``.paths`` (``portfile``, ``usagefile``, ``log``, ``pidfile``:
    Paths), ``.low``/``.high`` (the range it hands out)."""

    def __init__(self, proc, port, paths, low, high):
        self.proc, self.port, self.paths = proc, port, paths
        self.low, self.high = low, high

    def connect(self, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
        """A blocking client socket connected to the server."""
        return socket.create_connection((host, self.port), timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the server and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def usage(self) -> str:
        return self.paths.usagefile.read_text()


def start_portmgr(tmp_path, *extra: str, ports: str = "21001-21100",
                  timeout: float = 10.0, prefix=(), **popen) -> PortManagerProcess:
    """Start ``python -m portalloc.server --listen 0`` with every file under
    ``tmp_path``; wait until it has written its listen port.  ``extra`` are
    more options; ``prefix`` is put before the command (``ip netns exec
    NS``); ``popen`` goes to Popen (stderr is a pipe unless given)."""
    return _spawn_portmgr(tmp_path, *extra, ports=ports, prefix=prefix, **popen).ready(timeout)


class _Starting:
    """A port manager process started and not yet waited for."""

    def __init__(self, proc, paths, ports: str) -> None:
        self.proc, self.paths, self.ports = proc, paths, ports

    def ready(self, timeout: float = 10.0) -> PortManagerProcess:
        """Wait until it serves; the running `PortManagerProcess`."""
        proc, paths = self.proc, self.paths
        deadline = time.monotonic() + timeout
        # Started means both files are there: the port file is written once
        # the server listens, the first (empty) usage file in its first
        # pass, a moment later.  Nothing else tells: a start takes ~50 ms,
        # mostly imports, so poll often.
        while not (paths.portfile.exists() and paths.usagefile.exists()):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"port manager exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("port manager did not start")
            time.sleep(0.002)
        low, high = (int(x) for x in self.ports.split("-"))
        return PortManagerProcess(proc, int(paths.portfile.read_text()), paths, low, high)


def _spawn_portmgr(tmp_path, *extra: str, ports: str = "21001-21100", prefix=(),
                   **popen) -> _Starting:
    paths = SimpleNamespace(portfile=tmp_path / "listen.port", usagefile=tmp_path / "ports.txt",
                         log=tmp_path / "portmanager.log", pidfile=tmp_path / "portmgr.pid")
    argv = [*prefix, sys.executable, "-m", "portalloc.server", "--listen", "0", "--ports", ports,
            "--portfile", str(paths.portfile), "--usagefile", str(paths.usagefile),
            "--log", str(paths.log), "--pidfile", str(paths.pidfile), *extra]
    popen.setdefault("cwd", str(ROOT))
    popen.setdefault("stderr", subprocess.PIPE)
    return _Starting(subprocess.Popen(argv, **popen), paths, ports)


def start_original_portmgr(tmp_path, tclsh: str, ports: str,
                           timeout: float = 10.0) -> PortManagerProcess:
    """Start NSCLDAQ's own DaqPortManager.tcl from ``$NSCLDAQ_SERVER_DIR`` (a
    directory with ``bin/DaqPortManager.tcl`` and ``TclLibs/``, tcllib
    installed), or skip.  It writes /var/tmp/daqportmgr/ports.txt whatever
    it is told, so it runs in a private mount namespace with a tmpfs there;
    ``.paths.usagefile`` reaches that file through /proc."""
    root = Path(os.environ.get("NSCLDAQ_SERVER_DIR") or "/nonexistent")
    if not (root / "bin" / "DaqPortManager.tcl").exists():
        pytest.skip("set NSCLDAQ_SERVER_DIR to the original port manager's directory")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /var/tmp")
    listen = free_port()
    paths = SimpleNamespace(portfile=tmp_path / "listen.port", log=tmp_path / "portmanager.log",
                         pidfile=tmp_path / "portmgr.pid")
    inner = (f"mount -t tmpfs none /var/tmp && mkdir -p /var/tmp/daqportmgr && exec {tclsh} "
             f"{root / 'bin' / 'DaqPortManager.tcl'} -listen {listen} -ports {ports} "
             f"-log {paths.log} -portfile {paths.portfile} -pidfile {paths.pidfile}")
    # unshare and sh exec, so the process is tclsh itself.
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", inner],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    paths.usagefile = Path(f"/proc/{proc.pid}/root/var/tmp/daqportmgr/ports.txt")
    deadline = time.monotonic() + timeout
    # It writes the port file before it listens: wait for a connect.
    while True:
        if proc.poll() is not None:
            pytest.skip(f"original port manager did not start: {proc.stderr.read()[:200]!r}")
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("original port manager did not start listening")
            time.sleep(0.01)
    low, high = (int(x) for x in ports.split("-"))
    return PortManagerProcess(proc, listen, paths, low, high)


class Peer:
    """A blocking client connection to a port manager that reads its
    ``\\r\\n``-terminated replies (names may hold lone surrogates, sent
    and read as Tcl does: UTF-8 with surrogatepass)."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None,
                 timeout: float = 10.0) -> None:
        src = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=src)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def ask(self, request: str) -> str:
        self.send(request + "\n")
        return self.readline().decode("utf-8", "surrogatepass")

    def gimme(self, app: str, user: str = "fox") -> int:
        from portalloc.protocol import format_list, parse_list
        reply = self.ask(format_list(("GIMME", app, user)))
        status, port = parse_list(reply)
        assert status == "OK", reply
        return int(port)

    def list(self) -> list[list[str]]:
        from portalloc.protocol import parse_list
        self.send("LIST\n")
        status, count = parse_list(self.readline().decode())
        assert status == "OK"
        return [parse_list(self.readline().decode()) for _ in range(int(count))]

    def rest_until_closed(self) -> bytes:
        """Everything the server still sends, up to its close (EOF or reset)."""
        data = self.buf
        self.buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def closed_by_server(self, timeout: float) -> bool:
        """Wait until the server closes the connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def listed(pm) -> list:
    """The allocations a port manager lists now (``Allocation``s)."""
    from portalloc import PortAllocator
    with PortAllocator("localhost", pm.port) as pa:
        return pa.list_ports()


# The `portmgr` fixture's managers start ahead: when a test takes one,
# another is started, so that `_AHEAD` of them boot (~50 ms of imports
# each) on the other core while tests run.  Each is still a fresh process
# that nobody has talked to, started the same way, its files in a
# directory of its own (``.paths``); its environment is this session's (a
# test's monkeypatched variables never reach it).  Those left are killed
# at the end.
_SESSION_ENV = dict(os.environ)
_AHEAD = 2


@pytest.fixture(scope="session")
def _next_portmgrs(tmp_path_factory):
    """(queue of `_Starting` managers, the function that starts one)."""
    def spawn() -> _Starting:
        return _spawn_portmgr(tmp_path_factory.mktemp("portmgr"), env=_SESSION_ENV)

    queue: list[_Starting] = []
    yield queue, spawn
    for starting in queue:
        starting.proc.kill()
        starting.proc.wait(10)
        starting.proc.stderr.close()


@pytest.fixture
def portmgr(_next_portmgrs):
    """A port manager subprocess (ports 21001-21100, listen port picked by
    the kernel), never used before the test; killed after the test if
    still running."""
    queue, spawn = _next_portmgrs
    pm = (queue.pop(0) if queue else spawn()).ready()
    while len(queue) < _AHEAD:
        queue.append(spawn())
    yield pm
    if pm.proc.poll() is None:
        pm.proc.kill()
    pm.proc.wait(10)
    if pm.proc.stderr:
        pm.proc.stderr.close()


@pytest.fixture
def full_portmgr(tmp_path):
    """A port manager with one port in its range, held by a client (the
    application ``hog``) for the whole test: every other GIMME fails."""
    from portalloc import PortAllocator
    port = free_port()
    pm = start_portmgr(tmp_path, ports=f"{port}-{port}")
    try:
        with PortAllocator("localhost", pm.port) as hog:
            hog.allocate_port("hog")
            yield pm
    finally:
        pm.stop()


# --- X display fixture (Tk tests) ---
# A private Xvfb server for the session, on a display number nobody uses
# (no socket, no lock file; other test runs may share /tmp), counted from
# one that depends on our pid so that parallel runs start apart.  Xvfb
# writes the number to a pipe once it accepts connections (-displayfd): no
# sleeping.  If the number was taken meanwhile, Xvfb exits and the next
# one is tried.



def _x_free(n: int) -> bool:
    if Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists():
        return False
    try:                                     # abstract sockets: no file to see
        with open("/proc/net/unix") as f:
            return f"@/tmp/.X11-unix/X{n}\n" not in f.read()
    except OSError:
        return True


def _start_xvfb(xvfb: str, n: int):
    """Xvfb on display ``n``; (process, True) once it is ready, or
    (None, False) if it exited or did not start within 10 s."""
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        [xvfb, f":{n}", "-displayfd", str(wfd), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(wfd)
    # Xvfb writes the number and the newline separately, and dies if the
    # pipe is closed between the two: read up to the newline.
    said, deadline = b"", time.monotonic() + 10.0
    try:
        while not said.endswith(b"\n"):
            ready, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(rfd, 64) if ready else b""
            if not chunk:
                break                        # exited, or too slow
            said += chunk
    finally:
        os.close(rfd)
    said = said.decode().strip()
    if said == str(n) and Path(f"/tmp/.X11-unix/X{n}").exists():
        return proc, True
    proc.kill()
    proc.wait(10)
    return None, False


@pytest.fixture(scope="session")
def xdisplay():
    """The name (``:N``) of a running Xvfb display; skips where Xvfb or
    tkinter is missing or Tk can't open the display."""
    try:
        import tkinter
    except ImportError:
        pytest.skip("tkinter is not available")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed")
    proc, first = None, 100 + os.getpid() % 800
    for n in range(first, first + 50):
        if _x_free(n):
            proc, ok = _start_xvfb(xvfb, n)
            if ok:
                break
    if proc is None:
        pytest.skip("Xvfb did not start")
    display = f":{n}"
    try:
        probe = tkinter.Tk(screenName=display)
        probe.update_idletasks()            # no idle ttk work left for a later root
        probe.destroy()
    except tkinter.TclError as exc:
        proc.kill()
        proc.wait(10)
        pytest.skip(f"Tk can't open the Xvfb display: {exc}")
    yield display
    proc.terminate()
    proc.wait(10)
