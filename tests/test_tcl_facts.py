"""What tclsh does: each statement about Tcl in docs/tcl-to-python.md.

Only Tcl's side is tested here; what evloop does is tested beside its code.
Each test runs a short tclsh 8.6 script that talks only to loopback (a
server in the same tclsh, or a Python peer on 127.0.0.1) and prints what
it saw.  Skipped where tclsh is not installed.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import textwrap

import pytest
from conftest import free_port

pytestmark = pytest.mark.timeout(30)

# Tcl helpers every script gets: a connected pair of sockets made by a
# server in the same interpreter, and a wait for one readable event
# (rather than sleeping until data is there).
_PRELUDE = r"""
proc pair {} {
    set srv [socket -server [list apply {{c a p} {set ::accepted $c}}] -myaddr 127.0.0.1 0]
    set c [socket 127.0.0.1 [lindex [fconfigure $srv -sockname] 2]]
    vwait ::accepted
    close $srv
    return [list $c $::accepted]
}
proc wait_readable {c} {
    fileevent $c readable {set ::readable 1}
    set guard [after 5000 {set ::readable timeout}]
    vwait ::readable
    after cancel $guard
    fileevent $c readable {}
    if {$::readable eq "timeout"} { error "not readable within 5 s" }
}
"""


def _write(tmp_path, script: str, prelude: bool = True):
    path = tmp_path / "fact.tcl"
    path.write_text((_PRELUDE if prelude else "") + textwrap.dedent(script))
    return path


def tcl(tclsh: str, tmp_path, script: str, *args: object) -> list[str]:
    """Run ``script`` (after the prelude) with ``args`` as ``$argv``; its
    stdout lines.  Fails on a non-zero exit."""
    r = subprocess.run([tclsh, str(_write(tmp_path, script)), *map(str, args)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _with_peer(tclsh, tmp_path, script, action) -> list[str]:
    """Run ``script`` with ``$argv`` the port of a Python listener on
    127.0.0.1; ``action(conn, proc)`` runs on the accepted connection."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        proc = subprocess.Popen([tclsh, str(_write(tmp_path, script)), str(srv.getsockname()[1])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = srv.accept()
            action(conn, proc)
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    return out.splitlines()


# ------------------------------------------------------------ connection reset

def test_tcl_reset_is_a_soft_eof_after_the_data_that_came_first(tclsh, tmp_path):
    script = """
        set c [socket 127.0.0.1 [lindex $argv 0]]
        fconfigure $c -blocking 0 -buffering line
        proc readable {c} {
            set n [gets $c line]
            if {$n >= 0 || [eof $c]} { puts "gets $n <$line> eof [eof $c]" }
            if {[eof $c]} { set ::done 1 }
        }
        fileevent $c readable [list readable $c]
        vwait ::done
        puts "error <[fconfigure $c -error]>"
    """

    def hello_then_reset(conn, _proc):
        conn.sendall(b"hello\n")
        _reset(conn)

    # No error is raised, and -error is empty: the read took the reset.
    assert _with_peer(tclsh, tmp_path, script, hello_then_reset) == [
        "gets 5 <hello> eof 0", "gets -1 <> eof 1", "error <>"]


def test_tcl_reports_a_reset_in_error_only_until_a_read_meets_it(tclsh, tmp_path):
    script = """
        set c [socket 127.0.0.1 [lindex $argv 0]]
        fconfigure $c -blocking 0
        wait_readable $c
        puts "error <[fconfigure $c -error]>"
        puts "again <[fconfigure $c -error]>"
        puts "gets [gets $c line] eof [eof $c]"
    """
    assert _with_peer(tclsh, tmp_path, script, lambda conn, _p: _reset(conn)) == [
        "error <connection reset by peer>", "again <>", "gets -1 eof 1"]


# ------------------------------------------------------------------- vwait

def test_tcl_vwait_returns_after_the_one_event_that_set_the_variable(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        # A reply (a file event) and its timeout timer are both due: the
        # reply's handler sets the variable and vwait returns at once.
        lassign [pair] c s
        fconfigure $c -blocking 0
        puts $s reply; flush $s
        fileevent $c readable {gets $c ::reply; lappend ::log reply}
        set timeout [after 10 {lappend ::log timeout; set ::reply timeout}]
        after 30                                 ;# both due now
        vwait ::reply
        lappend ::log returned
        after cancel $timeout
        puts "reply: $::log"

        # Two file events ready: one handler runs, then vwait returns.
        set ::log {}
        lassign [pair] a sa
        lassign [pair] b sb
        fconfigure $a -blocking 0; fconfigure $b -blocking 0
        puts $sa x; flush $sa; puts $sb x; flush $sb
        fileevent $a readable {gets $a; fileevent $a readable {}; lappend ::log a; set ::v a}
        fileevent $b readable {gets $b; fileevent $b readable {}; lappend ::log b; set ::v b}
        after 30
        vwait ::v
        lappend ::log returned
        update
        puts "files: $::log"

        # Every timer already due is one event, even with other deadlines.
        set ::log {}
        after 5 {lappend ::log t5; set ::w 1}
        after 10 {lappend ::log t10}
        after 30
        vwait ::w
        lappend ::log returned
        puts "timers: $::log"

        # The idle callbacks of one generation are one event.
        set ::log {}
        after idle {lappend ::log i1; set ::x 1}
        after idle {lappend ::log i2; after idle {lappend ::log next}}
        vwait ::x
        lappend ::log returned
        update
        puts "idle: $::log"
    """)
    assert out[0] == "reply: reply returned"
    files = out[1].split()[1:]
    assert files[1] == "returned" and sorted(files) == ["a", "b", "returned"]
    assert out[2:] == ["timers: t5 t10 returned", "idle: i1 i2 returned next"]


def test_tcl_vwait_nests_and_wakes_on_an_equal_value(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        after 0 {vwait ::inner; lappend ::log "inner done"; set ::outer 1}
        after 10 {set ::inner 1}
        vwait ::outer
        puts $::log
        set ::v 7
        after 0 {set ::v 7}
        vwait ::v
        puts "woken by equal: $::v"
    """)
    assert out == ["{inner done}", "woken by equal: 7"]


# ----------------------------------------------------------- socket -async

def test_tcl_socket_async_refused_on_loopback_does_not_raise_and_error_is_read_once(
        tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        set c [socket -async 127.0.0.1 [lindex $argv 0]]
        fileevent $c writable {set ::w 1}
        vwait ::w
        puts "error <[fconfigure $c -error]> again <[fconfigure $c -error]>"
        puts "peername [catch {fconfigure $c -peername} m] $m"
    """, free_port())
    assert out == ["error <connection refused> again <>",
                   "peername 1 can't get peername: socket is not connected"]


# 127.255.255.255 is the broadcast address of lo's route: connect() fails
# at once with ENETUNREACH (no packet is sent), and socket -async raises.
# A blocking socket raises for a refused port.
@pytest.mark.parametrize("command,errno_name,message", [
    ("socket -async 127.255.255.255 9", "ENETUNREACH", "network is unreachable"),
    ("socket 127.0.0.1 $port", "ECONNREFUSED", "connection refused"),
], ids=["async-immediate-failure", "blocking-refused"])
def test_tcl_socket_raises_a_posix_error(tclsh, tmp_path, command, errno_name, message):
    out = tcl(tclsh, tmp_path, f"""
        set port [lindex $argv 0]
        puts [catch {{{command}}} m opts]
        puts $m
        puts [dict get $opts -errorcode]
    """, free_port())
    assert out == ["1", f"couldn't open socket: {message}", f"POSIX {errno_name} {{{message}}}"]


# --------------------------------------------------------------- fconfigure

def test_tcl_socket_defaults_and_binary_translation(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        lassign [pair] c s
        puts "[fconfigure $c -blocking] [fconfigure $c -buffering] [list [fconfigure $c -translation]]"
        fconfigure $c -translation binary
        puts [fconfigure $c -encoding]
        lassign [fconfigure $c -peername] addr name port
        puts "$addr [string is integer -strict $port]"
    """)
    assert out == ["1 full {auto crlf}", "binary", "127.0.0.1 1"]


def test_tcl_puts_on_a_socket_sends_crlf(tclsh, tmp_path):
    got = []

    def receive(conn, _proc):
        conn.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            data += conn.recv(100)
        got.append(data)

    _with_peer(tclsh, tmp_path, """
        set c [socket 127.0.0.1 [lindex $argv 0]]
        puts $c x
        close $c
    """, receive)
    assert got == [b"x\r\n"]


def test_tcl_switching_to_blocking_does_not_flush_queued_output(tclsh, tmp_path):
    size = 32 * 1024 * 1024        # far more than the kernel's buffers hold
    lines, received = [], []

    def read_later(conn, proc):
        # Read only once tclsh has switched to blocking and said how much
        # it still queues; its (blocking) close then sends the rest.
        lines.extend(proc.stdout.readline().strip() for _ in range(2))
        conn.settimeout(20)
        n = 0
        while chunk := conn.recv(1 << 20):
            n += len(chunk)
        received.append(n)

    _with_peer(tclsh, tmp_path, f"""
        set c [socket 127.0.0.1 [lindex $argv 0]]
        fconfigure $c -blocking 0 -buffering full -translation binary
        puts -nonewline $c [string repeat x {size}]
        flush $c
        set queued [chan pending output $c]
        fconfigure $c -blocking 1
        puts "queued [expr {{$queued > 0}}]"
        puts "unchanged [expr {{[chan pending output $c] == $queued}}]"
        flush stdout
        close $c
    """, read_later)
    assert lines == ["queued 1", "unchanged 1"]
    assert received == [size]


# -------------------------------------------------- gets, read, chan pending

def test_tcl_gets_and_read_at_a_partial_line_and_at_eof(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        lassign [pair] c s
        fconfigure $c -blocking 0
        fconfigure $s -buffering none -translation lf
        puts -nonewline $s par
        wait_readable $c
        puts "partial [gets $c line] fblocked [fblocked $c]"
        puts -nonewline $s "tial\\ntail"
        close $s
        wait_readable $c
        puts "line [gets $c line] <$line>"
        puts "tail [gets $c line] <$line>"
        puts "end [gets $c line] eof [eof $c]"

        lassign [pair] c s
        fconfigure $c -blocking 0
        fconfigure $s -buffering none
        puts -nonewline $s abcdef
        wait_readable $c
        puts "read 3 <[read $c 3]> fblocked [fblocked $c]"
        puts "read <[read $c]> fblocked [fblocked $c]"
    """)
    assert out == ["partial -1 fblocked 1", "line 7 <partial>", "tail 4 <tail>",
                   "end -1 eof 1", "read 3 <abc> fblocked 0", "read <def> fblocked 1"]


def test_tcl_buffered_lines_make_a_channel_readable_again(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        lassign [pair] c s
        fconfigure $c -blocking 0
        fconfigure $s -buffering none -translation lf
        puts -nonewline $s "one\\ntwo\\nthree\\n"
        fileevent $c readable {lappend ::lines [gets $c]; if {[llength $::lines] == 3} {set ::done 1}}
        vwait ::done
        puts $::lines
    """)
    assert out == ["one two three"]


def test_tcl_chan_pending_counts_the_channel_buffer_and_gets_has_no_limit(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        lassign [pair] c s
        fconfigure $c -blocking 0
        fconfigure $s -translation binary
        puts -nonewline $s "abc\\ndef"; flush $s
        wait_readable $c
        puts "before gets: [chan pending input $c]"  ;# in the kernel, not the channel
        gets $c
        puts "after gets: [chan pending input $c] output [chan pending output $c]"
        # A 3 MB line without its end: buffered whole, no limit.
        puts -nonewline $s [string repeat y 3000000]; flush $s
        fileevent $c readable {
            if {[gets $c] < 0 && [chan pending input $c] >= 3000003} { set ::done 1 }
        }
        set guard [after 10000 {set ::done timeout}]
        vwait ::done
        after cancel $guard
        puts "long line: $::done fblocked [fblocked $c] pending [chan pending input $c]"
    """)
    assert out == ["before gets: 0", "after gets: 3 output 0",
                   "long line: 1 fblocked 1 pending 3000003"]


# -------------------------------------------------------------------- after

def test_tcl_after_ids_info_cancel_and_bad_delays(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        set id [after 500 {puts a}]
        set idle [after idle {puts b}]
        puts "$id $idle"
        puts [after info]
        puts [after info $idle]
        puts "<[after cancel after#999]>"
        puts [catch {after info after#999} m]:$m
        puts [catch {after 1.5 {puts x}} m]:$m
        after cancel $id; after cancel $idle
        after -5 {set ::neg 1}
        update
        puts "negative ran [info exists ::neg]"
    """)
    assert out == ["after#0 after#1", "after#1 after#0", "{puts b} idle", "<>",
                   '1:event "after#999" doesn\'t exist',
                   '1:bad argument "1.5": must be cancel, idle, info, or an integer',
                   "negative ran 1"]


def test_tcl_update_idletasks_runs_no_timer_and_chains_idle_callbacks(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        after 0 {set ::timer 1}
        after idle {lappend ::chain 1; after idle {lappend ::chain 2; after idle {lappend ::chain 3}}}
        update idletasks
        puts "timer [info exists ::timer] chain $::chain"
    """)
    assert out == ["timer 0 chain 1 2 3"]


def test_tcl_has_no_monotonic_clock_and_no_signal_command(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        puts [catch {clock monotonic}]
        puts "<[info commands signal]>"
    """)
    assert out == ["1", "<>"]


# ----------------------------------------------------- errors and handlers

def test_tcl_a_failing_file_handler_goes_to_bgerror_and_is_deleted(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        proc bgerror {m} { puts "bgerror: $m"; set ::reported 1 }
        lassign [pair] c s
        puts $s x; flush $s
        fileevent $c readable {error boom}
        vwait ::reported
        puts "handler <[fileevent $c readable]>"
    """)
    assert out == ["bgerror: boom", "handler <>"]


def test_tcl_a_failing_bgerror_handler_prints_both_errors(tclsh, tmp_path):
    path = _write(tmp_path, """
        proc bgerror {m} { error "handler failed too" }
        after 0 {error boom}
        after 10 {set ::done 1}
        vwait ::done
        puts "loop went on"
    """, prelude=False)
    r = subprocess.run([tclsh, str(path)], capture_output=True, text=True, timeout=20)
    assert r.stdout == "loop went on\n"
    assert "boom" in r.stderr and "handler failed too" in r.stderr


# ------------------------------------------------------------ socket -server

def test_tcl_server_without_myaddr_listens_on_ipv4_and_ipv6(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        set srv [socket -server {apply {{c a p} {}}} 0]
        puts [fconfigure $srv -sockname]
    """)
    v4, v4name, port4, v6, v6name, port6 = out[0].split()
    assert (v4, v4name, v6, v6name) == ("0.0.0.0", "0.0.0.0", "::", "::") and port4 == port6


def test_tcl_a_closed_channel_is_gone_and_utf16_is_an_encoding(tclsh, tmp_path):
    out = tcl(tclsh, tmp_path, """
        lassign [pair] c s
        puts [catch {fconfigure $s -encoding unicode}]
        close $c
        catch {fileevent $c readable {puts x}} m
        puts [string map [list $c sock] $m]
    """)
    assert out == ["0", 'can not find channel named "sock"']
