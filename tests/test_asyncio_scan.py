"""examples/asyncio_scan.py: an asyncio program awaiting a Scanner on evloop,
run as a real process from outside the repository."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(20)

SCRIPT = ROOT / "examples" / "asyncio_scan.py"


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=15)


def test_it_scans_its_own_asyncio_listeners_and_two_closed_ports(tmp_path):
    done = _run(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    states = [line.split()[1] for line in lines[:-1]]
    assert sorted(states) == ["open"] * 3 + ["refused"] * 2
    for line in lines[:-1]:
        port, state, detail = line.split(maxsplit=2)
        if state == "open":
            assert detail == f"127.0.0.1:{port}"
    assert lines[-1] == "asyncio listeners accepted 3 connection(s) meanwhile"
    assert done.stderr == ""


def test_it_scans_given_ports_of_127_0_0_1(tmp_path):
    with socket.socket() as listener, socket.socket() as unused:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        unused.bind(("127.0.0.1", 0))         # bound, not listening: refused
        open_port = listener.getsockname()[1]
        closed_port = unused.getsockname()[1]
        done = _run(str(closed_port), str(open_port), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:2] for line in done.stdout.splitlines()] == sorted(
        [[str(open_port), "open"], [str(closed_port), "refused"]], key=lambda x: int(x[0]))


def test_a_bad_port_is_a_usage_error(tmp_path):
    done = _run("70000", cwd=tmp_path)
    assert done.returncode == 2
    assert "1-65535" in done.stderr and "Traceback" not in done.stderr
