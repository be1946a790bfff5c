"""examples/allocate_and_serve.py and examples/list_ports.py, run as a user
would run them from a clone (no install, no PYTHONPATH), against the
``portmgr`` fixture."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import eventually, listed

from portalloc.client import Allocation, PortAllocator, login_user

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ME = login_user()


def example_popen_args(name: str, *args: str, **kw) -> dict:
    """Keyword arguments for subprocess to run examples/NAME ARGS."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PORTALLOC_PORTFILE")}
    # Run from elsewhere, so only the example's own sys.path insert finds
    # the packages.
    return dict(args=[sys.executable, str(EXAMPLES / name), *args], env=env, cwd="/", **kw)


def test_list_ports_prints_the_seed_line_for_each_allocation(portmgr):
    with PortAllocator("localhost", portmgr.port, user="fox") as pa:
        ports = [pa.allocate_port("readout"), pa.allocate_port("my app")]
        result = subprocess.run(**example_popen_args("list_ports.py", "--port", str(portmgr.port)),
                                capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted([
        f"Port {ports[0]} allocated to readout run by fox",
        f"Port {ports[1]} allocated to my app run by fox",
    ])


def test_list_ports_takes_a_host(portmgr):
    with PortAllocator("localhost", portmgr.port) as pa:
        port = pa.allocate_port("svc")
        result = subprocess.run(**example_popen_args("list_ports.py", "127.0.0.1", "--port",
                                          str(portmgr.port)),
                                capture_output=True, text=True, timeout=20)
    assert result.stdout == f"Port {port} allocated to svc run by {ME}\n"


def test_list_ports_prints_a_name_with_a_lone_surrogate_as_tcl_would(portmgr):
    with portmgr.connect() as raw:
        raw.sendall(b"GIMME x\\uD800 fox\n")
        port = int(raw.recv(100).split()[1])
        result = subprocess.run(**example_popen_args("list_ports.py", "--port", str(portmgr.port)),
                                capture_output=True, timeout=20)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == f"Port {port} allocated to x\ud800 run by fox\n".encode(
        "utf-8", "surrogatepass")


def test_list_ports_of_nothing_prints_nothing(portmgr):
    result = subprocess.run(**example_popen_args("list_ports.py", "--port", str(portmgr.port)),
                            capture_output=True, text=True, timeout=20)
    assert (result.returncode, result.stdout) == (0, "")


def test_list_ports_unreachable_manager_is_one_line(portmgr):
    portmgr.stop()
    result = subprocess.run(**example_popen_args("list_ports.py", "--port", str(portmgr.port)),
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"localhost:{portmgr.port}" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_allocate_and_serve_serves_on_its_port_until_signalled(portmgr, sig):
    proc = subprocess.Popen(**example_popen_args("allocate_and_serve.py", "--manager-port",
                                      str(portmgr.port), "--application", "echo svc"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"Listening on port (\d+)\n", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(m.group(1))

        assert listed(portmgr) == [Allocation(port, "echo svc", ME)]
        with socket.create_connection(("localhost", port), timeout=5) as c:
            c.sendall(b"hello\n")
            assert c.makefile("rb").readline() == b"hello\n"

        proc.send_signal(sig)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: listed(portmgr) == [])


def test_allocate_and_serve_without_a_port_says_why(full_portmgr):
    result = subprocess.run(**example_popen_args("allocate_and_serve.py", "--manager-port",
                                                 str(full_portmgr.port)),
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "no free ports" in result.stderr and result.stdout == ""
