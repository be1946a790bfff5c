#!/usr/bin/env python3
"""A live window of the port manager's allocations (Tk, evloop attached).

The GUI a data-acquisition operator keeps open: one row per allocated port
(host, port, application, user, and since when this window first saw it),
refreshed every second.  A row appears when a service takes a port and
disappears when it lets go.  When a manager can't be reached the window
says so in red, and its rows go (a manager that is down holds nothing);
when it is back, so are they.

    python examples/portmon.py [--host HOST[:PORT]]... [--interval S] [--timeout S]

``--host`` may be given several times, one port manager per host
(``[v6addr]:PORT`` for IPv6); without it, the manager on localhost.  A host
without ``:PORT`` means the port `PortAllocator` would use (listen.port,
else 30000).

How it is built: Tk's mainloop owns the thread and runs evloop through
``evloop.attach_tk``; each refresh is an evloop timer that sends ``LIST``
with the non-blocking `portalloc.AsyncPortAllocator`, one per host, and the
callbacks update a ``ttk.Treeview``.  Nothing blocks the window: a manager
that does not answer costs its own ``--timeout``, not a frozen GUI.
`PortMonitor` takes a Tk root and an evloop loop, so a program (or a
test) can build the window in its own process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# Runnable from a clone without installing: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evloop  # noqa: E402
from portalloc.client import Allocation, AsyncPortAllocator  # noqa: E402

COLUMNS = ("host", "port", "application", "user", "since")


def parse_host(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[V6ADDR]:PORT`` -> (host, port or None).
    Raises ValueError for an empty host or a bad port."""
    host, port, port_text = text, None, None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {text!r}: expected [V6ADDR] or [V6ADDR]:PORT")
        host, port_text = text[1:end], (rest[1:] if rest else None)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    # else: a name, an IPv4 address, or a bare IPv6 address
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {text!r}: expected 1-65535")
        port = int(port_text)
    if not host:
        raise ValueError(f"bad host {text!r}: empty host name")
    return host, port


class _Manager:
    """What the window knows of one port manager."""

    def __init__(self, label: str, allocator: AsyncPortAllocator) -> None:
        self.label = label                   # host:port as the window shows it
        self.allocator = allocator
        self.asking = False                  # a LIST is out
        self.down_since: float | None = None
        self.reason = ""
        self.answered = False                # at least one reply so far
        # (port, application, user) -> the tree's item, and when first seen
        self.items: dict[tuple[int, str, str], str] = {}
        self.since: dict[tuple[int, str, str], float] = {}


class PortMonitor:
    """The port monitor window, in a given Tk ``root``, on evloop ``loop``.

    ``hosts`` is a list of ``(host, port or None)``.  Building it attaches
    ``loop`` to ``root`` (``evloop.attach_tk``) and starts refreshing every
    ``interval`` seconds; each request may take ``timeout`` seconds.
    ``tree`` (a ``ttk.Treeview``) holds the rows, ``status`` (a label) the
    state of each manager; `rows` and `status_text` read them back.
    `close` stops it and detaches.
    """

    def __init__(self, root: Any, hosts: list[tuple[str, int | None]],
                 loop: evloop.Loop | None = None, *, interval: float = 1.0,
                 timeout: float = 2.0) -> None:
        import tkinter
        from tkinter import ttk
        self.root = root
        self.loop = loop if loop is not None else evloop.get_loop()
        self.interval_ms = interval * 1000
        self.managers: list[_Manager] = []
        for host, port in hosts:
            alloc = AsyncPortAllocator(host, port, loop=self.loop, timeout=timeout)
            shown = f"[{host}]" if ":" in host else host
            label = f"{shown}:{alloc.port}"
            if all(m.label != label for m in self.managers):     # each once
                self.managers.append(_Manager(label, alloc))

        root.title("Port manager allocations")
        frame = ttk.Frame(root, padding=6)
        frame.pack(fill="both", expand=True)
        self.status = tkinter.Label(frame, anchor="w", justify="left", font="TkDefaultFont")
        self.status.pack(fill="x")
        self.tree = ttk.Treeview(frame, columns=COLUMNS, show="headings", height=15)
        for name, width in zip(COLUMNS, (160, 70, 220, 110, 90)):
            self.tree.heading(name, text=name.capitalize())
            self.tree.column(name, width=width, anchor="e" if name == "port" else "w")
        self.tree.pack(fill="both", expand=True)
        self._show_status()

        self._timer: evloop.TimerId | None = self.loop.after(0, self.refresh)
        self.attachment = evloop.attach_tk(root, loop=self.loop)

    # ------------------------------------------------------------- refreshing

    def refresh(self) -> None:
        """Ask every manager for its allocations (a manager whose last
        request is still out is skipped), and come back in ``interval``.
        Stops once the window is gone (the attachment ends with it)."""
        if not self.attachment.attached:
            self.close()
            return
        self._timer = self.loop.after(self.interval_ms, self.refresh)
        for mgr in self.managers:
            if not mgr.asking:
                mgr.asking = True
                mgr.allocator.list_ports(lambda rows, err, mgr=mgr: self._listed(mgr, rows, err))

    def _listed(self, mgr: _Manager, rows: list[Allocation] | None,
                error: BaseException | None) -> None:
        mgr.asking = False
        if not self.attachment.attached:
            return                           # the window is gone
        mgr.answered = True
        if error is not None:
            if mgr.down_since is None:
                mgr.down_since = time.time()
            mgr.reason = str(error)
            rows = []
        else:
            mgr.down_since = None
            mgr.reason = ""
        self._show_rows(mgr, rows or [])
        self._show_status()

    def _show_rows(self, mgr: _Manager, rows: list[Allocation]) -> None:
        tree = self.tree
        current = {(a.port, a.application, a.user) for a in rows}
        for key in [k for k in mgr.items if k not in current]:
            tree.delete(mgr.items.pop(key))
            del mgr.since[key]               # seen again later: a new row
        now = time.time()
        for key in sorted(current - mgr.items.keys()):
            mgr.since[key] = now
            port, app, user = key
            mgr.items[key] = tree.insert("", "end", values=(
                mgr.label, port, app, user, time.strftime("%H:%M:%S", time.localtime(now))))
        # Rows in (host, port) order, as `portalloc list` prints them.
        order = sorted(tree.get_children(),
                       key=lambda i: (tree.set(i, "host"), int(tree.set(i, "port"))))
        for index, iid in enumerate(order):
            tree.move(iid, "", index)

    def _show_status(self) -> None:
        lines, down = [], False
        for mgr in self.managers:
            if not mgr.answered:
                lines.append(f"{mgr.label}: asking...")
            elif mgr.down_since is not None:
                down = True
                when = time.strftime("%H:%M:%S", time.localtime(mgr.down_since))
                lines.append(f"{mgr.label}: port manager DOWN since {when} -- {mgr.reason}")
            else:
                n = len(mgr.items)
                lines.append(f"{mgr.label}: up, {n} port{'s' if n != 1 else ''} allocated")
        self.status.configure(text="\n".join(lines), fg="red" if down else "black")

    # ---------------------------------------------------------------- reading

    def rows(self) -> list[tuple[str, int, str, str, str]]:
        """The rows the window shows: (host, port, application, user, since)."""
        out = []
        for iid in self.tree.get_children():
            host, port, app, user, since = (self.tree.set(iid, c) for c in COLUMNS)
            out.append((host, int(port), app, user, since))
        return out

    @property
    def running(self) -> bool:
        """True while the window refreshes (until `close`, or until a
        refresh finds the window gone)."""
        return self._timer is not None

    def status_text(self) -> str:
        """What the status line says."""
        return str(self.status.cget("text"))

    def close(self) -> None:
        """Stop refreshing, detach evloop from Tk, drop the allocators.
        Closing twice does nothing."""
        if self._timer is None and not self.attachment.attached:
            return
        self.loop.after_cancel(self._timer)
        self._timer = None
        self.attachment.detach()
        for mgr in self.managers:
            mgr.allocator.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A live window of the port manager's allocations (Tk + evloop).")
    parser.add_argument("--host", action="append", default=[], metavar="HOST[:PORT]",
                        help="a port manager to watch; give it once per manager "
                             "(default: localhost, port from listen.port else 30000)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds a manager has to answer (default 2)")
    args = parser.parse_args(argv)
    try:
        hosts = [parse_host(h) for h in args.host] or [("localhost", None)]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.interval > 0 or not args.timeout > 0:
        parser.error("--interval and --timeout must be positive")

    import tkinter
    try:
        root = tkinter.Tk()
    except tkinter.TclError as exc:
        print(f"portmon: can't open a window: {exc}", file=sys.stderr)
        return 1
    monitor = PortMonitor(root, hosts, interval=args.interval, timeout=args.timeout)
    try:
        root.mainloop()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
