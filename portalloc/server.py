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

*Requests.*  The readable handler takes complete lines with ``gets``; a
request split across TCP segments simply waits in the channel until its
line end arrives (the original answered each fragment ``Invalid request``).
While no line is complete, the bytes buffered are checked against a cap, so
a client that never sends a line end cannot make us buffer without bound.
Each line is parsed as a Tcl list, as the original's ``lindex`` did, and its
first word chooses the command: ``GIMME app user`` reserves a port from the
`PortPool` (which bind-probes it and hands out least-recently-released
ports first), ``LIST`` answers from a cached rendering of the table, and
anything else -- including a malformed list, which silently killed the
original's handler and leaked its ports -- is answered ``FAIL {Invalid
request ...}`` and the connection is closed.  At most a batch of lines is
taken per call; the channel counts readable while it still holds input, so
a client that pipelines thousands of requests takes turns with the others.

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
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import evloop

from .pool import PoolExhausted, PortPool, probe_port
from .protocol import decode_line, encode_line, format_list, lsort_key, parse_list

__all__ = ["PortManagerServer", "is_loopback", "main",
           "DEFAULT_LISTEN", "DEFAULT_PORTS"]

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
_LINES_PER_CALL = 64           # requests handled per readable call (fairness)
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


class _Client:
    """One connection: its channel, peer and the ports it holds."""

    __slots__ = ("ch", "host", "local", "ports")

    def __init__(self, ch: evloop.Channel, host: str, local: bool) -> None:
        self.ch: evloop.Channel | None = ch     # None once dropped
        self.host = host
        self.local = local
        self.ports: list[int] | None = None     # made at the first GIMME


class PortManagerServer:
    """The port manager, listening on ``port`` of ``host``.

    ``ports`` is the (low, high) range handed out (or pass a ready
    ``pool``); ``port=0`` picks a free listen port (see `.port`); ``host``
    is as for `evloop.server` (``""``: every address, IPv4 and IPv6).
    ``usage_file`` is rewritten atomically after every change.  ``probe``
    tests a port before it is handed out (default: a bind, as
    `probe_port`; None: trust the pool alone).
    Binds at once; raises OSError if the address can't be had.  Runs on
    ``loop`` (default: the calling thread's); `close` stops it.
    """

    def __init__(self, ports: tuple[int, int] = DEFAULT_PORTS, port: int = DEFAULT_LISTEN,
                 host: str = "", usage_file: str | os.PathLike[str] | None = None,
                 loop: evloop.Loop | None = None, *, pool: PortPool | None = None,
                 probe: Callable[[int], bool] | None = probe_port,
                 max_line: int = MAX_LINE, output_limit: int = OUTPUT_LIMIT) -> None:
        self.loop = loop if loop is not None else evloop.get_loop()
        self.pool = pool if pool is not None else PortPool(ports[0], ports[1], probe=probe)
        self.usage_file = os.fspath(usage_file) if usage_file is not None else None
        self.max_line = max_line
        self.output_limit = output_limit
        self._alloc: dict[int, tuple[str, str]] = {}    # port -> (app, user)
        self._clients: set[_Client] = set()
        self._replies: dict[_Client, None] = {}        # replies to flush at commit
        self._usage_dirty = self.usage_file is not None
        self._list_cache: bytes | None = None
        self._commit_timer: Any = None
        self._retry_timer: Any = None
        self._usage_error: str | None = None
        self._unix = host.startswith("/")
        self._server = evloop.server(self._accept, port, host, loop=self.loop)
        self.port: int = self._server.port
        self._schedule_commit()          # the first usage file: empty

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
        self._commit_timer = self._retry_timer = None
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
        self.loop.fileevent(ch, "readable", self._readable, client)
        log.info("Connection accepted from %s port %s", host, port)

    def _readable(self, client: _Client) -> None:
        """Handle the complete requests buffered (a batch at most)."""
        ch = client.ch
        for _ in range(_LINES_PER_CALL):
            if ch is None or client.ch is None:
                return
            try:
                line = ch.gets()
            except OSError as exc:
                self._drop(client, f"read error: {exc.strerror or exc}")
                return
            if line is None and ch.eof():
                self._drop(client, "closed by the peer")
                return
            # A line too long, or the start of one still without its end.
            if (len(line) if line is not None else ch.pending("input")) > self.max_line:
                self._refuse(client, f"Invalid request: longer than {self.max_line} bytes",
                             f"{client.host} sent a request longer than {self.max_line} bytes")
                return
            if line is None:
                return                          # the rest of the line is on its way
            if ch.pending("output") > self.output_limit and not self._try_flush(client):
                return
            self._request(client, decode_line(line))
            if not ch.pending("input"):
                # Nothing more buffered: another gets() would only recv()
                # to learn that nothing came (EAGAIN).  epoll says when more
                # does, or the end of file.
                return

    def _try_flush(self, client: _Client) -> bool:
        """Send what the client's socket takes; drop the client if it still
        holds more than the output limit.  Returns whether it is still here."""
        ch = client.ch
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
            client.ports.append(port)
            self._changed()
            log.info("Port %d was allocated to %s run by %s", port, _show(app), _show(user))
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
        try:
            client.ch.puts(data)
        except OSError as exc:
            self._drop(client, f"write error: {exc.strerror or exc}")
            return
        self._replies[client] = None
        self._schedule_commit()

    def _refuse(self, client: _Client, reason: str, message: str) -> None:
        """Answer ``FAIL reason``, log ``message`` and disconnect."""
        log.warning("%s", message)
        ch = client.ch
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
        text = "".join(f"{p}\t{app}\t{user}\n" for p, (app, user) in sorted(self._alloc.items()))
        try:
            _write_atomically(path, text)
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


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it
    over ``path``: a reader sees the old file or the new, never a mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # Names are written as the original writes them (see decode_line).
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass",
                       newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ------------------------------------------------------------------ command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:      # one line, not usage + message
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


_EPILOG = f"""\
Clients on this host take a port with GIMME and hold it for as long as
their connection lives; LIST tells anyone who holds which port.  GIMME from
any other host is refused.  The protocol is the original DaqPortManager's.

Every option may also be written with one dash (-ports, -listen ...), as
the original's are.  A default file whose directory can't be written goes
to {FALLBACK_DIR} instead, and the log says so.  The port file is written
once the server listens.

SIGTERM or SIGINT stops the server: it closes every connection, empties the
usage file, removes the pid file and exits 0.  Exit status 1: a file or the
listen address can't be had; 2: a bad option.
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


class _LogHandler(logging.FileHandler):
    """A log file flushed when the loop is idle rather than after every line.

    Under load a line per connection, allocation and release would cost a
    write() each; this way the file's buffer fills and is written in blocks,
    and whatever is left goes out as soon as the loop has nothing to do.
    Warnings and errors are written at once.
    """

    def __init__(self, path: str, loop: evloop.Loop) -> None:
        super().__init__(path, "a", encoding="utf-8")
        self._loop = loop
        self._flush_due = False

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


def _usable(path: str | None, default: str, what: str) -> str:
    """The path to use: an explicit one as given (its directory made), or the
    default, or the same name under ~/.daqportmgr when the default's
    directory can't be written.  Raises OSError for an unusable explicit path."""
    candidates = [path] if path else [default, os.path.join(
        os.path.expanduser(FALLBACK_DIR), os.path.basename(default))]
    error: OSError | None = None
    for candidate in candidates:
        try:
            directory = os.path.dirname(os.path.abspath(candidate))
            os.makedirs(directory, exist_ok=True)
            if not os.access(directory, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), directory)
            return candidate
        except OSError as exc:
            error = error or exc
    assert error is not None
    raise OSError(error.errno, f"no usable {what}: {error.strerror}: {error.filename}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status.

    Bad options exit 2 (one line on stderr); a file or listen address that
    can't be had returns 1; a signalled shutdown returns 0.
    """
    args = _parser().parse_args(argv)
    prog = "portalloc-server"
    try:
        log_path = _usable(args.log, DEFAULT_LOG, "log file")
        usage_path = _usable(args.usagefile, DEFAULT_USAGEFILE, "usage file")
        port_path = _usable(args.portfile, DEFAULT_PORTFILE, "port file")
        pid_path = _usable(args.pidfile, DEFAULT_PIDFILE, "pid file")
        loop = evloop.Loop()
    except OSError as exc:
        print(f"{prog}: {exc.strerror or exc}", file=sys.stderr)
        return 1
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
    for given, chosen, default in ((args.log, log_path, DEFAULT_LOG),
                                   (args.usagefile, usage_path, DEFAULT_USAGEFILE),
                                   (args.portfile, port_path, DEFAULT_PORTFILE),
                                   (args.pidfile, pid_path, DEFAULT_PIDFILE)):
        if given is None and chosen != default:
            log.warning("%s can't be written: using %s", os.path.dirname(default), chosen)
    previous_loop = evloop.set_loop(loop)
    try:
        return _serve(args, loop, usage_path, port_path, pid_path, prog)
    finally:
        root.removeHandler(handler)
        handler.close()
        evloop.set_loop(previous_loop)
        loop.close()


def _serve(args: argparse.Namespace, loop: evloop.Loop, usage_path: str,
           port_path: str, pid_path: str, prog: str) -> int:
    try:
        server = PortManagerServer(args.ports, args.listen, args.host, usage_path, loop)
    except (OSError, ValueError) as exc:
        where = f"{args.host or '*'} port {args.listen}"
        print(f"{prog}: cannot listen on {where}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)
        log.error("Cannot listen on %s: %s", where, exc)
        return 1

    def stop(signame: str) -> None:
        log.info("%s received: shutting down", signame)
        loop.stop()

    loop.on_signal(signal.SIGTERM, stop, "SIGTERM")
    loop.on_signal(signal.SIGINT, stop, "SIGINT")
    try:
        # The pid file first: the listen port file says "ready" to whoever
        # waits for it, and by then everything else is in place.
        _write_atomically(pid_path, f"{os.getpid()}\n")
        _write_atomically(port_path, f"{server.port}\n")
    except OSError as exc:
        print(f"{prog}: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        status = 1
    else:
        log.info("Port manager (pid %d) listening on %s port %d, handing out ports %d-%d",
                 os.getpid(), args.host or "*", server.port, args.ports[0], args.ports[1])
        loop.run()
        status = 0
    finally:
        server.close()
        loop.on_signal(signal.SIGTERM, None)
        loop.on_signal(signal.SIGINT, None)
        try:
            os.unlink(pid_path)
        except OSError:
            pass
    log.info("Port manager stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
