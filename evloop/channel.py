"""Channels: buffered sockets with Tcl's gets/read/puts/flush/close.

How buffering works
-------------------
A `Channel` owns one connected socket and two byte buffers.

Input.  ``gets`` and ``read`` serve what is already in the input buffer and
call ``recv`` only when it does not hold what they need.  A non-blocking
channel calls it once at most per request, for at most 64 KiB, and takes
what came (``blocked()`` then tells that the request could not be met): a
peer that sends without pause costs one bounded step per readable event,
and timers and other handlers keep their turn.  A blocking one calls it
until it can answer.  The ``limit`` option (1 MiB by default) bounds the
buffer: once it holds more than that, the channel stops asking the loop
for readable events and ``recv`` is not called, and ``gets`` raises
`LineTooLong` for a line that long, leaving the bytes for ``read``; when
``read`` (or ``gets``) has taken enough, receiving starts again.
The buffer holds the bytes as they came; translation and decoding apply
only to what a request takes out of it.  ``gets`` finds the line end on
bytes (``\\n``, ``\\r\\n`` or a lone ``\\r`` under the default ``auto``
translation; one kind under ``lf``, ``cr`` or ``crlf``, as in Tcl) and then
decodes the line, so a multi-byte character split between two segments is
never cut (encodings must therefore be ASCII-compatible).  ``read(n)``
translates and decodes a view of the buffer and removes just the raw bytes
of the characters it returns, so the next request still sees a \\r\\n or a
lone \\r at the cut.  A \\r that was the last byte of the buffer may be half a
\\r\\n: ``auto`` has taken it as a line end and drops the \\n when it comes;
``crlf`` waits for the next byte.

Events.  The channel sits above the loop and uses only its public calls,
as Tcl's channel layer sits above its notifier: ``loop.fileevent(ch, ...)``
hands the call to `Channel.fileevent`, which keeps the user's handlers
itself and asks the loop for the socket events it needs now (`_interest`,
Tcl's ``UpdateInterest``): readable while there is a readable handler and
the input buffer is within its limit, writable while there is a writable
handler or output waits.  The loop calls the channel's own handlers, which
call the user's (and report and delete one that raises, as the loop does).
Closing lets go of the socket with ``loop.forget`` before closing it.  While the buffer still
holds data that the last ``gets`` or ``read`` left behind, the channel
counts as readable (Tcl's rule) though the socket may have nothing new: it
arms a 0 ms timer with ``loop.after`` that calls the readable handler, as
Tcl's ``ChannelTimerProc`` does, so a handler that reads one line per call
is called again for the next line.  What a request left because it could
not use it (part of a line after ``gets``, part of a character after
``read``: ``blocked()`` is true) does not count, or the handler would be
called again and again for it.

Output.  ``puts`` encodes and appends to the output buffer, which is sent
according to the buffering mode: ``line`` (the default: at each newline),
``full`` (when ``buffersize`` bytes are queued, or on ``flush``) or ``none``.
(When nothing is queued, what is due is sent straight from the new text,
and only what the socket does not take is queued.)
A blocking channel sends it all before returning.  A non-blocking channel
sends what the socket takes and keeps the rest; it then asks the loop to
watch the socket for writability, and its writable handler sends more
each time, before the user's writable handler runs (Tcl's background
flush), until the buffer is empty.  ``close`` on a non-blocking channel
returns at once and the socket is closed when its output has drained; an
error met
while flushing in the background is kept, returned by ``error()`` and raised
by the next ``puts``, ``flush`` or ``close``.

Errors of connect and of reading.  A connect that fails leaves its error
in the socket's ``SO_ERROR``, which reading clears; ``error()`` reads it,
and a connect that failed at once keeps its error on the channel for
``error()`` to return.  A ``recv`` on such a socket also returns that error
once (and clears it): ``gets``/``read`` then keep it for ``error()`` and
raise ENOTCONN, as Tcl's "socket is not connected", so whoever asks first
gets the reason, once.  A connection reset while reading is a soft end of
file, as Tcl makes it: ``eof()`` becomes true and ``error()`` returns the
reset once.  Other read errors raise.
"""

from __future__ import annotations

import codecs
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from ._addresses import shown
from .loop import Loop, get_loop

__all__ = ["Channel", "LineTooLong"]

_RECV_SIZE = 65536
# The default of the limit option (asyncio's StreamReader has 64 KiB; a
# port manager's lines are short, but a line of a megabyte is no attack).
_LIMIT = 1 << 20
_IN_MODES = ("auto", "lf", "crlf", "cr", "binary")
_OUT_MODES = {"auto": b"\n", "lf": b"\n", "crlf": b"\r\n", "cr": b"\r", "binary": b"\n"}
_BUFFERING = ("none", "line", "full")
# recv()/send() exceptions that mean "nothing now, try later".
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
# The socket events a channel asks the loop for.
_R, _W = 1, 2
# fileevent's handler argument when none is given: a query.
_QUERY: Any = object()
_SOL_SOCKET, _SO_ERROR = socket.SOL_SOCKET, socket.SO_ERROR
_strerror = os.strerror
# errno -> os.strerror(errno), filled as met (a few dozen codes at most):
# strerror decodes the C library's message each time, which costs half as
# much again as making the OSError, and a scan asks for the same few.
_MESSAGES: dict[int, str] = {}


class LineTooLong(ValueError):
    """``gets`` met a line longer than the channel's ``limit`` option.

    The bytes stay in the channel: ``read()`` takes them (and lets the
    channel receive again), ``close()`` drops them."""


class Channel:
    """A buffered socket channel in the manner of a Tcl socket channel.

    Usually made by `open_async`, `open` or a `server`; ``Channel(sock)``
    wraps a connected socket of your own.  Non-blocking with line buffering
    unless ``blocking=True``.
    """

    __slots__ = ("sock", "_fd", "_loop", "_inbuf", "_outbuf", "_eof", "_blocked",
                 "_skip_lf", "_error", "_write_error", "_closed", "_blocking",
                 "_buffering", "_buffersize", "_encoding", "_in_mode", "_out_mode",
                 "_reader", "_reader_args", "_writer", "_writer_args",
                 "_watching", "_timer", "_limit", "__weakref__")

    def __init__(self, sock: socket.socket, loop: Loop | None = None,
                 blocking: bool = False, error: OSError | None = None) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._loop = loop if loop is not None else get_loop()
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._eof = False           # recv() returned b""
        self._blocked = False       # the last input request could not be met
        self._skip_lf = False       # a \r ended the last line; drop a \n next
        self._error: OSError | None = error       # kept for error()
        self._write_error: OSError | None = None  # raised by the next write
        self._closed = False        # close() called (the socket may still drain)
        self._blocking = blocking
        self._buffering = "line"
        self._buffersize = 4096
        self._encoding = "utf-8"
        self._in_mode = "auto"
        self._out_mode = "lf"
        # The user's handlers; the loop only ever sees the channel's own
        # (_on_readable, _on_writable), set on the socket as `_interest`
        # decides.
        self._reader: Any = None
        self._reader_args: tuple = ()
        self._writer: Any = None
        self._writer_args: tuple = ()
        self._watching = 0          # the socket events asked of the loop (bits)
        self._timer: Any = None     # the 0 ms timer for buffered input, if armed
        self._limit: int | None = _LIMIT   # bytes of input buffered, at most
        if sock.getblocking() != blocking:      # setblocking() is a system call
            sock.setblocking(blocking)

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd {self._fd}"
        return f"<Channel {state}>"

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return self._fd

    # ------------------------------------------------------------ configure

    def configure(self, **options: Any) -> dict[str, Any]:
        """Set options (Tcl's ``fconfigure``); returns the full configuration.

        ``blocking`` (bool); ``buffering`` ("none", "line", "full");
        ``buffersize`` (bytes); ``encoding`` (the name of an ASCII-compatible
        codec, or "binary" for bytes in and out); ``translation``: "auto",
        "lf", "crlf", "cr" or "binary", for both directions, or an ``(input,
        output)`` pair as in Tcl ("binary" also sets the encoding).  Raises
        ValueError for an unknown option or a bad value (LookupError for an
        unknown codec), and then changes nothing.  Switching to blocking
        sends queued output before returning.
        """
        config = self._configuration()
        for name, value in options.items():
            if name not in config:
                raise ValueError(f"unknown channel option {name!r}")
            config[name] = value = _checked_option(name, value)
            if name == "translation" and "binary" in value:
                config["encoding"] = "binary"
        self._blocking = config["blocking"]
        self._buffering = config["buffering"]
        self._buffersize = config["buffersize"]
        self._encoding = config["encoding"]
        self._in_mode, self._out_mode = config["translation"]
        self._limit = config["limit"]
        self._skip_lf = self._skip_lf and self._in_mode == "auto"
        if not self._closed:
            self.sock.setblocking(self._blocking)
            if self._blocking and self._outbuf:
                self._flush()                    # all of it, now
            self._interest()    # no background flush left; a new limit
        return config

    def _configuration(self) -> dict[str, Any]:
        return {
            "blocking": self._blocking,
            "buffering": self._buffering,
            "buffersize": self._buffersize,
            "encoding": self._encoding,
            "translation": (self._in_mode, self._out_mode),
            "limit": self._limit,
        }

    # --------------------------------------------------------------- events

    def fileevent(self, event: str, callback: Any = _QUERY,
                  *args: Any) -> Callable[..., Any] | None:
        """Set, remove or query the channel's handler for ``event``
        (Tcl's ``chan event``); ``loop.fileevent(ch, ...)`` comes here.

        ``fileevent("readable", cb, *args)`` makes ``cb(*args)`` run when
        the channel is readable: the socket has input, or the buffer holds
        input that the last ``gets``/``read`` left (Tcl's rule);
        ``fileevent("writable", cb)`` when the socket can take output.
        (While the input buffer holds more than the ``limit`` option, the
        channel stops asking the loop for readable events.)
        ``None`` removes the handler; no callback returns the current one.
        A handler that raises is reported through ``loop.report`` and
        deleted, as the loop does with its own.  Raises ValueError for a bad
        event name or a closed channel, TypeError for a handler that is not
        callable.
        """
        if callback is _QUERY:
            if event == "readable":
                return self._reader
            if event == "writable":
                return self._writer
            raise ValueError(f"bad event name {event!r}: must be 'readable' or 'writable'")
        if callback is not None:
            if not callable(callback):
                raise TypeError(f"fileevent handler must be callable or None, not {callback!r}")
            if self._closed:
                raise ValueError("fileevent on a closed channel")
        if event == "readable":
            self._reader, self._reader_args = callback, args
            if callback is not None and self._inbuf and not self._blocked:
                self._note_input()              # Tcl's rule: see _has_input
        elif event == "writable":
            self._writer, self._writer_args = callback, args
        else:
            raise ValueError(f"bad event name {event!r}: must be 'readable' or 'writable'")
        self._interest()
        return None

    def _interest(self) -> None:
        """Ask the loop for the socket events the channel needs now (Tcl's
        ``UpdateInterest``): readable while a handler wants input and the
        input buffer is within its limit, writable while a handler wants it
        or output waits (the background flush)."""
        if self._fd < 0:
            return
        want = 0
        if self._reader is not None:
            limit = self._limit
            if limit is None or len(self._inbuf) <= limit:
                want = _R
        if self._writer is not None or self._outbuf:
            want |= _W
        changed = want ^ self._watching
        if not changed:
            return
        self._watching = want
        loop, sock = self._loop, self.sock
        if changed & _R:
            loop.fileevent(sock, "readable", self._on_readable if want & _R else None)
        if changed & _W:
            loop.fileevent(sock, "writable", self._on_writable if want & _W else None)

    def _note_input(self) -> None:
        """The buffer holds input the readable handler should see, though
        the socket may have nothing new: arm a 0 ms timer that calls it
        (Tcl's ``ChannelTimerProc``).  Once is enough until it fires."""
        if self._timer is None and self._reader is not None:
            self._timer = self._loop.after(0, self._on_buffered)

    def _on_buffered(self) -> None:
        self._timer = None
        if self._inbuf and not self._blocked:
            self._on_readable()

    def _on_readable(self) -> None:
        """The loop's readable handler: the user's, unless the channel has
        closed since."""
        callback = self._reader
        if callback is None or self._closed:
            return
        try:
            callback(*self._reader_args)
        except Exception as exc:
            # As the loop does with a handler of its own, and Tcl: report
            # it and delete it, so it can't raise again on every pass.
            self._reader, self._reader_args = None, ()
            self._interest()
            self._loop.report(exc)

    def _on_writable(self) -> None:
        """The loop's writable handler: the background flush, then the
        user's handler."""
        if self._outbuf:
            self._drain()
        callback = self._writer
        if callback is None or self._closed:
            return
        try:
            callback(*self._writer_args)
        except Exception as exc:
            self._writer, self._writer_args = None, ()
            self._interest()
            self._loop.report(exc)

    # ---------------------------------------------------------------- input

    def gets(self) -> str | bytes | None:
        """The next line without its line end, or None if none is complete.

        At end of file a last unterminated line is returned, then None with
        ``eof()`` true.  A non-blocking channel calls ``recv`` once at most
        (64 KiB), only when no line is buffered; a blocking one waits for a
        line.  Raises `LineTooLong` when the line is longer than the
        ``limit`` option: the bytes stay buffered for ``read()``, and the
        channel receives nothing more until they shrink under the limit.
        A connection reset is an end of file, as in Tcl: None, ``eof()``
        true, and ``error()`` returns the reset once.  On a socket whose
        connect failed, raises OSError ENOTCONN (Tcl's "socket is not
        connected") and leaves the connect's error for ``error()``; other
        read errors raise the socket's OSError, leaving ``eof()`` true.
        """
        if self._closed:
            raise ValueError("I/O operation on a closed channel")
        buf = self._inbuf
        start, size = self._line_end(buf) if buf else (-1, 0)
        limit = self._limit
        if start < 0 and not self._eof and (limit is None or len(buf) <= limit):
            if self._blocking:
                while start < 0 and not self._eof and not self._full():
                    self._fill()
                    start, size = self._line_end(buf)
            elif self._fill():                  # one recv, at most
                start, size = self._line_end(buf)
        if limit is not None and (start > limit or (start < 0 and len(buf) > limit)):
            # Kept for read(); nothing more is received until it shrinks.
            self._blocked = False
            raise LineTooLong(f"line longer than the channel's limit of {limit} bytes")
        if start >= 0:
            line: bytearray | None = buf[:start]
            self._consume(start + size)
        elif self._eof and buf:
            line = buf[:]                      # last line, unterminated
            buf.clear()
        else:
            line = None
        self._blocked = line is None and not self._eof
        if buf and not self._blocked:          # see _has_input
            self._note_input()
        if line is None:
            return None
        if self._encoding == "binary":
            return bytes(line)
        return line.decode(self._encoding, "replace")

    def read(self, n: int | None = None) -> str | bytes:
        """What is buffered, at most ``n`` characters.

        Returns an empty string when nothing is there.  A non-blocking
        channel calls ``recv`` once at most (64 KiB), when the buffer does
        not hold ``n`` characters and is under its limit; so the call that
        returns the last characters before end of file does not see the end
        yet, and ``eof()`` becomes true on the next call (as Tcl's io-12.5).
        A blocking channel reads until end of file, or until it has ``n``
        characters.  Errors as for `gets` (a reset is an end of file).
        """
        if self._closed:
            raise ValueError("I/O operation on a closed channel")
        if n is not None and n < 0:
            raise ValueError("read size must be >= 0")
        if not self._eof and not self._holds(n):
            if self._blocking:
                while not self._eof and not self._holds(n):
                    self._fill()
            elif not self._full():
                self._fill()                    # one recv, at most
        text, used = self._cooked(n)
        self._consume(used)
        # As Tcl's fblocked: short of what was asked for (all of it, when n
        # is None) for lack of input.  What is left then, part of a
        # character, is no reason to call the readable handler again.
        self._blocked = not self._eof and (n is None or len(text) < n)
        if self._has_input():
            self._note_input()
        return text

    def eof(self) -> bool:
        """True once the peer closed and everything buffered has been read."""
        return self._eof and not self._inbuf

    def blocked(self) -> bool:
        """True if the last ``gets``/``read`` could not be met for lack of input.

        Tcl's ``fblocked``: after ``gets`` no complete line was buffered;
        after ``read(n)`` fewer than ``n`` characters were (any ``read()``
        that stops short of end of file counts).  Until more input comes,
        the loop does not count the channel readable for what is left.
        """
        return self._blocked

    def _holds(self, n: int | None) -> bool:
        """Whether the input buffer holds ``n`` characters (bytes when binary)."""
        if n is None or len(self._inbuf) < n:     # never fewer bytes than that
            return False
        return len(self._cooked(n)[0]) >= n

    def _has_input(self) -> bool:
        """Whether the loop should call the readable handler without I/O."""
        return bool(self._inbuf) and not self._blocked

    def _full(self) -> bool:
        """Whether the input buffer holds more than the limit: no more
        receiving until it shrinks."""
        limit = self._limit
        return limit is not None and len(self._inbuf) > limit

    def _fill(self) -> int:
        """One recv() into the input buffer; returns the byte count (0 at EOF
        or when a non-blocking socket has nothing)."""
        try:
            data = self.sock.recv(_RECV_SIZE)
        except _WOULD_BLOCK:
            return 0
        except ConnectionResetError as exc:
            # A soft end of file, as Tcl's TcpInputProc makes it; the reset
            # is kept for error() (recv has cleared SO_ERROR).
            self._eof = True
            self._error = exc
            return 0
        except OSError as exc:
            if self._never_connected(exc):
                # As Tcl: "socket is not connected", and the reason stays
                # for error(), whoever asks first.
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN)) from None
            self._eof = True
            raise
        if not data:
            if self._never_connected(None):
                # The failed connect's error was read already (by error(),
                # or by the recv that raised it): the kernel now reports an
                # end of file, Tcl still "not connected".
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
            self._eof = True
            return 0
        if self._skip_lf:
            self._skip_lf = False
            # The \n of a \r\n split between two segments: the \r ended the
            # line already.  (It is set only when the buffer was used up.)
            self._inbuf += data[1:] if data[0] == 10 else data
        else:
            self._inbuf += data
        limit = self._limit
        if limit is not None and len(self._inbuf) > limit and self._watching & _R:
            self._interest()                    # stop receiving
        return len(data)

    def _never_connected(self, exc: OSError | None) -> bool:
        """Whether recv failed with ``exc`` (or found an end of file, None)
        because the connect failed; the connect's error is then kept for
        ``error()`` if nobody has read it yet.

        recv on a socket whose asynchronous connect failed returns the
        failure (ECONNREFUSED, ETIMEDOUT, ...) once and clears SO_ERROR;
        after that it finds an end of file.  After a connect that failed at
        once it returns ENOTCONN.  A socket that was connected has a peer
        name even after its peer has gone.
        """
        if exc is not None and exc.errno == errno.ENOTCONN:
            return True
        try:
            self.sock.getpeername()
        except OSError:
            if exc is not None and self._error is None:
                self._error = exc
            return True
        return False

    def _consume(self, used: int) -> None:
        r"""Drop the first ``used`` raw bytes of input, handed out by now.

        A \r as the last byte of the buffer may be half a \r\n whose \n is
        still on its way: remember to drop that \n when it comes.
        """
        buf = self._inbuf
        self._skip_lf = (self._in_mode == "auto" and used == len(buf)
                         and used > 0 and buf[used - 1] == 13)
        del buf[:used]
        if not self._watching & _R and self._reader is not None:
            self._interest()                    # under the limit again?

    def _line_end(self, buf: bytearray) -> tuple[int, int]:
        r"""Where the first line end in ``buf`` starts and how many bytes it
        is, or (-1, 0).  As in Tcl, only ``auto`` knows more than one kind:
        under ``cr`` a \n is data, under ``crlf`` a lone \r or \n is."""
        mode = self._in_mode
        if mode == "auto":
            if 13 not in buf:
                # No \r anywhere (the usual case): one search.  (``in`` is a
                # bare memchr; find() parses its arguments first and costs
                # several times more.)
                return buf.find(b"\n"), 1
            nl = buf.find(b"\n")
            cr = buf.find(b"\r", 0, nl if nl >= 0 else len(buf))
            if cr < 0:
                return nl, 1
            return cr, 2 if buf[cr + 1:cr + 2] == b"\n" else 1
        if mode == "crlf":
            return buf.find(b"\r\n"), 2
        return buf.find(b"\r" if mode == "cr" else b"\n"), 1

    def _cooked(self, n: int | None) -> tuple[str | bytes, int]:
        r"""Up to ``n`` characters (bytes when binary; None: all) of the
        input, translated and decoded, and how many raw bytes they are.

        Consumes nothing: the buffer keeps raw bytes until `_consume`, so
        what a ``read(n)`` leaves is translated afresh by the next request,
        with the bytes around its cut (a \r\n, a lone \r) still in view.
        """
        data = self._translate_in(bytes(self._inbuf))
        if self._in_mode == "crlf" and not self._eof and data.endswith(b"\r"):
            data = data[:-1]        # maybe half a \r\n: wait for the next byte
        if self._encoding == "binary":
            text: str | bytes = data if n is None else data[:n]
            size = len(text)
        else:
            text, size = self._decode_prefix(data, n)
        return text, self._raw_length(size)

    def _translate_in(self, data: bytes) -> bytes:
        r"""Input translation: the line ends of ``data`` as \n."""
        mode = self._in_mode
        if mode == "auto":
            return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if mode == "crlf":
            return data.replace(b"\r\n", b"\n")
        if mode == "cr":
            return data.replace(b"\r", b"\n")
        return data

    def _raw_length(self, size: int) -> int:
        r"""How many raw input bytes the first ``size`` translated bytes are:
        each \r\n pair before the cut became a single \n."""
        if self._in_mode not in ("auto", "crlf"):
            return size
        buf, pairs = self._inbuf, 0
        at = buf.find(b"\r\n")
        while 0 <= at < size + pairs:      # this pair's \n is inside the cut
            pairs += 1
            at = buf.find(b"\r\n", at + 2)
        return size + pairs

    def _decode_prefix(self, data: bytes, n: int | None) -> tuple[str, int]:
        """Decode what can be decoded of ``data`` (up to n characters);
        return the text and how many bytes of ``data`` it is (a partial
        character at the end is left for later, except at end of file)."""
        decoder = codecs.getincrementaldecoder(self._encoding)("replace")
        text = decoder.decode(data, final=self._eof)
        if n is None or len(text) <= n:
            return text, len(data) - len(decoder.getstate()[0])
        # Re-encode the part handed out to learn its byte length.  With
        # replacement characters that is not exact, so count per byte.
        if "\ufffd" not in text[:n]:
            return text[:n], len(text[:n].encode(self._encoding))
        used, produced = 0, 0
        decoder = codecs.getincrementaldecoder(self._encoding)("replace")
        while produced < n:
            produced += len(decoder.decode(data[used:used + 1]))
            used += 1
        return text[:n], used

    # --------------------------------------------------------------- output

    def puts(self, text: str | bytes = "", newline: bool = True) -> None:
        """Queue ``text`` and a newline (none if ``newline=False``) for sending.

        Sends according to the buffering mode; see the module notes.  Raises
        OSError if the socket failed (including a background flush error
        met earlier).
        """
        if self._closed:
            raise ValueError("I/O operation on a closed channel")
        if self._write_error is not None:
            self._raise_write_error()
        if self._encoding == "binary":
            if not isinstance(text, (bytes, bytearray, memoryview)):
                raise TypeError("puts on a binary channel takes bytes")
            data = bytes(text)
        else:
            if not isinstance(text, str):
                raise TypeError("puts on a text channel takes str")
            data = text.encode(self._encoding)
        if newline:
            data += b"\n"
        has_newline = newline or b"\n" in data
        eol = _OUT_MODES[self._out_mode]
        if eol != b"\n" and has_newline:
            data = data.replace(b"\n", eol)
        mode = self._buffering
        if not (mode == "none" or (mode == "line" and has_newline)
                or len(self._outbuf) + len(data) >= self._buffersize):
            self._outbuf += data                 # not due yet
        elif self._outbuf or self._blocking:
            self._outbuf += data
            self._flush()
        else:
            # Nothing queued (the usual case): send from ``data`` itself
            # rather than copy it into the buffer and out again, and queue
            # only what the socket does not take.
            sent = self._send(data)
            if sent < len(data):
                self._outbuf += data[sent:]
                self._interest()

    def flush(self) -> None:
        """Send the buffered output (in the background if non-blocking)."""
        if self._closed:
            raise ValueError("I/O operation on a closed channel")
        self._raise_write_error()
        self._flush()

    def _flush(self) -> None:
        if not self._outbuf:
            return
        if self._blocking:
            data, self._outbuf = bytes(self._outbuf), bytearray()
            self.sock.sendall(data)
            return
        self._send_some()
        if self._outbuf:
            self._interest()

    def _send_some(self) -> None:
        """Send what the socket takes of the queued output now."""
        del self._outbuf[:self._send(self._outbuf)]

    def _send(self, data: bytes | bytearray) -> int:
        """Send what the socket takes of ``data`` now; returns how many
        bytes that was.  On error drops the queued output and raises."""
        try:
            return self.sock.send(data)
        except _WOULD_BLOCK:
            return 0
        except OSError:
            self._outbuf.clear()
            raise

    def _drain(self) -> None:
        """The background flush: the socket is writable and output waits.
        An error is kept for ``error()`` and the next write."""
        try:
            self._send_some()
        except OSError as exc:
            self._write_error = exc
            self._error = exc
        if not self._outbuf:
            if self._closed:
                self._finish_close()
            else:
                self._interest()                # stop watching writable

    def _raise_write_error(self) -> None:
        exc = self._write_error
        if exc is not None:
            self._write_error = None
            if self._error is exc:
                self._error = None
            raise exc

    # ---------------------------------------------------------------- close

    def close(self, force: bool = False) -> None:
        """Close the channel; its file events go with it.

        A non-blocking channel returns at once and its queued output drains
        while the loop runs; ``force=True`` discards it, also when given to
        a second close while that drain is under way.  Raises a background
        flush error not yet reported.  Closing again is otherwise a no-op.
        """
        if self._fd < 0 or (self._closed and not force):
            return
        if not (self._watching or self._outbuf or self._write_error is not None
                or self._timer is not None):
            # Nothing watched, queued or owed (a connect probe's end, and
            # most closes): let go of the handlers and the socket, no more.
            self._closed = True
            self._reader = self._writer = None
            self._reader_args = self._writer_args = ()
            self._fd = -1
            try:
                self.sock.close()
            except OSError:
                pass
            return
        self._closed = True
        exc, self._write_error = self._write_error, None
        if force or exc is not None:
            self._outbuf.clear()
        elif self._outbuf:
            try:
                self._flush()
            except OSError as err:
                exc = err
        if self._outbuf:
            # The handlers go now, the socket once the output has drained
            # (in _drain).
            self._reader = self._writer = None
            self._reader_args = self._writer_args = ()
            self._interest()
            return
        self._finish_close()
        if exc is not None:
            raise exc

    def _finish_close(self) -> None:
        # Unregister first, then close: a reused descriptor number must not
        # inherit our registration (and a registered socket costs the
        # kernel epoll bookkeeping when it is closed).
        self._reader = self._writer = None
        self._reader_args = self._writer_args = ()
        if self._timer is not None:
            self._loop.after_cancel(self._timer)
            self._timer = None
        if self._watching:
            self._watching = 0
            self._loop.forget(self.sock)
        self._fd = -1
        try:
            self.sock.close()
        except OSError:
            pass

    def pending(self, which: str) -> int:
        """Bytes buffered in the channel (Tcl's ``chan pending``):
        ``"input"``, read from the socket and not yet handed out, or
        ``"output"``, queued and not yet sent.  Raises ValueError for any
        other word."""
        if which == "input":
            return len(self._inbuf)
        if which == "output":
            return len(self._outbuf)
        raise ValueError(f"bad pending mode {which!r}: must be 'input' or 'output'")

    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    # ---------------------------------------------------------- information

    def error(self) -> OSError | None:
        """The pending socket error, or None; reading it clears it.

        Tcl's ``fconfigure $ch -error``: after an asynchronous connect this
        says whether it failed.  A failure kept on the channel (a connect
        refused at once, a background flush error) comes first.
        """
        exc = self._error
        if exc is not None:
            self._error = None
            if self._write_error is exc:
                self._write_error = None
            return exc
        if self._fd < 0:
            return None
        code = self.sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        if code:
            message = _MESSAGES.get(code)
            if message is None:
                message = _MESSAGES[code] = _strerror(code)
            return OSError(code, message)
        return None

    def peername(self) -> tuple[str, int] | str:
        """The peer's (host, port), or path for a Unix socket; OSError if
        not connected."""
        if self._closed:
            raise ValueError("I/O operation on a closed channel")
        return shown(self.sock.getpeername())

    def sockname(self) -> tuple[str, int] | str:
        """The local (host, port), or path for a Unix socket."""
        if self._closed:
            raise ValueError("I/O operation on a closed channel")
        return shown(self.sock.getsockname())


def _checked_option(name: str, value: Any) -> Any:
    """The value of channel option ``name`` as kept; ValueError (or
    LookupError, for an unknown codec) if it is not a valid one."""
    if name == "blocking":
        return bool(value)
    if name == "buffering":
        if value not in _BUFFERING:
            raise ValueError(f"bad buffering {value!r}: must be one of {_BUFFERING}")
    elif name == "buffersize":
        if type(value) is not int or value < 1:
            raise ValueError(f"bad buffersize {value!r}: must be a positive int")
    elif name == "encoding":
        if value != "binary":
            codecs.lookup(value)                # raises LookupError if unknown
            # Line ends are looked for in the bytes (see the module notes).
            if "\r\n".encode(value) != b"\r\n":
                raise ValueError(f"encoding {value!r} is not ASCII-compatible")
    elif name == "limit":
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"bad limit {value!r}: must be a positive int or None")
    elif name == "translation":
        pair = (value, value) if isinstance(value, str) else value
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or pair[0] not in _IN_MODES or pair[1] not in _OUT_MODES):
            raise ValueError(f"bad translation {value!r}: must be one of {_IN_MODES}"
                             " or an (input, output) pair of them")
        return tuple(pair)
    return value
