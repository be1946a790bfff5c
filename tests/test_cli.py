"""The ``portalloc`` command line against the ``portmgr`` fixture: in process
(``main(argv)``) where output is all that matters, as a subprocess where
exit codes, signals and tracebacks are the point."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import eventually, free_port, listed, start_portmgr

from portalloc import client
from portalloc.cli import main
from portalloc.client import PortAllocator, login_user
from portalloc.protocol import parse_list

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
ME = login_user()


def portalloc(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m portalloc ARGS`` and wait for it."""
    kw.setdefault("timeout", 20)
    return subprocess.run([sys.executable, "-m", "portalloc", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, **kw)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop(client.PORT_FILE_ENV, None)
    env.update(extra)
    return env


def _hold(pm):
    """Allocations by two users, alice's ``web`` and bob's ``my db``: the
    ports, and the allocators that hold them."""
    alice = PortAllocator("localhost", pm.port, user="alice")
    bob = PortAllocator("localhost", pm.port, user="bob")
    return {"web": alice.allocate_port("web"), "my db": bob.allocate_port("my db")}, (alice, bob)


@pytest.fixture
def held(portmgr):
    """`_hold`'s allocations on the test's own manager, released after it."""
    ports, holders = _hold(portmgr)
    yield ports
    for pa in holders:
        pa.release()


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    """(manager, held): one manager with `_hold`'s allocations for all the
    tests of this module that only read them (list, find), which then need
    no manager start of their own; a test that allocates or releases
    anything uses ``portmgr`` and ``held``.  Every reader sees exactly the
    two allocations."""
    pm = start_portmgr(tmp_path_factory.mktemp("listing"))
    try:
        ports, holders = _hold(pm)
        yield pm, ports
        for pa in holders:
            pa.release()
    finally:
        pm.stop()
        pm.proc.stderr.close()


# ------------------------------------------------------------------- list

def test_list_prints_one_tcl_list_line_per_allocation(listing, capsys):
    portmgr, held = listing
    assert main(["list", "--port", str(portmgr.port)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [parse_list(line) for line in out]
    assert rows == [[str(held["web"]), "web", "alice"], [str(held["my db"]), "my db", "bob"]]


def test_list_columns_line_up(listing, capsys):
    portmgr, held = listing
    main(["list", "--port", str(portmgr.port)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].index("alice") == out[1].index("bob")


def test_list_filters_users_with_a_glob_like_lsservices(listing, capsys):
    portmgr, held = listing
    assert main(["list", "localhost", "a*", "--port", str(portmgr.port)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [parse_list(line)[2] for line in out] == ["alice"]
    assert main(["list", "localhost", "nobody", "--port", str(portmgr.port)]) == 0
    assert capsys.readouterr().out == ""


def test_list_json(listing, capsys):
    portmgr, held = listing
    assert main(["list", "--json", "--port", str(portmgr.port)]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"host": "localhost", "port": held["web"], "application": "web", "user": "alice"},
        {"host": "localhost", "port": held["my db"], "application": "my db", "user": "bob"},
    ]


def test_list_of_nothing_prints_nothing_or_an_empty_json_list(portmgr, capsys):
    assert main(["list", "--port", str(portmgr.port)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["list", "--json", "--port", str(portmgr.port)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_list_quotes_awkward_names_so_lines_still_split(portmgr, capsys):
    names = ["#first", "", "a{b", "tab\tin", "trailing\\"]
    with PortAllocator("localhost", portmgr.port, user="u v") as pa:
        ports = {name: pa.allocate_port(name) for name in names}
        main(["list", "--port", str(portmgr.port)])
    rows = [parse_list(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(rows) == sorted([str(p), n, "u v"] for n, p in ports.items())


def test_list_keeps_a_name_with_a_line_break_on_one_line(portmgr, capsys):
    with portmgr.connect() as raw:              # our client won't send one
        raw.sendall(b"GIMME a\\nb fox\n")
        reply = raw.recv(100)
        if reply.startswith(b"FAIL"):
            pytest.skip("this manager refuses names with line breaks")
        assert reply.startswith(b"OK ")
        assert main(["list", "--port", str(portmgr.port)]) == 0
    rows = [parse_list(line)[1:] for line in capsys.readouterr().out.splitlines()]
    assert rows == [["a\nb", "fox"]]


def test_list_writes_a_lone_surrogate_as_a_tcl_escape(portmgr):
    # Strict UTF-8 cannot print one; \uD800 is the same element in Tcl.
    with portmgr.connect() as raw:
        raw.sendall(b"GIMME x\\uD800 fox\n")
        assert raw.recv(100).startswith(b"OK ")
        r = portalloc("list", "--port", str(portmgr.port))
    assert r.returncode == 0 and r.stderr == ""
    assert [parse_list(line)[1:] for line in r.stdout.splitlines()] == [["x\ud800", "fox"]]
    assert "x\\uD800" in r.stdout


def test_list_prints_a_header_only_on_a_terminal(listing):
    portmgr, held = listing
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "portalloc", "list", "--port",
                                 str(portmgr.port)], cwd=ROOT, env=_env(),
                                stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:                 # EIO: the pty's other side closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(10) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    lines = out.decode().splitlines()
    assert lines[0].split() == ["PORT", "APPLICATION", "USER"]
    assert len(lines) == 3
    # Piped, the same command has no header.
    assert len(portalloc("list", "--port", str(portmgr.port)).stdout.splitlines()) == 2


def test_list_host_given_twice_is_a_usage_error(capsys):
    assert main(["list", "hosta", "--host", "hostb"]) == 2
    assert "give the host once" in capsys.readouterr().err


# ------------------------------------------------------------------- find

def test_find_prints_the_port(listing, capsys):
    portmgr, held = listing
    assert main(["find", "web", "--user", "alice", "--port", str(portmgr.port)]) == 0
    assert capsys.readouterr().out == f"{held['web']}\n"


def test_find_json(listing, capsys):
    portmgr, held = listing
    assert main(["find", "my db", "--user", "bob", "--json", "--port", str(portmgr.port)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "host": "localhost", "port": held["my db"], "application": "my db", "user": "bob"}


def test_find_defaults_to_the_login_user(portmgr, held, capsys):
    assert main(["find", "web", "--port", str(portmgr.port)]) == (0 if ME == "alice" else 1)
    with PortAllocator("localhost", portmgr.port) as pa:
        port = pa.allocate_port("mine")
        capsys.readouterr()
        assert main(["find", "mine", "--port", str(portmgr.port)]) == 0
        assert capsys.readouterr().out == f"{port}\n"


def test_find_exits_1_with_one_line_when_nothing_matches(listing, capsys):
    portmgr, held = listing
    assert main(["find", "web", "--user", "bob", "--port", str(portmgr.port)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "no service 'web' run by 'bob'" in captured.err


# --------------------------------------------------------- finding the server

def test_tools_find_the_server_through_the_port_file(listing):
    portmgr, held = listing
    result = subprocess.run([sys.executable, "-m", "portalloc", "find", "web", "--user", "alice"],
                            cwd=ROOT, capture_output=True, text=True, timeout=20,
                            env=_env(**{client.PORT_FILE_ENV: str(portmgr.paths.portfile)}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{held['web']}\n"


def test_tools_use_the_default_port_file(listing, monkeypatch, capsys):
    portmgr, held = listing
    monkeypatch.delenv(client.PORT_FILE_ENV, raising=False)
    monkeypatch.setattr(client, "DEFAULT_PORT_FILE", str(portmgr.paths.portfile))
    assert main(["list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


# --------------------------------------------------------------- allocate

def test_allocate_runs_the_command_with_the_port_and_holds_it(portmgr):
    script = ("import os, sys, json\n"
              "sys.path.insert(0, os.environ['PYTHONPATH'])\n"
              "from portalloc.client import PortAllocator\n"
              f"rows = PortAllocator('localhost', {portmgr.port}).list_ports()\n"
              "print(os.environ['PORT'], sys.argv[1], json.dumps([list(r) for r in rows]))\n"
              "sys.exit(7)\n")
    result = portalloc("allocate", "--port", str(portmgr.port), "cli app", "--",
                       sys.executable, "-c", script, "arg={port}")
    assert result.returncode == 7, result.stderr
    env_port, arg, rows = result.stdout.split(" ", 2)
    port = int(env_port)
    assert arg == f"arg={port}"
    assert json.loads(rows) == [[port, "cli app", ME]]
    eventually(lambda: listed(portmgr) == [])


def test_allocate_with_sh_substitutes_port(portmgr):
    result = portalloc("allocate", "shapp", "--port", str(portmgr.port), "--",
                       "sh", "-c", "echo $PORT {port}")
    assert result.returncode == 0, result.stderr
    env_port, arg_port = result.stdout.split()
    assert env_port == arg_port and portmgr.low <= int(env_port) <= portmgr.high


def test_allocate_without_double_dash(portmgr):
    result = portalloc("allocate", "--port", str(portmgr.port), "nodash", "sh", "-c", "exit 3")
    assert result.returncode == 3


def test_allocate_without_a_free_port_does_not_run_the_command(full_portmgr, tmp_path):
    marker = tmp_path / "ran"
    result = portalloc("allocate", "--port", str(full_portmgr.port), "late", "--",
                       "touch", str(marker))
    assert result.returncode == 1
    assert not marker.exists()
    assert result.stderr.count("\n") == 1
    assert "no free ports" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_allocate_passes_signals_on_and_exits_with_the_commands_status(portmgr, sig):
    child = ("import signal, sys\n"
             "def bye(signum, frame):\n"
             "    print('got', signum, flush=True)\n"
             "    sys.exit(5)\n"
             "signal.signal(signal.SIGTERM, bye)\n"
             "signal.signal(signal.SIGINT, bye)\n"
             "print('ready', flush=True)\n"
             "signal.pause()\n"
             "sys.exit(9)\n")
    proc = subprocess.Popen([sys.executable, "-m", "portalloc", "allocate", "--port",
                             str(portmgr.port), "sig app", "--", sys.executable, "-c", child],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert [a.application for a in listed(portmgr)] == ["sig app"]
        proc.send_signal(sig)
        assert proc.wait(10) == 5
        assert proc.stdout.read() == f"got {int(sig)}\n"
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: listed(portmgr) == [])


def test_allocate_reports_death_by_signal_as_128_plus_n(portmgr):
    result = portalloc("allocate", "--port", str(portmgr.port), "x", "--",
                       "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_allocate_command_not_found_is_127_and_frees_the_port(portmgr):
    result = portalloc("allocate", "--port", str(portmgr.port), "x", "--",
                       "/nonexistent/command")
    assert result.returncode == 127
    assert result.stderr == "portalloc: /nonexistent/command: command not found\n"
    eventually(lambda: listed(portmgr) == [])


# ------------------------------------------------------ errors and usage

def test_unreachable_server_is_exit_3_with_one_line_and_no_traceback():
    port = free_port()
    for args in (["list"], ["find", "x"], ["allocate", "x", "--", "true"]):
        result = portalloc(args[0], "--port", str(port), *args[1:])
        assert result.returncode == 3
        assert result.stderr == (f"portalloc: can't connect to port manager at "
                                 f"localhost:{port}: Connection refused\n")
        assert result.stdout == ""


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["list", "--port", "notaport"], ["list", "--port", "70000"],
    ["find"], ["allocate", "app"], ["allocate", "app", "--"], ["list", "a", "b", "c"],
    ["list", "--timeout", "-1"], ["allocate", "two\nlines", "--", "true"],
])
def test_bad_usage_is_exit_2_with_one_line(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("portalloc: error: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command, words", [
    ("list", ["PORT APPLICATION USER", "Tcl list", "USER-PATTERN", "--json"]),
    ("find", ["exit 1 if none", "SERVICE_1", "--user", "--json"]),
    ("allocate", ["$PORT", "{port}", "held until COMMAND exits", "passed on to COMMAND",
                  "the name to register the port under"]),
])
def test_each_commands_help_explains_it(command, words, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for w in [*words, "listen.port", "exit status"]:
        assert w in out


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit status" in out and "3 port manager unreachable" in out
    for sub in ("list", "find", "allocate"):
        with pytest.raises(SystemExit):
            main([sub, "--help"])
        assert "--port" in capsys.readouterr().out


def test_console_entry_point_module_runs():
    result = portalloc("--help")
    assert result.returncode == 0 and "allocate" in result.stdout


# ------------------------------------------------------------- many hosts

def test_list_asks_several_hosts_at_once_with_a_host_column(listing, tmp_path, capsys):
    portmgr, held = listing
    other = start_portmgr(tmp_path / "other", ports="21201-21300")
    try:
        with PortAllocator("127.0.0.1", other.port, user="carol") as pa:
            carol = pa.allocate_port("cache")
            dead = free_port()
            assert main(["list", "--host", f"127.0.0.1:{portmgr.port}",
                         "--host", f"127.0.0.1:{dead}", "--host", f"[::1]:{other.port}"]) == 3
            out, err = capsys.readouterr()
            rows = [parse_list(line) for line in out.splitlines()]
            assert rows == [[f"127.0.0.1:{portmgr.port}", str(held["web"]), "web", "alice"],
                            [f"127.0.0.1:{portmgr.port}", str(held["my db"]), "my db", "bob"],
                            [f"[::1]:{other.port}", str(carol), "cache", "carol"]]
            assert err == (f"portalloc: can't connect to port manager at 127.0.0.1:{dead}: "
                           "Connection refused\n")
            assert main(["list", "--json", "--host", f"127.0.0.1:{portmgr.port}",
                         "--host", f"[::1]:{other.port}"]) == 0
            assert [(r["host"], r["user"]) for r in json.loads(capsys.readouterr().out)] == [
                (f"127.0.0.1:{portmgr.port}", "alice"), (f"127.0.0.1:{portmgr.port}", "bob"),
                (f"[::1]:{other.port}", "carol")]
    finally:
        other.stop()
        other.proc.stderr.close()


def test_each_host_has_its_own_timeout_and_a_silent_one_hides_no_other(listing, capsys):
    portmgr, held = listing
    silent = socket.create_server(("127.0.0.1", 0))      # accepts, never answers
    try:
        t0 = time.monotonic()
        status = main(["find", "web", "--user", "alice", "--timeout", "0.5",
                       "--host", f"127.0.0.1:{silent.getsockname()[1]}",
                       "--host", f"localhost:{portmgr.port}"])
        assert time.monotonic() - t0 < 1.5              # at once, not one after the other
        out, err = capsys.readouterr()
        assert status == 0
        assert out == f"localhost:{portmgr.port} {held['web']}\n"
        assert "did not answer within 0.5 s" in err
    finally:
        silent.close()


@pytest.mark.parametrize("spec", ["[::1", "host:notaport", "[::1]x", ":30000"])
def test_bad_host_specs_are_usage_errors(spec, capsys):
    assert main(["list", "--host", spec]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --------------------------------------------------------------- dying

def test_command_of_allocate_dies_when_portalloc_is_killed_with_sigkill(portmgr):
    child = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "portalloc", "allocate", "--port",
                             str(portmgr.port), "svc", "--", sys.executable, "-c", child],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        pidfd = os.pidfd_open(pid)
        proc.kill()                                  # SIGKILL: no handler runs
        proc.wait(5)
        import select
        readable, _, _ = select.select([pidfd], [], [], 5)   # readable once it has exited
        os.close(pidfd)
        assert readable, "COMMAND outlived portalloc"
    finally:
        proc.kill()
        proc.stdout.close()
    eventually(lambda: listed(portmgr) == [])


def test_portalloc_version():
    result = portalloc("--version")
    assert result.returncode == 0
    name, version = result.stdout.split()
    assert name == "portalloc" and version[0].isdigit()
