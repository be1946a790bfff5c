"""evloop, second cut: layering, bounds, Tcl's timing and EOF, embedding.

Each test here pins one item of DESIGN's "Details added in the second cut".
"""

from __future__ import annotations

import ast
import pathlib
import re
import socket

import pytest

import evloop

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ layering

def test_loop_module_imports_nothing_of_the_channel_layer():
    tree = ast.parse((ROOT / "evloop" / "loop.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if "channel" in m or "sockets" in m}, imported
    assert "Channel" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_no_module_uses_a_private_name_of_a_channel_or_loop():
    pattern = re.compile(r"(ch|channel|loop|self\._loop)\._[a-z]")
    found = []
    for package in ("evloop", "portalloc", "scanner", "examples"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_no_evloop_module_imports_a_private_name_of_another():
    for path in sorted((ROOT / "evloop").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_fileevent_hands_the_call_to_an_object_that_keeps_its_own_events(loop):
    calls = []

    class Keeper:
        def fileevent(self, event, *handler):
            calls.append((event, handler))
            return "mine" if not handler else None

    keeper = Keeper()
    def cb(x):
        return x
    assert loop.fileevent(keeper, "readable", cb, 1) is None
    assert loop.fileevent(keeper, "writable") == "mine"
    assert calls == [("readable", (cb, 1)), ("writable", ())]


def test_channel_events_set_through_loop_or_channel_are_the_same(loop):
    a, b = socket.socketpair()
    ch = evloop.Channel(a, loop)
    try:
        def handler():
            return None
        loop.fileevent(ch, "readable", handler)
        assert ch.fileevent("readable") is handler
        ch.fileevent("readable", None)
        assert loop.fileevent(ch, "readable") is None
        with pytest.raises(ValueError):
            ch.fileevent("exception", handler)
    finally:
        ch.close()
        b.close()


def test_open_async_failure_known_at_once_is_kept_through_the_constructor(loop):
    a, b = socket.socketpair()
    refused = ConnectionRefusedError(111, "Connection refused")
    ch = evloop.Channel(a, loop, error=refused)
    try:
        assert ch.error() is refused
        assert ch.error() is None
    finally:
        ch.close()
        b.close()
