"""Clients of the port manager: `PortAllocator` (blocking) and
`AsyncPortAllocator` (callbacks on an evloop loop).

The protocol, seen from the client
----------------------------------
A client opens a TCP connection to the port manager (``localhost``, port
30000 unless the manager wrote another one to ``listen.port``) and sends
request lines; every request gets a reply before the next is sent.  Each
line, both ways, is a Tcl list, so a word holding white space or Tcl's
special characters is quoted (``{my app}``); we quote with
`portalloc.protocol.format_list` and split replies with
`portalloc.protocol.parse_list`::

    GIMME <application> <user>   ->  OK <port>
                                 |   FAIL <reason>          (e.g. FAIL {no free ports})
    LIST                         ->  OK <n>
                                     then n lines: <port> <application> <user>

*Holding a port is holding the connection.*  The manager keeps a port
allocated for as long as the connection that asked for it stays open, and
takes back every port of a connection when it closes -- for whatever
reason, the process exiting included.  So an allocator keeps one connection
for all the ports it is given; ``release()`` closes it, which frees them,
and ``destroy()`` forgets the allocator but leaves the connection open, as
the original Tcl package does.  That connection is kept referenced from this
module, so the ports stay allocated even after the allocator is garbage
collected, until the process exits (or ``release()`` is called first).
A connection that holds nothing is closed as soon as its request is done.

*GIMME only works locally.*  The manager hands out ports only to clients on
its own host (loopback peers); from elsewhere it answers FAIL and hangs up.
LIST works from anywhere.  The original manager takes 127.0.0.1 alone for
local, not ::1, so a host name is tried address by address with IPv4 ones
first, whatever order the resolver gives (glibc puts ::1 first for
``localhost`` where /etc/hosts lists both, as Debian's does).

Byte-level habits we keep to, so that we also work against the original
NSCLDAQ server (``DaqPortManager``, Tcl): requests end in ``\\n`` and go out in
one ``send`` (the original rejects a request split across TCP segments);
replies end in ``\\r\\n``, but ``\\n`` alone is accepted too.  Unlike the
original clients we quote the application name, so ``my app`` does not spill
into the user field.  A name holding a line break is refused with
`ValueError` before anything is sent: the manager reads one request per line,
and lists such a name braced with the line break inside, splitting its LIST
line in two.  (Other clients can register one with ``a\\nb``; we join such
split lines again when we read LIST.)  When one ``(user, application)``
holds several ports, LIST names them ``app``, ``app_1``, ``app_2``, ...;
`find_server` therefore finds the first port of a service.

Timeouts are deadlines: with ``timeout=T`` (`DEFAULT_TIMEOUT`, 10 s) every
request -- connect, send and the whole reply, every line of a LIST --
finishes or raises within T seconds, however slowly the manager trickles
its bytes; a reply line longer than `MAX_REPLY_LINE` (64 KiB) is an error
too, so a manager that never ends a line cannot make us buffer without
bound.  After a timeout a late reply could be taken for the answer to the
next request, so the connection is not used again; if it holds ports it is
left open (the ports stay ours, until ``release()``) and the next request
opens a new one.

Finding the manager: ``port=None`` means the first line of the first of
these files that exists and can be trusted: the file named by the
environment variable ``PORTALLOC_PORTFILE``, `DEFAULT_PORT_FILE`
(``/var/tmp/daqportmgr/listen.port``, which the manager writes), and
`FALLBACK_PORT_FILE` (``~/.daqportmgr/listen.port``, where a manager that
could not use ``/var/tmp/daqportmgr`` writes it); else `DEFAULT_PORT`
(30000).  A file is trusted when it is a regular file (not a symlink),
owned by root or by the user running the client, and writable by neither
group nor others: anyone can create ``/var/tmp/daqportmgr`` first, and a
port file planted there would send our requests to a fake manager.  An
untrusted file is passed over with a warning on stderr.  Tests point
`DEFAULT_PORT_FILE` (or the variable) elsewhere.

Errors: `PortAllocationError` carries the manager's reason (``.reason``);
`PortManagerUnavailable` (an `OSError`) says that the manager at
``host:port`` could not be reached, stopped answering within the timeout,
or closed the connection; `PortManagerProtocolError` that it answered
something we do not understand.  All are `PortManagerError`.
"""

from __future__ import annotations

import getpass
import os
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from .protocol import decode_line, encode_line, format_list, parse_list

__all__ = [
    "PortAllocator", "AsyncPortAllocator", "Allocation",
    "PortManagerError", "PortAllocationError", "PortManagerUnavailable",
    "PortManagerProtocolError",
    "DEFAULT_PORT", "DEFAULT_PORT_FILE", "FALLBACK_PORT_FILE", "DEFAULT_TIMEOUT",
    "MAX_REPLY_LINE", "PORT_FILE_ENV", "default_port", "login_user",
]

DEFAULT_PORT = 30000
DEFAULT_PORT_FILE = "/var/tmp/daqportmgr/listen.port"
FALLBACK_PORT_FILE = "~/.daqportmgr/listen.port"
PORT_FILE_ENV = "PORTALLOC_PORTFILE"
DEFAULT_TIMEOUT = 10.0          # seconds a whole request may take
MAX_REPLY_LINE = 65536          # bytes in one reply line, at most

_RECV_SIZE = 65536
_MAX_ALLOCATION_TEXT = 65536    # an allocation split over lines, at most


# ------------------------------------------------------------------ results

class Allocation(NamedTuple):
    """One line of the manager's LIST reply."""

    port: int
    application: str
    user: str


class PortManagerError(Exception):
    """Base of every error the port manager clients raise."""


class PortAllocationError(PortManagerError):
    """The manager would not allocate a port; ``reason`` is its own words
    (``no free ports``, ``... Only local applications get ports``)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class PortManagerUnavailable(PortManagerError, OSError):
    """The manager could not be reached, did not answer in time, or closed
    the connection.  The message names its ``host:port``; ``errno`` is that
    of the underlying failure when there was one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class PortManagerProtocolError(PortManagerError):
    """The manager sent a reply that is not what the protocol says."""


# ------------------------------------------------------------------ helpers

_warned: set[str] = set()


def _warn_once(path: str, why: str) -> None:
    if path not in _warned:
        _warned.add(path)
        print(f"portalloc: ignoring {path}: {why}", file=sys.stderr)


def _read_port_file(path: str) -> int | None:
    """The port in ``path`` if it exists, can be trusted and holds one."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        if os.path.islink(path):
            _warn_once(path, "it is a symbolic link")
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            _warn_once(path, "it is not a regular file")
            return None
        if st.st_uid not in (0, os.getuid()):
            _warn_once(path, f"it belongs to uid {st.st_uid}, neither root nor you")
            return None
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            _warn_once(path, "others can write it")
            return None
        first = f.readline(100)
    try:
        port = int(first.decode("ascii", "replace").strip())
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def default_port(port_file: str | None = None) -> int:
    """The port the manager listens on, as ``PortAllocator(port=None)`` finds it.

    ``port_file`` if given, else the first trusted file of
    ``$PORTALLOC_PORTFILE``, `DEFAULT_PORT_FILE` and `FALLBACK_PORT_FILE`
    that holds a port (see the module notes); else `DEFAULT_PORT`.  An
    untrusted file is passed over with a warning on stderr.  Never raises.
    """
    if port_file:
        candidates = [port_file]
    else:
        candidates = [p for p in (os.environ.get(PORT_FILE_ENV), DEFAULT_PORT_FILE,
                                  os.path.expanduser(FALLBACK_PORT_FILE)) if p]
    for path in candidates:
        port = _read_port_file(path)
        if port is not None:
            return port
    return DEFAULT_PORT


def login_user() -> str:
    """The login name sent with GIMME and used by ``find_server``."""
    try:
        return getpass.getuser()
    except Exception:           # no $USER and no passwd entry (containers)
        return str(os.getuid())


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(host: str, port: int) -> list[str]:
    """The numeric addresses of ``host`` to try in turn, IPv4 first.

    The original manager honours GIMME from 127.0.0.1 alone, and where
    /etc/hosts names both 127.0.0.1 and ::1 ``localhost`` (Debian's default)
    glibc sorts ::1 first: following its order would ask for a port over
    IPv6 and be refused.  Our manager takes either.  Raises OSError
    (socket.gaierror) when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)     # stable
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if "\n" in name or "\r" in name:
        raise ValueError(f"{what} {name!r} contains a line break, which the protocol can't carry")
    return name


def _gimme(application: str, user: str) -> str:
    return format_list(["GIMME", _check_name("application name", application),
                        _check_name("user name", user)])


def _parse_words(where: str, line: str) -> list[str]:
    try:
        return parse_list(line)
    except ValueError as exc:
        raise PortManagerProtocolError(
            f"unreadable reply from port manager at {where}: {line!r} ({exc})") from None


def _gimme_result(where: str, application: str, line: str) -> int:
    """The port of a GIMME reply; raises PortAllocationError for FAIL."""
    words = _parse_words(where, line)
    if words[:1] == ["OK"] and len(words) >= 2:
        try:
            return _port_number(words[1])
        except ValueError:
            pass
    elif words[:1] == ["FAIL"]:
        reason = words[1] if len(words) > 1 else ""
        raise PortAllocationError(
            f"port manager at {where} gave no port for {application!r}: {reason}", reason)
    raise PortManagerProtocolError(f"unexpected reply from port manager at {where}: {line!r}")


def _list_count(where: str, line: str) -> int:
    """The count of a LIST reply's first line."""
    words = _parse_words(where, line)
    if words[:1] == ["OK"] and len(words) >= 2 and words[1].isdigit():
        return int(words[1])
    if words[:1] == ["FAIL"]:
        reason = words[1] if len(words) > 1 else ""
        raise PortManagerError(f"port manager at {where} refused LIST: {reason}")
    raise PortManagerProtocolError(f"unexpected reply from port manager at {where}: {line!r}")


def _allocation(where: str, text: str) -> Allocation | None:
    """One allocation of a LIST reply (extra words are ignored), or None if
    ``text`` ends inside a braced or quoted word and needs the next line.

    A name holding a line break (the manager accepts ``GIMME a\\nb fox``)
    is listed braced with the line break in it, which splits its allocation
    over two reply lines; the caller joins them again with ``\\n``.
    """
    try:
        words = parse_list(text)
    except ValueError as exc:
        if str(exc).startswith("unmatched open") and len(text) < _MAX_ALLOCATION_TEXT:
            return None
        raise PortManagerProtocolError(
            f"unreadable reply from port manager at {where}: {text!r} ({exc})") from None
    try:
        if len(words) >= 3:
            return Allocation(_port_number(words[0]), words[1], words[2])
    except ValueError:
        pass
    raise PortManagerProtocolError(
        f"bad allocation line from port manager at {where}: {text!r}")


def _port_number(word: str) -> int:
    port = int(word) if word.isdigit() else -1
    if not 0 < port < 65536:
        raise ValueError(word)
    return port


def _find(allocations: list[Allocation], service: str, user: str) -> int | None:
    for a in allocations:
        if a.application == service and a.user == user:
            return a.port
    return None


# Connections that hold ports for allocators that were destroyed or dropped:
# referenced here so that garbage collection does not close them.  The
# process exiting closes them, and the manager then frees their ports.
_held: set[Any] = set()
_held_lock = threading.Lock()


def _hold(conn: Any) -> None:
    with _held_lock:
        _held.add(conn)


def _unhold(conn: Any) -> None:
    with _held_lock:
        _held.discard(conn)


# ---------------------------------------------------------- blocking client

class _Connection:
    """One blocking connection to the manager.  Each request runs against a
    deadline (`begin` sets it): connect, send and every read share it."""

    def __init__(self, host: str, port: int, timeout: float | None) -> None:
        self.where = _where(host, port)
        self.ports: list[int] = []
        self.timeout = timeout
        self.deadline: float | None = None
        self._buf = bytearray()
        self.begin()
        try:
            self.sock = self._open_socket(host, port)
        except TimeoutError:
            raise PortManagerUnavailable(
                f"can't connect to port manager at {self.where}: timed out") from None
        except OSError as exc:
            raise PortManagerUnavailable(
                f"can't connect to port manager at {self.where}: {exc.strerror or exc}",
                exc.errno) from None

    def begin(self) -> None:
        """Start a request: it must be done ``timeout`` seconds from now."""
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def _left(self) -> float | None:
        """Seconds to the deadline; raises TimeoutError once it has passed."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def _open_socket(self, host: str, port: int) -> socket.socket:
        """A socket connected to the first address of ``host`` that answers;
        raises the last address's error when none does."""
        error: OSError | None = None
        for address in _addresses(host, port):
            try:
                return socket.create_connection((address, port), timeout=self._left())
            except TimeoutError:
                raise
            except OSError as exc:
                error = exc
        assert error is not None        # getaddrinfo returns an address or raises
        raise error

    def request(self, line: str) -> str:
        """Send one request line; return the first line of the reply."""
        self._send(line)
        return self.readline()

    def _send(self, line: str) -> None:
        try:
            self.sock.settimeout(self._left())
            self.sock.sendall(encode_line(line + "\n"))
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as exc:
            raise self._lost(exc) from None

    def readline(self) -> str:
        """The next reply line without its ``\\r\\n`` (or ``\\n``), by the deadline."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                return decode_line(line.rstrip(b"\r"))
            if len(self._buf) > MAX_REPLY_LINE:
                raise PortManagerProtocolError(
                    f"port manager at {self.where} sent a reply line longer than "
                    f"{MAX_REPLY_LINE} bytes")
            try:
                self.sock.settimeout(self._left())
                data = self.sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise self._timed_out() from None
            except OSError as exc:
                raise self._lost(exc) from None
            if not data:
                raise self._lost(None)
            self._buf += data

    def _timed_out(self) -> PortManagerUnavailable:
        return PortManagerUnavailable(
            f"port manager at {self.where} did not answer within {self.timeout:g} s")

    def _lost(self, exc: OSError | None) -> PortManagerUnavailable:
        why = f": {exc.strerror or exc}" if exc is not None else ""
        held = f" (ports {', '.join(map(str, self.ports))} are no longer held)" if self.ports else ""
        self.ports = []
        return PortManagerUnavailable(
            f"lost the connection to port manager at {self.where}{why}{held}",
            exc.errno if exc is not None else None)

    def close(self) -> None:
        _unhold(self)
        self.ports = []
        self.sock.close()


class PortAllocator:
    """A client of the port manager on ``hostname`` (blocking calls).

    ``port=None`` finds the manager's port as `default_port` does.
    ``timeout`` (seconds, None for none) is a deadline for each whole
    request: connect, send and the complete reply.  ``user`` is the user name sent with GIMME (default: the
    login user).  Usable as a context manager, which releases on exit.
    Thread-safe: requests from several threads are serialised.
    """

    def __init__(self, hostname: str = "localhost", port: int | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT, user: str | None = None) -> None:
        self.hostname = hostname
        self.port = default_port() if port is None else port
        self.timeout = timeout
        self.user = login_user() if user is None else user
        self._conn: _Connection | None = None       # the one holding our ports
        self._stale: list[_Connection] = []         # held ports, can't be used
        self._lock = threading.Lock()
        self._destroyed = False

    def __repr__(self) -> str:
        return f"<PortAllocator {_where(self.hostname, self.port)} holding {self.ports}>"

    def __enter__(self) -> PortAllocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def ports(self) -> list[int]:
        """The ports this allocator was given and (as far as it knows) holds."""
        held = [p for c in self._stale for p in c.ports]
        if self._conn is not None:
            held += self._conn.ports
        return held

    def allocate_port(self, application: str) -> int:
        """Ask for a port for ``application``; return it.

        The port stays allocated while this allocator's connection is open:
        until `release`, or the process exits.  Raises PortAllocationError
        with the manager's reason when it has none to give (or refuses a
        remote client), PortManagerUnavailable when it can't be reached,
        ValueError for a name with a line break in it.
        """
        line = _gimme(application, self.user)
        with self._lock:
            self._check_alive()
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            else:
                conn.begin()
            reply = self._ask(conn, line)
            try:
                port = _gimme_result(conn.where, application, reply)
            except PortAllocationError:
                if not conn.ports:
                    self._drop(conn)     # it holds nothing: keep nothing open
                raise
            except PortManagerError:
                self._broken(conn)
                raise
            conn.ports.append(port)
            _hold(conn)
            return port

    def list_ports(self) -> list[Allocation]:
        """Every allocation the manager knows of, in its order."""
        with self._lock:
            self._check_alive()
            # The connection that holds our ports, else one for this request.
            conn = self._conn
            temporary = conn is None
            if conn is None:
                conn = self._connect()
            else:
                conn.begin()
            try:
                count = _list_count(conn.where, self._ask(conn, "LIST"))
                rows = []
                for _ in range(count):
                    text = self._read(conn)
                    while (row := _allocation(conn.where, text)) is None:
                        text += "\n" + self._read(conn)
                    rows.append(row)
                return rows
            except PortManagerProtocolError:
                if not temporary:
                    self._broken(conn)      # where the next reply starts is unknown
                raise
            finally:
                if temporary:
                    conn.close()

    def find_server(self, service: str, user: str | None = None) -> int | None:
        """The port of ``service`` run by ``user`` (default: the login
        user), or None if it holds none."""
        return _find(self.list_ports(), service, login_user() if user is None else user)

    def release(self) -> None:
        """Close the connection, freeing every port this allocator holds."""
        with self._lock:
            for conn in [*self._stale, *([self._conn] if self._conn else [])]:
                conn.close()
            self._stale.clear()
            self._conn = None

    def destroy(self) -> None:
        """Forget this allocator.  Its ports stay allocated, held by a
        connection this module keeps open until the process exits."""
        with self._lock:
            self._destroyed = True
            self._conn = None
            self._stale.clear()

    # -------------------------------------------------------------- inside

    def _check_alive(self) -> None:
        if self._destroyed:
            raise RuntimeError("this PortAllocator was destroyed")

    def _connect(self) -> _Connection:
        return _Connection(self.hostname, self.port, self.timeout)

    def _ask(self, conn: _Connection, line: str) -> str:
        try:
            return conn.request(line)
        except PortManagerUnavailable:
            self._broken(conn)
            raise

    def _read(self, conn: _Connection) -> str:
        try:
            return conn.readline()
        except PortManagerUnavailable:
            self._broken(conn)
            raise

    def _broken(self, conn: _Connection) -> None:
        """``conn`` failed mid-request: its replies can no longer be matched
        to requests.  If it still holds ports (a timeout: the manager may yet
        answer), keep it open for their sake but send nothing more on it."""
        if conn is self._conn:
            self._conn = None
        if conn.ports:
            if conn not in self._stale:
                self._stale.append(conn)
        else:
            conn.close()

    def _drop(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.close()


# ------------------------------------------------------------- async client

Callback = Callable[[Any, "BaseException | None"], Any]


class _Request:
    """A request waiting for (or reading) its reply."""

    __slots__ = ("line", "kind", "arg", "callback", "timer", "conn", "count", "rows",
                 "partial")

    def __init__(self, line: str, kind: str, arg: Any, callback: Callback) -> None:
        self.line = line
        self.kind = kind            # "gimme" or "list"
        self.arg = arg              # application; for find, (service, user)
        self.callback = callback
        self.timer: Any = None
        self.conn: _AsyncConnection | None = None   # whose queue it is in
        self.count: int | None = None   # LIST: lines still to come
        self.rows: list[Allocation] = []
        self.partial: str | None = None  # LIST: an allocation split over lines


class _AsyncConnection:
    """One non-blocking connection; requests go out one at a time, FIFO.

    States: connecting (``channel`` set, not ``connected``), connected,
    closed.  ``queue[0]`` is in flight while ``in_flight`` is true.  A
    connection that fails while it holds ports is not closed: it is marked
    closed, stops being read, and stays referenced so its ports are kept.
    """

    def __init__(self, owner: AsyncPortAllocator) -> None:
        self.owner: AsyncPortAllocator | None = owner
        self.loop = owner._loop
        self.host = owner.hostname
        self.port = owner.port
        self.where = _where(owner.hostname, owner.port)
        self.ports: list[int] = []
        self.queue: deque[_Request] = deque()
        self.in_flight = False
        self.started = False
        self.connected = False
        self.closed = False
        self.channel: Any = None
        self.addresses: list[str] = []
        self.buf = b""                      # a reply line still without its end

    # ------------------------------------------------------------ connecting

    def _start(self) -> None:
        """Resolve and begin connecting.  Resolving a name blocks (as in
        evloop.open_async); for localhost that is a look-up in /etc/hosts."""
        self.started = True
        try:
            # Every address in turn, IPv4 first (see _addresses): a manager
            # listening on ::1 alone still answers "localhost" after
            # 127.0.0.1 refused.
            self.addresses = _addresses(self.host, self.port)
        except OSError as exc:
            self.loop.after_idle(self._connect_failed, exc)
            return
        self._try_next()

    def _try_next(self) -> None:
        import evloop
        address = self.addresses.pop(0)
        try:
            self.channel = evloop.open_async(address, self.port, loop=self.loop)
        except OSError as exc:
            self.loop.after_idle(self._connect_failed, exc)
            return
        # Bytes in and out: lines are decoded and encoded as Tcl does.
        self.channel.configure(encoding="binary")
        self.loop.fileevent(self.channel, "writable", self._connected)

    def _connected(self) -> None:
        ch = self.channel
        self.loop.fileevent(ch, "writable", None)
        exc = ch.error()
        if exc is not None:
            ch.close(force=True)
            self._connect_failed(exc)
            return
        self.connected = True
        self.loop.fileevent(ch, "readable", self._readable)
        self._pump()

    def _connect_failed(self, exc: OSError) -> None:
        if self.closed:
            return
        if self.addresses:
            self._try_next()
            return
        self.fail(PortManagerUnavailable(
            f"can't connect to port manager at {self.where}: {exc.strerror or exc}",
            exc.errno))

    # -------------------------------------------------------------- requests

    def submit(self, req: _Request) -> None:
        req.conn = self
        self.queue.append(req)
        if not self.started:
            self._start()
        self._pump()

    def _pump(self) -> None:
        """Send the next request if none is in flight; close when idle."""
        if self.closed or not self.connected or self.in_flight:
            return
        if not self.queue:
            if not self.ports:
                self.close()
            return
        self.in_flight = True
        try:
            self.channel.puts(encode_line(self.queue[0].line))    # one line, one send
        except OSError as exc:
            # Report from the loop, never from inside the caller's request.
            self.loop.after_idle(self._lose, exc)

    def _readable(self) -> None:
        """Take the reply lines that came.  A bounded ``read`` rather than
        ``gets``: a manager that never ends a line must not have us read on
        and on (a line over `MAX_REPLY_LINE` bytes is an error)."""
        try:
            data = self.channel.read(MAX_REPLY_LINE + 1)
        except OSError as exc:
            self._lose(exc)
            return
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_REPLY_LINE or any(len(line) > MAX_REPLY_LINE for line in lines):
            self.fail(PortManagerProtocolError(
                f"port manager at {self.where} sent a reply line longer than "
                f"{MAX_REPLY_LINE} bytes"))
            return
        eof = self.channel.eof()
        if eof and rest:
            lines.append(rest)              # a last line without its end
            rest = b""
        self.buf = rest
        for line in lines:
            self._reply_line(decode_line(line.rstrip(b"\r")))
            if self.closed:
                return
        if eof:
            self._lose(None)

    def _reply_line(self, line: str) -> None:
        if not self.in_flight:
            self.fail(PortManagerProtocolError(
                f"unexpected line from port manager at {self.where}: {line!r}"))
            return
        req = self.queue[0]
        try:
            if req.kind == "gimme":
                port = _gimme_result(self.where, req.arg, line)
                self.ports.append(port)
                _hold(self)
                self._done(req, port, None)
                return
            if req.count is None:
                req.count = _list_count(self.where, line)
            else:
                if req.partial is not None:
                    line = req.partial + "\n" + line
                row = _allocation(self.where, line)
                req.partial = None if row is not None else line
                if row is None:
                    return                  # the rest is on the next line
                req.rows.append(row)
                req.count -= 1
            if req.count == 0:
                rows = req.rows
                self._done(req, rows if req.arg is None else _find(rows, *req.arg), None)
        except PortAllocationError as exc:
            self._done(req, None, exc)
        except PortManagerError as exc:
            self.fail(exc)

    def _done(self, req: _Request, result: Any, error: BaseException | None) -> None:
        self.queue.popleft()
        self.in_flight = False
        req.conn = None
        self.loop.after_cancel(req.timer)
        _deliver(self.loop, req, result, error)
        self._pump()

    def timed_out(self, req: _Request, timeout: float) -> None:
        exc = PortManagerUnavailable(
            f"port manager at {self.where} did not answer within {timeout:g} s")
        if not self.connected:
            self.fail(exc)                  # the connect itself hangs
        elif self.in_flight and req is self.queue[0]:
            # A late reply could no longer be told from the next one: give
            # up this connection; the requests behind start on a new one.
            self.fail(exc, only=req)
        else:
            self.queue.remove(req)
            req.conn = None
            _deliver(self.loop, req, None, exc)

    # ------------------------------------------------------------ ending

    def _lose(self, exc: OSError | None) -> None:
        """The connection broke (EOF, reset): fail everything waiting."""
        why = f": {exc.strerror or exc}" if exc is not None else ""
        held = f" (ports {', '.join(map(str, self.ports))} are no longer held)" if self.ports else ""
        self.ports = []
        self.fail(PortManagerUnavailable(
            f"lost the connection to port manager at {self.where}{why}{held}",
            exc.errno if exc is not None else None))

    def fail(self, exc: BaseException, only: _Request | None = None) -> None:
        """This connection is done for.  Report ``exc`` to every waiting
        request (with ``only``: to that one, and hand the others to a new
        connection of the owner)."""
        if self.closed:
            return
        waiting = list(self.queue)
        self.queue.clear()
        self.in_flight = False
        owner = self.owner
        if owner is not None and owner._conn is self:
            owner._conn = None
        if self.ports and self.channel is not None and not self.channel.closed():
            # Still holds ports (a timeout): keep the socket, stop reading it.
            self.closed = True
            self.loop.fileevent(self.channel, "readable", None)
            if owner is not None:
                owner._stale.append(self)
        else:
            self.close()
        for req in waiting:
            req.conn = None
            if only is not None and req is not only and owner is not None:
                owner._connection().submit(req)
            else:
                self.loop.after_cancel(req.timer)
                _deliver(self.loop, req, None, exc)

    def close(self) -> None:
        self.closed = True
        _unhold(self)
        self.ports = []
        if self.channel is not None and not self.channel.closed():
            self.channel.close(force=True)
        if self.owner is not None and self.owner._conn is self:
            self.owner._conn = None


def _deliver(loop: Any, req: _Request, result: Any, error: BaseException | None) -> None:
    """Call the request's callback; its exceptions go to the loop's bgerror."""
    try:
        req.callback(result, error)
    except Exception as exc:
        loop.report(exc)


class AsyncPortAllocator:
    """A client of the port manager for programs built on evloop.

    Each request takes a ``callback(result, error)``, which runs in the
    loop: ``result`` is the port, list of `Allocation`, or port-or-None of
    the blocking `PortAllocator` method of the same name, and ``error`` is
    None, or the exception that method would have raised (then ``result``
    is None).  Nothing here blocks the loop except resolving a host name
    when a connection is made.  Requests share one connection and are
    answered in the order they were made; the connection is kept while it
    holds ports, as with `PortAllocator`.  ``timeout`` bounds the time from
    making a request to its callback.  ``loop=None`` is the calling
    thread's loop.
    """

    def __init__(self, hostname: str = "localhost", port: int | None = None,
                 loop: Any = None, *, timeout: float | None = DEFAULT_TIMEOUT,
                 user: str | None = None) -> None:
        import evloop
        self.hostname = hostname
        self.port = default_port() if port is None else port
        self.timeout = timeout
        self.user = login_user() if user is None else user
        self._loop = loop if loop is not None else evloop.get_loop()
        self._conn: _AsyncConnection | None = None
        self._stale: list[_AsyncConnection] = []
        self._destroyed = False

    def __repr__(self) -> str:
        return f"<AsyncPortAllocator {_where(self.hostname, self.port)} holding {self.ports}>"

    @property
    def ports(self) -> list[int]:
        """The ports this allocator was given and (as far as it knows) holds."""
        held = [p for c in self._stale for p in c.ports]
        if self._conn is not None:
            held += self._conn.ports
        return held

    def allocate_port(self, application: str, callback: Callback) -> None:
        """Ask for a port for ``application``; ``callback(port, error)``.

        ValueError (a line break in the name) is raised here, at once.
        """
        line = _gimme(application, self.user)
        self._submit(_Request(line, "gimme", application, callback))

    def list_ports(self, callback: Callback) -> None:
        """Ask for every allocation; ``callback(allocations, error)``."""
        self._submit(_Request("LIST", "list", None, callback))

    def find_server(self, service: str, callback: Callback, user: str | None = None) -> None:
        """Ask for the port of ``service`` run by ``user`` (default: the
        login user); ``callback(port_or_None, error)``."""
        user = login_user() if user is None else user
        self._submit(_Request("LIST", "list", (service, user), callback))

    def release(self) -> None:
        """Close the connection, freeing this allocator's ports.  Requests
        still waiting get a PortManagerUnavailable error."""
        conns = [*self._stale, *([self._conn] if self._conn else [])]
        self._stale.clear()
        self._conn = None
        for conn in conns:
            conn.owner = None
            conn.fail(PortManagerUnavailable(
                f"request to port manager at {conn.where} cancelled by release()"))
            conn.close()

    def destroy(self) -> None:
        """Forget this allocator; its ports stay allocated (see the module
        notes).  Requests already made still get their callbacks."""
        self._destroyed = True
        if self._conn is not None:
            self._conn.owner = None
        self._conn = None
        self._stale.clear()

    def _submit(self, req: _Request) -> None:
        if self._destroyed:
            raise RuntimeError("this AsyncPortAllocator was destroyed")
        if self.timeout is not None:
            req.timer = self._loop.after(self.timeout * 1000, _request_timed_out,
                                         req, self.timeout)
        self._connection().submit(req)

    def _connection(self) -> _AsyncConnection:
        if self._conn is None:
            self._conn = _AsyncConnection(self)
        return self._conn


def _request_timed_out(req: _Request, timeout: float) -> None:
    req.timer = None
    if req.conn is not None:
        req.conn.timed_out(req, timeout)
