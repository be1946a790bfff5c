"""``python -m scanner`` / ``evscan``: the scanner's command line.

Output.  One line per result on stdout as it comes, in text
(``127.0.0.1:22  open  127.0.0.1:22``) or, with ``--json``, as JSON Lines:
every stdout line is one JSON object with a ``type``: ``"result"`` lines,
then one ``"summary"`` line.  In text mode the summary goes to stderr, so
stdout holds results alone.  A carriage-return progress line (done/total,
rate, ETA) is drawn on stderr only when stderr is a terminal.

Exit status: 0 when an open port was found, 1 when none was, 2 on a usage
error (bad option, target, port, file; always one line, before any
connection), 3 when not even one socket could be had (a descriptor limit
too low for the program itself), 130 when interrupted by SIGINT, 143 by
SIGTERM.  Either signal stops the scan cleanly: sockets in flight are
closed, what was found is already printed, and the summary says how far the
scan got.  A reader that goes away (``| head``) stops the scan quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any, NoReturn, TextIO

import evloop

from .files import read_results_file, read_targets_file
from .order import parse_shard
from .scan import OPEN, STATES, Result, Scanner, default_concurrency
from .targets import Targets, parse_ports

__all__ = ["main", "EXIT_NO_SOCKET"]

#: Exit status when not even one socket could be had.
EXIT_NO_SOCKET = 3

_EPILOG = """\
targets:
  127.0.0.1  ::1  localhost     one address or host name
  127.0.0.0/24  2001:db8::/120  CIDR block, network and broadcast included
  127.0.0.1-40                  last-octet range (or full: a.b.c.d-e.f.g.h)
  127.0.0                       the Tcl scan.tcl base form: .1 to .254
ports: 22  22,80,443  8000-8010  -1024 (1-1024)
files (-iL, --exclude-file): targets as above, one or more a line, # comments

output: one line per (host, port) as it is classified -- target, state,
detail -- and a summary on stderr (with --json: JSON Lines on stdout, the
summary last).  States:
  open         connected (also: connected, then reset); detail: the peer
  refused      the host answered with a reset (nothing listens there)
  timeout      no answer within --timeout (a filtered or absent host)
  unreachable  no route, host unreachable, or prohibited by a route or filter
  error        anything else (e.g. a blackhole route); detail: the OS message

many machines: --shard I/N scans the I-th of N disjoint slices that together
cover every (host, port); give every shard the same arguments (and, with
--randomize, the same --seed), then concatenate their --json output.

examples:
  %(prog)s 127.0.0.1 -p 1-1024 --open-only
  %(prog)s 127.0.0.0/16 -p 9 --open-only --timeout 0.5
  %(prog)s 127.0.0.0/24 --exclude 127.0.0.1 -p 22,80 --json > scan.jsonl
  %(prog)s 127.0.0.0/16 -p 9 --rate 5000 --randomize --seed 7 --json
  %(prog)s 127.0.0.0/16 -p 9 --shard 0/4 --randomize --seed 7 --json > s0.jsonl
  %(prog)s 127.0.0.0/16 -p 9 --json --resume scan.jsonl >> scan.jsonl
  %(prog)s -iL hosts.txt -p 22 --exclude-file skip.txt   (hosts.txt: 127.0.0.0/24)
  %(prog)s 127.0.0.1 -p 22,25 --banner --banner-timeout 0.5
  %(prog)s 127.0.0 22            (as scan.tcl: base and port)

exit status: 0 open port found, 1 none found, 2 usage error, 130 interrupted
(SIGINT), 143 terminated (SIGTERM), 3 not even one socket could be had
"""

_PROGRESS_SECONDS = 0.25


class _Parser(argparse.ArgumentParser):
    """argparse with every usage error on one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Scan TCP ports with non-blocking connects on evloop.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="addresses, blocks, ranges, names (commas separate too)")
    p.add_argument("-p", "--ports", metavar="PORTS",
                   help="ports to scan; may be left out when the last TARGET"
                        " is a port list, as in scan.tcl's 'BASE PORT'")
    p.add_argument("-iL", "--input-list", dest="input_list", action="append", default=[],
                   metavar="FILE", help="read targets from FILE ('-': standard input)")
    p.add_argument("--exclude", action="append", metavar="X", default=[],
                   help="targets to leave out (repeatable, same forms)")
    p.add_argument("--exclude-file", action="append", metavar="FILE", default=[],
                   help="read targets to leave out from FILE")
    p.add_argument("--timeout", type=float, default=2.0, metavar="S",
                   help="seconds to wait for each connect (default 2)")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="connections in flight at most (default: the open-file"
                        f" limit less headroom, here {default_concurrency()})")
    p.add_argument("--rate", type=_positive_float, default=None, metavar="N",
                   help="start at most N connects per second")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="scan only the I-th (from 0) of N disjoint slices of the pairs")
    p.add_argument("--randomize", action="store_true",
                   help="visit the (host, port) pairs in a pseudo-random order")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="the order --randomize uses (implies it; the same S gives the"
                        " same order; needed with --shard)")
    p.add_argument("--resume", metavar="FILE",
                   help="skip the pairs already in FILE, the --json output of an"
                        " earlier run of the same scan")
    p.add_argument("--banner", action="store_true",
                   help="read what an open port says first (up to 256 bytes)")
    p.add_argument("--banner-timeout", type=_positive_float, default=1.0, metavar="S",
                   help="seconds to wait for a banner (default 1)")
    p.add_argument("--open-only", action="store_true", help="print open ports only")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines on stdout: results, then a summary object")
    p.add_argument("--version", action="version", version=f"%(prog)s {evloop.__version__}")
    return p


def _split_ports(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Targets, list[int]]:
    """Targets and ports from the arguments and files; ``parser.error``
    (exit 2) if anything is bad."""
    spec = list(args.targets)
    try:
        listed: list[str] = []
        for path in args.input_list:
            listed += read_targets_file(path)
        if args.ports is None:
            # scan.tcl's "BASE PORT": a last argument that is a port list and
            # cannot be a target (a bare number is never a host name).
            if len(spec) < (1 if args.input_list else 2) or _is_target(spec[-1]):
                raise ValueError("no ports given: use -p PORTS")
            ports = parse_ports(spec.pop())
        else:
            ports = parse_ports(args.ports)
        spec += listed
        if not spec:
            raise ValueError("no targets given" + (" (the target files are empty)"
                                                   if args.input_list else ""))
        exclude = list(args.exclude)
        for path in args.exclude_file:
            exclude += read_targets_file(path)
        targets = Targets(spec, exclude=exclude or None)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if not (args.timeout > 0 and args.timeout < float("inf")):
        parser.error(f"--timeout must be a positive number of seconds, not {args.timeout}")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, not {args.concurrency}")
    if args.seed is not None:
        args.randomize = True
    if args.randomize and args.shard is not None and args.shard[1] > 1 and args.seed is None:
        parser.error("--randomize with --shard needs --seed S (the same for every shard)")
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
    """Writes results and the summary; draws the progress line.  A closed
    stdout stops the scan; a closed stderr is ignored."""

    def __init__(self, scanner: Scanner, out: TextIO, err: TextIO,
                 as_json: bool, open_only: bool) -> None:
        self.scanner = scanner
        self.out = out
        self.err = err
        self.as_json = as_json
        self.open_only = open_only
        try:
            self.progress = err.isatty()
        except (OSError, ValueError):
            self.progress = False
        self.drawn = False            # a progress line is on the terminal
        self.broken = False           # stdout went away (a closed pipe)
        self.err_broken = False       # stderr went away

    def result(self, r: Result) -> None:
        if self.open_only and r.state != OPEN:
            return
        if self.as_json:
            obj: dict[str, Any] = {"type": "result", "host": r.host, "port": r.port,
                                   "state": r.state, "detail": r.detail}
            if r.name is not None:
                obj["name"] = r.name
            if r.banner is not None:
                obj["banner"] = r.banner
            line = json.dumps(obj)
        else:
            line = f"{_target(r):<21} {r.state:<11} {r.detail}"
            if r.banner:
                line += "  " + json.dumps(r.banner, ensure_ascii=False)
        if self.drawn:
            self._clear()
        self._write(line + "\n")

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.out.write(text)
        except (BrokenPipeError, ValueError):   # ValueError: stdout closed
            self.broken = True
            self.scanner.cancel()

    def error_line(self, text: str) -> None:
        """Write to stderr; a closed stderr loses the text, nothing else."""
        if self.err_broken:
            return
        try:
            self.err.write(text)
            self.err.flush()
        except (OSError, ValueError):
            self.err_broken = True

    def flush(self) -> None:
        if not self.broken:
            try:
                self.out.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True
                self.scanner.cancel()

    def tick(self) -> None:
        """Periodic: flush stdout (results stream through pipes too) and
        redraw the progress line."""
        self.flush()
        if self.progress and not self.scanner.finished:
            s = self.scanner
            elapsed = s.elapsed
            rate = s.done / elapsed if elapsed > 0 else 0.0
            left = s.total - s.done
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            pct = 100.0 * s.done / s.total if s.total else 100.0
            self.error_line(f"\r{s.done}/{s.total} ({pct:.1f}%)  {rate:,.0f}/s"
                            f"  ETA {eta}  open {s.counts[OPEN]}\x1b[K")
            self.drawn = True

    def _clear(self) -> None:
        self.error_line("\r\x1b[K")
        self.drawn = False

    def summary(self, interrupted: int, failure: str | None) -> None:
        if self.drawn:
            self._clear()
        s = self.scanner
        elapsed = s.elapsed
        rate = s.done / elapsed if elapsed > 0 else 0.0
        if self.as_json:
            obj: dict[str, Any] = {"type": "summary", "total": s.total, "done": s.done,
                                   "elapsed": round(elapsed, 3), "rate": round(rate, 1),
                                   "interrupted": bool(interrupted)}
            obj.update(s.counts)
            obj["skipped"] = s.skipped
            obj["shard"] = f"{s.shard[0]}/{s.shard[1]}"
            if s.randomize:
                obj["seed"] = s.seed
            if failure is not None:
                obj["failure"] = failure
            self._write(json.dumps(obj) + "\n")
        if failure is not None:
            self.error_line(failure + "\n")
        elif not self.as_json:
            counts = ", ".join(f"{s.counts[k]} {k}" for k in STATES)
            line = f"{s.done} of {s.total} scanned in {elapsed:.2f} s ({rate:,.0f}/s): {counts}"
            if s.skipped:
                line += f"; {s.skipped} skipped (already done)"
            if interrupted:
                what = "terminated" if interrupted == signal.SIGTERM else "interrupted"
                line += f" -- {what}, {s.total - s.done} not scanned"
            self.error_line(line + "\n")
        self.flush()


def _quiet(fd: int) -> None:
    """Point ``fd`` at /dev/null, so the interpreter's last flush of a
    stream whose reader went away has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit status (see the module notes).

    ``prog`` is the name usage lines give (default ``evscan``, the
    installed command; ``python -m scanner`` passes its own).  argparse
    exits with status 2 on a usage error (``SystemExit``).
    """
    parser = _parser(prog or "evscan")
    name = parser.prog
    args = parser.parse_args(argv)
    targets, ports = _split_ports(parser, args)
    skip = None
    if args.resume is not None:
        try:
            skip = read_results_file(args.resume)
        except ValueError as exc:
            parser.error(str(exc))

    try:
        loop = evloop.Loop()
    except OSError as exc:
        # The loop's own descriptors (epoll, its wakeup pair) could not be
        # had: no socket for a scan either.
        sys.stderr.write(f"{name}: no socket could be had: {exc.strerror or exc};"
                         " nothing scanned\n")
        return EXIT_NO_SOCKET
    done = evloop.Var(False)
    try:
        scanner = Scanner(targets, ports, timeout=args.timeout, concurrency=args.concurrency,
                          loop=loop, on_done=lambda _s: done.set(True), rate=args.rate,
                          shard=args.shard, randomize=args.randomize, seed=args.seed,
                          skip=skip, banner=args.banner, banner_timeout=args.banner_timeout)
    except ValueError as exc:
        loop.close()
        parser.error(str(exc))
    output = _Output(scanner, sys.stdout, sys.stderr, args.json, args.open_only)
    scanner.on_result = output.result
    interrupted = 0                     # the signal that stopped the scan

    def interrupt(signum: int) -> None:
        nonlocal interrupted
        interrupted = signum
        scanner.cancel()

    def on_signal(signum: int, _frame: Any) -> None:
        # The first SIGINT or SIGTERM stops the scan from inside the loop
        # (so no callback is cut in half); a second one, should that hang,
        # raises.
        if interrupted or pending:
            raise KeyboardInterrupt
        pending.append(signum)
        loop.call_soon_threadsafe(interrupt, signum)

    pending: list[int] = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    def tick() -> None:
        output.tick()
        if not scanner.finished:
            ticker[0] = loop.after(_PROGRESS_SECONDS * 1000, tick)

    ticker = [loop.after(_PROGRESS_SECONDS * 1000, tick)]
    try:
        scanner.start()
        loop.vwait(done)
    except KeyboardInterrupt:
        interrupted = interrupted or (pending[0] if pending else signal.SIGINT)
        scanner.cancel()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        loop.after_cancel(ticker[0])
        loop.close()
    failure = None
    if scanner.failure is not None:
        why = scanner.failure.strerror or str(scanner.failure)
        failure = (f"{name}: no socket could be had with nothing in flight:"
                   f" {why}; stopped with {scanner.done} of"
                   f" {scanner.total} scanned")
    output.summary(interrupted, failure)
    # The reader went away (``| head``): the scan was stopped; keep the
    # interpreter's final flush from complaining about the pipe.
    if output.broken:
        _quiet(sys.stdout.fileno())
    if output.err_broken:
        _quiet(sys.stderr.fileno())
    if failure is not None:
        return EXIT_NO_SOCKET
    if interrupted:
        return 128 + interrupted
    return 0 if scanner.counts[OPEN] else 1


if __name__ == "__main__":          # pragma: no cover
    sys.exit(main())
