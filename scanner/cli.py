"""``python -m scanner`` / ``evscan``: the scanner's command line.

Output.  One line per result on stdout as it comes, in text
(``127.0.0.1:22  open  127.0.0.1:22``) or, with ``--json``, as JSON Lines:
every stdout line is one JSON object with a ``type``: ``"result"`` lines,
then one ``"summary"`` line.  In text mode the summary goes to stderr, so
stdout holds results alone.  A carriage-return progress line (done/total,
rate, ETA) is drawn on stderr only when stderr is a terminal.

Exit status: 0 when an open port was found, 1 when none was, 2 on a usage
error (bad option, target or port), 130 when interrupted.  Ctrl-C stops the
scan cleanly: sockets in flight are closed, what was found is already
printed, and the summary says how far the scan got.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any, TextIO

import evloop

from .scan import OPEN, STATES, Result, Scanner, default_concurrency
from .targets import Targets, parse_ports

__all__ = ["main"]

_EPILOG = """\
targets:
  127.0.0.1  ::1  localhost     one address or host name
  127.0.0.0/24  2001:db8::/120  CIDR block, network and broadcast included
  127.0.0.1-40                  last-octet range (or full: a.b.c.d-e.f.g.h)
  127.0.0                       the Tcl scan.tcl base form: .1 to .254
ports: 22  22,80,443  8000-8010  -1024 (1-1024)

output: one line per (host, port) as it is classified -- target, state,
detail -- and a summary on stderr (with --json: JSON Lines on stdout, the
summary last).  States:
  open         connected; detail: the peer's address and port
  refused      the host answered with a reset (nothing listens there)
  timeout      no answer within --timeout (a filtered or absent host)
  unreachable  no route, host unreachable, or prohibited by a route or filter
  error        anything else (e.g. a blackhole route); detail: the OS message

examples:
  %(prog)s 127.0.0.1 -p 1-1024 --open-only
  %(prog)s 127.0.0.0/16 -p 9 --open-only --timeout 0.5
  %(prog)s 127.0.0.0/24 --exclude 127.0.0.1 -p 22,80 --json > scan.jsonl
  %(prog)s 127.0.0 22            (as scan.tcl: base and port)

exit status: 0 open port found, 1 none found, 2 usage error, 130 interrupted
"""

_PROGRESS_SECONDS = 0.25


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Scan TCP ports with non-blocking connects on evloop.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="addresses, blocks, ranges, names (commas separate too)")
    p.add_argument("-p", "--ports", metavar="PORTS",
                   help="ports to scan; may be left out when the last TARGET"
                        " is a port list, as in scan.tcl's 'BASE PORT'")
    p.add_argument("--timeout", type=float, default=2.0, metavar="S",
                   help="seconds to wait for each connect (default 2)")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="connections in flight at most (default: the open-file"
                        f" limit less headroom, here {default_concurrency()})")
    p.add_argument("--open-only", action="store_true", help="print open ports only")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines on stdout: results, then a summary object")
    p.add_argument("--exclude", action="append", metavar="X", default=[],
                   help="targets to leave out (repeatable, same forms)")
    return p


def _split_ports(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Targets, list[int]]:
    """Targets and ports from the arguments; ``parser.error`` (exit 2) if bad."""
    spec = list(args.targets)
    try:
        if args.ports is None:
            # scan.tcl's "BASE PORT": a last argument that is a port list and
            # cannot be a target (a bare number is never a host name).
            if len(spec) < 2 or _is_target(spec[-1]):
                raise ValueError("no ports given: use -p PORTS")
            ports = parse_ports(spec.pop())
        else:
            ports = parse_ports(args.ports)
        targets = Targets(spec, exclude=args.exclude or None)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if not (args.timeout > 0 and args.timeout < float("inf")):
        parser.error(f"--timeout must be a positive number of seconds, not {args.timeout}")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, not {args.concurrency}")
    return targets, ports


def _is_target(text: str) -> bool:
    try:
        Targets(text)
    except ValueError:
        return False
    return True


def _target(r: Result) -> str:
    host = f"[{r.host}]" if ":" in r.host else r.host
    if r.name is not None and r.name != r.host:
        host = f"{r.name}/{host}"
    return f"{host}:{r.port}"


class _Output:
    """Writes results and the summary; draws the progress line."""

    def __init__(self, scanner: Scanner, out: TextIO, err: TextIO,
                 as_json: bool, open_only: bool) -> None:
        self.scanner = scanner
        self.out = out
        self.err = err
        self.as_json = as_json
        self.open_only = open_only
        self.progress = err.isatty()
        self.drawn = False            # a progress line is on the terminal
        self.broken = False           # stdout went away (a closed pipe)

    def result(self, r: Result) -> None:
        if self.open_only and r.state != OPEN:
            return
        if self.as_json:
            obj: dict[str, Any] = {"type": "result", "host": r.host, "port": r.port,
                                   "state": r.state, "detail": r.detail}
            if r.name is not None:
                obj["name"] = r.name
            line = json.dumps(obj)
        else:
            line = f"{_target(r):<21} {r.state:<11} {r.detail}"
        if self.drawn:
            self._clear()
        self._write(line + "\n")

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.out.write(text)
        except BrokenPipeError:
            self.broken = True
            self.scanner.cancel()

    def tick(self) -> None:
        """Periodic: flush stdout (results stream through pipes too) and
        redraw the progress line."""
        if not self.broken:
            try:
                self.out.flush()
            except BrokenPipeError:
                self.broken = True
                self.scanner.cancel()
        if self.progress and not self.scanner.finished:
            s = self.scanner
            elapsed = s.elapsed
            rate = s.done / elapsed if elapsed > 0 else 0.0
            left = s.total - s.done
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            pct = 100.0 * s.done / s.total if s.total else 100.0
            self.err.write(f"\r{s.done}/{s.total} ({pct:.1f}%)  {rate:,.0f}/s"
                           f"  ETA {eta}  open {s.counts[OPEN]}\x1b[K")
            self.err.flush()
            self.drawn = True

    def _clear(self) -> None:
        self.err.write("\r\x1b[K")
        self.err.flush()
        self.drawn = False

    def summary(self, interrupted: bool) -> None:
        if self.drawn:
            self._clear()
        s = self.scanner
        elapsed = s.elapsed
        rate = s.done / elapsed if elapsed > 0 else 0.0
        if self.as_json:
            obj: dict[str, Any] = {"type": "summary", "total": s.total, "done": s.done,
                                   "elapsed": round(elapsed, 3), "rate": round(rate, 1),
                                   "interrupted": interrupted}
            obj.update(s.counts)
            self._write(json.dumps(obj) + "\n")
        else:
            counts = ", ".join(f"{s.counts[k]} {k}" for k in STATES)
            line = f"{s.done} of {s.total} scanned in {elapsed:.2f} s ({rate:,.0f}/s): {counts}"
            if interrupted:
                line += f" -- interrupted, {s.total - s.done} not scanned"
            self.err.write(line + "\n")
        try:
            if not self.broken:
                self.out.flush()
        except BrokenPipeError:
            self.broken = True
        self.err.flush()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit status (see the module notes).

    ``prog`` is the name usage lines give (default ``evscan``, the
    installed command; ``python -m scanner`` passes its own).  argparse
    exits with status 2 on a usage error (``SystemExit``).
    """
    parser = _parser(prog or "evscan")
    args = parser.parse_args(argv)
    targets, ports = _split_ports(parser, args)

    loop = evloop.Loop()
    done = evloop.Var(False)
    scanner = Scanner(targets, ports, timeout=args.timeout, concurrency=args.concurrency,
                      loop=loop, on_done=lambda _s: done.set(True))
    output = _Output(scanner, sys.stdout, sys.stderr, args.json, args.open_only)
    scanner.on_result = output.result
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        scanner.cancel()

    def on_sigint(_signum: int, _frame: Any) -> None:
        # The first Ctrl-C stops the scan from inside the loop (so no
        # callback is cut in half); a second one, should that hang, raises.
        if interrupted or pending[0]:
            raise KeyboardInterrupt
        pending[0] = True
        loop.call_soon_threadsafe(interrupt)

    pending = [False]
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None

    def tick() -> None:
        output.tick()
        if not scanner.finished:
            ticker[0] = loop.after(_PROGRESS_SECONDS * 1000, tick)

    ticker = [loop.after(_PROGRESS_SECONDS * 1000, tick)]
    try:
        scanner.start()
        loop.vwait(done)
    except KeyboardInterrupt:
        interrupted = True
        scanner.cancel()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        loop.after_cancel(ticker[0])
        loop.close()
    output.summary(interrupted)
    if output.broken:
        # The reader went away (``| head``): the scan was stopped; keep the
        # interpreter's final flush from complaining about the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if interrupted:
        return 130
    return 0 if scanner.counts[OPEN] else 1


if __name__ == "__main__":          # pragma: no cover
    sys.exit(main())
