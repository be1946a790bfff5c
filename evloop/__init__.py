"""evloop: Tcl's event loop for Python.

``fileevent`` for readable/writable callbacks, ``after`` for timers,
``vwait`` to wait, ``open_async`` + ``ch.error()`` to connect without
blocking, ``server`` to listen, ``WatchGroup`` to watch many short-lived
sockets through one descriptor of the loop.  One loop per thread: the module-level
functions act on the calling thread's loop, so a script reads like its Tcl
original::

    import evloop

    def accept(ch, host, port):
        evloop.fileevent(ch, "readable", echo, ch)

    def echo(ch):
        line = ch.gets()
        if line is not None:
            ch.puts(line)
        elif ch.eof():
            ch.close()

    evloop.server(accept, 12345)
    evloop.vwait(evloop.Var())      # serve for ever
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .channel import Channel, LineTooLong
from .embed import attach_asyncio, attach_tk
from .group import WatchGroup
from .loop import Loop, Var, get_loop, set_loop
from .sockets import Server, open, open_async, server
from .timers import TimerId

__all__ = [
    "Loop", "Var", "TimerId", "Channel", "LineTooLong", "Server", "WatchGroup",
    "get_loop", "set_loop", "open_async", "open", "server",
    "fileevent", "after", "after_idle", "after_cancel", "after_info",
    "vwait", "update", "bgerror", "call_soon_threadsafe", "run", "stop",
    "attach_asyncio", "attach_tk",
]


def fileevent(ch: Any, event: str, *handler: Any) -> Callable[..., Any] | None:
    """`Loop.fileevent` on the calling thread's loop."""
    return get_loop().fileevent(ch, event, *handler)


def after(ms: float, callback: Callable[..., Any], *args: Any) -> TimerId:
    """`Loop.after` on the calling thread's loop."""
    return get_loop().after(ms, callback, *args)


def after_idle(callback: Callable[..., Any], *args: Any) -> TimerId:
    """`Loop.after_idle` on the calling thread's loop."""
    return get_loop().after_idle(callback, *args)


def after_cancel(timer: Any) -> None:
    """`Loop.after_cancel` on the calling thread's loop."""
    get_loop().after_cancel(timer)


def after_info(timer: TimerId | None = None) -> Any:
    """`Loop.after_info` on the calling thread's loop."""
    return get_loop().after_info(timer)


def vwait(var: Var) -> Any:
    """`Loop.vwait` on the calling thread's loop."""
    return get_loop().vwait(var)


def update(idletasks: bool = False) -> None:
    """`Loop.update` on the calling thread's loop."""
    get_loop().update(idletasks)


def bgerror(*handler: Any) -> Callable[[BaseException], Any]:
    """`Loop.bgerror` on the calling thread's loop."""
    return get_loop().bgerror(*handler)


def call_soon_threadsafe(callback: Callable[..., Any], *args: Any) -> None:
    """`Loop.call_soon_threadsafe` on the calling thread's loop."""
    get_loop().call_soon_threadsafe(callback, *args)


def run() -> None:
    """`Loop.run` on the calling thread's loop."""
    get_loop().run()


def stop() -> None:
    """`Loop.stop` on the calling thread's loop."""
    get_loop().stop()


def __getattr__(name: str) -> Any:
    # ``evloop.__version__`` is looked up on first use: finding out whether
    # the distribution is installed costs a look at sys.path, which a
    # program that never asks should not pay.
    if name == "__version__":
        from ._version import version
        value = globals()["__version__"] = version()
        return value
    raise AttributeError(f"module 'evloop' has no attribute {name!r}")
