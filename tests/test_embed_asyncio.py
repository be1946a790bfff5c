"""evloop attached to asyncio: one thread, two loops (evloop.embed)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import evloop
from evloop.embed import MAX_PASSES
from portalloc import AsyncPortAllocator, PortManagerUnavailable

pytestmark = pytest.mark.timeout(10)


def _echo_server(loop: evloop.Loop, upper: bool = True) -> evloop.Server:
    """An evloop line server on 127.0.0.1 that answers each line upper-cased."""
    def accept(ch, _host, _port):
        loop.fileevent(ch, "readable", echo, ch)

    def echo(ch):
        line = ch.gets()
        if line is not None:
            ch.puts(line.upper() if upper else line)
        elif ch.eof():
            ch.close()

    return evloop.server(accept, 0, "127.0.0.1", loop=loop)


def test_evloop_server_and_asyncio_client_talk_in_one_thread(loop):
    srv = _echo_server(loop)

    async def main():
        handle = evloop.attach_asyncio()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        replies = []
        for word in ("alpha", "beta", "gamma"):
            writer.write(word.encode() + b"\n")
            await writer.drain()
            replies.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        handle.detach()
        return replies

    assert asyncio.run(main()) == [b"ALPHA\n", b"BETA\n", b"GAMMA\n"]
    srv.close()


def test_background_flush_of_a_large_reply_completes(loop):
    # 4 MiB is more than a loopback socket takes at once: the channel queues
    # the rest and must get "writable" from epoll while asyncio runs.
    size = 4 << 20

    def accept(ch, _host, _port):
        loop.fileevent(ch, "readable", ask, ch)

    def ask(ch):
        if ch.gets() is not None:
            ch.configure(encoding="binary", buffering="full")
            ch.puts(b"x" * size, newline=False)
            ch.close()                     # drains in the background
        elif ch.eof():
            ch.close()

    srv = evloop.server(accept, 0, "127.0.0.1", loop=loop)

    async def main():
        handle = evloop.attach_asyncio()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"send\n")
        data = await reader.read()          # to EOF
        writer.close()
        handle.detach()
        return len(data)

    assert asyncio.run(main()) == size
    srv.close()


def test_evloop_timer_fires_on_time_while_an_asyncio_task_runs(loop):
    async def main():
        handle = evloop.attach_asyncio()
        stop = False
        ticks = 0

        async def busy():
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(busy())
        start = loop.time()
        # Made from a task, outside evloop's callbacks: call() arms it.
        delay = await handle.call(lambda done: loop.after(80, lambda: done(loop.time() - start)))
        stop = True
        await task
        handle.detach()
        return delay, ticks

    delay, ticks = asyncio.run(main())
    assert 0.080 <= delay < 0.080 + 0.040
    assert ticks > 5                       # the task ran meanwhile


def test_evloop_work_added_by_a_task_with_plain_calls_runs_on_time(loop):
    # No call(), no wakeup(): the task uses evloop as any code would.  The
    # attachment hears of it through loop.on_new_work and services the loop.
    async def main():
        handle = evloop.attach_asyncio()
        await asyncio.sleep(0)              # the first service: nothing pending
        fired = asyncio.get_running_loop().create_future()
        idled = asyncio.get_running_loop().create_future()
        start = loop.time()
        loop.after(50, lambda: fired.set_result(loop.time() - start))
        loop.after_idle(lambda: idled.set_result(True))
        delay = await asyncio.wait_for(fired, 2)
        assert await asyncio.wait_for(idled, 2)
        handle.detach()
        return delay

    delay = asyncio.run(main())
    assert 0.050 <= delay < 0.050 + 0.040


def test_on_new_work_is_told_of_timers_idle_callbacks_and_handler_changes(loop):
    calls = []
    assert loop.on_new_work(lambda: calls.append(1)) is None
    loop.after(10, lambda: None)
    loop.after_idle(lambda: None)
    a, b = socket.socketpair()
    try:
        loop.fileevent(a, "readable", lambda: None)     # registered at once
        loop.update()
        before = len(calls)
        loop.fileevent(a, "writable", lambda: None)     # waits for the next poll
        assert len(calls) == before + 1 and before >= 2
        loop.fileevent(a, "readable", None)
        loop.fileevent(a, "writable", None)
    finally:
        loop.forget(a)
        a.close()
        b.close()
    assert loop.on_new_work(None) is not None
    with pytest.raises(TypeError):
        loop.on_new_work(42)


def test_evloop_timer_made_in_an_evloop_callback_fires_on_time(loop):
    async def main():
        handle = evloop.attach_asyncio()
        fired = asyncio.get_running_loop().create_future()
        start = []

        def arm():
            start.append(loop.time())
            loop.after(60, lambda: fired.set_result(loop.time() - start[0]))

        loop.after(0, arm)
        handle.wakeup()
        delay = await asyncio.wait_for(fired, 2)
        handle.detach()
        return delay

    delay = asyncio.run(main())
    assert 0.060 <= delay < 0.060 + 0.040


def test_busy_chain_of_evloop_timers_does_not_starve_asyncio(loop):
    fires = 0

    def chain():
        nonlocal fires
        fires += 1
        loop.after(0, chain)               # never idle

    async def main():
        handle = evloop.attach_asyncio()
        handle.call(lambda done: loop.after(0, chain))
        t0 = time.monotonic()
        for _ in range(5):
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        handle.detach()
        return elapsed

    elapsed = asyncio.run(main())
    assert elapsed < 0.5                   # five 10 ms sleeps, not held up
    assert fires > 5 * MAX_PASSES          # and evloop ran meanwhile


def test_busy_asyncio_does_not_starve_evloop(loop):
    srv = _echo_server(loop)

    async def main():
        handle = evloop.attach_asyncio()
        stop = False
        spins = 0

        def spin():                         # a call_soon chain: asyncio never idles
            nonlocal spins
            spins += 1
            if not stop:
                asyncio.get_running_loop().call_soon(spin)

        spin()
        t0 = time.monotonic()
        await handle.call(lambda done: loop.after(30, done))
        waited = time.monotonic() - t0
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"ping\n")
        reply = await asyncio.wait_for(reader.readline(), 2)
        stop = True
        writer.close()
        handle.detach()
        return waited, reply, spins

    waited, reply, spins = asyncio.run(main())
    assert 0.030 <= waited < 0.2
    assert reply == b"PING\n"
    assert spins > 100
    srv.close()


def test_detach_stops_evloop_callbacks(loop):
    ran = []
    a, b = socket.socketpair()

    async def main():
        handle = evloop.attach_asyncio()

        def first(done):
            def readable():
                ran.append(a.recv(10))
                done()
            loop.fileevent(a, "readable", readable)
            b.send(b"one")

        await handle.call(first)
        loop.fileevent(a, "readable", lambda: ran.append(a.recv(10)))
        handle.detach()
        assert not handle.attached
        loop.after(0, ran.append, "timer")
        b.send(b"two")
        await asyncio.sleep(0.05)          # asyncio runs; evloop must not
        return list(ran)

    seen = asyncio.run(main())
    assert seen == [b"one"]
    loop.update()                          # still pending in evloop, and runs now
    assert sorted(map(str, ran[1:])) == sorted(map(str, [b"two", "timer"]))
    loop.fileevent(a, "readable", None)
    a.close()
    b.close()


def test_detach_from_an_evloop_callback_stops_the_service_at_once(loop):
    fires = 0

    async def main():
        handle = evloop.attach_asyncio()

        def chain():
            nonlocal fires
            fires += 1
            if fires == 3:
                handle.detach()
            loop.after(0, chain)

        await handle.call(lambda done: (loop.after(0, chain), loop.after(0, done)))
        await asyncio.sleep(0.02)
        return fires

    assert asyncio.run(main()) == 3
    loop.run_once(0)
    assert fires == 4                      # the chain was left pending, not lost


def test_callback_exception_goes_to_bgerror_not_to_asyncio(loop):
    errors = []
    loop.bgerror(errors.append)
    aio_errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: aio_errors.append(ctx))
        handle = evloop.attach_asyncio()

        def boom():
            raise ValueError("bad input")

        await handle.call(lambda done: (loop.after(0, boom), loop.after(5, done)))
        handle.detach()

    asyncio.run(main())
    assert [str(e) for e in errors] == ["bad input"]
    assert aio_errors == []


def test_closing_the_asyncio_loop_detaches_cleanly(loop, capfd):
    handles = []

    async def main():
        handles.append(evloop.attach_asyncio())
        loop.after(60_000, lambda: None)   # a far timer: the host holds a handle
        handles[0].wakeup()
        await asyncio.sleep(0)

    asyncio.run(main())                    # closes the asyncio loop, no detach()
    handle = handles[0]
    assert not handle.attached
    # The evloop loop runs alone again, and can be attached anew.
    var = evloop.Var()
    loop.after(5, var.set, "alone")
    assert loop.vwait(var) == "alone"
    handle.detach()                        # harmless now
    out, err = capfd.readouterr()
    assert err == ""

    async def again():
        h = evloop.attach_asyncio()
        r = await h.call(lambda done: loop.after(1, done, "again"))
        h.detach()
        return r

    assert asyncio.run(again()) == "again"


def test_vwait_while_attached_raises_and_works_after_detach(loop):
    async def main():
        handle = evloop.attach_asyncio()
        var = evloop.Var()
        with pytest.raises(RuntimeError, match="attached to asyncio"):
            evloop.vwait(var)              # from a task

        def inside_a_pass(done):
            def try_it():
                try:
                    loop.vwait(var)
                except RuntimeError as exc:
                    done(exc)
            loop.after(0, try_it)

        exc = await handle.call(inside_a_pass)
        assert isinstance(exc, RuntimeError)
        handle.detach()
        loop.after(1, var.set, 7)
        return loop.vwait(var)             # detached: a plain nested loop

    assert asyncio.run(main()) == 7


def test_call_raises_the_callback_error(loop):
    async def main():
        handle = evloop.attach_asyncio()
        try:
            with pytest.raises(LookupError, match="no such"):
                await handle.call(lambda done: loop.after(
                    1, done, None, LookupError("no such thing")))
        finally:
            handle.detach()

    asyncio.run(main())


def test_attach_twice_or_without_a_running_loop_is_refused(loop):
    with pytest.raises(RuntimeError, match="aio_loop="):
        evloop.attach_asyncio()

    async def main():
        handle = evloop.attach_asyncio()
        with pytest.raises(RuntimeError, match="already attached"):
            evloop.attach_asyncio()
        handle.detach()
        evloop.attach_asyncio().detach()   # after detach(), again is fine

    asyncio.run(main())


def test_an_asyncio_service_awaits_the_port_managers_non_blocking_client(loop, portmgr):
    async def main():
        handle = evloop.attach_asyncio()
        alloc = AsyncPortAllocator("127.0.0.1", portmgr.port, loop=loop, timeout=5)
        try:
            port = await handle.call(alloc.allocate_port, "aio service")
            rows = await handle.call(alloc.list_ports)
            alloc.release()
            after = await handle.call(alloc.list_ports)
            # A manager that is not there: the error is raised by the await.
            nobody = AsyncPortAllocator("127.0.0.1", 1, loop=loop, timeout=5)
            with pytest.raises(PortManagerUnavailable):
                await handle.call(nobody.list_ports)
        finally:
            handle.detach()
        return port, rows, after

    port, rows, after = asyncio.run(main())
    assert portmgr.low <= port <= portmgr.high
    assert [(r.port, r.application) for r in rows] == [(port, "aio service")]
    assert after == []


def test_on_vwait_hook_refuses_before_anything_runs_and_can_be_removed(loop):
    ran = []
    loop.after(0, ran.append, "timer")

    def refuse():
        raise RuntimeError("not now")

    assert loop.on_vwait(refuse) is None
    with pytest.raises(RuntimeError, match="not now"):
        loop.vwait(evloop.Var())
    assert ran == []                           # nothing ran: refused first
    assert loop.on_vwait(None) is refuse
    var = evloop.Var()
    loop.after(0, var.set, "done")
    assert loop.vwait(var) == "done" and ran == ["timer"]
    with pytest.raises(TypeError):
        loop.on_vwait("no")
