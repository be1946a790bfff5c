"""examples/portmon.py: the port monitor window, driven in-process under Xvfb
against real port managers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT, start_portmgr, wait_for

from portalloc import PortAllocator

tkinter = pytest.importorskip("tkinter")

pytestmark = pytest.mark.timeout(30)


def _load_portmon():
    spec = importlib.util.spec_from_file_location("portmon", ROOT / "examples" / "portmon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


portmon = _load_portmon()


@pytest.fixture
def root(xdisplay):
    tk = tkinter.Tk(screenName=xdisplay)
    yield tk
    try:
        # Idle work first: Tk queues an idle ttk::ThemeChanged for a new
        # root, and the thread's notifier (shared by every root) would run
        # it in a later test, after this root is gone, printing an error.
        tk.update_idletasks()
        tk.destroy()
    except tkinter.TclError:
        pass


def run_until(root, predicate, timeout: float = 5.0) -> None:
    """Run Tk (and evloop, attached) until ``predicate()`` holds; it is
    checked after every Tk event, so the test sees the first change."""
    expired = []
    guard = root.after(int(timeout * 1000), expired.append, True)
    try:
        while not predicate():
            if expired:
                pytest.fail(f"condition not met within {timeout} s")
            root.tk.dooneevent(0)           # waits for the next Tk event
    finally:
        root.after_cancel(guard)


def test_rows_come_and_go_with_services_and_the_window_tells_when_the_manager_is_down(
        loop, root, tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    pm = start_portmgr(first)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = start_portmgr(other_dir, ports="21201-21300")
    monitor = portmon.PortMonitor(root, [("127.0.0.1", pm.port), ("127.0.0.1", other.port)],
                                  loop, interval=0.05, timeout=2.0)
    label = f"127.0.0.1:{pm.port}"
    try:
        run_until(root, lambda: monitor.status_text().count(": up, 0 ports allocated") == 2)
        assert monitor.rows() == []

        # A service takes a port: its row appears.
        service = PortAllocator("127.0.0.1", pm.port, timeout=5)
        port = service.allocate_port("daq readout")
        run_until(root, lambda: monitor.rows() != [])
        ((host, shown_port, app, user, since),) = monitor.rows()
        assert (host, shown_port, app, user) == (label, port, "daq readout", service.user)
        assert since.count(":") == 2        # HH:MM:SS
        assert f"{label}: up, 1 port allocated" in monitor.status_text()

        # It lets go: the row disappears.
        service.release()
        run_until(root, lambda: monitor.rows() == [])

        # The manager stops: the window says so, the other one is still up.
        held = PortAllocator("127.0.0.1", pm.port, timeout=5)
        held.allocate_port("evb")
        run_until(root, lambda: len(monitor.rows()) == 1)
        assert pm.stop() == 0
        run_until(root, lambda: "DOWN" in monitor.status_text())
        text = monitor.status_text()
        assert f"{label}: port manager DOWN since" in text
        assert f"127.0.0.1:{other.port}: up" in text
        assert monitor.rows() == []
        assert str(monitor.status.cget("fg")) == "red"
        held.release()

        # It comes back on the same port: the window recovers.
        again_dir = tmp_path / "again"
        again_dir.mkdir()
        pm2 = start_portmgr(again_dir, "--listen", str(pm.port))
        try:
            run_until(root, lambda: f"{label}: up" in monitor.status_text())
            assert "DOWN" not in monitor.status_text()
            back = PortAllocator("127.0.0.1", pm.port, timeout=5)
            port2 = back.allocate_port("daq readout")
            run_until(root, lambda: monitor.rows() != [])
            assert [r[:4] for r in monitor.rows()] == [(label, port2, "daq readout", back.user)]
            back.release()
        finally:
            pm2.stop()
    finally:
        monitor.close()
        other.stop()
    assert not monitor.attachment.attached


def test_host_arguments_parse_as_the_cli_says():
    assert portmon.parse_host("daq1") == ("daq1", None)
    assert portmon.parse_host("127.0.0.1:30001") == ("127.0.0.1", 30001)
    assert portmon.parse_host("[::1]:30002") == ("::1", 30002)
    assert portmon.parse_host("[::1]") == ("::1", None)
    assert portmon.parse_host("::1") == ("::1", None)
    for bad in ("daq1:0", "daq1:x", ":30000", "[::1]x", "[::1]:"):
        with pytest.raises(ValueError):
            portmon.parse_host(bad)


def test_help_and_bad_host_exit_with_a_message():
    script = str(ROOT / "examples" / "portmon.py")
    ok = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                        timeout=20)
    assert ok.returncode == 0 and "--host HOST[:PORT]" in ok.stdout
    bad = subprocess.run([sys.executable, script, "--host", "x:99999"], capture_output=True,
                         text=True, timeout=20)
    assert bad.returncode == 2
    assert "bad port" in bad.stderr and "Traceback" not in bad.stderr


def test_the_monitor_closes_cleanly_when_the_window_is_destroyed(loop, root, portmgr, capfd):
    errors = []
    loop.bgerror(errors.append)
    monitor = portmon.PortMonitor(root, [("127.0.0.1", portmgr.port)], loop, interval=0.05)
    run_until(root, lambda: ": up" in monitor.status_text())
    root.destroy()
    assert not monitor.attachment.attached
    # The evloop loop runs alone now: the next refresh finds the window
    # gone and stops; nothing went to bgerror.
    wait_for(loop, lambda: not monitor.running, timeout=3)
    loop.update()
    assert errors == []
    _out, err = capfd.readouterr()
    assert err == ""
