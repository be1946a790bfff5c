"""portalloc.client against a real port manager subprocess (the ``portmgr``
fixture), and against scripted fake managers on loopback for the byte-level
details a real one never shows (a silent manager, a manager that hangs up,
bare ``\\n`` replies)."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import eventually, free_port, start_original_portmgr, start_portmgr, wait_for

from portalloc import client
from portalloc.client import (
    Allocation,
    AsyncPortAllocator,
    PortAllocationError,
    PortAllocator,
    PortManagerProtocolError,
    PortManagerUnavailable,
    login_user,
)

pytestmark = pytest.mark.timeout(30)

ME = login_user()


def listed_ports(pm) -> set[int]:
    with PortAllocator("localhost", pm.port) as observer:
        return {a.port for a in observer.list_ports()}


# ------------------------------------------------------------ round trips

def test_allocate_then_list_and_find_round_trip(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    port = pa.allocate_port("roundtrip")

    assert portmgr.low <= port <= portmgr.high
    assert Allocation(port, "roundtrip", ME) in pa.list_ports()
    assert pa.find_server("roundtrip") == port
    assert pa.find_server("roundtrip", ME) == port
    assert pa.find_server("roundtrip", "somebody-else") is None
    assert pa.find_server("no-such-service") is None
    assert pa.ports == [port]
    pa.release()


def test_several_ports_of_one_allocator_share_one_connection(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    ports = [pa.allocate_port("multi") for _ in range(3)]

    assert len(set(ports)) == 3
    assert set(ports) <= listed_ports(portmgr)
    # One connection holds them all: closing it frees all three at once.
    assert len(client._held & {pa._conn}) == 1
    pa.release()
    eventually(lambda: not set(ports) & listed_ports(portmgr))


def test_list_of_an_idle_allocator_leaves_no_connection_open(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    assert pa.list_ports() == []
    assert pa._conn is None


@pytest.mark.parametrize("name", [
    "my app", "a{b", "x}y", 'q"r', "$x[y];z", "back\\slash", "#hash", "",
    "tab\there", "trailing\\", "{braced}", "caf\u00e9 \u2615",
    "\udcff", "lone \ud800",     # surrogates (os.fsdecode's, or any): sent as Tcl does
])
def test_names_with_spaces_and_tcl_specials_survive(portmgr, name):
    with PortAllocator("localhost", portmgr.port) as pa:
        port = pa.allocate_port(name)
        assert Allocation(port, name, ME) in pa.list_ports()
        assert pa.find_server(name) == port


def test_a_user_name_with_a_space_survives(portmgr):
    with PortAllocator("localhost", portmgr.port, user="j doe") as pa:
        port = pa.allocate_port("svc")
        assert pa.find_server("svc", "j doe") == port


def test_names_with_line_breaks_are_refused_before_sending(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    for name in ("two\nlines", "cr\rhere"):
        with pytest.raises(ValueError, match="line break"):
            pa.allocate_port(name)
    assert pa._conn is None


# ---------------------------------------------------- holding and releasing

def test_ports_stay_held_after_destroy(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    port = pa.allocate_port("kept")
    pa.destroy()

    assert port in listed_ports(portmgr)
    with pytest.raises(RuntimeError, match="destroyed"):
        pa.list_ports()


def test_ports_stay_held_after_the_allocator_is_garbage_collected(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    port = pa.allocate_port("orphan")
    del pa
    gc.collect()

    assert port in listed_ports(portmgr)
    # Let the next test's manager start clean: drop what the registry holds.
    for conn in [c for c in client._held if isinstance(c, client._Connection)
                 and c.where.endswith(f":{portmgr.port}")]:
        conn.close()


def test_release_frees_the_ports(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    ports = {pa.allocate_port("short-lived"), pa.allocate_port("short-lived")}
    assert ports <= listed_ports(portmgr)

    pa.release()

    assert pa.ports == []
    eventually(lambda: not ports & listed_ports(portmgr))


def test_allocator_can_allocate_again_after_release(portmgr):
    pa = PortAllocator("localhost", portmgr.port)
    pa.allocate_port("again")
    pa.release()
    port = pa.allocate_port("again")
    assert pa.find_server("again") == port
    pa.release()


def test_context_manager_releases(portmgr):
    with PortAllocator("localhost", portmgr.port) as pa:
        port = pa.allocate_port("scoped")
        assert port in listed_ports(portmgr)
    eventually(lambda: port not in listed_ports(portmgr))


def test_ports_are_released_when_the_holding_process_exits(portmgr, tmp_path):
    # Ports are released when the process that holds them exits.
    script = tmp_path / "hold.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from portalloc.client import PortAllocator\n"
        f"pa = PortAllocator('localhost', {portmgr.port})\n"
        "print(pa.allocate_port('exiting'), flush=True)\n"
        "pa.destroy()\n"
        "sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        assert port in listed_ports(portmgr)
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: port not in listed_ports(portmgr))


# ----------------------------------------------------------------- errors

def test_no_free_ports_raises_allocation_error_with_the_reason(tmp_path):
    p = free_port()
    pm = start_portmgr(tmp_path, ports=f"{p}-{p}")
    try:
        pa = PortAllocator("localhost", pm.port)
        assert pa.allocate_port("first") == p
        with pytest.raises(PortAllocationError) as info:
            pa.allocate_port("second")
        assert info.value.reason == "no free ports"
        assert "no free ports" in str(info.value)
        # The connection that holds the first port is still good.
        assert pa.ports == [p]
        assert pa.find_server("first") == p
        other = PortAllocator("localhost", pm.port)
        with pytest.raises(PortAllocationError):
            other.allocate_port("third")
        assert other._conn is None          # it held nothing: nothing kept
        pa.release()
    finally:
        pm.stop()


def test_connection_error_names_host_and_port():
    port = free_port()                      # nothing listens there now
    pa = PortAllocator("localhost", port)
    with pytest.raises(PortManagerUnavailable) as info:
        pa.list_ports()
    message = str(info.value)
    assert message.startswith(f"can't connect to port manager at localhost:{port}: ")
    assert "refused" in message.lower()
    assert isinstance(info.value, OSError)
    with pytest.raises(PortManagerUnavailable, match=f"localhost:{port}"):
        pa.allocate_port("x")


def test_unknown_host_is_a_connection_error():
    with pytest.raises(PortManagerUnavailable, match="no-such-host.invalid:30000"):
        PortAllocator("no-such-host.invalid", 30000).list_ports()


class FakeManager:
    """A loopback listener run by a thread: ``script(conn)`` plays the
    manager's side of one connection."""

    def __init__(self, script):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script):
        conn, _ = self.sock.accept()
        with conn:
            script(self, conn)

    def read_line(self, conn) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                break
            data += chunk
        self.received.append(data)
        return data

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_requests_are_tcl_quoted_and_end_in_newline():
    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 40001\n")             # bare \n: accepted too
        fm.read_line(conn)
        conn.sendall(b"OK 2\r\n40001 {my app} {j doe}\r\n40002 x\\ y fox\r\n")
        conn.recv(1)

    fm = FakeManager(script)
    pa = PortAllocator("127.0.0.1", fm.port, user="j doe")
    assert pa.allocate_port("my app") == 40001
    assert pa.list_ports() == [Allocation(40001, "my app", "j doe"),
                               Allocation(40002, "x y", "fox")]
    pa.release()
    fm.close()
    assert fm.received == [b"GIMME {my app} {j doe}\n", b"LIST\n"]


def test_silent_manager_times_out_with_host_and_port():
    release = threading.Event()

    def script(fm, conn):
        fm.read_line(conn)
        release.wait(10)

    fm = FakeManager(script)
    pa = PortAllocator("127.0.0.1", fm.port, timeout=0.2)
    with pytest.raises(PortManagerUnavailable, match=rf"127\.0\.0\.1:{fm.port} did not answer"):
        pa.list_ports()
    release.set()
    fm.close()


def test_timeout_on_a_connection_holding_ports_keeps_it_open():
    release = threading.Event()

    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 40001\r\n")
        fm.read_line(conn)                      # second GIMME: never answered
        release.wait(10)
        fm.received.append(conn.recv(100))     # b"" once we close

    fm = FakeManager(script)
    pa = PortAllocator("127.0.0.1", fm.port, timeout=0.2)
    pa.allocate_port("a")
    with pytest.raises(PortManagerUnavailable, match="did not answer"):
        pa.allocate_port("b")
    # The port it holds is kept; the connection is no longer used.
    assert pa.ports == [40001]
    assert pa._conn is None
    release.set()
    pa.release()
    fm.close()
    assert fm.received[-1] == b""


def test_list_timing_out_on_the_holding_connection_keeps_its_ports():
    release = threading.Event()

    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 40001\r\n")
        fm.read_line(conn)                      # LIST: never answered
        release.wait(10)
        fm.received.append(conn.recv(100))     # b"" once we close

    fm = FakeManager(script)
    pa = PortAllocator("127.0.0.1", fm.port, timeout=0.2)
    pa.allocate_port("a")
    held = pa._conn
    with pytest.raises(PortManagerUnavailable, match="did not answer"):
        pa.list_ports()
    assert pa.ports == [40001]
    assert held.sock.fileno() >= 0             # still open, so still held
    release.set()
    pa.release()
    fm.close()
    assert fm.received[-1] == b""


def test_manager_hanging_up_is_reported():
    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 40001\r\n")
        fm.read_line(conn)                      # then hang up

    fm = FakeManager(script)
    pa = PortAllocator("127.0.0.1", fm.port)
    pa.allocate_port("a")
    with pytest.raises(PortManagerUnavailable, match="lost the connection.*40001"):
        pa.allocate_port("b")
    assert pa.ports == []
    fm.close()


def test_garbage_reply_is_a_protocol_error():
    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"WHAT {\r\n")

    fm = FakeManager(script)
    with pytest.raises(PortManagerProtocolError, match="unreadable reply"):
        PortAllocator("127.0.0.1", fm.port).allocate_port("x")
    fm.close()


def test_an_allocation_split_by_a_line_break_in_its_name_is_joined_again():
    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 2\r\n22001 {a\r\nb} fox\r\n22002 \"c\r\nd\" fox\r\n")
        conn.recv(1)

    fm = FakeManager(script)
    assert PortAllocator("127.0.0.1", fm.port).list_ports() == [
        Allocation(22001, "a\nb", "fox"), Allocation(22002, "c\nd", "fox")]
    fm.close()


def test_a_name_with_an_escaped_line_break_lists_intact(portmgr):
    # Our client refuses such names, but the manager takes "a\nb" from a
    # raw client and lists it braced, with the line break inside.
    with portmgr.connect() as raw:
        raw.sendall(b"GIMME a\\nb fox\n")
        reply = raw.recv(100)
        if reply.startswith(b"FAIL"):
            pytest.skip("this manager refuses names with line breaks")
        assert reply.startswith(b"OK ")
        rows = PortAllocator("localhost", portmgr.port).list_ports()
    assert [(a.application, a.user) for a in rows] == [("a\nb", "fox")]


def test_garbage_in_a_list_on_the_holding_connection_retires_it():
    release = threading.Event()

    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 40001\r\n")
        fm.read_line(conn)
        conn.sendall(b"OK 1\r\nnot-a-port x y\r\n")
        release.wait(10)

    fm = FakeManager(script)
    pa = PortAllocator("127.0.0.1", fm.port)
    pa.allocate_port("a")
    with pytest.raises(PortManagerProtocolError, match="bad allocation line"):
        pa.list_ports()
    assert pa.ports == [40001] and pa._conn is None
    release.set()
    pa.release()
    fm.close()


def test_fail_reply_of_a_remote_refusal_keeps_the_whole_reason():
    reason = "10.0.0.2 : Only local applications get ports"

    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(f"FAIL {{{reason}}}\r\n".encode())

    fm = FakeManager(script)
    with pytest.raises(PortAllocationError) as info:
        PortAllocator("127.0.0.1", fm.port).allocate_port("x")
    assert info.value.reason == reason
    fm.close()


# -------------------------------------------------------- finding the manager

def test_port_none_reads_the_listen_port_file(portmgr, monkeypatch):
    monkeypatch.delenv(client.PORT_FILE_ENV, raising=False)
    monkeypatch.setattr(client, "DEFAULT_PORT_FILE", str(portmgr.paths.portfile))

    pa = PortAllocator()
    assert pa.port == portmgr.port
    port = pa.allocate_port("discovered")
    assert pa.find_server("discovered") == port
    pa.release()


def test_port_file_environment_variable_wins(portmgr, monkeypatch, tmp_path):
    monkeypatch.setattr(client, "DEFAULT_PORT_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv(client.PORT_FILE_ENV, str(portmgr.paths.portfile))
    assert PortAllocator().port == portmgr.port


@pytest.mark.parametrize("content", [None, "", "garbage\n", "70000\n", "0\n"])
def test_unusable_listen_port_file_falls_back_to_30000(monkeypatch, tmp_path, content):
    path = tmp_path / "listen.port"
    if content is not None:
        path.write_text(content)
    monkeypatch.delenv(client.PORT_FILE_ENV, raising=False)
    monkeypatch.setattr(client, "DEFAULT_PORT_FILE", str(path))
    assert PortAllocator().port == 30000
    assert PortAllocator(port=1234).port == 1234


def test_only_the_first_line_of_the_port_file_counts(monkeypatch, tmp_path):
    path = tmp_path / "listen.port"
    path.write_text("31234\n999\n")
    monkeypatch.setattr(client, "DEFAULT_PORT_FILE", str(path))
    monkeypatch.delenv(client.PORT_FILE_ENV, raising=False)
    assert PortAllocator().port == 31234


# ------------------------------------------------------------ async client

def run_until(loop, results, n, timeout=5.0):
    wait_for(loop, lambda: len(results) >= n, timeout)


def test_async_allocate_list_find_in_fifo_order(loop, portmgr):
    pa = AsyncPortAllocator("localhost", portmgr.port, loop)
    results = []
    pa.allocate_port("async app", lambda r, e: results.append(("gimme", r, e)))
    pa.list_ports(lambda r, e: results.append(("list", r, e)))
    pa.find_server("async app", lambda r, e: results.append(("find", r, e)))
    pa.find_server("async app", lambda r, e: results.append(("other", r, e)), user="nobody")
    assert results == []                        # callbacks only from the loop

    run_until(loop, results, 4)

    (k1, port, e1), (k2, rows, e2), (k3, found, e3), (k4, none, e4) = results
    assert [k1, k2, k3, k4] == ["gimme", "list", "find", "other"]
    assert (e1, e2, e3, e4) == (None, None, None, None)
    assert rows == [Allocation(port, "async app", ME)]
    assert found == port and none is None
    assert pa.ports == [port]
    pa.release()
    eventually(lambda: port not in listed_ports(portmgr))


def test_async_requests_made_from_a_callback_follow(loop, portmgr):
    pa = AsyncPortAllocator("localhost", portmgr.port, loop)
    ports = []

    def got(port, error):
        assert error is None
        ports.append(port)
        if len(ports) < 3:
            pa.allocate_port("chain", got)

    pa.allocate_port("chain", got)
    run_until(loop, ports, 3)
    assert len(set(ports)) == 3
    assert set(ports) <= listed_ports(portmgr)
    pa.release()


def test_async_ports_stay_held_after_destroy(loop, portmgr):
    pa = AsyncPortAllocator("localhost", portmgr.port, loop)
    results = []
    pa.allocate_port("async kept", lambda r, e: results.append(r))
    run_until(loop, results, 1)
    pa.destroy()
    del pa
    gc.collect()
    loop.update()
    assert results[0] in listed_ports(portmgr)
    for conn in [c for c in client._held if isinstance(c, client._AsyncConnection)]:
        conn.close()


def test_async_connection_refused_reaches_every_callback(loop):
    port = free_port()
    pa = AsyncPortAllocator("localhost", port, loop)
    results = []
    pa.list_ports(lambda r, e: results.append((r, e)))
    pa.allocate_port("x", lambda r, e: results.append((r, e)))
    run_until(loop, results, 2)
    for result, error in results:
        assert result is None
        assert isinstance(error, PortManagerUnavailable)
        assert str(error).startswith(f"can't connect to port manager at localhost:{port}")


def test_async_no_free_ports(loop, tmp_path):
    p = free_port()
    pm = start_portmgr(tmp_path, ports=f"{p}-{p}")
    try:
        pa = AsyncPortAllocator("localhost", pm.port, loop)
        results = []
        pa.allocate_port("one", lambda r, e: results.append((r, e)))
        pa.allocate_port("two", lambda r, e: results.append((r, e)))
        pa.list_ports(lambda r, e: results.append((r, e)))
        run_until(loop, results, 3)
        assert results[0] == (p, None)
        assert results[1][0] is None and results[1][1].reason == "no free ports"
        assert results[2] == ([Allocation(p, "one", ME)], None)
        pa.release()
    finally:
        pm.stop()


def test_async_names_with_lone_surrogates_survive(loop, portmgr):
    pa = AsyncPortAllocator("localhost", portmgr.port, loop)
    results = []
    pa.allocate_port("\udcff", lambda r, e: results.append((r, e)))
    pa.find_server("\udcff", lambda r, e: results.append((r, e)))
    run_until(loop, results, 2)
    (port, e1), (found, e2) = results
    assert e1 is None and e2 is None and found == port
    pa.release()


def test_async_list_joins_an_allocation_split_over_lines(loop):
    def script(fm, conn):
        fm.read_line(conn)
        conn.sendall(b"OK 2\r\n22001 {a\r\nb} fox\r\n22002 c fox\r\n")
        conn.recv(1)

    fm = FakeManager(script)
    pa = AsyncPortAllocator("127.0.0.1", fm.port, loop)
    results = []
    pa.list_ports(lambda r, e: results.append((r, e)))
    run_until(loop, results, 1)
    assert results == [([Allocation(22001, "a\nb", "fox"), Allocation(22002, "c", "fox")], None)]
    fm.close()


def test_async_timeout_of_a_silent_manager(autojump_loop):
    # On the fake clock (conftest): the deadline is exact and costs no wait.
    loop = autojump_loop
    release = threading.Event()

    def script(fm, conn):
        fm.read_line(conn)
        release.wait(10)

    fm = FakeManager(script)
    start = loop.time()
    pa = AsyncPortAllocator("127.0.0.1", fm.port, loop, timeout=0.2)
    results = []
    pa.list_ports(lambda r, e: results.append((r, e)))
    run_until(loop, results, 1)
    assert loop.time() - start == 0.2
    assert results[0][0] is None
    assert "did not answer within 0.2 s" in str(results[0][1])
    release.set()
    fm.close()


def test_async_callback_errors_go_to_bgerror_and_the_allocator_goes_on(loop, portmgr):
    errors, results = [], []
    loop.bgerror(errors.append)
    pa = AsyncPortAllocator("localhost", portmgr.port, loop)

    def boom(result, error):
        raise RuntimeError("callback bug")

    pa.allocate_port("bg", boom)
    pa.find_server("bg", lambda r, e: results.append((r, e)))
    run_until(loop, results, 1)
    assert [str(e) for e in errors] == ["callback bug"]
    assert results[0][0] is not None and results[0][1] is None
    pa.release()


def test_async_release_cancels_waiting_requests(loop, portmgr):
    pa = AsyncPortAllocator("localhost", portmgr.port, loop)
    results = []
    pa.list_ports(lambda r, e: results.append((r, e)))
    pa.release()
    assert len(results) == 1
    assert isinstance(results[0][1], PortManagerUnavailable)
    loop.update()
    assert len(results) == 1


def test_async_allocator_uses_the_threads_loop_by_default(loop, portmgr):
    pa = AsyncPortAllocator("localhost", portmgr.port)
    results = []
    pa.list_ports(lambda r, e: results.append((r, e)))
    run_until(loop, results, 1)
    assert results == [([], None)]


# ------------------------------------------ the original NSCLDAQ Tcl client

TCL_CLIENT_DIR = os.environ.get("NSCLDAQ_TCL_DIR")


@pytest.fixture
def original_tcl_client(tclsh):
    """Directory of the original ``portAllocator.tcl`` (set NSCLDAQ_TCL_DIR),
    with snit available; else skip.  Its code is not part of this project."""
    if not TCL_CLIENT_DIR or not (Path(TCL_CLIENT_DIR) / "portAllocator.tcl").exists():
        pytest.skip("set NSCLDAQ_TCL_DIR to a directory holding NSCLDAQ's portAllocator.tcl")
    check = subprocess.run([tclsh], input="puts [package require snit]", text=True,
                           capture_output=True, timeout=10)
    if check.returncode != 0:
        pytest.skip("tcllib's snit is not installed")
    return Path(TCL_CLIENT_DIR)


def test_original_tcl_client_against_our_manager(portmgr, original_tcl_client, tclsh):
    script = f"""
        source {{{original_tcl_client / 'portAllocator.tcl'}}}
        set p [portAllocator %AUTO% -port {portmgr.port}]
        set port [$p allocatePort tclapp]
        puts "port $port"
        puts "list [list [$p listPorts]]"
        # The manual's API is listPorts, allocatePort and destroy; the
        # published portAllocator.tcl has no findServer, other copies may.
        if {{"findServer" in [$p info methods]}} {{
            puts "find [$p findServer tclapp]"
        }} else {{
            puts "find absent"
        }}
        # The original forgets to quote: "my app" spills into the user field.
        puts "spill [$p allocatePort {{my app}}]"
        $p destroy
        puts ready
        flush stdout
        gets stdin
    """
    proc = subprocess.Popen([tclsh], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(script)
        proc.stdin.flush()
        lines = {}
        for line in proc.stdout:
            key, _, value = line.rstrip("\n").partition(" ")
            lines[key] = value
            if key == "ready":
                break
        assert "port" in lines, proc.stderr.read() if proc.poll() is not None else lines
        port = int(lines["port"])
        assert lines["list"] == "{" + f"{{{port} tclapp {ME}}}" + "}"
        assert lines["find"] == "absent" or int(lines["find"]) == port
        spill = int(lines["spill"])
        ours = PortAllocator("localhost", portmgr.port)
        # destroy kept the connection: both ports are still held.
        assert set(ours.list_ports()) == {Allocation(port, "tclapp", ME),
                                          Allocation(spill, "my", "app")}
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: listed_ports(portmgr) == set())


# ------------------------------------------- our client, the original server

@pytest.fixture
def original_manager(tclsh, tmp_path):
    """The original DaqPortManager with one port to hand out (see
    conftest.start_original_portmgr): (its listen port, that port)."""
    low = free_port()
    pm = start_original_portmgr(tmp_path, tclsh, f"{low}-{low}")
    yield pm.port, low
    pm.stop()


def test_our_client_against_the_original_manager(original_manager, loop):
    listen, only_port = original_manager
    pa = PortAllocator("localhost", listen)
    assert pa.allocate_port("my app") == only_port
    assert pa.list_ports() == [Allocation(only_port, "my app", ME)]
    assert pa.find_server("my app") == only_port
    with pytest.raises(PortAllocationError) as info:
        pa.allocate_port("second")
    assert info.value.reason == "no free ports"
    pa.release()

    apa = AsyncPortAllocator("localhost", listen, loop)
    results = []
    apa.allocate_port("a{b", lambda r, e: results.append((r, e)))
    apa.list_ports(lambda r, e: results.append((r, e)))
    wait_for(loop, lambda: len(results) == 2)
    assert results == [(only_port, None), ([Allocation(only_port, "a{b", ME)], None)]
    apa.release()


# ------------------------- "localhost" resolving to ::1 first (stock Debian)

# The original manager honours GIMME from 127.0.0.1 only, so a client that
# follows getaddrinfo's order to ::1 gets "::1 : Only local applications get
# ports" wherever /etc/hosts lists ::1 as localhost too (Debian's default;
# glibc then sorts ::1 first).  Our clients try IPv4 addresses first.

CLIENT_SCRIPT = """
import socket, sys
sys.path.insert(0, {root!r})
print("first", socket.getaddrinfo("localhost", 1, 0, socket.SOCK_STREAM)[0][4][0], flush=True)
if {kind!r} == "blocking":
    from portalloc.client import PortAllocator, PortManagerError
    try:
        print("port", PortAllocator("localhost", {port}).allocate_port("v6first"), flush=True)
    except PortManagerError as exc:
        print("port", exc, flush=True)
else:
    import evloop
    from portalloc.client import AsyncPortAllocator
    done = evloop.Var()
    AsyncPortAllocator("localhost", {port}).allocate_port("v6first", lambda r, e: done.set((r, e)))
    port, error = evloop.vwait(done)
    print("port", port if error is None else error, flush=True)
sys.stdin.readline()
"""


def ipv6_loopback_or_skip() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")


def run_client_with_ipv6_first_localhost(tmp_path, kind: str, port: int):
    """Run CLIENT_SCRIPT with an /etc/hosts of its own (a private mount
    namespace) that names ::1 first for localhost; return the process and
    what it printed before holding its port.  Skips where that can't be done."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /etc/hosts")
    ipv6_loopback_or_skip()
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 localhost\n127.0.0.1 localhost\n")
    script = CLIENT_SCRIPT.format(root=str(Path(__file__).resolve().parent.parent),
                                  kind=kind, port=port)
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             f'mount --bind "{hosts}" /etc/hosts && exec "$0" -c "$1"',
                             sys.executable, script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = dict(proc.stdout.readline().split(None, 1) for _ in range(2))
    if lines["first"].strip() != "::1":
        proc.kill()
        pytest.skip("could not make localhost resolve to ::1 first")
    return proc, lines["port"].strip()


@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_localhost_is_tried_over_ipv4_first(portmgr, tmp_path, kind):
    proc, port = run_client_with_ipv6_first_localhost(tmp_path, kind, portmgr.port)
    try:
        assert int(port) in listed_ports(portmgr)
    finally:
        proc.kill()
        proc.wait()
    portmgr.stop()
    log = portmgr.paths.log.read_text()
    assert "Connection accepted from 127.0.0.1 port" in log
    assert "Connection accepted from ::1" not in log


@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_a_manager_on_ipv6_alone_is_found_after_ipv4_refuses(tmp_path, kind):
    ipv6_loopback_or_skip()
    pm = start_portmgr(tmp_path, "--host", "::1")
    try:
        proc, port = run_client_with_ipv6_first_localhost(tmp_path, kind, pm.port)
        try:
            assert pm.low <= int(port) <= pm.high, port
        finally:
            proc.kill()
            proc.wait()
    finally:
        pm.stop()


@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_localhost_resolving_to_ipv6_first_still_gets_a_port_from_the_original(
        original_manager, tmp_path, kind):
    listen, only_port = original_manager
    proc, port = run_client_with_ipv6_first_localhost(tmp_path, kind, listen)
    try:
        assert port == str(only_port)
    finally:
        proc.kill()
        proc.wait()
