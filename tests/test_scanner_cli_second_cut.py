"""python -m scanner, second cut: resets, signals, closed pipes, descriptor
starvation, and the new flags (--shard, --randomize, --resume, -iL,
--exclude-file, --banner, --rate, --version).

Loopback only: each test holds ports on an address of 127/8 picked at
random (listeners: open; bound, not listening: refused).
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import read_until

from scanner.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(30)


def _run(args, **kw):
    kw.setdefault("timeout", 20)
    if "stdout" not in kw and "stderr" not in kw:
        kw["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "scanner", *args], cwd=ROOT, text=True, **kw)


class _Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run ``main(args)`` in this process (much faster than a fresh
    interpreter); returns an object like CompletedProcess."""
    def run(args):
        try:
            code = main(args, prog="python -m scanner")
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return _Done(code, out, err)
    return run


def _json(stdout: str) -> tuple[list[dict], dict]:
    objs = [json.loads(line) for line in stdout.splitlines()]
    assert objs and objs[-1]["type"] == "summary"
    return objs[:-1], objs[-1]


def _nobody_connected(listener: socket.socket) -> bool:
    listener.setblocking(False)
    try:
        listener.accept()[0].close()
    except BlockingIOError:
        return True
    return False


# ------------------------------------------------------ reset after connect

class _Resetter:
    """Accept on every listener and reset at once (SO_LINGER 0)."""

    def __init__(self, listeners: list[socket.socket]) -> None:
        self.listeners = listeners
        self.count = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            ready, _, _ = select.select(self.listeners, [], [], 0.05)
            for lst in ready:
                conn, _ = lst.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                self.count += 1

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)


@pytest.mark.parametrize("mode", ["--json", "--open-only"])
def test_ports_that_accept_and_reset_are_open_in_a_multi_port_scan(ports, mode, cli):
    listeners = ports.listen(5)
    resetting = [s.getsockname()[1] for s in listeners]
    closed = ports.closed(40)
    resetter = _Resetter(listeners)
    try:
        spec = ",".join(map(str, resetting + closed))
        r = cli([ports.host, "-p", spec, "--timeout", "2", mode])
    finally:
        resetter.close()
    assert r.returncode == 0, r.stderr
    assert resetter.count == 5
    if mode == "--json":
        results, summary = _json(r.stdout)
        states = {o["port"]: o["state"] for o in results}
        assert {p: states[p] for p in resetting} == dict.fromkeys(resetting, "open")
        assert (summary["open"], summary["refused"], summary["error"]) == (5, 40, 0)
    else:
        shown = sorted(int(line.split()[0].rsplit(":", 1)[1]) for line in r.stdout.splitlines())
        assert shown == sorted(resetting)
        assert "5 open, 40 refused" in r.stderr


# ---------------------------------------------------------------- SIGTERM

@pytest.mark.parametrize("as_json", [False, True])
def test_sigterm_stops_cleanly_with_a_summary_and_exits_143(ports, as_json):
    [listener] = ports.listen()
    silent = socket.socket()
    ports.socks.append(silent)
    silent.bind((ports.host, 0))
    silent.listen(0)
    ports.socks.append(socket.create_connection(silent.getsockname(), timeout=5))
    spec = f"{listener.getsockname()[1]},{silent.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner", ports.host, "-p", spec, "--timeout", "30",
         "--open-only"] + (["--json"] if as_json else []),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc.stdout.fileno(), b"open")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    out, err = (seen + out).decode(), err.decode()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    if as_json:
        results, summary = _json(out)
        assert [o["state"] for o in results] == ["open"]
        assert (summary["interrupted"], summary["done"], summary["total"]) == (True, 1, 2)
    else:
        assert len(out.splitlines()) == 1
        assert "1 of 2 scanned" in err and "terminated, 1 not scanned" in err


# ---------------------------------------------------------- closed pipes

def _closed_pipe() -> int:
    r, w = os.pipe()
    os.close(r)             # as `| head -0`: the reader is gone before the first write
    return w


def test_closed_stdout_and_stderr_exit_quietly_with_the_status(ports):
    [listener] = ports.listen()
    w = _closed_pipe()
    try:
        r = _run([ports.host, "-p", str(listener.getsockname()[1])], stdout=w, stderr=w)
    finally:
        os.close(w)
    assert r.returncode == 0                        # an uncaught traceback exits 1


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_closed_stdout_gives_no_traceback(ports, extra):
    [listener] = ports.listen()
    w = _closed_pipe()
    try:
        r = _run([ports.host, "-p", str(listener.getsockname()[1]), *extra], stdout=w,
                 stderr=subprocess.PIPE)
    finally:
        os.close(w)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert r.returncode == 0


def test_example_scan_into_a_closed_pipe_gives_no_traceback():
    # The example scans a base's .1 to .254 on one port: a listener on
    # 127.0.0.x of a free port makes one open line to print.
    for _ in range(50):
        listener = socket.socket()
        listener.bind((f"127.0.0.{random.randint(1, 254)}", 0))
        port = listener.getsockname()[1]
        listener.listen(8)
        break
    w = _closed_pipe()
    try:
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "scan.py"), "127.0.0",
                            str(port)], stdout=w, stderr=subprocess.PIPE, text=True,
                           timeout=20)
    finally:
        os.close(w)
        listener.close()
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr


# ------------------------------------------------------ descriptor starvation

@pytest.mark.parametrize("nofile", [5, 6])
def test_too_few_descriptors_for_any_socket_exit_3_with_one_line(nofile):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    started = time.monotonic()
    r = subprocess.run(["prlimit", f"--nofile={nofile}", sys.executable, "-m", "scanner",
                        "127.0.0.1", "-p", "9"], capture_output=True, text=True, timeout=15,
                       cwd=ROOT)
    assert time.monotonic() - started < 10          # never spins
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert "no socket could be had" in line and "Too many open files" in line


# --------------------------------------------------------------- bad flags

@pytest.mark.parametrize("args,message", [
    (["--shard", "3/3"], "bad shard"),
    (["--shard", "1/2", "--randomize"], "--seed"),
    (["--shard", "x"], "bad shard"),
    (["--rate", "0"], "--rate"),
    (["--rate", "-1"], "--rate"),
    (["--banner-timeout", "0"], "--banner-timeout"),
    (["-iL", "/nonexistent/targets.txt"], "can't read target file"),
    (["--exclude-file", "/nonexistent/x.txt"], "can't read target file"),
    (["--resume", "/nonexistent/scan.jsonl"], "can't read resume file"),
    (["--resume", "TEXTFILE"], "not JSON Lines"),
    (["--seed", "abc"], "--seed"),
])
def test_bad_flag_values_exit_2_with_one_line_before_any_connection(ports, tmp_path, args,
                                                                    message, cli):
    [listener] = ports.listen()
    text = tmp_path / "scan.txt"
    text.write_text(f"{ports.host}:1  refused  Connection refused\n")
    args = [str(text) if a == "TEXTFILE" else a for a in args]
    r = cli([ports.host, "-p", str(listener.getsockname()[1]), *args])
    assert r.returncode == 2
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert message in line and "Traceback" not in line
    assert _nobody_connected(listener)


# ----------------------------------------------------------------- help

def test_help_shows_the_new_flags_and_loopback_examples_only(cli):
    r = cli(["--help"])
    assert r.returncode == 0
    for flag in ("--rate", "--shard", "--randomize", "--seed", "--resume", "-iL",
                 "--exclude-file", "--banner", "--banner-timeout", "--version"):
        assert flag in r.stdout
    examples = r.stdout.split("examples:\n", 1)[1].split("\n\n", 1)[0]
    words = [w.strip("()") for w in examples.split()]
    addresses = [w for w in words if w[:1].isdigit() and w.count(".") >= 2]
    assert addresses and all(a.startswith("127.") for a in addresses)
    assert "143" in r.stdout and "3 not even one socket" in r.stdout


def test_version():
    r = _run(["--version"])
    assert r.returncode == 0 and r.stdout.split()[-1][0].isdigit()


# ------------------------------------------------------------- sharding

@pytest.mark.parametrize("randomize", [[], ["--randomize", "--seed", "42"]])
def test_shards_on_the_command_line_are_disjoint_and_cover_the_scan(ports, randomize, cli):
    closed = ports.closed(3)
    base = ports.host.rsplit(".", 1)[0]
    args = [f"{base}.0/27", ports.host, "-p", ",".join(map(str, closed)), "--json",
            "--timeout", "1"] + randomize
    whole, _ = _json(cli(args).stdout)
    pairs = Counter((o["host"], o["port"]) for o in whole)
    shards = []
    for i in range(3):
        results, summary = _json(cli(args + ["--shard", f"{i}/3"]).stdout)
        assert summary["shard"] == f"{i}/3" and summary["done"] == len(results)
        shards.append(Counter((o["host"], o["port"]) for o in results))
    assert sum(shards, Counter()) == pairs
    assert all(not (shards[a].keys() & shards[b].keys()) for a in range(3) for b in range(a))


def test_randomize_with_the_same_seed_gives_the_same_order(ports, cli):
    closed = ports.closed(2)
    base = ports.host.rsplit(".", 1)[0]
    args = [f"{base}.0/26", "-p", ",".join(map(str, closed)), "--json", "--concurrency", "1",
            "--seed", "7"]
    first, s1 = _json(cli(args).stdout)
    again, _ = _json(cli(args).stdout)
    plain, _ = _json(cli(args[:-2]).stdout)
    assert [(o["host"], o["port"]) for o in first] == [(o["host"], o["port"]) for o in again]
    assert [o["host"] for o in first] != [o["host"] for o in plain]
    assert s1["seed"] == 7


# ---------------------------------------------------------------- resume

def test_resume_skips_what_the_file_holds_and_drops_a_torn_last_line(ports, tmp_path, cli):
    closed = ports.closed(4)
    spec = ",".join(map(str, closed))
    out = tmp_path / "scan.jsonl"
    first = cli([ports.host, "-p", spec, "--json", "--shard", "0/2"]).stdout
    done, _ = _json(first)
    assert len(done) == 2
    # A killed scan: the complete lines, then half of the next one.
    out.write_text(first.split('{"type": "summary"')[0]
                   + f'{{"type": "result", "host": "{ports.host}", "port": {closed[3]}, "st')
    r = cli([ports.host, "-p", spec, "--json", "--resume", str(out)])
    assert r.returncode == 1, r.stderr
    results, summary = _json(r.stdout)
    assert sorted(o["port"] for o in results) == sorted(
        set(closed) - {o["port"] for o in done})
    assert (summary["skipped"], summary["total"], summary["done"]) == (2, 2, 2)


# --------------------------------------------------------- target files

def test_target_and_exclude_files_one_a_line_with_comments(ports, tmp_path, cli):
    [listener] = ports.listen()
    port = listener.getsockname()[1]
    base = ports.host.rsplit(".", 1)[0]
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"# lab hosts\n{base}.1-4   # four\n\n{ports.host}\n")
    skip = tmp_path / "skip.txt"
    skip.write_text(f"{base}.2\n# nothing else\n")
    r = cli(["-iL", str(hosts), "--exclude-file", str(skip), "-p", str(port), "--json"])
    results, summary = _json(r.stdout)
    want = {f"{base}.{n}" for n in (1, 3, 4)} | {ports.host}
    assert {o["host"] for o in results} == want and summary["total"] == len(want)


# ---------------------------------------------------------------- banner

def test_banner_flag_puts_what_the_port_said_into_the_result(ports, cli):
    [listener] = ports.listen()

    def serve() -> None:
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.sendall(b"220 hello\r\n")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    closed = ports.closed(1)[0]
    r = cli([ports.host, "-p", f"{listener.getsockname()[1]},{closed}", "--json", "--banner",
             "--banner-timeout", "2"])
    t.join(5)
    results, _ = _json(r.stdout)
    by_state = {o["state"]: o for o in results}
    assert by_state["open"]["banner"] == "220 hello\r\n"
    assert "banner" not in by_state["refused"]
    text = cli([ports.host, "-p", str(closed), "--banner"])
    assert text.returncode == 1 and "refused" in text.stdout


def test_rate_flag_limits_the_connects_per_second(ports, cli):
    closed = ports.closed(1)[0]
    base = ports.host.rsplit(".", 1)[0]
    r = cli([f"{base}.0/27", "-p", str(closed), "--rate", "100", "--json"])
    _, summary = _json(r.stdout)
    assert summary["done"] == 32
    assert 0.3 <= summary["elapsed"] < 0.6          # 32 connects at 100/s: 0.31 s
