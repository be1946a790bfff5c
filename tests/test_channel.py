"""Channels: gets/read/puts/flush/close, translation, encoding, buffering,
background flushing and errors -- on real sockets (socketpair and loopback
TCP).  The far end is a plain socket the test drives by hand.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import select
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest
from conftest import wait_for

import evloop

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def tcppair(loop):
    """(channel, peer) on loopback TCP: needed for resets (SO_LINGER 0)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    peer.settimeout(5)
    ch = evloop.Channel(client, loop)
    yield ch, peer
    ch.close(force=True)
    peer.close()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _nothing_waiting(peer: socket.socket) -> bool:
    """True if nothing has reached ``peer`` (a non-blocking recv would block)."""
    peer.setblocking(False)
    try:
        peer.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        peer.settimeout(5)
    return False


def _arrived(ch: evloop.Channel) -> None:
    """Wait until input for ``ch`` is in its socket (without reading it)."""
    assert select.select([ch.sock], [], [], 5)[0], "no input within 5 s"


def _send_once_taken(reading: socket.socket, peer: socket.socket, data: bytes) -> threading.Thread:
    """Start a thread that sends ``data`` from ``peer`` as soon as the
    reader has taken in all that came before (``reading``'s receive queue
    is empty, FIONREAD): a reader that blocks for the rest must meet the
    cut.  Gives up waiting after 5 s and sends anyway."""

    def send() -> None:
        deadline = time.monotonic() + 5
        while _unread(reading) and time.monotonic() < deadline:
            time.sleep(0.001)
        peer.sendall(data)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def _recv_exactly(peer: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = peer.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def _gets_when_ready(loop, ch, timeout=5.0):
    """Run the loop until ``ch.gets()`` returns a line (or EOF); return it."""
    got = []

    def poll():
        line = ch.gets()
        if line is not None or ch.eof():
            got.append(line)
        return bool(got)

    wait_for(loop, poll, timeout)
    return got[0]


# -------------------------------------------------------------------- gets

def test_gets_returns_lines_without_their_line_end(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"one\ntwo\n")

    assert _gets_when_ready(loop, ch) == "one"
    assert ch.gets() == "two"
    assert ch.gets() is None
    assert ch.blocked()
    assert not ch.eof()


def test_gets_assembles_a_line_sent_in_several_pieces(loop, chpair):
    ch, peer = chpair
    for piece in (b"par", b"ti", b"al"):
        peer.sendall(piece)
        wait_for(loop, lambda: ch.gets() is None and ch.blocked())
    peer.sendall(b" line\nnext")

    assert _gets_when_ready(loop, ch) == "partial line"
    assert ch.gets() is None and ch.blocked()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_gets_accepts_every_line_end_under_auto_translation(loop, chpair, ending):
    ch, peer = chpair
    peer.sendall(b"first" + ending + b"second" + ending + b"third\n")

    assert _gets_when_ready(loop, ch) == "first"
    assert ch.gets() == "second"
    assert ch.gets() == "third"


def test_cr_at_the_end_of_one_send_and_lf_at_the_start_of_the_next_are_one_line_end(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"alpha\r")
    assert _gets_when_ready(loop, ch) == "alpha"       # a lone \r ends a line at once

    peer.sendall(b"\nbeta\n")

    assert _gets_when_ready(loop, ch) == "beta"         # not "" then "beta"
    assert ch.gets() is None


def test_empty_lines_are_returned_as_empty_strings(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"\n\r\n\nx\n")

    assert _gets_when_ready(loop, ch) == ""
    assert [ch.gets(), ch.gets(), ch.gets()] == ["", "", "x"]


def test_final_unterminated_line_at_eof_then_none_and_eof(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"complete\nno newline at the end")
    peer.shutdown(socket.SHUT_WR)

    assert _gets_when_ready(loop, ch) == "complete"
    assert not ch.eof()
    assert _gets_when_ready(loop, ch) == "no newline at the end"
    assert ch.gets() is None
    assert ch.eof()
    assert not ch.blocked()


def test_handler_reading_one_line_per_call_gets_every_line_of_one_send(loop, chpair):
    ch, peer = chpair
    lines = []

    def one_line_per_call():
        line = ch.gets()
        if line is not None:
            lines.append(line)

    loop.fileevent(ch, "readable", one_line_per_call)
    peer.sendall(b"l1\nl2\nl3\n")            # one send, then nothing more

    wait_for(loop, lambda: len(lines) == 3)
    assert lines == ["l1", "l2", "l3"]


def test_handler_set_after_input_was_buffered_is_called_for_it(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"early\nlate\n")
    assert _gets_when_ready(loop, ch) == "early"      # "late" stays buffered
    got = evloop.Var()

    loop.fileevent(ch, "readable", lambda: got.set(ch.gets()))

    assert loop.vwait(got) == "late"


def test_gets_decodes_utf8_split_inside_a_character(loop, chpair):
    ch, peer = chpair
    data = "h\u00e9llo \u20ac \U0001f600\n".encode()
    cut = data.index("\u20ac".encode()) + 1         # inside the euro sign
    peer.sendall(data[:cut])
    wait_for(loop, lambda: ch.gets() is None and ch.blocked())

    peer.sendall(data[cut:])

    assert _gets_when_ready(loop, ch) == "h\u00e9llo \u20ac \U0001f600"


def test_gets_uses_the_configured_encoding(loop, chpair):
    ch, peer = chpair
    ch.configure(encoding="latin-1")
    peer.sendall("caf\u00e9\n".encode("latin-1"))

    assert _gets_when_ready(loop, ch) == "caf\u00e9"


def test_gets_on_a_closed_channel_raises(loop, chpair):
    ch, _ = chpair
    ch.close()
    with pytest.raises(ValueError):
        ch.gets()
    with pytest.raises(ValueError):
        ch.read()
    with pytest.raises(ValueError):
        ch.puts("x")


# -------------------------------------------------------------------- read

def test_read_n_returns_at_most_n_characters_and_read_returns_the_rest(loop, chpair):
    ch, peer = chpair
    peer.sendall("h\u00e9llo w\u00f6rld".encode())
    _arrived(ch)

    assert ch.read(5) == "h\u00e9llo"                 # characters, not bytes
    assert ch.read() == " w\u00f6rld"
    assert ch.read() == ""
    assert ch.blocked()


def test_read_translates_line_ends(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"a\r\nb\rc\n")
    got = []
    wait_for(loop, lambda: got.append(ch.read()) or "".join(got) == "a\nb\nc\n")
    assert "".join(got) == "a\nb\nc\n" and ch.read() == ""


def test_read_returns_what_is_buffered_after_a_gets(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"line\nrest of it")

    assert _gets_when_ready(loop, ch) == "line"
    assert ch.read() == "rest of it"


def test_read_on_a_utf8_character_split_between_sends(loop, chpair):
    ch, peer = chpair
    peer.sendall("ab\u20ac".encode()[:-1])
    text = []
    wait_for(loop, lambda: text.append(ch.read()) or "".join(text) == "ab")

    peer.sendall("ab\u20ac".encode()[-1:] + b"!")

    wait_for(loop, lambda: text.append(ch.read()) or "".join(text) == "ab\u20ac!")
    assert "\ufffd" not in "".join(text)              # the split never showed


def test_readable_handler_using_read_is_not_called_again_for_half_a_character(loop, chpair):
    ch, peer = chpair
    calls, text = [], []

    def reader():
        calls.append(1)
        text.append(ch.read())

    loop.fileevent(ch, "readable", reader)
    peer.sendall(b"caf\xc3")                 # the first byte of an e-acute
    wait_for(loop, lambda: "".join(text) == "caf")

    for _ in range(20):                      # nothing new arrives
        loop.run_once(0)

    assert len(calls) <= 2, f"handler called {len(calls)} times for no new input"
    peer.sendall(b"\xa9")
    wait_for(loop, lambda: "".join(text) == "caf\u00e9")


def test_read_n_across_a_lone_cr_keeps_the_line_end(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"x\r")
    _arrived(ch)
    assert ch.read(1) == "x"

    peer.sendall(b"y")
    text = []
    wait_for(loop, lambda: text.append(ch.read()) or "y" in "".join(text))

    assert "".join(text) == "\ny"          # the \r was a line end


def test_read_n_cut_inside_a_crlf_pair_hands_out_one_line_end(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"a\r\nb\r\nc")
    _arrived(ch)

    assert ch.read(1) == "a"
    assert ch.read(1) == "\n"
    assert ch.read(3) == "b\nc"
    assert ch.read() == ""


def test_gets_after_read_n_sees_the_line_end_at_the_cut(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"x\ry\n")
    _arrived(ch)

    assert ch.read(1) == "x"
    assert ch.gets() == ""                 # the lone \r ended a line
    assert ch.gets() == "y"


def test_blocking_read_n_counts_translated_characters(loop, chpair):
    ch, peer = chpair
    ch.configure(blocking=True)
    peer.sendall(b"a\r\nb\r")              # 5 bytes, but 4 characters
    later = _send_once_taken(ch.sock, peer, b"\nc")

    assert ch.read(5) == "a\nb\nc"
    later.join()


# Input translation as tclsh 8.6 does it: `gets` and `read` of the same bytes
# under each mode (the Tcl side reads them from a pipe written in binary).
_TCL_INPUT = b"a\nb\r\nc\rd\r\n\r\re\r"
_TCL_GETS = r"""
lassign [chan pipe] r w
fconfigure $w -translation binary -buffering none
fconfigure $r -translation [lindex $argv 0] -encoding utf-8
puts -nonewline $w [binary decode hex [lindex $argv 1]]
close $w
if {[lindex $argv 2] eq "gets"} {
    while {[gets $r line] >= 0} { puts x[binary encode hex [encoding convertto utf-8 $line]] }
} else {
    puts x[binary encode hex [encoding convertto utf-8 [read $r]]]
}
"""


@pytest.mark.parametrize("mode", ["auto", "lf", "cr", "crlf"])
@pytest.mark.parametrize("request_", ["gets", "read"])
def test_input_translation_matches_tclsh(loop, chpair, tclsh, tmp_path, mode, request_):
    script = tmp_path / "translate.tcl"
    script.write_text(_TCL_GETS)
    out = subprocess.run([tclsh, str(script), mode, _TCL_INPUT.hex(), request_],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    expected = [bytes.fromhex(h[1:]).decode() for h in out.split()]   # x<hex>
    if request_ == "read":
        expected = ["".join(expected)]

    ch, peer = chpair
    ch.configure(translation=(mode, "lf"))
    got = [] if request_ == "gets" else [""]
    # One segment per byte, each taken in by a gets or read of its own (a
    # non-blocking call receives once): the translation meets every cut.
    for byte in _TCL_INPUT:
        peer.sendall(bytes([byte]))
        _arrived(ch)
        if request_ == "gets":
            while (line := ch.gets()) is not None:
                got.append(line)
        else:
            got[0] += ch.read()
        assert not select.select([ch.sock], [], [], 0)[0]     # taken in: a cut
    peer.close()
    if request_ == "gets":
        while (line := ch.gets()) is not None:
            got.append(line)
    else:
        while not ch.eof():
            got[0] += ch.read()

    assert got == expected


def test_crlf_translation_holds_back_a_trailing_cr_until_the_next_byte(loop, chpair):
    ch, peer = chpair
    ch.configure(translation="crlf")
    peer.sendall(b"a\r")
    _arrived(ch)
    assert ch.read() == "a"

    peer.sendall(b"\nb")
    text = []
    wait_for(loop, lambda: text.append(ch.read()) or "b" in "".join(text))
    assert "".join(text) == "\nb"


def test_read_zero_returns_nothing_and_keeps_the_data(loop, chpair):
    ch, peer = chpair
    peer.sendall(b"kept")
    _arrived(ch)
    assert ch.read() == "kept"


def test_read_rejects_a_negative_size(loop, chpair):
    ch, _ = chpair
    with pytest.raises(ValueError):
        ch.read(-1)


# ------------------------------------------------------------------ binary

def test_binary_encoding_reads_and_writes_bytes(loop, chpair):
    ch, peer = chpair
    ch.configure(encoding="binary")
    peer.sendall(b"\x00\xff\xfe\n\x80tail")

    assert _gets_when_ready(loop, ch) == b"\x00\xff\xfe"
    assert ch.read(1) == b"\x80"
    assert ch.read() == b"tail"
    assert ch.read() == b""

    ch.puts(b"\x01\x02")
    ch.puts(b"\x03", newline=False)
    ch.flush()
    assert _recv_exactly(peer, 4) == b"\x01\x02\n\x03"


def test_binary_channel_refuses_str_and_text_channel_refuses_bytes(loop, chpair):
    ch, _ = chpair
    with pytest.raises(TypeError):
        ch.puts(b"bytes on a text channel")
    ch.configure(encoding="binary")
    with pytest.raises(TypeError):
        ch.puts("text on a binary channel")
    with pytest.raises(TypeError):
        ch.puts(5)                         # bytes(5) would be five NULs


def test_binary_translation_passes_cr_through(loop, chpair):
    ch, peer = chpair
    ch.configure(translation="binary")
    peer.sendall(b"a\r\nb\rc\n")

    assert ch.configure()["encoding"] == "binary"
    assert _gets_when_ready(loop, ch) == b"a\r"
    assert ch.gets() == b"b\rc"


# -------------------------------------------------------------------- puts

def test_puts_appends_a_newline(loop, chpair):
    ch, peer = chpair
    ch.puts("hello")
    assert _recv_exactly(peer, 6) == b"hello\n"


def test_puts_without_newline_sends_the_text_alone(loop, chpair):
    ch, peer = chpair
    ch.puts("no newline", newline=False)
    ch.flush()
    ch.puts("")
    assert _recv_exactly(peer, 11) == b"no newline\n"


def test_puts_encodes_utf8(loop, chpair):
    ch, peer = chpair
    ch.puts("\u00e9\u20ac")
    assert _recv_exactly(peer, 6) == "\u00e9\u20ac\n".encode()


def test_translation_crlf_writes_cr_lf(loop, chpair):
    ch, peer = chpair
    ch.configure(translation="crlf")
    ch.puts("a")
    ch.puts("b\nc")
    assert _recv_exactly(peer, 9) == b"a\r\nb\r\nc\r\n"


def test_output_translation_is_lf_by_default(loop, chpair):
    ch, peer = chpair
    assert ch.configure()["translation"] == ("auto", "lf")
    ch.puts("x")
    assert _recv_exactly(peer, 2) == b"x\n"


# --------------------------------------------------------------- buffering

def test_line_buffering_sends_at_each_newline(loop, chpair):
    ch, peer = chpair
    assert ch.configure()["buffering"] == "line"

    ch.puts("partial ", newline=False)
    loop.update()
    assert _nothing_waiting(peer)

    ch.puts("line")
    assert _recv_exactly(peer, 13) == b"partial line\n"


def test_full_buffering_holds_output_until_flush(loop, chpair):
    ch, peer = chpair
    ch.configure(buffering="full")

    ch.puts("one")
    ch.puts("two")
    loop.update()
    assert _nothing_waiting(peer)

    ch.flush()
    assert _recv_exactly(peer, 8) == b"one\ntwo\n"


def test_full_buffering_sends_when_buffersize_is_reached(loop, chpair):
    ch, peer = chpair
    ch.configure(buffering="full", buffersize=10)

    ch.puts("12345678")              # 9 bytes queued
    assert _nothing_waiting(peer)
    ch.puts("9")                     # 11 bytes: over the size

    assert _recv_exactly(peer, 11) == b"12345678\n9\n"


def test_no_buffering_sends_at_once(loop, chpair):
    ch, peer = chpair
    ch.configure(buffering="none")

    ch.puts("a", newline=False)

    assert _recv_exactly(peer, 1) == b"a"


# ------------------------------------------------------- background flushing

def _slow_reader(peer: socket.socket, total: int, go: threading.Event, eof: bool = False):
    """A thread that waits for ``go``, then reads ``total`` bytes (4 KiB at
    a time) and, if ``eof``, the end of file; returns (thread, result dict)."""
    result: dict = {}

    def run():
        go.wait(5)
        data = bytearray()
        try:
            while len(data) < total:
                chunk = peer.recv(4096)
                if not chunk:
                    break
                data += chunk
            result["data"] = bytes(data)
            if eof:
                result["eof"] = peer.recv(1) == b""
        except OSError as exc:
            result["error"] = exc
            result["data"] = bytes(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def _payload(megabytes: int) -> list[str]:
    """Distinct 1 MB lines, so order and integrity can be checked."""
    return [f"{n:07d}" + "x" * (1024 * 1024 - 8) for n in range(megabytes)]


def test_large_write_returns_at_once_and_drains_in_the_background(loop, chpair):
    ch, peer = chpair
    lines = _payload(8)
    expected = "".join(line + "\n" for line in lines).encode()
    go = threading.Event()
    reader, result = _slow_reader(peer, len(expected), go)

    for line in lines:
        ch.puts(line)            # the reader has not started: these must not block

    go.set()
    wait_for(loop, lambda: not reader.is_alive(), timeout=8)
    reader.join(5)

    assert "error" not in result
    assert len(result["data"]) == len(expected)
    assert hashlib.sha256(result["data"]).digest() == hashlib.sha256(expected).digest()


def test_close_returns_at_once_and_drains_queued_output_before_eof(loop, chpair):
    ch, peer = chpair
    lines = _payload(4)
    expected = "".join(line + "\n" for line in lines).encode()
    go = threading.Event()
    reader, result = _slow_reader(peer, len(expected), go, eof=True)
    for line in lines:
        ch.puts(line)

    ch.close()
    assert ch.closed()
    go.set()
    wait_for(loop, lambda: not reader.is_alive(), timeout=8)

    assert result["data"] == expected
    assert result["eof"] is True


def test_close_force_discards_queued_output(loop, chpair):
    ch, peer = chpair
    lines = _payload(4)
    total = sum(len(line) + 1 for line in lines)
    for line in lines:
        ch.puts(line)

    ch.close(force=True)
    assert ch.fileno() == -1               # closed now, not after a drain

    received = 0
    while chunk := peer.recv(65536):
        received += len(chunk)
    assert received < total


def test_close_force_after_close_abandons_the_drain(loop, chpair):
    ch, peer = chpair
    for line in _payload(4):
        ch.puts(line)
    ch.close()                             # draining: the peer is not reading

    ch.close(force=True)

    assert ch.fileno() == -1
    received = 0
    while chunk := peer.recv(65536):       # EOF comes without the loop running
        received += len(chunk)
    assert received < 4 * 1024 * 1024


def test_closing_twice_is_a_no_op(loop, chpair):
    ch, peer = chpair
    ch.puts("bye")
    ch.close()
    ch.close()
    assert _recv_exactly(peer, 4) == b"bye\n"
    wait_for(loop, lambda: peer.recv(1) == b"")


def test_blocking_channel_puts_sends_everything_before_returning(loop, chpair):
    ch, peer = chpair
    ch.configure(blocking=True)
    data = "z" * (3 * 1024 * 1024)
    go = threading.Event()
    go.set()
    reader, result = _slow_reader(peer, len(data) + 1, go)

    ch.puts(data)                          # returns once the kernel took it all
    reader.join(5)                         # the loop never ran

    assert result["data"] == (data + "\n").encode()


# ----------------------------------------------------------------- errors

def test_reset_by_peer_is_an_end_of_file_for_gets_and_error_reports_it_once(loop, tcppair):
    ch, peer = tcppair
    _reset(peer)

    wait_for(loop, lambda: ch.gets() is not None or ch.eof())
    assert ch.eof()
    exc = ch.error()
    assert isinstance(exc, ConnectionResetError)
    assert exc.errno == errno.ECONNRESET
    assert ch.error() is None
    assert ch.gets() is None


def test_reset_by_peer_is_an_end_of_file_for_read(loop, tcppair):
    ch, peer = tcppair
    _reset(peer)

    wait_for(loop, lambda: ch.read() != "" or ch.eof())
    assert ch.eof()
    assert ch.read() == ""
    assert isinstance(ch.error(), ConnectionResetError)


def _queue_then_reset(loop, ch, peer) -> None:
    """Queue more output than the socket takes, then have the peer reset the
    connection and let the background flush meet the error."""
    ch.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    for line in _payload(8):
        ch.puts(line)
    assert ch.pending("output"), "precondition: output is queued for the background flush"
    _reset(peer)
    loop.update()                 # the RST is here (loopback): the flush fails


def test_background_flush_error_is_returned_by_error_once(loop, tcppair):
    ch, peer = tcppair
    _queue_then_reset(loop, ch, peer)

    exc = ch.error()

    assert isinstance(exc, OSError)
    assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
    assert ch.error() is None


def test_puts_on_a_connection_the_peer_reset_raises_and_queues_nothing(loop, tcppair):
    ch, peer = tcppair
    _reset(peer)
    wait_for(loop, lambda: ch.error() is not None)     # the reset has arrived

    with pytest.raises(OSError) as info:
        ch.puts("lost")
    assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)
    ch.flush()                             # nothing queued: nothing to raise
    ch.close()


@pytest.mark.parametrize("operation", ["puts", "flush", "close"])
def test_background_flush_error_is_raised_by_the_next_write(loop, tcppair, operation):
    ch, peer = tcppair
    _queue_then_reset(loop, ch, peer)

    with pytest.raises(OSError) as info:
        if operation == "puts":
            ch.puts("more")
        elif operation == "flush":
            ch.flush()
        else:
            ch.close()
    assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)


def test_close_after_a_background_flush_error_still_closes(loop, tcppair):
    ch, peer = tcppair
    _queue_then_reset(loop, ch, peer)

    with pytest.raises(OSError):
        ch.close()
    assert ch.fileno() == -1


def test_error_is_none_on_a_healthy_channel(loop, chpair):
    ch, _ = chpair
    assert ch.error() is None


# --------------------------------------------------------- blocking channels

@pytest.fixture
def line_server():
    """A plain TCP listener on 127.0.0.1; yields (port, accept_fn)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    yield listener.getsockname()[1], listener
    listener.close()


def test_open_makes_a_blocking_channel_whose_gets_waits_for_a_line(loop, line_server):
    port, listener = line_server
    ch = evloop.open("127.0.0.1", port)
    conn, _ = listener.accept()
    try:
        assert ch.configure()["blocking"] is True
        conn.sendall(b"hel")
        # The rest comes later from another thread; gets must wait for it.
        later = _send_once_taken(ch.sock, conn, b"lo\n")

        assert ch.gets() == "hello"
        later.join()

        ch.puts("reply")
        assert _recv_exactly(conn, 6) == b"reply\n"
    finally:
        ch.close()
        conn.close()


def test_blocking_read_reads_to_eof(loop, line_server):
    port, listener = line_server
    ch = evloop.open("127.0.0.1", port, timeout=5)
    conn, _ = listener.accept()
    try:
        conn.sendall(b"all of it\nand more")
        conn.close()
        assert ch.read() == "all of it\nand more"
        assert ch.eof()
    finally:
        ch.close()


def test_blocking_gets_returns_none_at_eof(loop, line_server):
    port, listener = line_server
    ch = evloop.open("127.0.0.1", port)
    conn, _ = listener.accept()
    conn.sendall(b"last")
    conn.close()
    try:
        assert ch.gets() == "last"
        assert ch.gets() is None
        assert ch.eof()
    finally:
        ch.close()


# -------------------------------------------------------------- configure

def test_configure_returns_the_whole_configuration(loop, chpair):
    ch, _ = chpair
    assert ch.configure() == {
        "blocking": False,
        "buffering": "line",
        "buffersize": 4096,
        "encoding": "utf-8",
        "translation": ("auto", "lf"),
        "limit": 1 << 20,
    }

    config = ch.configure(buffering="full", buffersize=100, translation=("lf", "crlf"))

    assert config["buffering"] == "full"
    assert config["buffersize"] == 100
    assert config["translation"] == ("lf", "crlf")


@pytest.mark.parametrize("options", [
    {"bufering": "line"},
    {"peername": "x"},
    {"buffering": "always"},
    {"buffersize": 0},
    {"translation": "unix"},
    {"translation": ("auto",)},
    {"translation": 5},
    {"buffering": "full", "translation": "unix"},     # the good one is not applied
    {"encoding": "utf-16"},                           # line ends are not ASCII bytes
    {"encoding": "utf-32"},
])
def test_configure_rejects_unknown_options_and_values(loop, chpair, options):
    ch, _ = chpair
    before = ch.configure()
    with pytest.raises(ValueError):
        ch.configure(**options)
    assert ch.configure() == before


def test_switching_to_blocking_sends_the_queued_output_first(loop, chpair):
    ch, peer = chpair
    ch.configure(encoding="binary", buffering="full")
    payload = bytes(range(256)) * 8192     # 2 MB: more than a socketpair holds
    ch.puts(payload, newline=False)
    ch.flush()                             # partly sent, the rest queued
    reader = threading.Thread(target=lambda: got.append(_recv_exactly(peer, len(payload))))
    got: list = []
    reader.start()

    ch.configure(blocking=True)            # returns once all of it is sent
    reader.join(5)

    assert got == [payload]
    assert loop.fileevent(ch, "writable") is None and loop.run_once(0) == 0


def test_configure_rejects_an_unknown_encoding(loop, chpair):
    ch, _ = chpair
    with pytest.raises(LookupError):
        ch.configure(encoding="no-such-codec")


def test_configure_blocking_switches_the_socket(loop, chpair):
    ch, _ = chpair
    ch.configure(blocking=True)
    assert ch.sock.getblocking()
    ch.configure(blocking=False)
    assert not ch.sock.getblocking()


# ------------------------------------------------------- names and repr

def test_peername_and_sockname_on_tcp(loop, tcppair):
    ch, peer = tcppair
    assert ch.peername() == peer.getsockname()
    assert ch.sockname() == peer.getpeername()
    host, port = ch.peername()
    assert host == "127.0.0.1" and isinstance(port, int)


def test_fileno_is_the_sockets_until_closed(loop, chpair):
    ch, _ = chpair
    fd = ch.sock.fileno()
    assert ch.fileno() == fd
    assert str(fd) in repr(ch)
    ch.close()
    assert ch.fileno() == -1
    assert "closed" in repr(ch)


def test_close_of_a_channel_with_nothing_watched_or_queued_ends_it_all(loop, chpair):
    # The short path of close (a connect probe's end): same outcome as the
    # long one -- the peer sees end of file, every request raises, the
    # handlers are gone, closing again is a no-op.
    ch, peer = chpair
    assert ch.pending("output") == 0 and ch.fileevent("readable") is None
    ch.close()
    assert ch.closed() and ch.fileno() == -1 and ch.sock.fileno() == -1
    assert peer.recv(10) == b""
    assert ch.fileevent("writable") is None
    with pytest.raises(ValueError):
        ch.puts("x")
    with pytest.raises(ValueError):
        loop.fileevent(ch, "readable", print)
    ch.close()
    ch.close(force=True)
    assert ch.error() is None


def test_close_of_a_watched_channel_lets_the_loop_go_of_its_socket(loop, chpair):
    ch, peer = chpair
    loop.fileevent(ch, "readable", print)
    fd = ch.fileno()
    ch.close()
    assert loop.fileevent(fd, "readable") is None
    loop.run_once(0)                # nothing to call: no error either
    assert peer.recv(10) == b""
