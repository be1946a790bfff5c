"""python -m scanner: output forms, exit status, Ctrl-C, progress on a terminal.

Targets are on loopback: a /24 of 127/8 where the fixture holds one port on
every address (listeners on .3 .5 .9, a full accept queue -- silent -- on
.12 to .15, bound-but-not-listening sockets elsewhere: refused).
"""

from __future__ import annotations

import json
import os
import pty
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FakeClock, Lab, read_until

import evloop
from scanner.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)

OPEN = Lab.OPEN
SILENT = range(12, 16)


@pytest.fixture
def lab():
    lb = Lab(silent=SILENT)
    yield lb
    lb.close()


@pytest.fixture
def evscan(monkeypatch, capsys):
    """``evscan(args)`` runs the command line's ``main`` in this process, on
    a FakeClock that jumps at once (loopback: no connect is ever in flight
    when it jumps), and gives its status and output as ``_run`` does: for
    the tests of what a scan prints and returns.  What only a process shows
    (signals, the interpreter's exit, closed pipes, limits) runs ``_run``."""
    real_loop = evloop.Loop

    def fake_clock_loop() -> evloop.Loop:
        clock = FakeClock(autojump_threshold=0)
        return clock.attach(real_loop(clock=clock))

    monkeypatch.setattr(evloop, "Loop", fake_clock_loop)

    def run(args):
        capsys.readouterr()
        status = main(args)
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=out, stderr=err)

    return run


def _run(args, **kw):
    kw.setdefault("timeout", 30)
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "scanner", *args], cwd=ROOT, text=True, **kw)


# --------------------------------------------------------------- exit status

def test_open_port_found_exits_0_and_prints_one_line_per_result(lab, evscan):
    r = evscan([f"{lab.net}.0-7", "-p", str(lab.port), "--timeout", "1"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 8
    opened = sorted(line.split()[0] for line in lines if line.split()[1] == "open")
    assert opened == sorted(f"{lab.addr(n)}:{lab.port}" for n in (3, 5))
    assert f"{lab.addr(3)}:{lab.port}" in [line.split()[2] for line in lines
                                           if line.startswith(f"{lab.addr(3)}:")]
    assert "8 of 8 scanned" in r.stderr and "2 open, 6 refused" in r.stderr


def test_nothing_open_exits_1(lab, evscan):
    r = evscan([f"{lab.net}.20-30", "-p", str(lab.port)])
    assert r.returncode == 1, r.stderr
    assert all(line.split()[1] == "refused" for line in r.stdout.splitlines())


def test_open_only_prints_open_ports_only(lab, evscan):
    r = evscan([f"{lab.net}.0/24", "-p", str(lab.port), "--open-only", "--timeout", "0.3"])
    assert r.returncode == 0
    assert sorted(line.split()[0] for line in r.stdout.splitlines()) == sorted(
        f"{lab.addr(n)}:{lab.port}" for n in OPEN)
    assert "256 of 256 scanned" in r.stderr and "4 timeout" in r.stderr


def test_json_every_stdout_line_is_an_object_with_a_summary_last(lab, evscan):
    r = evscan([f"{lab.net}.0/28", "-p", str(lab.port), "--json", "--timeout", "0.3",
              "--exclude", lab.addr(0)])
    assert r.returncode == 0
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    results, summary = objs[:-1], objs[-1]
    assert {o["type"] for o in results} == {"result"} and summary["type"] == "summary"
    assert sorted(o["host"] for o in results) == sorted(lab.addr(n) for n in range(1, 16))
    by_host = {o["host"]: o for o in results}
    assert by_host[lab.addr(3)]["state"] == "open"
    assert by_host[lab.addr(3)]["detail"] == f"{lab.addr(3)}:{lab.port}"
    assert by_host[lab.addr(12)]["state"] == "timeout"
    assert by_host[lab.addr(1)] == {"type": "result", "host": lab.addr(1), "port": lab.port,
                                    "state": "refused", "detail": "Connection refused"}
    assert (summary["total"], summary["done"], summary["open"], summary["refused"],
            summary["timeout"], summary["interrupted"]) == (15, 15, 3, 8, 4, False)
    assert r.stderr == ""


def test_base_and_port_as_in_scan_tcl(lab, evscan):
    r = evscan([lab.net, str(lab.port), "--open-only", "--timeout", "0.3"])
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 3


@pytest.mark.parametrize("args,message", [
    (["127.0.0.300", "-p", "80"], "bad target"),
    (["127.0.0.1", "-p", "0"], "bad port"),
    (["127.0.0.1", "-p", "http"], "bad port"),
    (["127.0.0.1"], "no ports given"),
    (["127.0.0.1", "-p", "80", "--timeout", "0"], "--timeout"),
    (["127.0.0.1", "-p", "80", "--concurrency", "0"], "--concurrency"),
    (["127.0.0.1", "-p", "80", "--bogus"], "unrecognized arguments"),
])
def test_usage_errors_exit_2_with_a_message(args, message):
    r = _run(args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert message in r.stderr and "usage:" in r.stderr
    assert "Traceback" not in r.stderr


def test_main_in_process_returns_the_status(lab, capsys):
    assert main([lab.addr(3), "-p", str(lab.port)]) == 0
    out = capsys.readouterr().out
    assert out.split()[:2] == [f"{lab.addr(3)}:{lab.port}", "open"]
    assert main([lab.addr(4), "-p", str(lab.port)]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["not a target!", "-p", "80"])
    assert exc.value.code == 2


def test_help_explains_states_exit_status_and_examples_on_loopback_only():
    r = _run(["--help"])
    assert r.returncode == 0
    assert r.stdout.startswith("usage: python -m scanner ")
    assert "exit status: 0 open port found, 1 none found, 2 usage error, 130" in r.stdout
    for state in ("open", "refused", "timeout", "unreachable", "error"):
        assert f"\n  {state} " in r.stdout
    examples = r.stdout.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 3
    for line in examples:           # copied and run, they stay on this machine
        targets = [w for w in line.split()[3:] if w[0].isdigit() and w.count(".") >= 2]
        assert targets and all(t.startswith("127.") for t in targets), line


def test_installed_command_names_itself_evscan(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: evscan ")


# ---------------------------------------------------------------- Ctrl-C

def test_sigint_stops_cleanly_with_what_was_found_and_exits_130(lab):
    # Silent addresses with a long timeout keep the scan busy; the open
    # ones answer at once and are printed (flushed) before the signal.
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner", f"{lab.net}.3-15", "-p", str(lab.port),
         "--timeout", "30", "--open-only"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc.stdout.fileno(), f"{lab.addr(9)}:{lab.port}".encode())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    out = (seen + out).decode()
    assert proc.returncode == 130
    assert sorted(line.split()[0] for line in out.splitlines()) == sorted(
        f"{lab.addr(n)}:{lab.port}" for n in OPEN)
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()


def test_sigint_on_the_test_subnet_exits_130(tnet):
    proc = subprocess.Popen(
        tnet["exec"] + [sys.executable, "-m", "scanner", tnet["subnet"], "-p", "80",
                        "--timeout", "30", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc.stdout.fileno(), b'"open"')
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    objs = [json.loads(line) for line in (seen + out).decode().splitlines()]
    summary = objs[-1]
    assert summary["type"] == "summary" and summary["interrupted"] is True
    assert summary["open"] == 10 and summary["done"] < summary["total"] == 256
    assert len(objs) - 1 == summary["done"]


# ------------------------------------------------------------ progress line

def test_progress_line_only_on_a_terminal(lab):
    argv = [sys.executable, "-m", "scanner", f"{lab.net}.10-15", "-p", str(lab.port),
            "--timeout", "0.6"]
    # The same scan twice at once: stderr a pipe, and a terminal.
    piped = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        err = read_until(master, b"scanned in")
        proc.communicate(timeout=10)
    finally:
        os.close(master)
    _, piped_err = piped.communicate(timeout=10)
    assert b"scanned in" in piped_err and b"\r" not in piped_err
    assert b"\r2/6 " in err and b"ETA" in err


# ---------------------------------------------------- descriptor shortage

def _limit_fds():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_low_descriptor_limit_same_json_results(lab):
    args = [f"{lab.net}.0/24", "-p", str(lab.port), "--json", "--timeout", "0.3"]
    # The unconstrained scan runs at the same time as the constrained one.
    free = subprocess.Popen([sys.executable, "-m", "scanner", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tight = _run(args + ["--concurrency", "500"], preexec_fn=_limit_fds)
    free_out, _ = free.communicate(timeout=30)
    assert free.returncode == tight.returncode == 0, tight.stderr

    def results(out):
        return sorted(line for line in out.splitlines() if '"result"' in line)

    assert results(tight.stdout) == results(free_out) and len(results(free_out)) == 256


# ---------------------------------------------------------- examples/scan.py

@pytest.fixture
def lab0():
    """The lab on 127.0.0.0/24, the base the Tcl script would be given."""
    lb = Lab("127.0.0", silent=SILENT)
    yield lb
    lb.close()


# Runs a script on a FakeClock that jumps (conftest) as the thread's loop:
# the example's 2 s timeout of the silent hosts costs no waiting.
_ON_FAKE_CLOCK = """
import runpy, sys
sys.path.insert(0, sys.argv.pop(1))
import evloop
from fakeclock import FakeClock
clock = FakeClock(autojump_threshold=0)         # loopback: nothing in flight to overtake
evloop.set_loop(clock.attach(evloop.Loop(clock=clock)))
del sys.argv[0]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _example(args, fake_clock=False, **kw):
    """Run examples/scan.py ARGS as a user would (the usage tests), or on a
    fake clock (the scans: only the clock differs, the script runs whole)."""
    script = [str(ROOT / "examples" / "scan.py"), *args]
    if fake_clock:
        script = ["-c", _ON_FAKE_CLOCK, str(ROOT / "tests"), *script]
    return subprocess.run([sys.executable, *script],
                          capture_output=True, text=True, timeout=30, **kw)


def _parray_lines(port: int) -> list[str]:
    names = sorted(f"127.0.0.{n}" for n in OPEN)      # lsort: 127.0.0.3 < 127.0.0.5 ...
    width = max(len(n) for n in names) + len("hosts") + 2
    return [f"{'hosts(' + n + ')':<{width}} = {n} {n} {port}" for n in names]


def test_example_scan_prints_parray_lines_of_the_open_hosts(lab0):
    r = _example(["127.0.0", str(lab0.port)], fake_clock=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == _parray_lines(lab0.port)
    assert r.stderr == ""


def test_example_scan_output_is_what_tcl_parray_prints(lab0, tclsh):
    values = " ".join(f"127.0.0.{n} {{127.0.0.{n} 127.0.0.{n} {lab0.port}}}" for n in OPEN)
    tcl = subprocess.run([tclsh], input=f"array set hosts {{{values}}}; parray hosts\n",
                         capture_output=True, text=True, timeout=10)
    assert tcl.stdout.splitlines() == _parray_lines(lab0.port)


def test_example_scan_with_few_descriptors_waits_for_them(lab0):
    free = _example(["127.0.0", str(lab0.port)], fake_clock=True)
    tight = _example(["127.0.0", str(lab0.port)], fake_clock=True,
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24)))
    assert tight.returncode == 0, tight.stderr
    assert tight.stdout == free.stdout == "\n".join(_parray_lines(lab0.port)) + "\n"


def test_example_scan_exits_0_with_nothing_open_and_prints_nothing(lab0):
    for n in OPEN:                  # the listeners go: every address refuses
        lab0.held[n].close()
    r = _example(["127.0.0", str(lab0.port)], fake_clock=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("args", [[], ["127.0.0"], ["127.0.0", "80", "x"],
                                  ["localhost", "80"], ["127.0.300", "80"], ["127.0.0", "0"]])
def test_example_scan_usage_error_exits_non_zero(args):
    r = _example(args)
    assert r.returncode != 0 and r.stdout == ""
    assert "usage" in r.stderr or "bad target" in r.stderr


def test_closed_pipe_stops_the_scan_without_a_traceback():
    # Sixteen silent hosts, one at a time, 0.3 s each: results trickle out
    # for 4.8 s, so after head has taken its line and gone, a later flush
    # meets the closed pipe and the scan stops there.  (With results that
    # all come at once, the next write -- and the stop -- would only come
    # when the scan ends.)
    lab = Lab(silent=range(12, 28))
    try:
        reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        r = _run([f"{lab.net}.12-27", "-p", str(lab.port), "--timeout", "0.3",
                  "--concurrency", "1"], stdout=reader.stdin, stderr=subprocess.PIPE)
        reader.stdin.close()
        first = reader.stdout.read().decode()
        reader.stdout.close()
        reader.wait(timeout=10)
    finally:
        lab.close()
    assert first.split()[:2] == [f"{lab.addr(12)}:{lab.port}", "timeout"]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert r.returncode == 1                    # nothing open among those scanned
    done, total = (int(w) for w in r.stderr.split(" scanned")[0].split()[-3::2])
    assert total == 16 and 1 <= done < 16       # stopped early
