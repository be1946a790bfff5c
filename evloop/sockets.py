"""Making channels: connect (blocking or not) and listen.

``open_async`` is Tcl's ``socket -async``: it starts a connect and returns at
once.  The connect ends one of two ways, and the user sees one.  On Linux a
refused connect on loopback returns EINPROGRESS with the refusal already in
``SO_ERROR``; a route can make ``connect()`` itself fail (unreachable route:
EHOSTUNREACH, prohibit route: EACCES, blackhole route: EINVAL, a broadcast
address: ENETUNREACH; other systems refuse at once with ECONNREFUSED).
Either way the channel's writable handler fires and ``ch.error()`` returns
the error once -- a failed socket polls writable (and hung up), so the same
epoll wakeup serves both paths.  Only a failure to make the attempt at all
raises: no socket could be made (EMFILE, a bad address family), or the
kernel had no resources for the connect (EADDRNOTAVAIL when a TCP socket
finds no free local port, EAGAIN when a Unix one or the route cache is
full, ENOBUFS, ENOMEM), so a caller can wait and retry.

``server`` follows CREATE.SERVER.SOCKET: an IPv4 address (IPv4 peers only),
an IPv6 address (IPv6 peers only), a host name (resolved), ``""`` (one
dual-stack socket for both) or a path starting with ``/`` (a Unix socket).
Accepting stops for a moment when the process is out of descriptors, rather
than spinning on an accept() that keeps failing, and starts again by itself.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from ._addresses import host_port
from .channel import Channel
from .loop import Loop, get_loop

__all__ = ["open_async", "open", "server", "Server"]

# connect() errors that mean "could not try now", raised rather than kept.
_NO_RESOURCES = frozenset({errno.EADDRNOTAVAIL, errno.EAGAIN, errno.ENOBUFS,
                           errno.ENOMEM, errno.EMFILE, errno.ENFILE})
# connect() results of a connect that is under way (or done: loopback).
_STARTED = frozenset({0, errno.EINPROGRESS})
# Linux makes a socket non-blocking as it creates it (SOCK_NONBLOCK): one
# system call fewer per connect than setblocking(False) after socket().
# Python then knows it is non-blocking (timeout 0.0) without asking.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM_NONBLOCK = socket.SOCK_STREAM | _NONBLOCK
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_inet_pton = socket.inet_pton
# accept() errors of a full descriptor table or memory: pause, then retry.
_ACCEPT_PAUSE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_PAUSE_MS = 100
# Connections accepted or datagrams received per readable event, at most:
# one busy server must not starve the rest of the loop.
_BATCH = 64


def _resolve(host: str, port: int, kind: int, passive: bool = False) -> list[tuple]:
    """getaddrinfo, numeric addresses without a resolver round trip.

    ``port`` is a number or a service name.  A plain IPv4 or IPv6 address
    with a number is taken as it is (getaddrinfo costs microseconds even
    then, and a scan connects thousands of times).  Raises ValueError for a
    number out of range (getaddrinfo would wrap 70000 round to 4464).
    """
    if isinstance(port, int):
        _check_port(port)
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, host)
            except (OSError, TypeError):
                continue
            addr = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
            return [(family, kind, 0, "", addr)]
    flags = socket.AI_PASSIVE if passive else 0
    try:
        return socket.getaddrinfo(host, port, 0, kind, 0, flags | socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    try:
        return socket.getaddrinfo(host, port, 0, kind, 0, flags)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"can't resolve {host!r}: {exc.strerror}") from None


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port}: must be from 0 to 65535")


def open_async(host: str, port: int, loop: Loop | None = None) -> Channel:
    """Start connecting to ``host``:``port``; return the Channel at once.

    Watch it with ``fileevent(ch, "writable", ...)``; when that fires,
    ``ch.error()`` is None if connected, else the OSError of the failure.
    A host name is resolved before the connect starts (that much blocks);
    the first address is tried.  Raises OSError only if no socket could be
    made or the kernel had no resources for the connect.
    """
    # A plain IPv4 or IPv6 address and a port number (a scan's every
    # connect) go straight to socket() and connect(): no address list is
    # built for them.  Anything else goes through _resolve.
    addr: Any
    if type(port) is int and 0 <= port <= 65535 and type(host) is str:
        try:
            _inet_pton(_AF_INET, host)
            family, addr = _AF_INET, (host, port)
        except OSError:
            try:
                _inet_pton(_AF_INET6, host)
                family, addr = _AF_INET6, (host, port, 0, 0)
            except OSError:
                family, _, _, _, addr = _resolve(host, port, socket.SOCK_STREAM)[0]
    else:
        family, _, _, _, addr = _resolve(host, port, socket.SOCK_STREAM)[0]
    sock = socket.socket(family, _STREAM_NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        code = sock.connect_ex(addr)
    except BaseException:
        sock.close()
        raise
    if code in _STARTED:
        return Channel(sock, loop)
    if code in _NO_RESOURCES:
        sock.close()
        raise OSError(code, os.strerror(code))
    # Failed at once: the channel keeps the error for error().
    return Channel(sock, loop, error=OSError(code, os.strerror(code)))


def open(host: str, port: int, timeout: float | None = None,
         loop: Loop | None = None) -> Channel:
    """Connect to ``host``:``port`` (blocking, Tcl's plain ``socket``).

    Tries each address of ``host`` in turn; ``timeout`` bounds each try.
    Returns a blocking Channel; raises OSError if no address answered.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    return Channel(sock, loop, blocking=True)


class Server:
    """A listening (or datagram) socket made by `server`."""

    def __init__(self, sock: socket.socket, callback: Callable[..., Any] | None,
                 loop: Loop, path: str | None = None) -> None:
        self.sock = sock
        self.port: int = 0 if path else sock.getsockname()[1]
        self.path = path
        self._callback = callback
        self._loop = loop
        self._paused: Any = None       # the TimerId while accepting is paused
        self._stream = sock.type == socket.SOCK_STREAM
        if callback is not None:
            loop.fileevent(sock, "readable",
                           self._accept if self._stream else self._receive)

    def __repr__(self) -> str:
        where = self.path or f"port {self.port}"
        return f"<Server {where}{' closed' if self.sock.fileno() < 0 else ''}>"

    def fileno(self) -> int:
        return self.sock.fileno()

    def _accept(self) -> None:
        """Accept what is pending; on a full descriptor table, pause."""
        for _ in range(_BATCH):
            if self.sock.fileno() < 0:
                return                      # a callback closed the server
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue                    # the peer gave up while queued
            except OSError as exc:
                if exc.errno in _ACCEPT_PAUSE:
                    self._pause()
                else:
                    self._loop.report(exc)
                return
            ch = Channel(conn, self._loop)
            if self.path is None:
                host, port = host_port(addr)
            else:
                host, port = self.path, 0
            self._call(ch, host, port)

    def _call(self, *args: Any) -> None:
        """Run the user's callback.  One bad connection or datagram must not
        stop the server: an exception is reported, and the server's own
        handler, which would be deleted if it raised, stays."""
        callback = self._callback
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:
            self._loop.report(exc)

    def _pause(self) -> None:
        # Out of descriptors: the pending connection stays in the backlog and
        # epoll would report it again at once, so stop listening for a while
        # instead of spinning; the connections are served when fds free up.
        self._loop.fileevent(self.sock, "readable", None)
        self._paused = self._loop.after(_ACCEPT_PAUSE_MS, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self.sock.fileno() >= 0:
            self._loop.fileevent(self.sock, "readable", self._accept)

    def _receive(self) -> None:
        """Datagram servers with a callback: ``callback(data, host, port)``
        for each datagram waiting."""
        for _ in range(_BATCH):
            if self.sock.fileno() < 0:
                return                      # a callback closed the server
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._loop.report(exc)
                return
            if self.path is not None or not addr:
                self._call(data, addr or "", 0)
            else:
                host, port = host_port(addr)
                self._call(data, host, port)

    def close(self) -> None:
        """Stop listening (a Unix socket's path is removed)."""
        if self.sock.fileno() < 0:
            return
        self._loop.after_cancel(self._paused)
        # Unregister first, then close; a dgram server's socket may carry the
        # caller's handlers too.
        self._loop.forget(self.sock)
        self.sock.close()
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def server(callback: Callable[..., Any] | None, port: int, host: str = "",
           kind: str = "stream", loop: Loop | None = None) -> Server:
    """Listen on ``port`` (Tcl's ``socket -server``); returns a `Server`.

    For each connection ``callback(channel, peer_host, peer_port)`` runs
    with a non-blocking, line-buffered Channel.  ``host`` chooses the
    address (see the module notes); port 0 picks a free port
    (``server.port``).  ``kind="dgram"`` makes a UDP (or Unix datagram)
    socket: set a readable handler on ``server.sock`` yourself, or give a
    callback, which is called as ``callback(data, peer_host, peer_port)``
    for each datagram.  Raises OSError if the address can't be had.
    """
    if kind not in ("stream", "dgram"):
        raise ValueError(f"bad server kind {kind!r}: must be 'stream' or 'dgram'")
    if kind == "stream" and callback is None:
        raise ValueError("a stream server needs a callback")
    loop = loop if loop is not None else get_loop()
    socktype = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
    if host.startswith("/"):
        sock = _unix_socket(host, socktype)
        return Server(sock, callback, loop, path=host)
    if host == "":
        if not isinstance(port, int):
            raise TypeError(f"a dual-stack server needs a port number, not {port!r}")
        _check_port(port)
        sock = _dual_stack_socket(port, socktype)
    else:
        family, _, proto, _, addr = _resolve(host, port, socktype, passive=True)[0]
        sock = _bound(family, socktype, addr, v6only=True)
    return Server(sock, callback, loop)


def _bound(family: int, socktype: int, addr: Any, v6only: bool) -> socket.socket:
    sock = socket.socket(family, socktype)
    try:
        if socktype == socket.SOCK_STREAM:
            # Rebinding a port whose old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(addr)
        if socktype == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _dual_stack_socket(port: int, socktype: int) -> socket.socket:
    """One socket for IPv4 and IPv6 peers; IPv4 alone if IPv6 is off."""
    if socket.has_ipv6:
        try:
            return _bound(socket.AF_INET6, socktype, ("::", port), v6only=False)
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
    return _bound(socket.AF_INET, socktype, ("0.0.0.0", port), v6only=False)


def _unix_socket(path: str, socktype: int) -> socket.socket:
    """Bind a Unix socket at ``path``, replacing a stale one nobody serves."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode) and not _in_use(path):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socktype)
    try:
        sock.bind(path)
        if socktype == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
