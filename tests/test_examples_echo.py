"""examples/echo_server.py and examples/echo_client.py, run as real processes
from outside the repository (no PYTHONPATH: the scripts find evloop
themselves).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "examples" / "echo_server.py"
CLIENT = ROOT / "examples" / "echo_client.py"


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture
def echo_server(tmp_path):
    """A running echo_server.py on a free port: (process, port)."""
    proc = subprocess.Popen([sys.executable, str(SERVER), "0"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("listening on port "), (first, proc.stderr.read())
        yield proc, int(first.split()[-1])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _client(tmp_path, *args, stdin=None, input=None):
    return subprocess.run([sys.executable, str(CLIENT), *map(str, args)], cwd=tmp_path,
                          env=_env(), stdin=stdin, input=input, capture_output=True,
                          text=True, timeout=10)


def test_client_sends_its_arguments_and_prints_the_echoes(echo_server, tmp_path):
    _, port = echo_server

    result = _client(tmp_path, "127.0.0.1", port, "hello", "two words", "", "caf\u00e9")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\ntwo words\n\ncaf\u00e9\n"


def test_client_reads_lines_from_a_pipe_on_stdin(echo_server, tmp_path):
    _, port = echo_server

    result = _client(tmp_path, "localhost", port, input="first\r\nsecond\nno newline")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "first\nsecond\nno newline\n"


def test_client_reads_lines_from_a_file_on_stdin(echo_server, tmp_path):
    _, port = echo_server
    lines = [f"line {n}" for n in range(100)]
    infile = tmp_path / "input.txt"
    infile.write_text("\n".join(lines) + "\n")

    with infile.open() as stdin:
        result = _client(tmp_path, "127.0.0.1", port, stdin=stdin)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == lines


def test_client_with_empty_input_exits_at_once(echo_server, tmp_path):
    _, port = echo_server
    result = _client(tmp_path, "127.0.0.1", port, input="")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_server_echoes_lines_in_pieces_and_serves_clients_side_by_side(echo_server):
    proc, port = echo_server
    a = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:                                   # the server is dual-stack: try IPv6
        b = socket.create_connection(("::1", port), timeout=5)
    except OSError:
        b = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        a.sendall(b"from ")
        b.sendall(b"b\r\n")
        assert b.recv(100) == b"b\n"
        a.sendall(b"a\n")
        assert a.recv(100) == b"from a\n"

        a.close()
        b.close()
        # Four log lines: two accepts, two closes (in some order).
        log = [proc.stdout.readline().split()[0] for _ in range(4)]
        assert sorted(log) == ["accept", "accept", "close", "close"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_exits_cleanly_on_a_signal(echo_server, sig):
    proc, port = echo_server

    proc.send_signal(sig)
    out, err = proc.communicate(timeout=5)

    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == f"stopped by {signal.Signals(sig).name}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_client_fails_when_the_server_hangs_up_before_echoing(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    client = subprocess.Popen([sys.executable, str(CLIENT), "127.0.0.1", str(port), "x"],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = listener.accept()
        conn.settimeout(5)
        assert conn.recv(100) == b"x\n"
        conn.close()                          # no echo
        out, err = client.communicate(timeout=5)
    finally:
        client.kill()
        listener.close()

    assert client.returncode == 1
    assert out == ""
    assert "closed the connection" in err


def test_client_reports_a_refused_connection(tmp_path):
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))                  # bound, never listening
    try:
        result = _client(tmp_path, "127.0.0.1", reserved.getsockname()[1], "x")
    finally:
        reserved.close()

    assert result.returncode == 1
    assert "can't connect" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["localhost"], ["localhost", "port"]])
def test_client_usage_errors_exit_2(tmp_path, args):
    result = _client(tmp_path, *args)
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_server_usage_error_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(SERVER), "not-a-port"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "usage" in result.stderr
