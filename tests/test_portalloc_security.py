"""The port manager as an attacker on a shared host, and an operator, try it.

Each test is one finding of issue 9, written as the attack or the fault:
a symlink planted where root writes (in a private mount namespace with a
tmpfs on /var/tmp, so the host's /var/tmp is never touched), a process
running as ``nobody`` claiming to be someone else, a client streaming an
endless line, a connection storm, two servers on one pid file, logrotate's
SIGHUP, a trickling fake manager.  Tests that need root, ``unshare`` or
``setpriv`` skip where they can't have them.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, Peer, start_portmgr

import evloop
from portalloc import AsyncPortAllocator, PortAllocator, client
from portalloc.cli import main
from portalloc.client import PortManagerProtocolError, PortManagerUnavailable
from portalloc.protocol import parse_list

pytestmark = pytest.mark.timeout(30)

NOBODY = 65534


def needs_root_and(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


def as_nobody(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]



def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() == 97:
            pytest.skip("could not mount a private /var/tmp")
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"server exited with {proc.returncode}: {err}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    finally:
        if proc.stderr:
            proc.stderr.close()


def in_private_var_tmp(setup: str, argv: list[str], **popen) -> subprocess.Popen:
    """Run ``argv`` (exec'd, so the Popen's pid is its own) in a private
    mount namespace with an empty tmpfs on /var/tmp, after the shell
    commands ``setup`` (where ``$$`` is that same pid)."""
    script = f"mount -t tmpfs none /var/tmp || exit 97; {setup}\nexec \"$@\""
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script, "sh", *argv], **popen)
    return proc


def server_argv(tmp_path: Path, *extra: str) -> list[str]:
    """The server with explicit log and pid files and the default usage and
    port files (/var/tmp/daqportmgr, or the fallback under $HOME)."""
    return [sys.executable, "-m", "portalloc.server", "--listen", "0", "--ports", "21401-21450",
            "--log", str(tmp_path / "pm.log"), "--pidfile", str(tmp_path / "pm.pid"), *extra]


# ----------------------------------------------------------- files as root

def test_symlinks_planted_in_a_var_tmp_directory_of_another_user_are_never_followed(tmp_path):
    needs_root_and("unshare", "setpriv")
    # Root-owned 0600 files the attacker wants overwritten.
    victims = [tmp_path / "shadow-a", tmp_path / "shadow-b", tmp_path / "shadow-c"]
    for v in victims:
        v.write_text("root:secret\n")
        v.chmod(0o600)
    home = tmp_path / "home"
    d = "/var/tmp/daqportmgr"
    # nobody makes the directory first and plants a symlink at every name the
    # server might write: the old predictable temporary names (pid = $$), and
    # the final names.
    setup = (f"mkdir {d} && chown {NOBODY}:{NOBODY} {d} && "
             + " && ".join(f"{' '.join(as_nobody('ln', '-s', str(v), f'{d}/{name}'))}"
                           for v, name in zip(victims, ["ports.txt.tmp$$", "listen.port.tmp$$",
                                                        "ports.txt"]))
             + " || exit 98")
    proc = in_private_var_tmp(setup, server_argv(tmp_path), cwd=ROOT, stderr=subprocess.PIPE,
                              env=dict(os.environ, HOME=str(home)))
    fallback = home / ".daqportmgr"
    inside = Path(f"/proc/{proc.pid}/root{d}")
    try:
        deadline = time.monotonic() + 10
        while not ((fallback / "listen.port").exists() or (inside / "listen.port").exists()):
            if proc.poll() == 97:
                pytest.skip("could not mount a private /var/tmp")
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        for v in victims:                        # the attack failed ...
            assert v.read_text() == "root:secret\n"
        # ... because the server went to its fallback directory.
        peer = Peer(int((fallback / "listen.port").read_text()))
        port = int(parse_list(peer.ask("GIMME app fox"))[1])
        assert (fallback / "ports.txt").read_text() == f"{port}\tapp\tfox\n"
        assert oct(fallback.stat().st_mode & 0o777) == oct(0o755)
    finally:
        status = stop(proc)
    assert status == 0
    for v in victims:
        assert v.read_text() == "root:secret\n"
    log = (tmp_path / "pm.log").read_text()
    assert f"{d} is not safe to use (it belongs to uid {NOBODY}): using" in log


def test_a_world_writable_default_directory_is_refused_and_said_on_stderr(tmp_path):
    needs_root_and("unshare")
    home = tmp_path / "home"
    d = "/var/tmp/daqportmgr"
    proc = in_private_var_tmp(f"mkdir -m 1777 {d}", server_argv(tmp_path), cwd=ROOT,
                              stderr=subprocess.PIPE, env=dict(os.environ, HOME=str(home)))
    try:
        wait_for_file(home / ".daqportmgr" / "listen.port", proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert f"portalloc-server: {d} is not safe to use (it is writable by others): using " \
           f"{home / '.daqportmgr' / 'ports.txt'}\n" in err


def test_a_default_directory_the_server_makes_is_0755_whatever_the_umask(tmp_path):
    needs_root_and("unshare")
    d = "/var/tmp/daqportmgr"
    # The listing is taken inside the namespace, by a shell the server's
    # exit hands over to.
    script = (f"umask 000; \"$@\" & pid=$!; while [ ! -e {d}/listen.port ]; do sleep 0.01; done; "
              f"stat -c %a {d} > {tmp_path / 'mode'}; kill -TERM $pid; wait $pid")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs none /var/tmp || exit 97; {script}", "sh",
                             *server_argv(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE)
    status = proc.wait(15)
    if status == 97:
        pytest.skip("could not mount a private /var/tmp")
    assert status == 0, proc.stderr.read()
    proc.stderr.close()
    assert (tmp_path / "mode").read_text() == "755\n"


# ------------------------------------------------------- forged usage lines

def test_a_name_with_newline_and_tabs_cannot_forge_a_usage_line(portmgr):
    peer = Peer(portmgr.port)
    # Through a Tcl list escape, as an attacker would send it.
    reply = peer.ask('GIMME "x\\n30000\\tDaqPortManager\\troot" m')
    port = int(parse_list(reply)[1])
    usage = portmgr.usage()
    assert usage.count("\n") == 1 and usage.count("\t") == 2
    assert usage == f"{port}\tx\\n30000\\tDaqPortManager\\troot\tm\n"
    # The wire keeps the name as it was given: LIST shows it whole.
    with PortAllocator("127.0.0.1", portmgr.port) as pa:
        assert [a.application for a in pa.list_ports()] == ["x\n30000\tDaqPortManager\troot"]


# ------------------------------------------------------------ verified users

def _nobody_asks(port: int, *requests: str) -> list[str]:
    """Send each request from a process running as nobody; its replies."""
    code = ("import socket, sys\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
            "f = s.makefile('rb')\n"
            "for r in sys.argv[1:]:\n"
            "    s.sendall(r.encode() + b'\\n')\n"
            "    print(f.readline().decode().rstrip(), flush=True)\n")
    r = subprocess.run(as_nobody(sys.executable, "-c", code, *requests), capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_verify_user_refuses_a_process_claiming_to_be_another_user(tmp_path):
    needs_root_and("setpriv")
    pm = start_portmgr(tmp_path, "--verify-user")
    try:
        replies = _nobody_asks(pm.port, "GIMME daqsvc fox", "GIMME daqsvc nobody")
        assert replies[0] == f"FAIL {{user fox is not the owner of this connection (uid {NOBODY})}}"
        assert replies[1].startswith("OK ")
        # Root may name anyone (the service's own start script, say).
        root = Peer(pm.port)
        assert root.ask("GIMME daqsvc fox").startswith("OK ")
        log = pm.paths.log.read_text()
        assert "Unable to allocate a port for daqsvc run by fox because: user fox is not the " \
               f"owner of this connection (uid {NOBODY})" in log
    finally:
        pm.stop()
    log = pm.paths.log.read_text()
    assert f"allocated to daqsvc run by nobody (peer uid {NOBODY})" in log
    assert "allocated to daqsvc run by fox (peer uid 0)" in log


def test_without_verify_user_the_log_still_names_the_real_uid(portmgr):
    needs_root_and("setpriv")
    replies = _nobody_asks(portmgr.port, "GIMME daqsvc fox")
    port = int(replies[0].split()[1])
    portmgr.stop()
    assert (f"Port {port} was allocated to daqsvc run by fox (peer uid {NOBODY})"
            in portmgr.paths.log.read_text())


# --------------------------------------------------------- denial of service

def _rss_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def test_clients_streaming_endless_lines_do_not_stop_service_or_grow_memory(portmgr):
    holder = Peer(portmgr.port)
    held = int(parse_list(holder.ask("GIMME app fox"))[1])
    rss0 = _rss_kib(portmgr.proc.pid)
    done = threading.Event()
    sent = [0]

    def flood() -> None:
        chunk = b"x" * 65536
        while not done.is_set():        # reconnect whenever it is cut off
            try:
                with socket.create_connection(("127.0.0.1", portmgr.port), timeout=2) as s:
                    while not done.is_set():
                        s.sendall(chunk)
                        sent[0] += len(chunk)
            except OSError:
                pass

    flooders = [threading.Thread(target=flood) for _ in range(3)]
    for t in flooders:
        t.start()
    try:
        while sent[0] < 4 << 20:                 # the flood is under way
            time.sleep(0.01)
        worst = 0.0
        for i in range(20):                      # others are answered during it
            t0 = time.monotonic()
            peer = Peer(portmgr.port, timeout=2)
            assert len(peer.list()) == 1
            assert peer.ask(f"GIMME other{i} fox").startswith("OK ")
            peer.close()
            worst = max(worst, time.monotonic() - t0)
        assert worst < 1.0, worst
        assert _rss_kib(portmgr.proc.pid) - rss0 < 16 * 1024
    finally:
        done.set()
        for t in flooders:
            t.join(5)
    assert held in {int(row[0]) for row in holder.list()}


def test_idle_connections_at_a_low_descriptor_limit_time_out_and_let_others_in(tmp_path):
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    pm = start_portmgr(tmp_path, "--idle-timeout", "0.2", preexec_fn=low_limit)
    try:
        holder = Peer(pm.port)
        held = int(parse_list(holder.ask("GIMME app fox"))[1])
        idle = [socket.create_connection(("127.0.0.1", pm.port), timeout=5) for _ in range(200)]
        t0 = time.monotonic()
        late = Peer(pm.port, timeout=10)         # behind all 200 in the backlog
        assert late.list() == [[str(held), "app", "fox"]]
        assert time.monotonic() - t0 < 5
        # The holder was silent all that time, and still holds its port.
        assert holder.list() == [[str(held), "app", "fox"]]
        for s in idle:
            s.close()
    finally:
        pm.stop()


def test_a_connection_holding_a_port_is_never_timed_out(tmp_path):
    pm = start_portmgr(tmp_path, "--idle-timeout", "0.2")
    try:
        holder = Peer(pm.port)
        held = int(parse_list(holder.ask("GIMME app fox"))[1])
        idle = Peer(pm.port)
        assert idle.ask("LIST") == "OK 1"
        idle.readline()
        t0 = time.monotonic()
        assert idle.closed_by_server(5)          # the idle one goes ...
        assert 0.15 < time.monotonic() - t0 < 3
        assert holder.list() == [[str(held), "app", "fox"]]     # ... the holder stays
    finally:
        pm.stop()


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(tmp_path):
    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))

    pm = start_portmgr(tmp_path, preexec_fn=low_soft_limit)
    try:
        limits = Path(f"/proc/{pm.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        pm.stop()


def test_a_connection_storm_does_not_grow_the_log_beyond_its_bound(portmgr):
    linger = b"\1\0\0\0\0\0\0\0"
    for _ in range(3000):                       # connect and reset
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.connect(("127.0.0.1", portmgr.port))
        s.close()
    assert Peer(portmgr.port).list() == []      # accepted after all of them
    assert portmgr.stop() == 0
    log = portmgr.paths.log.read_text()
    assert log.count("Connection accepted") <= 25
    assert "more connection messages in 10 s were not logged" in log
    assert len(log) < 8192, len(log)


# ------------------------------------------------------ one server, one set

def _snapshot(paths) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for name in ("portfile", "usagefile", "log", "pidfile"):
        p = getattr(paths, name)
        st = p.stat()
        out[name] = (p.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def test_a_second_server_on_the_same_pid_file_exits_1_and_touches_no_file(portmgr):
    holder = Peer(portmgr.port)
    held = int(parse_list(holder.ask("GIMME app fox"))[1])
    deadline = time.monotonic() + 5              # the log is written when the server idles
    while f"Port {held} was allocated" not in portmgr.paths.log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    before = _snapshot(portmgr.paths)
    p = portmgr.paths
    r = subprocess.run([sys.executable, "-m", "portalloc.server", "--listen", "0",
                        "--ports", "21001-21100", "--portfile", str(p.portfile),
                        "--usagefile", str(p.usagefile), "--log", str(p.log),
                        "--pidfile", str(p.pidfile)],
                       cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert r.stderr == (f"portalloc-server: {p.pidfile} is locked by a running server "
                        f"(pid {portmgr.proc.pid}): not started\n")
    assert _snapshot(portmgr.paths) == before
    assert holder.list() == [[str(held), "app", "fox"]]


def test_sigterm_removes_the_listen_port_and_pid_files(portmgr):
    assert portmgr.stop(signal.SIGTERM) == 0
    assert not portmgr.paths.portfile.exists()
    assert not portmgr.paths.pidfile.exists()


def test_sighup_reopens_a_rotated_log_and_keeps_serving(portmgr):
    peer = Peer(portmgr.port)
    first = int(parse_list(peer.ask("GIMME before fox"))[1])
    rotated = portmgr.paths.log.with_name("portmanager.log.1")
    portmgr.paths.log.rename(rotated)            # logrotate's rename ...
    portmgr.proc.send_signal(signal.SIGHUP)      # ... and its postrotate
    wait_for_file(portmgr.paths.log, portmgr.proc)
    second = int(parse_list(peer.ask("GIMME after fox"))[1])
    assert portmgr.stop() == 0
    old, new = rotated.read_text(), portmgr.paths.log.read_text()
    assert f"Port {first} was allocated to before" in old
    assert "SIGHUP received: log file reopened" in new
    assert f"Port {second} was allocated to after" in new
    assert "allocated to before" not in new


# ------------------------------------------------------------- --version

def test_server_version(tmp_path):
    r = subprocess.run([sys.executable, "-m", "portalloc.server", "--version"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    name, version = r.stdout.split()
    assert name == "portalloc-server" and version[0].isdigit() and version.count(".") >= 2


# ----------------------------------------------------------- clients hang

class FakeManager:
    """A manager on loopback that answers every connection with ``reply``,
    one ``step`` bytes every ``interval`` seconds (``repeat``: for ever),
    in a thread; stops when the test ends."""

    def __init__(self, reply: bytes, step: int = 1, interval: float = 0.1,
                 repeat: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reply, self.step, self.interval, self.repeat = reply, step, interval, repeat
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:             # shut down by close()
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(100)
                while not self.done.is_set():
                    for i in range(0, len(self.reply), self.step):
                        if self.done.wait(self.interval):
                            return
                        conn.sendall(self.reply[i:i + self.step])
                    if not self.repeat:
                        self.done.wait()
            except OSError:
                pass

    def close(self) -> None:
        self.done.set()
        # shutdown() of a listening socket wakes the accept() blocked on it
        # (EINVAL) at once; close() alone would not.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.thread.join(2)
        self.listener.close()
        assert not self.thread.is_alive()


@pytest.fixture
def trickler():
    fake = FakeManager(b"OK 3\r\n30001 a fox\r\n30002 b fox\r\n30003 c fox\r\n", repeat=True)
    yield fake
    fake.close()


@pytest.fixture
def endless():
    fake = FakeManager(b"x" * 65536, step=65536, interval=0, repeat=True)
    yield fake
    fake.close()


def test_client_timeout_is_a_deadline_against_a_trickling_manager(trickler):
    pa = PortAllocator("127.0.0.1", trickler.port, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(PortManagerUnavailable, match="did not answer within 0.5 s"):
        pa.list_ports()
    assert time.monotonic() - t0 < 1.0


def test_client_refuses_an_endless_reply_line(endless):
    pa = PortAllocator("127.0.0.1", endless.port, timeout=5)
    with pytest.raises(PortManagerProtocolError, match="longer than 65536 bytes"):
        pa.list_ports()


def test_async_client_timeout_is_a_deadline_against_a_trickling_manager(loop, trickler):
    pa = AsyncPortAllocator("127.0.0.1", trickler.port, loop, timeout=0.5)
    got = evloop.Var()
    t0 = time.monotonic()
    pa.list_ports(lambda result, error: got.set(error))
    timer = loop.after(3000, got.set, "no callback")
    error = loop.vwait(got)
    loop.after_cancel(timer)
    assert isinstance(error, PortManagerUnavailable), error
    assert time.monotonic() - t0 < 1.0


def test_async_client_refuses_an_endless_reply_line(loop, endless):
    pa = AsyncPortAllocator("127.0.0.1", endless.port, loop, timeout=5)
    got = evloop.Var()
    pa.list_ports(lambda result, error: got.set(error))
    timer = loop.after(5000, got.set, "no callback")
    error = loop.vwait(got)
    loop.after_cancel(timer)
    assert isinstance(error, PortManagerProtocolError) and "longer than 65536" in str(error)


def test_portalloc_list_timeout_bounds_the_whole_command(trickler):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "portalloc", "list", "--port", str(trickler.port),
                        "--timeout", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 3
    assert r.stderr.endswith("did not answer within 0.5 s\n") and r.stderr.count("\n") == 1
    assert time.monotonic() - t0 < 2.0


# ------------------------------------------------------ finding the manager

def test_a_planted_listen_port_file_is_ignored_and_the_fallback_is_found(
        portmgr, tmp_path, monkeypatch, capsys):
    needs_root_and()
    fake = FakeManager(b"OK 1\r\n30001 daqsvc fox\r\n", step=1 << 16, interval=0)
    try:
        # nobody got to /var/tmp/daqportmgr first and wrote the fake's port.
        planted = tmp_path / "var" / "listen.port"
        planted.parent.mkdir()
        planted.write_text(f"{fake.port}\n")
        os.chown(planted, NOBODY, NOBODY)
        monkeypatch.setattr(client, "DEFAULT_PORT_FILE", str(planted))
        monkeypatch.delenv(client.PORT_FILE_ENV, raising=False)
        # The real manager fell back to ~/.daqportmgr and wrote its port there.
        home = tmp_path / "home"
        (home / ".daqportmgr").mkdir(parents=True)
        (home / ".daqportmgr" / "listen.port").write_text(f"{portmgr.port}\n")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setattr(client, "_warned", set())
        assert main(["find", "daqsvc", "--user", "fox"]) == 1      # not the fake's answer
        err = capsys.readouterr().err
        assert err.startswith(f"portalloc: ignoring {planted}: it belongs to uid {NOBODY}, "
                              "neither root nor you\n")
        assert f"127.0.0.1:{portmgr.port}" in err or f"localhost:{portmgr.port}" in err
    finally:
        fake.close()


def test_a_group_writable_or_symlinked_listen_port_file_is_ignored(tmp_path, monkeypatch, capsys):
    target = tmp_path / "real"
    target.write_text("31234\n")
    link = tmp_path / "link.port"
    link.symlink_to(target)
    writable = tmp_path / "writable.port"
    writable.write_text("31235\n")
    writable.chmod(0o664)
    monkeypatch.setattr(client, "_warned", set())
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    assert client.default_port(str(link)) == client.DEFAULT_PORT
    assert client.default_port(str(writable)) == client.DEFAULT_PORT
    assert client.default_port(str(target)) == 31234
    assert capsys.readouterr().err == (f"portalloc: ignoring {link}: it is a symbolic link\n"
                                       f"portalloc: ignoring {writable}: others can write it\n")


def test_the_kernel_names_the_owner_of_a_peer_socket_by_netlink_and_by_proc(tmp_path):
    needs_root_and("setpriv")
    from portalloc.peer import peer_uid, peer_uid_netlink, peer_uid_proc
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            listener = socket.create_server((host, 0), family=family)
        except OSError:
            continue                             # no IPv6 loopback here
        with listener:
            code = (f"import socket, sys; s = socket.create_connection(({host!r}, "
                    f"{listener.getsockname()[1]})); sys.stdin.read()")
            proc = subprocess.Popen(as_nobody(sys.executable, "-c", code), stdin=subprocess.PIPE)
            try:
                conn, _ = listener.accept()
                with conn:
                    ends = (conn.getpeername()[:2], conn.getsockname()[:2])
                    assert peer_uid_netlink(*ends) == NOBODY
                    assert peer_uid_proc(*ends) == NOBODY
                    assert peer_uid(conn) == NOBODY
            finally:
                proc.stdin.close()
                proc.wait(5)


@pytest.mark.parametrize("option", ["--pidfile", "--log"])
def test_a_pid_or_log_file_that_is_a_symlink_is_not_followed(tmp_path, option):
    victim = tmp_path / "victim"
    victim.write_text("root:secret\n")
    link = tmp_path / "planted"
    link.symlink_to(victim)
    files = {"--pidfile": tmp_path / "pm.pid", "--log": tmp_path / "pm.log",
             "--portfile": tmp_path / "listen.port", "--usagefile": tmp_path / "ports.txt"}
    files[option] = link
    r = subprocess.run([sys.executable, "-m", "portalloc.server", "--listen", "0",
                        *[x for opt, path in files.items() for x in (opt, str(path))]],
                       cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert r.stderr == f"portalloc-server: {link}: Too many levels of symbolic links\n"
    assert victim.read_text() == "root:secret\n"
    assert not (tmp_path / "listen.port").exists()


def test_no_control_character_or_line_separator_reaches_the_usage_file_raw(portmgr):
    peer = Peer(portmgr.port)
    names = ["a\\\\b", "nul\\x00", "esc\\x1b[31m", "c1\\x85x", "ls\\u2028x", "del\\x7f"]
    for name in names:
        assert peer.ask(f"GIMME {name} fox").startswith("OK ")
    usage = portmgr.usage()
    lines = usage.split("\n")[:-1]
    assert len(lines) == len(names) and all(line.count("\t") == 2 for line in lines)
    assert [line.split("\t")[1] for line in lines] == [
        "a\\\\b", "nul\\x00", "esc\\x1b[31m", "c1\\x85x", "ls\\u2028x", "del\\x7f"]
    assert usage.splitlines() == lines          # not even Python's splitlines splits one
