"""Files the scanner reads: target lists (``-iL``) and earlier results (``--resume``).

Both are read whole before the first connect, so a bad file stops the scan
before it starts (``ValueError`` with one line of explanation; the command
line turns it into exit status 2).

A *target file* (nmap's ``-iL``, ``--excludefile``) holds targets in any
form `Targets` accepts, one or more per line, separated by whitespace or
commas; ``#`` starts a comment that runs to the end of the line.  ``-``
names standard input.

A *result file* is what ``evscan --json`` wrote: JSON Lines, one object per
line.  Every ``"result"`` object names a pair that is done; other objects
(the summary of an earlier run) are ignored.  A scan killed while writing
leaves a torn last line without its newline: it is dropped, and that pair
is scanned again.  Any other line that is not a JSON object means the file
is not a result file, and nothing is scanned.
"""

from __future__ import annotations

import ipaddress
import json
import sys

__all__ = ["read_targets_file", "read_results_file", "pair_key"]

# Result files are JSON Lines of a few hundred bytes a line: a line much
# longer than this is not one of ours (and must not eat the memory).
_MAX_LINE = 1 << 16


def read_targets_file(path: str) -> list[str]:
    """The target items of a file (``-`` for standard input), comments
    dropped.  Raises ValueError naming the file if it can't be read or is
    not text."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"can't read target file {path}: {reason}") from None
    items = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items.append(line)
    return items


def pair_key(host: str, port: int) -> tuple[str, int]:
    """The form in which pairs are compared for ``skip``: an address in
    its canonical text (``::1``, never ``0:0::1``), a name in lower case
    without the root dot."""
    try:
        host = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        host = host.rstrip(".").lower()
    return host, port


def read_results_file(path: str) -> set[tuple[str, int]]:
    """The (host, port) pairs already done according to a result file,
    as `pair_key` forms (a resolved name gives both its address and its
    name).  Raises ValueError when the file can't be read or is not JSON
    Lines of objects (a torn last line excepted)."""
    done: set[tuple[str, int]] = set()
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ValueError(f"can't read resume file {path}: {exc.strerror}") from None
    with f:
        number = 0
        while True:
            raw = f.readline(_MAX_LINE + 1)
            if not raw:
                break
            number += 1
            torn = not raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                if torn and len(raw) <= _MAX_LINE:
                    break               # the last write of a killed scan
                raise ValueError(f"resume file {path} is not JSON Lines of results"
                                 f" (line {number})")
            if obj.get("type", "result") != "result":
                continue
            host, port = obj.get("host"), obj.get("port")
            if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
                raise ValueError(f"resume file {path}: line {number} is a result"
                                 " without host and port")
            done.add(pair_key(host, port))
            name = obj.get("name")
            if isinstance(name, str):
                done.add(pair_key(name, port))
    return done
