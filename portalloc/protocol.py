"""Tcl list quoting, byte for byte as tclsh 8.6 does it, and the reply lines
of the port manager's wire protocol.

Every line the NSCLDAQ port manager sends or receives is a Tcl list: words
separated by white space, where a word that itself contains white space or
other special characters is quoted.  The original server and clients are Tcl
(or call Tcl's C library), so to interoperate we must quote and unquote the
way Tcl does, including its odd corners.

How Tcl *reads* a list (``lindex``, ``llength``, ``Tcl_SplitList``)
--------------------------------------------------------------------
* Elements are separated by runs of the six ASCII white space characters
  space, ``\\t``, ``\\n``, ``\\v``, ``\\f`` and ``\\r``.  Other Unicode spaces
  are ordinary characters.
* An element that starts with ``{`` runs to the matching ``}``; braces nest,
  and a backslash hides the character after it from the brace counting.  The
  text between the outer braces is taken *literally*: no backslash
  substitution at all, not even backslash-newline.
* An element that starts with ``"`` runs to the next unescaped ``"``; inside,
  white space is kept and backslash sequences are substituted.
* Any other element runs to the next white space; backslash sequences are
  substituted, and a backslash-escaped space does not end the element.
* After a closing ``}`` or ``"`` there must be white space or the end of the
  string; ``{a}b`` is an error ("list element in braces followed by "b"
  instead of space").  A brace or quote left open at the end is an error
  too ("unmatched open brace in list").  :func:`parse_list` raises
  :class:`ValueError` with Tcl's own message in exactly those cases.
* Backslash sequences: ``\\a \\b \\f \\n \\r \\t \\v``; ``\\xHH`` (one or two
  hex digits in 8.6); ``\\uHHHH`` (one to four); ``\\UHHHHHHHH`` (one to
  eight); ``\\ooo`` (one to three octal digits, at most ``\\377``);
  backslash-newline plus any following spaces and tabs becomes one space;
  a backslash before any other character yields that character; a lone
  trailing backslash is itself.

How Tcl *writes* a list (``list``, ``Tcl_Merge``)
-------------------------------------------------
Each element is written in the first of these forms that reads back as the
same string (``TclScanElement``/``TclConvertElement`` in ``tclUtil.c``):

1. As it is, when it holds no special character.  The empty string is
   always ``{}``.  A first element starting with ``#`` is braced, so that
   the list, evaluated as a script, is not a comment.
2. In braces, ``{...}``, when the braces inside it balance and it does not
   end in a backslash or contain backslash-newline (braces cannot protect
   those).  Tcl prefers braces when the element contains white space,
   ``[``, ``$``, ``;``, ``\\``, or starts with ``{``, ``"`` or ``#``.
3. With backslashes, when braces cannot be used (unbalanced braces, a
   trailing backslash, backslash-newline): every special character gets a
   backslash, control characters become ``\\n``, ``\\t`` and friends, and a
   leading ``#`` of the first element becomes ``\\#``.
4. Tcl 8.6 keeps one 8.5 habit: an element whose only special characters
   are ``]`` or ``"`` (and perhaps balanced braces) is backslash-escaped
   but its braces are left alone: ``a"{b}`` is written ``a\\"{b}``.

Elements are joined with single spaces.  This module reproduces those rules;
``tests/test_protocol.py`` checks them against a real ``tclsh``.

One deliberate reading of "as tclsh 8.6 does": stock 8.6 builds hold
characters in 16 bits, so ``\\U0001F600`` becomes U+FFFD there, while the
surrogate pair ``\\uD83D\\uDE00`` becomes the emoji, and a backslash before
a literal emoji yields U+FFFD.  We do the same.  Characters outside the BMP
that are not behind a backslash pass through untouched, in both directions.

How Tcl turns the bytes of a line into text, and back
-----------------------------------------------------
The original reads and writes its sockets in the system encoding, UTF-8,
and Tcl 8.6's UTF-8 never fails: :func:`decode_line` and
:func:`encode_line` do what it does, so that garbage from one client is
listed to the others as the original would list it.

* Reading, a byte that does not start a valid sequence stands for the
  character of the same number (``\xff`` reads as U+00FF), and decoding
  goes on at the next byte.  Two exceptions: ``\xc0\x80`` reads as U+0000,
  and the three-byte form of a UTF-16 surrogate reads as that surrogate (a
  high one followed by a low one, as one character).
* Writing, a lone surrogate is written in that three-byte form.

So no byte sequence is refused and every name is written back as it was
read, except invalid sequences, which come back as the UTF-8 of their
Latin-1 reading.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable

__all__ = ["format_list", "parse_list", "format_reply", "decode_line", "encode_line",
           "lsort_key"]

# The characters Tcl's list code treats specially.  \0 is absent on purpose:
# Tcl stores NUL as the two bytes C0 80, which are ordinary characters.
_TCL_SPACE = " \t\n\v\f\r"
_NEEDS_QUOTING = re.compile(r'[{}\[\]$;\\" \t\n\v\f\r]')

_ESCAPE_ALL = str.maketrans({
    **{c: "\\" + c for c in '[]$; \\"{}'},
    "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
})
# Tcl's 8.5-compatible mode (rule 4) escapes everything but braces.
_ESCAPE_BUT_BRACES = str.maketrans({
    **{c: "\\" + c for c in '[]$; \\"'},
    "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
})


def format_list(elements: Iterable[object]) -> str:
    """Return the Tcl list whose elements are ``elements``, as ``list`` would.

    Elements that are not strings are converted with ``str()`` (so ports may
    be passed as ints).  Raises nothing: every string has a list form.
    """
    return " ".join(_quote_element(str(e), i == 0) for i, e in enumerate(elements))


def _quote_element(elem: str, first: bool) -> str:
    """Return ``elem`` quoted as one list element (TclScanElement + Convert)."""
    if not elem:
        return "{}"
    leading_hash = first and elem[0] == "#"
    if _NEEDS_QUOTING.search(elem) is None:
        return "{" + elem + "}" if leading_hash else elem

    # A leading '#' prefers braces so that "#a\"b" reads {#a"b}, not \#a\"b;
    # Tcl keeps that 8.5 output although [list x#a"b] escapes instead.
    prefer_brace = leading_hash
    forbid_bare = prefer_escape = require_escape = False
    if elem[0] in '{"':
        # Otherwise the reader would take it for a braced or quoted element.
        forbid_bare = prefer_brace = True
    nesting = 0
    i, n = 0, len(elem)
    while i < n:
        c = elem[i]
        if c == "{":
            nesting += 1
        elif c == "}":
            nesting -= 1
            if nesting < 0:
                require_escape = True
        elif c in ']"':
            forbid_bare = prefer_escape = True
        elif c in "[$;" or c in _TCL_SPACE:
            forbid_bare = prefer_brace = True
        elif c == "\\":
            if i == n - 1:
                # "{a\}" would hide the closing brace: only escaping works.
                require_escape = True
            elif elem[i + 1] == "\n":
                # The reader would not keep backslash-newline inside braces
                # as written; escaping is the only faithful form.
                require_escape = True
                i += 1
            else:
                if elem[i + 1] in "{}\\":
                    i += 1  # an escaped brace does not count for nesting
                forbid_bare = prefer_brace = True
        i += 1
    if nesting > 0:
        require_escape = True

    if require_escape:
        if leading_hash:
            return "\\#" + elem[1:].translate(_ESCAPE_ALL)
        return elem.translate(_ESCAPE_ALL)
    if forbid_bare:
        if prefer_escape and not prefer_brace:
            return elem.translate(_ESCAPE_BUT_BRACES)
        return "{" + elem + "}"
    return "{" + elem + "}" if leading_hash else elem


def parse_list(text: str) -> list[str]:
    """Split ``text`` into its Tcl list elements, as ``lrange $text 0 end``.

    Raises ValueError, with tclsh's message, for an unmatched open brace or
    quote, or a closing brace or quote followed by something other than
    white space.
    """
    result: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _TCL_SPACE:
            i += 1
        if i == n:
            return result
        elem, i = _find_element(text, i)
        result.append(elem)


def _find_element(text: str, i: int) -> tuple[str, int]:
    """Parse the element starting at ``text[i]`` (not white space).

    Returns the element's value and the index just after it (TclFindElement).
    """
    n = len(text)
    open_braces = 1 if text[i] == "{" else 0
    in_quotes = text[i] == '"'
    if open_braces or in_quotes:
        i += 1
    start = i
    literal = True
    while i < n:
        c = text[i]
        if c == "{":
            if open_braces:
                open_braces += 1
        elif c == "}":
            if open_braces > 1:
                open_braces -= 1
            elif open_braces == 1:
                _check_followed_by_space(text, i + 1, "braces")
                return text[start:i], i + 1
        elif c == "\\":
            if not open_braces:
                literal = False
            # Skipped even inside braces, so "\}" never closes the element.
            i += _parse_backslash(text, i)[1] - 1
        elif c == '"':
            if in_quotes:
                _check_followed_by_space(text, i + 1, "quotes")
                return _substitute(text[start:i]), i + 1
        elif c in _TCL_SPACE and not open_braces and not in_quotes:
            break
        i += 1
    else:
        if open_braces:
            raise ValueError("unmatched open brace in list")
        if in_quotes:
            raise ValueError("unmatched open quote in list")
    raw = text[start:i]
    return (raw if literal else _substitute(raw)), i


def _check_followed_by_space(text: str, i: int, what: str) -> None:
    """Raise ValueError unless ``text[i]`` is white space or the end."""
    if i >= len(text) or text[i] in _TCL_SPACE:
        return
    j = i
    while j < len(text) and text[j] not in _TCL_SPACE:
        j += 1
    # Tcl quotes at most 20 bytes of the junk.
    junk = text[i:j].encode("utf-8", "surrogatepass")[:20].decode("utf-8", "ignore")
    raise ValueError(f'list element in {what} followed by "{junk}" instead of space')


_OCTAL = "01234567"
_HEX = "0123456789abcdefABCDEF"
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _parse_backslash(text: str, i: int) -> tuple[str, int]:
    """Decode the backslash sequence at ``text[i]`` (TclParseBackslash).

    Returns the substituted text and the number of characters consumed.
    """
    n = len(text) - i
    if n == 1:
        return "\\", 1
    c = text[i + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], 2
    if c in "xuU":
        max_digits = {"x": 2, "u": 4, "U": 8}[c]
        value, digits = 0, 0
        j = i + 2
        while digits < max_digits and j < len(text) and text[j] in _HEX:
            if value > 0x10FFF:  # TclParseHex stops before passing 0x10FFFF
                break
            value = value * 16 + int(text[j], 16)
            digits += 1
            j += 1
        if digits == 0:
            return c, 2
        if value > 0xFFFF:
            value = 0xFFFD  # 16-bit characters in stock 8.6; see module doc
        return chr(value), 2 + digits
    if c == "\n":
        j = i + 2
        while j < len(text) and text[j] in " \t":
            j += 1
        return " ", j - i
    if c in _OCTAL:
        value = int(c)
        if n > 2 and text[i + 2] in _OCTAL:
            value = value * 8 + int(text[i + 2])
            if n > 3 and text[i + 3] in _OCTAL and value < 0o40:
                return chr(value * 8 + int(text[i + 3])), 4
            return chr(value), 3
        return chr(value), 2
    if ord(c) > 0xFFFF:
        return "\ufffd", 2  # 8.6 cannot hold it as one character either
    return c, 2


def _substitute(raw: str) -> str:
    """Replace every backslash sequence in ``raw`` (TclCopyAndCollapse)."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i = 0
    while True:
        j = raw.find("\\", i)
        if j < 0:
            out.append(raw[i:])
            break
        out.append(raw[i:j])
        sub, used = _parse_backslash(raw, j)
        out.append(sub)
        i = j + used
    # Tcl 8.6 stores UTF-16 units, so "\uD83D\uDE00" is one character on output.
    return _SURROGATE_PAIR.sub(_join_surrogates, "".join(out))


def _join_surrogates(m: re.Match[str]) -> str:
    hi, lo = ord(m.group()[0]), ord(m.group()[1])
    return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))


def decode_line(data: bytes) -> str:
    """The text of the bytes of a line, read as Tcl 8.6 reads UTF-8 (see the
    module notes).  Never raises."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", _TCL_READING)
        return _SURROGATE_PAIR.sub(_join_surrogates, text)


def encode_line(text: str) -> bytes:
    """The bytes of ``text`` as Tcl 8.6 writes UTF-8: lone surrogates in
    their three-byte form.  Never raises."""
    return text.encode("utf-8", "surrogatepass")


def lsort_key(text: str) -> bytes:
    """A key that sorts strings as Tcl 8.6's ``lsort`` does.

    ``lsort`` compares the bytes Tcl holds a string in: UTF-8, except that
    NUL is the two bytes C0 80 and a character past U+FFFF is a surrogate
    pair (three bytes each).  So NUL sorts after ``z``, and an emoji before
    U+E000; elsewhere this is code point order.
    """
    if text.isascii() and "\x00" not in text:
        return text.encode("ascii")
    text = _ASTRAL.sub(_split_surrogates, text)
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\xc0\x80")


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _split_surrogates(m: re.Match[str]) -> str:
    offset = ord(m.group()) - 0x10000
    return chr(0xD800 + (offset >> 10)) + chr(0xDC00 + (offset & 0x3FF))


def _read_like_tcl(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: what Tcl makes of the bytes Python's UTF-8
    decoder refuses at ``exc.start``, and where decoding goes on."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    data, i = exc.object, exc.start
    if data[i:i + 2] == b"\xc0\x80":
        return "\x00", i + 2
    if (data[i] == 0xED and i + 2 < len(data)
            and 0xA0 <= data[i + 1] <= 0xBF and 0x80 <= data[i + 2] <= 0xBF):
        return data[i:i + 3].decode("utf-8", "surrogatepass"), i + 3
    return chr(data[i]), i + 1


_TCL_READING = "portalloc.protocol.tcl"
codecs.register_error(_TCL_READING, _read_like_tcl)


def format_reply(*words: object) -> bytes:
    """Return one protocol line: the Tcl list of ``words``, ending ``\\r\\n``.

    The original server writes with Tcl's ``puts`` on a socket, whose output
    translation is crlf, so every reply line ends in ``\\r\\n``:
    ``format_reply("FAIL", "no free ports") == b"FAIL {no free ports}\\r\\n"``.
    """
    return encode_line(format_list(words) + "\r\n")
