"""portalloc.protocol against the real thing: one tclsh per module answers
"what is [list ...] of these elements" and "what are the elements of this
string", and our answers must match byte for byte.

Inputs and outputs cross the pipe hex-encoded, so no quoting of ours can
leak into the test harness itself.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence

import pytest

from portalloc.protocol import (
    decode_line,
    encode_line,
    format_list,
    format_reply,
    lsort_key,
    parse_list,
)

pytestmark = pytest.mark.timeout(60)

_ORACLE_SCRIPT = r"""
fconfigure stdin  -translation lf -encoding ascii
fconfigure stdout -translation lf -encoding ascii -buffering line
proc dec {h} { encoding convertfrom utf-8 [binary decode hex [string range $h 1 end]] }
proc enc {s} { return x[binary encode hex [encoding convertto utf-8 $s]] }
while {[gets stdin line] >= 0} {
    set words [split $line " "]
    switch -- [lindex $words 0] {
        F {
            set elems {}
            foreach h [lrange $words 1 end] { lappend elems [dec $h] }
            puts [enc [list {*}$elems]]
        }
        D {
            set out {}
            foreach c [split [dec [lindex $words 1]] ""] { lappend out [scan $c %c] }
            puts [join $out " "]
        }
        E {
            puts [enc [dec [lindex $words 1]]]
        }
        S {
            set elems {}
            foreach h [lrange $words 1 end] { lappend elems [dec $h] }
            puts [lsort -indices $elems]
        }
        P {
            set s [dec [lindex $words 1]]
            if {[catch {llength $s} n]} {
                puts "ERR [enc $n]"
            } else {
                set out [list OK]
                foreach e $s { lappend out [enc $e] }
                puts [join $out " "]
            }
        }
    }
}
"""


def _hex(s: str) -> str:
    return "x" + s.encode("utf-8").hex()


def _unhex(h: str) -> str:
    return bytes.fromhex(h[1:]).decode("utf-8")


class _Tclsh:
    """A tclsh subprocess that formats and parses lists on request."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc

    def _ask(self, line: str) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError("tclsh oracle exited")
        return reply.rstrip("\n")

    def list(self, elements: Sequence[str]) -> str:
        return _unhex(self._ask(" ".join(["F", *map(_hex, elements)])))

    def decode(self, data: bytes) -> list[int]:
        """The code points Tcl reads from the UTF-8 bytes of a line, ``data``.

        The line end goes with it, as a socket's reader sees it: at the very
        end of its input, ``encoding convertfrom`` in 8.6.13 reads a cut-off
        four-byte sequence as a surrogate of whatever follows in memory.
        """
        points = [int(c) for c in self._ask("D x" + (data + b"\n").hex()).split()]
        assert points[-1] == 10
        return points[:-1]

    def encode(self, text: str) -> bytes:
        """The UTF-8 bytes Tcl writes for ``text`` (which travels in Tcl's
        own form, lone surrogates included)."""
        return bytes.fromhex(self._ask("E x" + text.encode("utf-8", "surrogatepass").hex())[1:])

    def lsort_order(self, strings: Sequence[str]) -> list[int]:
        """The indices of ``strings`` in the order ``lsort`` puts them."""
        hexed = ["x" + t.encode("utf-8", "surrogatepass").hex() for t in strings]
        return [int(i) for i in self._ask(" ".join(["S", *hexed])).split()]

    def parse(self, text: str) -> list[str] | ValueError:
        """The elements of ``text``, or a ValueError carrying tclsh's message."""
        words = self._ask("P " + _hex(text)).split(" ")
        if words[0] == "ERR":
            return ValueError(_unhex(words[1]))
        return [_unhex(w) for w in words[1:]]


@pytest.fixture(scope="module")
def tclsh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Tclsh]:
    exe = shutil.which("tclsh")
    if exe is None:
        pytest.skip("tclsh is not installed")
    script = tmp_path_factory.mktemp("tcl") / "oracle.tcl"
    script.write_text(_ORACLE_SCRIPT)
    proc = subprocess.Popen(
        [exe, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, encoding="ascii",
    )
    try:
        yield _Tclsh(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ours_parse(text: str) -> list[str] | ValueError:
    try:
        return parse_list(text)
    except ValueError as exc:
        return exc


def _same(a: list[str] | ValueError, b: list[str] | ValueError) -> bool:
    if isinstance(a, ValueError) or isinstance(b, ValueError):
        return isinstance(a, ValueError) and isinstance(b, ValueError) and str(a) == str(b)
    return a == b


# --- element sets for [list ...] -------------------------------------------

ELEMENT_SETS = [
    [],
    [""],
    ["", ""],
    ["a", "b", "c"],
    ["a b"],
    ["my app", "fox"],
    ["{"], ["}"], ["{a"], ["a}"], ["}a{"], ["{a}"], ["{a}b"], ["a{b}c"],
    ["{{}}"], ["{}{"], ["a\\{b"], ["\\{"], ["a\\}b"], ["\\}"],
    ["\\"], ["a\\"], ["a b\\"], ["a\\\\"], ["\\\\"], ["a\\b"], ["\\n"],
    ["a\\\nb"], ["\\\n"], ["a\\\n\tb"],
    ['"'], ['"a'], ['a"'], ['a"b'], ['"a b"'], ['a"{b}'], ['"{'], ['{a}"'],
    ["$x"], ["a$b"], ["[cmd]"], ["a[b"], ["a]b"], ["]"], ["a;b"], [";"],
    ["#"], ["#a"], ["x", "#a"], ["#a", "#b"], ["#a b"], ['#a"b'], ["#{"],
    ["#a\\"], ["#}"], ["##"], ["a#"],
    ["a\tb"], ["\t"], ["a\nb"], ["\n"], ["a\rb"], ["\r\n"], ["\v"], ["\f"],
    [" "], ["  leading"], ["trailing "],
    ["\x00"], ["a\x00b"], ["\x01\x02"],
    ["é"], ["naïve app", "jörg"], ["日本語", "ユーザー"], ["\u00a0"], ["\u2003x"],
    ["😀"], ["a 😀"], ["{😀"],
    ["(", ")"], ["a)b"], ["=", "*", "?", "~", "!"],
    ["OK", "30001"], ["FAIL", "no free ports"],
    ["FAIL", "Invalid request GIMME {my app"],
    ["FAIL", "localhost (127.0.0.2) : Only local applications get ports"],
    ["30001", "SpecTcl_1", "fox"],
    ["a b", "{c", "d}", "e\\", "#f", '"g', "", "h\nj"],
]


@pytest.mark.parametrize("elements", ELEMENT_SETS, ids=repr)
def test_format_list_matches_tclsh(tclsh: _Tclsh, elements: list[str]) -> None:
    assert format_list(elements) == tclsh.list(elements)


@pytest.mark.parametrize("elements", ELEMENT_SETS, ids=repr)
def test_formatted_list_parses_back_to_its_elements(tclsh: _Tclsh, elements: list[str]) -> None:
    text = format_list(elements)
    assert parse_list(text) == elements
    assert tclsh.parse(text) == elements


# --- strings for llength/lindex ----------------------------------------------

PARSE_CASES = [
    "", " ", " \t\n\r\v\f ", "a", "a b c", "  a   b  ", "a\nb\tc\rd",
    "GIMME app fox", "GIMME {my app} fox", 'GIMME "my app" fox', "GIMME my\\ app fox",
    "LIST", "LIST extra words", "gimme app fox",
    "{}", "{} {}", "{a b} c", "{a {b c}} d", "{a\\}b}", "{a\\{b}", "{a\\\\}",
    "{a\\\nb}", "{a\\nb}", "{a$b[c]}", "{ }",
    '""', '"a b"', '"a\\"b"', '"a{b"', '"a}b"', '"a\\nb"', '"a\nb"', '"{a}"',
    "a\\ b", "a\\nb", "a\\tb", "\\x41", "\\x414", "\\x", "\\xg", "\\u00e9", "\\u00e9x",
    "\\u", "\\U0001F600", "\\U00110000", "\\U41", "\\ud83d\\ude00",
    "\\101", "\\1234", "\\400", "\\777", "\\8", "\\0", "\\a\\b\\f\\v\\r",
    "a\\\nb", "a\\\n   \t b", "\\\n", "a\\", "\\", "\\\\", "a\\{b", "a{b", "a}b",
    "a\"b", "a\"", "#a", "a#b", "é ü", "日本 語", "😀 x", "\\😀", "a\u00a0b",
    # malformed
    "{a", "{", "{a b", "{{a}", "\"a", "\"", "a \"b c",
    "{a}b", "{a}{b}", "\"a\"b", "{a}\"b\"", "x {a}b c",
    "{a}bcdefghijklmnopqrstuvwxyz0123456789 z", "{a}é€😀", "\"a\"\\n",
    "{a\\}", "{a\\", "\"a\\\"",
]


@pytest.mark.parametrize("text", PARSE_CASES, ids=repr)
def test_parse_list_matches_tclsh(tclsh: _Tclsh, text: str) -> None:
    ours, theirs = _ours_parse(text), tclsh.parse(text)
    assert _same(ours, theirs), (ours, theirs)


# --- properties over a nasty alphabet ------------------------------------------

_NASTY = list('{}[]$;\\" \t\n\r\v\f#xa0\x00') + ["é", "😀", "\u00a0", "}{", "\\\n", "\\{", "{}"]


def _random_strings(seed: int, count: int, max_len: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(count):
        yield "".join(rng.choice(_NASTY) for _ in range(rng.randrange(max_len + 1)))


def test_random_element_lists_format_like_tclsh_and_round_trip(tclsh: _Tclsh) -> None:
    rng = random.Random(20240501)
    strings = list(_random_strings(seed=1, count=3000, max_len=8))
    mismatches = []
    for _ in range(1500):
        elements = rng.sample(strings, rng.randrange(1, 4))
        text = format_list(elements)
        if text != tclsh.list(elements) or parse_list(text) != elements:
            mismatches.append(elements)
    assert mismatches == []


def test_random_strings_parse_like_tclsh(tclsh: _Tclsh) -> None:
    mismatches = []
    errors = 0
    for text in _random_strings(seed=2, count=3000, max_len=10):
        ours, theirs = _ours_parse(text), tclsh.parse(text)
        errors += isinstance(theirs, ValueError)
        if not _same(ours, theirs):
            mismatches.append((text, ours, theirs))
    assert mismatches == []
    assert errors > 100, "the alphabet should produce malformed lists too"


# --- bytes on the wire ----------------------------------------------------------

# Bytes that start, continue or break UTF-8 sequences, overlong forms, the
# three-byte surrogates, and sequences past U+10FFFF.
_NASTY_BYTES = [0x00, 0x41, 0x0A, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC3, 0xE0, 0xE2,
                0x82, 0xED, 0xB0, 0xF0, 0x98, 0xF4, 0x90, 0xF8, 0xFE, 0xFF]


@pytest.mark.parametrize("data", [
    b"\xff", b"\xfeA", b"\xc0\x80", b"\xed\xa0\x80", b"\xed\xa0\x80\xed\xb0\x80",
    b"\xed\xb0\x80", b"\xc3", b"\xe2\x82A", b"\xf0\x9f\x98\x80", b"\xf0\x9f\x98",
    b"\xc1\xbf", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"caf\xc3\xa9",
], ids=repr)
def test_decode_line_reads_bytes_as_tclsh_does(tclsh: _Tclsh, data: bytes) -> None:
    assert [ord(c) for c in decode_line(data)] == tclsh.decode(data)


def test_random_bytes_decode_like_tclsh(tclsh: _Tclsh) -> None:
    rng = random.Random(3)
    mismatches = []
    for _ in range(3000):
        data = bytes(rng.choice(_NASTY_BYTES) for _ in range(rng.randrange(1, 9)))
        ours = [ord(c) for c in decode_line(data)]
        if ours != tclsh.decode(data):
            mismatches.append(data)
    assert mismatches == []


@pytest.mark.parametrize("text", [
    "plain", "caf\u00e9", "\ud800", "\udc00x", "\U0001f600", "\x00", "\u00ff\u00fe", "a\ud83d",
], ids=repr)
def test_encode_line_writes_bytes_as_tclsh_does(tclsh: _Tclsh, text: str) -> None:
    assert encode_line(text) == tclsh.encode(text)


def test_lsort_key_orders_strings_as_tclsh_lsort(tclsh: _Tclsh) -> None:
    alphabet = ["a", "z", "A", " ", "{", "~", "\x00", "\x7f", "\x80", "\u00e9", "\u07ff",
                "\u0800", "\ud7ff", "\ud800", "\udc00", "\ue000", "\ufffd", "\U0001f600",
                "\U0010ffff"]
    rng = random.Random(4)
    for _ in range(200):
        strings = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(4)))
                   for _ in range(8)]
        ours = sorted(range(len(strings)), key=lambda i: lsort_key(strings[i]))
        theirs = tclsh.lsort_order(strings)
        assert [strings[i] for i in ours] == [strings[i] for i in theirs], strings


# --- fixed expectations (these run without tclsh) --------------------------------

@pytest.mark.parametrize("elements, text", [
    ([], ""),
    ([""], "{}"),
    (["my app", "fox"], "{my app} fox"),
    (["#a", "#a"], "{#a} #a"),
    (["a{"], "a\\{"),
    (["a\\"], "a\\\\"),
    (['a"{b}'], 'a\\"{b}'),
    (["#a{"], "\\#a\\{"),
    (["a\nb"], "{a\nb}"),
    (["a\\\nb"], "a\\\\\\nb"),
    ([30001, "app", "fox"], "30001 app fox"),
])
def test_format_list_known_forms(elements: list[object], text: str) -> None:
    assert format_list(elements) == text


@pytest.mark.parametrize("text, message", [
    ("{a", "unmatched open brace in list"),
    ('"a', "unmatched open quote in list"),
    ("{a}b", 'list element in braces followed by "b" instead of space'),
    ('"a"b', 'list element in quotes followed by "b" instead of space'),
    ("{a}" + "x" * 30, 'list element in braces followed by "' + "x" * 20 + '" instead of space'),
])
def test_malformed_lists_raise_value_error_with_tcl_message(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_list(text)
    assert str(info.value) == message


def test_request_line_words_follow_tcl_list_rules() -> None:
    assert parse_list("GIMME {my app} fox\r") == ["GIMME", "my app", "fox"]
    assert parse_list('GIMME "a\\tb" fox extra') == ["GIMME", "a\tb", "fox", "extra"]
    assert parse_list("{a\\nb}") == ["a\\nb"]  # braces keep backslashes literally


def test_format_reply_ends_in_crlf_and_quotes_like_the_original() -> None:
    assert format_reply("OK", 30001) == b"OK 30001\r\n"
    assert format_reply("FAIL", "no free ports") == b"FAIL {no free ports}\r\n"
    assert format_reply(30002, "naïve app", "fox") == "30002 {naïve app} fox\r\n".encode()
