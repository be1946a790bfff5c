"""evloop.WatchGroup: many sockets watched through one descriptor of the
loop, on real loopback sockets; each test runs on the nested epoll (Linux)
and on the per-member fallback."""

from __future__ import annotations

import errno
import select
import socket

import pytest
from conftest import wait_for

import evloop

pytestmark = pytest.mark.timeout(10)

KINDS = ["nested", "fallback"] if hasattr(select, "epoll") else ["fallback"]


class Recorded(evloop.WatchGroup):
    """A WatchGroup that keeps its batches in ``batches``."""

    def __init__(self, loop, nested):
        self.batches: list[list] = []
        super().__init__(self.batches.append, loop, nested=nested)


@pytest.fixture(params=KINDS)
def group(request, loop):
    g = Recorded(loop, nested=request.param == "nested")
    assert g.nested == (request.param == "nested")
    yield g
    g.close()


def _keys(batches) -> list:
    return [key for batch in batches for key, _ in batch]


def _run_idle(loop, passes: int = 3) -> None:
    """A few passes that would have delivered any event already ready."""
    for _ in range(passes):
        loop.run_once(0.02)


def test_group_reports_a_connect_as_writable_with_its_key(loop, group, listener):
    _, port = listener
    ch = evloop.open_async("127.0.0.1", port, loop)
    try:
        group.add(ch, "writable", "probe")
        wait_for(loop, lambda: group.batches)
        assert group.batches[0] == [("probe", "writable")]
        assert ch.error() is None
    finally:
        ch.close()


def test_group_reports_a_refused_connect_and_error_tells_why(loop, group, refusing_port):
    ch = evloop.open_async("127.0.0.1", refusing_port, loop)
    try:
        group.add(ch, "writable", 7)
        wait_for(loop, lambda: group.batches)
        assert group.batches[0] == [(7, "writable")]
        err = ch.error()
        assert err is not None and err.errno == errno.ECONNREFUSED
    finally:
        ch.close()


def test_group_reports_readable_only_once_data_has_come(loop, group):
    a, b = socket.socketpair()
    ch = evloop.Channel(a, loop)
    try:
        group.add(ch, "readable", "a")
        _run_idle(loop)
        assert group.batches == []
        b.sendall(b"hello\n")
        wait_for(loop, lambda: group.batches)
        assert group.batches[0] == [("a", "readable")]
        assert ch.gets() == "hello"
    finally:
        ch.close()
        b.close()


def test_one_batch_holds_every_member_ready_at_once(loop, group, listener):
    _, port = listener
    chans = [evloop.open_async("127.0.0.1", port, loop) for _ in range(5)]
    try:
        for i, ch in enumerate(chans):
            group.add(ch, "writable", i)
        wait_for(loop, lambda: len(set(_keys(group.batches))) == 5)
        if group.nested:
            # Level-triggered and all connected before the first poll of
            # the group's descriptor: one call for all of them.
            assert sorted(group.batches[-1]) == [(i, "writable") for i in range(5)]
    finally:
        for ch in chans:
            ch.close()


def test_a_discarded_member_is_reported_no_more(loop, group):
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        group.add(a, "writable", "a")       # a socket: always writable here
        group.add(c, "writable", "c")
        wait_for(loop, lambda: "c" in _keys(group.batches) and "a" in _keys(group.batches))
        group.discard(a)
        group.discard(a)                    # again: nothing
        group.batches.clear()
        wait_for(loop, lambda: len(group.batches) >= 2)     # c keeps coming
        assert set(_keys(group.batches)) == {"c"}
    finally:
        for s in (a, b, c, d):
            s.close()


def test_adding_again_replaces_the_event_and_key(loop, group):
    a, b = socket.socketpair()
    try:
        group.add(a, "writable", "w")
        wait_for(loop, lambda: group.batches)
        group.add(a, "readable", "r")
        group.batches.clear()
        _run_idle(loop)
        assert group.batches == []          # not writable-watched any more
        b.sendall(b"x")
        wait_for(loop, lambda: group.batches)
        assert group.batches[0] == [("r", "readable")]
    finally:
        a.close()
        b.close()


def test_a_closed_member_is_dropped_and_its_number_serves_a_new_one(loop, group, listener):
    _, port = listener
    first = evloop.open_async("127.0.0.1", port, loop)
    other = evloop.open_async("127.0.0.1", port, loop)
    group.add(first, "writable", "first")
    group.add(other, "writable", "other")
    fd = first.fileno()
    first.close()                           # no discard: the kernel drops it
    try:
        wait_for(loop, lambda: len(group.batches) >= 2)
        assert set(_keys(group.batches)) == {"other"}
        group.discard(other)
        again = evloop.open_async("127.0.0.1", port, loop)
        try:
            assert again.fileno() == fd     # the lowest free number
            group.add(again, "writable", "again")
            group.batches.clear()
            wait_for(loop, lambda: group.batches)
            assert set(_keys(group.batches)) == {"again"}
        finally:
            again.close()
    finally:
        other.close()


def test_members_added_in_the_callback_wait_for_the_next_batch(loop, listener):
    _, port = listener
    batches: list[list] = []
    later = []

    def on_ready(ready):
        batches.append(list(ready))
        for key, _ in ready:
            if key == "first":
                group.discard(chans[0])
                ch = evloop.open_async("127.0.0.1", port, loop)
                later.append(ch)
                group.add(ch, "writable", "second")

    chans = [evloop.open_async("127.0.0.1", port, loop)]
    group = evloop.WatchGroup(on_ready, loop)
    try:
        group.add(chans[0], "writable", "first")
        wait_for(loop, lambda: any(k == "second" for b in batches for k, _ in b))
        assert batches[0] == [("first", "writable")]
        assert all(("second", "writable") not in b for b in batches[:1])
    finally:
        group.close()
        for ch in chans + later:
            ch.close()


def test_a_callback_that_raises_is_reported_and_the_group_goes_on(loop):
    a, b = socket.socketpair()
    seen, reported = [], []
    loop.bgerror(reported.append)

    def on_ready(ready):
        seen.append(ready)
        if len(seen) == 1:
            raise RuntimeError("boom")

    group = evloop.WatchGroup(on_ready, loop)
    try:
        group.add(a, "writable", "a")
        wait_for(loop, lambda: len(seen) >= 2)
        assert [str(e) for e in reported] == ["boom"]
    finally:
        group.close()
        a.close()
        b.close()


def test_close_stops_every_callback_and_leaves_members_open(loop, group):
    a, b = socket.socketpair()
    try:
        group.add(a, "writable", "a")
        gfd = group.fileno()
        group.close()
        group.close()                       # again: nothing
        assert group.closed() and group.fileno() == -1 and not group.nested
        _run_idle(loop)
        assert group.batches == []
        assert loop.fileevent(a, "writable") is None
        if gfd >= 0:
            assert loop.fileevent(gfd, "readable") is None
        a.sendall(b"still open")
        assert b.recv(100) == b"still open"
        with pytest.raises(ValueError, match="closed WatchGroup"):
            group.add(a, "writable", "a")
    finally:
        a.close()
        b.close()


def test_bad_arguments_raise_and_change_nothing(loop, group):
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="bad event name"):
            group.add(a, "exception", "a")
        b.close()
        a.close()
        with pytest.raises(ValueError, match="closed"):
            group.add(a, "readable", "a")
        group.discard(a)                    # closed: nothing to do
        with pytest.raises(TypeError):
            evloop.WatchGroup("not callable", loop)  # type: ignore[arg-type]
        _run_idle(loop)
        assert group.batches == []
    finally:
        a.close()
        b.close()
