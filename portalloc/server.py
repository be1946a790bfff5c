"""The port manager server: NSCLDAQ's ``DaqPortManager`` on evloop.

How a connection moves through the server
-----------------------------------------
*Accept.*  `evloop.server` accepts and hands us a non-blocking Channel and
the peer's address.  We note whether the peer is local (a loopback address,
or any peer of a Unix socket) once, since only local peers may take ports;
switch on ``TCP_NODELAY`` because every reply is one small write that the
client waits for; and configure the channel as the original's Tcl socket
was: input translation ``auto`` (a request may end in ``\\n``, ``\\r\\n`` or
a lone ``\\r``), output ``crlf`` (every reply line ends in ``\\r\\n``, even
the newlines *inside* a LIST reply or a quoted name, as Tcl's ``puts``
does).  Its encoding is ``binary``: each line is decoded and each reply
encoded by `portalloc.protocol.decode_line` / `encode_line`, which never
fail and treat invalid UTF-8 and lone surrogates exactly as Tcl does.
Output buffering is ``full`` with a buffer far larger than any
reply, so nothing leaves until we flush.  Per connection we keep one small
`_Client` (``__slots__``): the channel, the peer's host, the local flag and
the ports it holds -- a few hundred bytes beside the channel itself.

*Requests.*  The readable handler reads with a bounded ``read`` (at most
``max_line`` + 1 bytes a call) and splits lines itself, never with
``gets``: ``gets`` reads until a line is complete, so a client streaming
one endless line would keep it reading (and buffering) for ever, and
every other client would wait.  A request split across TCP segments simply
waits in the client's buffer until its line end arrives (the original
answered each fragment ``Invalid request``); a line, complete or not, over
``max_line`` bytes is refused and the client disconnected.
Each line is parsed as a Tcl list, as the original's ``lindex`` did, and its
first word chooses the command: ``GIMME app user`` reserves a port from the
`PortPool` (which bind-probes it and hands out least-recently-released
ports first), ``LIST`` answers from a cached rendering of the table, and
anything else -- including a malformed list, which silently killed the
original's handler and leaked its ports -- is answered ``FAIL {Invalid
request ...}`` and the connection is closed.  The channel counts readable
while it still holds input, so a client that pipelines thousands of
requests takes turns with the others, a bounded read at a time.

*Who asks.*  At a connection's first GIMME the server asks the kernel who
owns the client's socket (`portalloc.peer`: NETLINK_SOCK_DIAG, or
/proc/net/tcp), once per connection; the allocation's log line names that
uid.  With ``verify_user`` a GIMME naming another user is answered
``FAIL {user U is not the owner of this connection (uid N)}`` (root may
name anyone); the connection stays open, as after ``no free ports``.

*Idle connections.*  A connection that holds no port and has sent no
complete request for ``idle_timeout`` seconds is closed (a trickle of
bytes without a line end does not count), so idle or slowloris connections
cannot hold the descriptor table; one that holds a port is never timed
out.  One timer serves all: connections wait in an ordered dict, least
recently active first.

*Names in the usage file.*  The usage file is ``port\tapp\tuser\n``; a
name holding a backslash, a control character (tab and newline included)
or a Unicode line separator is written with Tcl backslash escapes (see
`usage_field`), so no name can add or split a line or a field.  The wire
keeps every name as the original does.

*Log.*  Connection lines (accepted, refused requests) are rate-limited: at
most 20 per 10 s, then one line counting the rest, so a connection storm
cannot fill the disk.  Allocations and releases are always logged.

*Commit.*  A request changes the table and queues its reply, nothing more.
The first change or reply of a loop pass schedules one ``after 0`` commit,
which runs later in the same pass: it rewrites the usage file (atomically,
once for every change of the pass) and then flushes every channel that has
a reply waiting, each in one ``send``.  So a client never sees ``OK port``
before the usage file shows the port, and a burst of a thousand GIMMEs
costs one file write, not a thousand.

*Back-pressure.*  A client that does not read its replies leaves them
queued in its channel.  Before each request we look at what is still
unsent; past ``output_limit`` the client is disconnected, so a hostile
client holds at most the limit plus one reply of our memory.

*Drop.*  Every way a connection ends -- end of file, a reset or other read
error, a failed flush, a request we refuse, the output limit, shutdown --
goes through `_drop`, which returns the client's ports to the pool at once
and closes the channel (discarding output the client will never read).
Ports go to the back of the pool's queue, so a port freed by a crashed
client is not handed straight to the next one.

The server keeps no per-request scans: GIMME is O(1) apart from the pool's
probe, LIST is O(n log n) when the table changed since the last LIST and
O(1) otherwise.
"""

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import logging
import os
import pwd
import re
import resource
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import evloop

from . import __version__
from .files import PidFile, PidFileLocked, make_directory, open_append, unsafe_directory, write_atomically
from .peer import open_netlink, peer_uid
from .pool import PoolExhausted, PortPool, probe_port
from .protocol import decode_line, encode_line, format_list, lsort_key, parse_list

__all__ = ["PortManagerServer", "is_loopback", "main", "usage_field",
           "DEFAULT_LISTEN", "DEFAULT_PORTS", "IDLE_TIMEOUT"]

log = logging.getLogger("portalloc.server")

DEFAULT_LISTEN = 30000
DEFAULT_PORTS = (30001, 31000)
DEFAULT_PORTFILE = "/var/tmp/daqportmgr/listen.port"
DEFAULT_USAGEFILE = "/var/tmp/daqportmgr/ports.txt"
DEFAULT_LOG = "/var/log/nscldaq/portmanager.log"
DEFAULT_PIDFILE = "/var/run/nscldaq/daqportmgr.pid"
FALLBACK_DIR = "~/.daqportmgr"

MAX_LINE = 4096                # bytes in one request line, at most
OUTPUT_LIMIT = 1 << 20         # unsent reply bytes before we give up on a client
IDLE_TIMEOUT = 60.0            # seconds a connection without ports may stay silent
_CONN_LOG_BURST = 20           # connection lines logged per window, at most ...
_CONN_LOG_WINDOW = 10.0        # ... of this many seconds; a summary counts the rest
_BUFFERSIZE = 1 << 30          # "full" buffering that never flushes by itself
_USAGE_RETRY_MS = 1000         # retry a usage file that could not be written
_LINGER_ABORT = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close sends RST


@functools.lru_cache(maxsize=1024)    # peers repeat; parsing costs microseconds
def is_loopback(host: str) -> bool:
    """True if ``host`` is a numeric loopback address.

    127.0.0.0/8, ``::1`` and IPv4-mapped ``::ffff:127.x.y.z`` count; names
    (even ``localhost``) and anything unparsable do not -- the server only
    ever sees numeric peer addresses.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _show(name: str) -> str:
    """A name as the log shows it: as is, or repr() if it could forge a line."""
    return name if name.isprintable() and name else repr(name)


# What a usage-file field may not hold as is: the backslash (the escape
# character itself), C0 and C1 control characters and DEL (tab and newline
# among them: the file's own separators), and the Unicode line and
# paragraph separators that some line readers also split at.
_UNSAFE_IN_FIELD = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FIELD_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _field_escape(m: re.Match[str]) -> str:
    c = m.group()
    return _FIELD_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def usage_field(name: str) -> str:
    """``name`` as the usage file writes it: unchanged unless it holds a
    backslash, a control character or a line separator, which are written
    as Tcl backslash sequences (``\\\\``, ``\\t``, ``\\n``, ``\\r``,
    ``\\xHH``, ``\\uHHHH``), so a name can never add, split or forge a line
    or field.  Tcl's ``subst -nocommands -novariables`` reads it back."""
    return _UNSAFE_IN_FIELD.sub(_field_escape, name) if _UNSAFE_IN_FIELD.search(name) else name


class _RateLimit:
    """At most ``burst`` lines per ``window`` seconds; the rest are counted
    and summed up in one line when the window ends (or at `flush`)."""

    def __init__(self, loop: evloop.Loop, burst: int = _CONN_LOG_BURST,
                 window: float = _CONN_LOG_WINDOW) -> None:
        self.loop, self.burst, self.window = loop, burst, window
        self.start = -window
        self.count = 0
        self.dropped = 0
        self.timer: Any = None

    def allow(self) -> bool:
        now = self.loop.time()
        if now - self.start >= self.window:
            self.flush()
            self.start, self.count = now, 0
        if self.count < self.burst:
            self.count += 1
            return True
        self.dropped += 1
        if self.timer is None:
            self.timer = self.loop.after(max(0.0, self.start + self.window - now) * 1000,
                                         self.flush)
        return False

    def flush(self) -> None:
        self.loop.after_cancel(self.timer)
        self.timer = None
        if self.dropped:
            log.warning("%d more connection messages in %g s were not logged (rate limit: "
                        "%d per %g s)", self.dropped, self.window, self.burst, self.window)
            self.dropped = 0


class _Client:
    """One connection: its channel, peer, the ports it holds, its partial
    request and the uid of its owner (looked up at the first GIMME)."""

    __slots__ = ("ch", "host", "local", "ports", "buf", "uid")

    def __init__(self, ch: evloop.Channel, host: str, local: bool) -> None:
        self.ch: evloop.Channel | None = ch     # None once dropped
        self.host = host
        self.local = local
        self.ports: list[int] | None = None     # made at the first GIMME
        self.buf = b""                          # a request still without its end
        self.uid: int | None = -1               # -1: not looked up yet


_uids: dict[str, int] = {}         # user name -> uid, found ones only, bounded


def _uid_of(user: str) -> int | None:
    """The uid of the user ``user`` names (a login name or a number).

    Names found are remembered (at most 1,024; a GIMME per connection would
    otherwise read the passwd database each time); a name not found is
    asked again next time, so a user added while the server runs is known.
    """
    uid = _uids.get(user)
    if uid is not None:
        return uid
    try:
        uid = pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        return int(user) if user.isdigit() else None
    if len(_uids) >= 1024:
        _uids.clear()
    _uids[user] = uid
    return uid


class PortManagerServer:
    """The port manager, listening on ``port`` of ``host``.

    ``ports`` is the (low, high) range handed out (or pass a ready
    ``pool``); ``port=0`` picks a free listen port (see `.port`); ``host``
    is as for `evloop.server` (``""``: every address, IPv4 and IPv6).
    ``usage_file`` is rewritten atomically after every change.  ``probe``
    tests a port before it is handed out (default: a bind, as
    `probe_port`; None: trust the pool alone).  ``idle_timeout`` (seconds,
    None for never) closes a connection that holds no port and has sent no
    complete request for that long.  ``verify_user`` refuses a GIMME whose
    user is not the owner of the client's socket (root may name anyone).
    Binds at once; raises OSError if the address can't be had.  Runs on
    ``loop`` (default: the calling thread's); `close` stops it.
    """

    def __init__(self, ports: tuple[int, int] = DEFAULT_PORTS, port: int = DEFAULT_LISTEN,
                 host: str = "", usage_file: str | os.PathLike[str] | None = None,
                 loop: evloop.Loop | None = None, *, pool: PortPool | None = None,
                 probe: Callable[[int], bool] | None = probe_port,
                 max_line: int = MAX_LINE, output_limit: int = OUTPUT_LIMIT,
                 idle_timeout: float | None = IDLE_TIMEOUT, verify_user: bool = False) -> None:
        self.loop = loop if loop is not None else evloop.get_loop()
        self.pool = pool if pool is not None else PortPool(ports[0], ports[1], probe=probe)
        self.usage_file = os.fspath(usage_file) if usage_file is not None else None
        self.max_line = max_line
        self.output_limit = output_limit
        self.idle_timeout = idle_timeout if idle_timeout else None
        self.verify_user = verify_user
        self._alloc: dict[int, tuple[str, str]] = {}    # port -> (app, user)
        self._clients: set[_Client] = set()
        self._replies: dict[_Client, None] = {}        # replies to flush at commit
        # Connections without ports, least recently active first, with the
        # time of their last complete request (or of the accept).
        self._idle: OrderedDict[_Client, float] = OrderedDict()
        self._idle_timer: Any = None
        self._conn_log = _RateLimit(self.loop)
        self._usage_dirty = self.usage_file is not None
        self._list_cache: bytes | None = None
        self._commit_timer: Any = None
        self._retry_timer: Any = None
        self._usage_error: str | None = None
        self._unix = host.startswith("/")
        self._server = evloop.server(self._accept, port, host, loop=self.loop)
        self.port: int = self._server.port
        # The first usage file (empty) is there before main() writes
        # listen.port, which tells the world the server is ready.
        if self._usage_dirty:
            self._write_usage()

    def __repr__(self) -> str:
        return (f"<PortManagerServer port {self.port}: {len(self._clients)} clients, "
                f"{len(self._alloc)} ports held>")

    # ------------------------------------------------------------ public

    def allocations(self) -> list[tuple[int, str, str]]:
        """The ports held now, as (port, application, user), by port."""
        return [(p, app, user) for p, (app, user) in sorted(self._alloc.items())]

    def close(self) -> None:
        """Stop listening, drop every client (freeing its ports) and write
        the usage file one last time."""
        self._server.close()
        for client in list(self._clients):
            self._drop(client, "server shutting down")
        self.loop.after_cancel(self._commit_timer)
        self.loop.after_cancel(self._retry_timer)
        self.loop.after_cancel(self._idle_timer)
        self._commit_timer = self._retry_timer = self._idle_timer = None
        self._conn_log.flush()
        self._replies.clear()
        if self._usage_dirty:
            self._write_usage()

    # ------------------------------------------------------- connections

    def _accept(self, ch: evloop.Channel, host: str, port: int) -> None:
        local = self._unix or is_loopback(host)
        if not self._unix:
            try:
                ch.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass        # the peer is already gone; the first read says so
        ch.configure(translation=("auto", "crlf"), encoding="binary", buffering="full",
                     buffersize=_BUFFERSIZE)
        client = _Client(ch, host, local)
        self._clients.add(client)
        self._touch(client)
        self.loop.fileevent(ch, "readable", self._readable, client)
        if self._conn_log.allow():
            log.info("Connection accepted from %s port %s", host, port)

    # Idle connections: one timer for all of them, due when the least
    # recently active one expires; a request moves its client to the end.

    def _touch(self, client: _Client) -> None:
        if self.idle_timeout is None or client.ports:
            return
        self._idle[client] = self.loop.time()
        self._idle.move_to_end(client)
        if self._idle_timer is None:
            self._idle_timer = self.loop.after(self.idle_timeout * 1000, self._expire_idle)

    def _expire_idle(self) -> None:
        self._idle_timer = None
        assert self.idle_timeout is not None
        limit = self.loop.time() - self.idle_timeout
        while self._idle:
            client, since = next(iter(self._idle.items()))
            if since > limit:
                delay = (since - limit) * 1000
                self._idle_timer = self.loop.after(delay, self._expire_idle)
                return
            self._drop(client, f"idle for {self.idle_timeout:g} s", abort=True)

    def _readable(self, client: _Client) -> None:
        """Handle the requests that came (a bounded read, a batch at most).

        The channel is read with a bounded ``read``, never ``gets``: a line
        has to be complete before ``gets`` returns, and a client that sends
        without ever ending one would have it read on and on.  We split
        lines ourselves; the channel's ``auto`` translation has made every
        line end a ``\\n`` already.
        """
        ch = client.ch
        if ch is None:
            return
        try:
            data = ch.read(self.max_line + 1)
        except OSError as exc:
            self._drop(client, f"read error: {exc.strerror or exc}")
            return
        assert isinstance(data, bytes)
        if client.buf:
            data = client.buf + data
        lines = data.split(b"\n")
        rest = lines.pop()
        # A line too long, or the start of one still without its end.
        if len(data) > self.max_line and (
                len(rest) > self.max_line or any(len(line) > self.max_line for line in lines)):
            self._refuse(client, f"Invalid request: longer than {self.max_line} bytes",
                         f"{client.host} sent a request longer than {self.max_line} bytes")
            return
        at_eof = ch.eof()
        if at_eof and rest:
            lines.append(rest)                  # the last request, unterminated
            rest = b""
        client.buf = rest
        for line in lines:
            if client.ch is None:
                return
            if ch.pending("output") > self.output_limit and not self._try_flush(client):
                return
            self._request(client, decode_line(line))
        if at_eof:
            self._drop(client, "closed by the peer")
        elif lines and client.ch is not None:
            self._touch(client)

    def _try_flush(self, client: _Client) -> bool:
        """Send what the client's socket takes; drop the client if it still
        holds more than the output limit.  Returns whether it is still here."""
        ch = client.ch
        if ch is None:
            return False
        try:
            ch.flush()
        except OSError as exc:
            self._drop(client, f"write error: {exc.strerror or exc}")
            return False
        if ch.pending("output") > self.output_limit:
            log.warning("%s does not read its replies (%d bytes unsent): disconnected",
                        client.host, ch.pending("output"))
            self._drop(client, "output limit", abort=True)
            return False
        return True

    def _request(self, client: _Client, line: str) -> None:
        """Dispatch one request line (a Tcl list)."""
        try:
            words = parse_list(line)
        except ValueError:
            words = []
        command = words[0] if words else None
        if command == "GIMME":
            self._gimme(client, words[1] if len(words) > 1 else "",
                        words[2] if len(words) > 2 else "")
        elif command == "LIST":
            self._reply(client, self._list_reply())
        else:
            self._refuse(client, f"Invalid request {line}",
                         f"{client.host} issued an illegal request: {_show(line)}")

    def _gimme(self, client: _Client, app: str, user: str) -> None:
        if not client.local:
            reason = f"{client.host} : Only local applications get ports"
            self._refuse(client, reason, f"Unable to allocate a port for {_show(app)} "
                         f"run by {_show(user)} because: {reason}")
            return
        if client.uid == -1:
            # The kernel's word on who opened the client's socket, asked once
            # per connection (it cannot change).
            assert client.ch is not None
            client.uid = peer_uid(client.ch.sock)
        uid = client.uid
        if self.verify_user and uid != 0 and (uid is None or _uid_of(user) != uid):
            owner = "unknown" if uid is None else f"uid {uid}"
            reason = f"user {user} is not the owner of this connection ({owner})"
            if self._conn_log.allow():
                log.warning("Unable to allocate a port for %s run by %s because: %s",
                            _show(app), _show(user), _show(reason))
            self._reply(client, encode_line(format_list(("FAIL", reason))))
            return
        try:
            port = self.pool.reserve()
        except PoolExhausted as exc:
            reason = str(exc)
        except OSError as exc:
            # The probe could not make a socket (EMFILE...): nothing is known
            # about the ports, so none is handed out; the client may retry.
            reason = f"cannot check ports: {exc.strerror or exc}"
        else:
            self._alloc[port] = (app, user)
            if client.ports is None:
                client.ports = []
                self._idle.pop(client, None)        # holds a port: never idle
            client.ports.append(port)
            self._changed()
            log.info("Port %d was allocated to %s run by %s (peer uid %s)", port, _show(app),
                     _show(user), "unknown" if uid is None else uid)
            self._reply(client, b"OK %d" % port)
            return
        log.warning("Unable to allocate a port for %s run by %s because: %s",
                    _show(app), _show(user), reason)
        self._reply(client, encode_line(format_list(("FAIL", reason))))

    def _list_reply(self) -> bytes:
        """The LIST reply, lines joined by ``\\n`` (the channel makes them
        ``\\r\\n``); rebuilt only when the table changed."""
        text = self._list_cache
        if text is None:
            groups: dict[tuple[str, str], list[int]] = {}
            for port, key in self._alloc.items():
                groups.setdefault((key[1], key[0]), []).append(port)
            # The original sorts the strings [list $user $app] with lsort,
            # so quoting takes part in the order.
            keyed = sorted((lsort_key(format_list(k)), k, ports) for k, ports in groups.items())
            lines = [f"OK {len(self._alloc)}"]
            for _, (user, app), ports in keyed:
                ports.sort()
                lines.append(format_list((ports[0], app, user)))
                for i in range(1, len(ports)):
                    lines.append(format_list((ports[i], f"{app}_{i}", user)))
            text = self._list_cache = encode_line("\n".join(lines))
        return text

    def _reply(self, client: _Client, data: bytes) -> None:
        """Queue one reply; the commit of this pass sends it."""
        if client.ch is None:
            return
        try:
            client.ch.puts(data)
        except OSError as exc:
            self._drop(client, f"write error: {exc.strerror or exc}")
            return
        self._replies[client] = None
        self._schedule_commit()

    def _refuse(self, client: _Client, reason: str, message: str) -> None:
        """Answer ``FAIL reason``, log ``message`` (rate-limited) and disconnect."""
        if self._conn_log.allow():
            log.warning("%s", message)
        ch = client.ch
        if ch is None:
            return
        try:
            ch.puts(encode_line(format_list(("FAIL", reason))))
            ch.flush()
        except OSError:
            pass
        # What the socket did not take now the client is not reading: drop it
        # rather than keep the descriptor until it does.
        self._drop(client, "refused", abort=ch.pending("output") > 0)

    def _drop(self, client: _Client, why: str, abort: bool = False) -> None:
        """End a connection: free its ports now, close its channel.

        Queued replies get one last send (a client that half-closed may
        still read them); what the socket does not take is discarded.
        ``abort`` discards everything, what the kernel holds too, with a
        reset: for a client that does not read, whose queue would otherwise
        trickle out for minutes.
        """
        ch = client.ch
        if ch is None:
            return
        client.ch = None
        self._clients.discard(client)
        self._replies.pop(client, None)
        self._idle.pop(client, None)
        if client.ports:
            for port in client.ports:
                app, user = self._alloc.pop(port)
                self.pool.release(port)
                log.info("Port %d was released by %s run by %s", port, _show(app), _show(user))
            client.ports = None
            self._changed()
        log.debug("Connection from %s ended: %s", client.host, why)
        try:
            if abort:
                ch.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            else:
                ch.flush()
        except OSError:
            pass
        try:
            ch.close(force=True)
        except OSError:
            pass

    # ------------------------------------------------------------ commit

    def _changed(self) -> None:
        self._list_cache = None
        if self.usage_file is not None:
            self._usage_dirty = True
            self._schedule_commit()

    def _schedule_commit(self) -> None:
        if self._commit_timer is None:
            # after 0 runs in this very pass, after the file events: one
            # commit for everything the pass did.
            self._commit_timer = self.loop.after(0, self._commit)

    def _commit(self) -> None:
        """Write the usage file if it changed, then send the queued replies."""
        self._commit_timer = None
        if self._usage_dirty and self._retry_timer is None:
            self._write_usage()
        replies, self._replies = self._replies, {}
        for client in replies:
            if client.ch is None:
                continue
            try:
                client.ch.flush()
            except OSError as exc:
                self._drop(client, f"write error: {exc.strerror or exc}")

    def _write_usage(self) -> None:
        """Replace the usage file by one showing the table now."""
        path = self.usage_file
        assert path is not None
        text = "".join(f"{p}\t{usage_field(app)}\t{usage_field(user)}\n"
                       for p, (app, user) in sorted(self._alloc.items()))
        try:
            write_atomically(path, text)
        except OSError as exc:
            message = f"{exc.strerror or exc}"
            if message != self._usage_error:        # say it once, not per change
                log.error("Cannot write the usage file %s: %s", path, message)
            self._usage_error = message
            if self._retry_timer is None:
                self._retry_timer = self.loop.after(_USAGE_RETRY_MS, self._retry_usage)
            return
        if self._usage_error is not None:
            log.info("The usage file %s is written again", path)
            self._usage_error = None
        self._usage_dirty = False

    def _retry_usage(self) -> None:
        self._retry_timer = None
        if self._usage_dirty:
            self._write_usage()


# ------------------------------------------------------------------ command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:      # one line, not usage + message
        self.exit(2, f"{self.prog}: {message}\n")


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}: expected LOW-HIGH") from None
    if not sep:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}: expected LOW-HIGH")
    lo, hi = min(lo, hi), max(lo, hi)           # the original swaps them too
    if lo < 1 or hi > 65535:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}: ports are 1-65535")
    return lo, hi


def _listen_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad listen port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"bad listen port {text!r}: must be 0-65535")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}")
    return value


_EPILOG = f"""\
Clients on this host take a port with GIMME and hold it for as long as
their connection lives; LIST tells anyone who holds which port.  GIMME from
any other host is refused.  The protocol is the original DaqPortManager's.

Every option may also be written with one dash (-ports, -listen ...), as
the original's are.  A default file whose directory can't be written, or
belongs to another user, or can be written by others, goes to
{FALLBACK_DIR} instead, and the log and stderr say so.  The server locks
its pid file: a second server with the same pid file exits 1 and touches
no file.  The port file is written once the server listens.

Names in the usage file are written with Tcl backslash escapes where they
hold a backslash, a control character or a line separator, so that every
line is port<TAB>application<TAB>user.  The log names the uid that owns
each client's socket, as the kernel knows it.

SIGTERM or SIGINT stops the server: it closes every connection, empties the
usage file, removes the pid file and the port file and exits 0.  SIGHUP
reopens the log file (for logrotate).  Exit status 1: a file or the listen
address can't be had, or another server holds the pid file; 2: a bad option.
"""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="portalloc-server", allow_abbrev=False,
                description="NSCLDAQ-compatible TCP port manager (runs in the foreground).",
                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", "-ports", type=_port_range, default=DEFAULT_PORTS,
                   metavar="LOW-HIGH", help="ports to hand out (default 30001-31000)")
    p.add_argument("--listen", "-listen", type=_listen_port, default=DEFAULT_LISTEN,
                   metavar="PORT", help="port to listen on; 0 picks one (default 30000)")
    p.add_argument("--host", "-host", default="", metavar="ADDR",
                   help="address to listen on (default: every address, IPv4 and IPv6)")
    p.add_argument("--log", "-log", metavar="FILE", help=f"log file (default {DEFAULT_LOG})")
    p.add_argument("--usagefile", "-usagefile", metavar="FILE",
                   help=f"usage file (default {DEFAULT_USAGEFILE})")
    p.add_argument("--portfile", "-portfile", metavar="FILE",
                   help=f"file that receives the listen port (default {DEFAULT_PORTFILE})")
    p.add_argument("--pidfile", "-pidfile", metavar="FILE",
                   help=f"pid file (default {DEFAULT_PIDFILE})")
    p.add_argument("--idle-timeout", "-idle-timeout", type=_seconds, default=IDLE_TIMEOUT,
                   metavar="SECONDS", help="close a connection that holds no port and sends no "
                   f"complete request for this long; 0: never (default {IDLE_TIMEOUT:g})")
    p.add_argument("--verify-user", "-verify-user", action="store_true",
                   help="refuse a GIMME whose user is not the owner of the client's socket, "
                   "as the kernel knows it (root may name any user)")
    p.add_argument("--version", "-version", action="version", version=f"%(prog)s {__version__}")
    return p


class _LogFormatter(logging.Formatter):
    """``2026-11-22 05:28:17,480 INFO message``, the date made once a second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class _LogHandler(logging.StreamHandler):
    """A log file flushed when the loop is idle rather than after every line.

    Under load a line per connection, allocation and release would cost a
    write() each; this way the file's buffer fills and is written in blocks,
    and whatever is left goes out as soon as the loop has nothing to do.
    Warnings and errors are written at once.  The file is opened without
    following a symlink; `reopen` (SIGHUP) opens the name afresh, for
    logrotate.
    """

    def __init__(self, path: str, loop: evloop.Loop) -> None:
        super().__init__(self._open_file(path))
        self.path = path
        self._loop = loop
        self._flush_due = False

    @staticmethod
    def _open_file(path: str) -> Any:
        return open(open_append(path), "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Close the file and open its name again; raises OSError (and keeps
        the old file) if the name can't be opened."""
        stream = self._open_file(self.path)
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        old.close()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()                   # trouble is written at once
        elif not self._flush_due:
            self._flush_due = True
            self._loop.after_idle(self._idle_flush)

    def _idle_flush(self) -> None:
        self._flush_due = False
        self.flush()

    def close(self) -> None:
        try:
            self.flush()
            self.stream.close()
        finally:
            super().close()


def _usable(path: str | None, default: str, what: str) -> tuple[str, str | None]:
    """The path to use and, when the default was passed over, why.

    An explicit path is used as given (its directory made); the default
    only if its directory is safe (see `portalloc.files.unsafe_directory`)
    and writable; else the same name under ~/.daqportmgr, under the same
    rules.  Raises OSError when nothing is usable.
    """
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise OSError(errno.EACCES, f"no usable {what}: {os.strerror(errno.EACCES)}: "
                          f"{directory}")
        return path, None
    candidates = [default, os.path.join(os.path.expanduser(FALLBACK_DIR),
                                        os.path.basename(default))]
    why: str | None = None
    for candidate in candidates:
        directory = os.path.dirname(os.path.abspath(candidate))
        problem = unsafe_directory(directory)
        if problem is None:
            try:
                make_directory(directory)
            except OSError:
                pass                                    # said below: can't be written
            problem = unsafe_directory(directory)       # made by someone else meanwhile?
        if problem is not None:
            reason = f"{directory} is not safe to use ({problem})"
        elif not os.access(directory, os.W_OK):
            reason = f"{directory} can't be written"
        else:
            return candidate, why
        why = why or reason
    raise OSError(errno.EACCES, f"no usable {what}: {why}")


def _raise_nofile_limit() -> str | None:
    """Raise the soft open-file limit to the hard one; what happened, for the log."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return f"open-file limit raised from {soft} to {hard}"
    except (OSError, ValueError) as exc:
        return f"open-file limit not raised: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status.

    Bad options exit 2 (one line on stderr); a file or listen address that
    can't be had, or a pid file another server holds, returns 1; a
    signalled shutdown returns 0.
    """
    args = _parser().parse_args(argv)
    prog = "portalloc-server"
    chosen: dict[str, tuple[str, str | None]] = {}
    try:
        for key, given, default, what in (("pid", args.pidfile, DEFAULT_PIDFILE, "pid file"),
                                          ("log", args.log, DEFAULT_LOG, "log file"),
                                          ("usage", args.usagefile, DEFAULT_USAGEFILE,
                                           "usage file"),
                                          ("port", args.portfile, DEFAULT_PORTFILE, "port file")):
            chosen[key] = _usable(given, default, what)
    except OSError as exc:
        print(f"{prog}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # The lock first: a second server stops here, before it writes anything.
    try:
        pidfile = PidFile(chosen["pid"][0])
    except PidFileLocked as exc:
        print(f"{prog}: {exc.strerror}: not started", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {chosen['pid'][0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return _run(args, prog, pidfile, chosen)
    finally:
        pidfile.remove()


def _run(args: argparse.Namespace, prog: str, pidfile: PidFile,
         chosen: dict[str, tuple[str, str | None]]) -> int:
    loop = evloop.Loop()
    log_path = chosen["log"][0]
    try:
        handler = _LogHandler(log_path, loop)
    except OSError as exc:
        print(f"{prog}: {log_path}: {exc.strerror or exc}", file=sys.stderr)
        loop.close()
        return 1
    # Records need no caller, thread or process: skip the work of finding them.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler.setFormatter(_LogFormatter())
    root = logging.getLogger("portalloc")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for path, why in chosen.values():
        if why is not None:
            log.warning("%s: using %s", why, path)
            print(f"{prog}: {why}: using {path}", file=sys.stderr)
    limit = _raise_nofile_limit()
    if limit:
        log.info("%s", limit)
    try:
        open_netlink()          # its descriptor now, not at the limit later
    except OSError:
        pass                    # peer_uid reads /proc instead
    previous_loop = evloop.set_loop(loop)
    try:
        pidfile.write(os.getpid())
        return _serve(args, loop, handler, chosen["usage"][0], chosen["port"][0], prog)
    finally:
        root.removeHandler(handler)
        handler.close()
        evloop.set_loop(previous_loop)
        loop.close()


def _serve(args: argparse.Namespace, loop: evloop.Loop, handler: _LogHandler, usage_path: str,
           port_path: str, prog: str) -> int:
    try:
        server = PortManagerServer(args.ports, args.listen, args.host, usage_path, loop,
                                   idle_timeout=args.idle_timeout or None,
                                   verify_user=args.verify_user)
    except (OSError, ValueError) as exc:
        where = f"{args.host or '*'} port {args.listen}"
        print(f"{prog}: cannot listen on {where}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)
        log.error("Cannot listen on %s: %s", where, exc)
        return 1

    def stop(signame: str) -> None:
        log.info("%s received: shutting down", signame)
        loop.stop()

    def reopen() -> None:
        try:
            handler.reopen()
        except OSError as exc:
            log.error("SIGHUP received: cannot reopen %s (%s): still writing the old file",
                      handler.path, exc.strerror or exc)
            return
        log.info("SIGHUP received: log file reopened")

    loop.on_signal(signal.SIGTERM, stop, "SIGTERM")
    loop.on_signal(signal.SIGINT, stop, "SIGINT")
    loop.on_signal(signal.SIGHUP, reopen)
    wrote_port = False
    try:
        # The listen port file last: it says "ready" to whoever waits for it.
        write_atomically(port_path, f"{server.port}\n")
        wrote_port = True
    except OSError as exc:
        print(f"{prog}: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        status = 1
    else:
        log.info("Port manager %s (pid %d) listening on %s port %d, handing out ports %d-%d%s",
                 __version__, os.getpid(), args.host or "*", server.port, args.ports[0],
                 args.ports[1], ", verifying users" if args.verify_user else "")
        loop.run()
        status = 0
    finally:
        server.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.on_signal(sig, None)
        if wrote_port:
            _remove_port_file(port_path, server.port)
    log.info("Port manager stopped")
    return status


def _remove_port_file(path: str, port: int) -> None:
    """Remove the listen port file if it still names our port."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            if f.readline(32).strip() != str(port):
                return
        os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
