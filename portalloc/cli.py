"""``portalloc``: list, find and allocate ports of a port manager.

Usage::

    portalloc list [HOST] [USER-PATTERN] [--json]
    portalloc find SERVICE [--user USER] [--json]
    portalloc allocate APPLICATION [--] COMMAND [ARG...]
    portalloc --version

Every subcommand also takes ``--host HOST[:PORT]``, ``--port PORT`` and
``--timeout SECONDS``.  Without ``--port`` the manager is found as
`portalloc.client.PortAllocator` finds it: the first line of
``$PORTALLOC_PORTFILE``, ``/var/tmp/daqportmgr/listen.port`` or
``~/.daqportmgr/listen.port`` (each only if owned by root or you and
writable by no one else), else 30000.  ``--timeout`` is a deadline for the
whole request, however slowly a manager answers.

``list`` and ``find`` take ``--host`` more than once (``[v6addr]:PORT`` for
an IPv6 address with a port) and ask all those managers at once, each
within its own timeout.  A manager that can't be reached is reported on
stderr and the others are still printed (exit status 3).  With several
hosts, ``list`` prints the host as a first column and ``find`` prints
``HOST PORT`` for each host where the service runs; ``--json`` objects
always carry ``host``.

``list`` is NSCLDAQ's ``lsservices``: the allocations of the manager on HOST
(default localhost) whose user matches the glob USER-PATTERN (default
``*``).  It prints one line per allocation, ``PORT APPLICATION USER``; each
line is a Tcl list, as on the wire, so a name with spaces comes out braced
(``30001 {my app} fox``) and a line splits back into three fields with
``lindex`` or `portalloc.protocol.parse_list`.  Columns are padded to line
up, which keeps every line a valid Tcl list.  A header line is printed only
when stdout is a terminal.  ``--json`` prints one JSON list of objects with
``port``, ``application`` and ``user``.

``find`` prints the port of SERVICE run by USER (default: you); with
``--json`` an object with ``port``, ``application`` and ``user``.

``allocate`` asks the manager on this host for a port for APPLICATION, then
runs COMMAND with the port in the environment variable ``PORT`` and every
``{port}`` in its arguments replaced by the number.  The port stays
allocated until COMMAND exits.  If ``portalloc`` itself dies, even by
SIGKILL, the kernel kills COMMAND too (Linux ``PR_SET_PDEATHSIG``), since
the manager takes the port back the moment ``portalloc`` is gone.  SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to
``portalloc`` are passed on to COMMAND (a Ctrl-C typed at the terminal
already reaches COMMAND, and is not sent twice).  When no port can be had
the manager's reason is printed and COMMAND is not run.

Exit status:
  0    success
  1    find: no such service; allocate: the manager gave no port
  2    bad usage
  3    the port manager could not be reached, did not answer in time, or
       answered something unexpected
  4    an internal error (a bug: please report it)
  allocate otherwise exits with COMMAND's status: 128+N if a signal N
  killed it, 126 if it could not be run, 127 if it was not found.

Errors are one line on stderr, prefixed ``portalloc:``.
"""

from __future__ import annotations

import argparse
import ctypes
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .client import (
    Allocation,
    AsyncPortAllocator,
    PortAllocationError,
    PortAllocator,
    PortManagerError,
    default_port,
    login_user,
)
from .protocol import format_list

__all__ = ["main", "EXIT_OK", "EXIT_NOT_FOUND", "EXIT_USAGE", "EXIT_UNREACHABLE",
           "EXIT_INTERNAL"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERNAL = 4

_PROG = "portalloc"
# Signals passed on to COMMAND by `allocate`.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# si_code of a signal the kernel sent itself (the terminal's Ctrl-C, a
# hang-up): it went to the whole foreground process group, COMMAND included.
_SI_KERNEL = 0x80

_EPILOG = """\
exit status: 0 ok; 1 not found (find) or no port (allocate); 2 bad usage;
3 port manager unreachable or not answering; 4 internal error.  allocate
otherwise exits with COMMAND's status (128+N if killed by signal N, 126/127
if it can't be run).
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) instead of a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return port


def _host_arg(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[V6ADDR]:PORT``, ``[V6ADDR]`` or a bare
    ``V6ADDR`` (more than one colon: no port)."""
    host, port = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"bad host {text!r}: expected [ADDRESS]:PORT")
        if rest:
            port = _port_arg(rest[1:])
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port_arg(rest)
    if not host:
        raise argparse.ArgumentTypeError(f"bad host {text!r}")
    return host, port


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _parser(command_split: bool = False) -> _Parser:
    """The argument parser; ``command_split``: allocate's COMMAND was cut
    off at "--" already, so options may follow APPLICATION."""
    common = _Parser(add_help=False)
    common.add_argument("--host", dest="hosts", action="append", type=_host_arg,
                        metavar="HOST[:PORT]",
                        help="host of the port manager (default: localhost); list and find "
                        "take it more than once and ask every host at once")
    common.add_argument("--port", type=_port_arg,
                        help="port of the port manager (default: the first line of "
                        "$PORTALLOC_PORTFILE, /var/tmp/daqportmgr/listen.port or "
                        "~/.daqportmgr/listen.port, else 30000)")
    common.add_argument("--timeout", type=_timeout_arg, default=10.0, metavar="SECONDS",
                        help="deadline for each request, whole reply included (default: 10)")

    parser = _Parser(prog=_PROG, description="List, find and allocate ports of an "
                     "NSCLDAQ-compatible port manager.", epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", parents=[common], epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="list the allocated ports (like lsservices)",
                       description="Print one line per allocation: PORT APPLICATION USER.\n"
                       "Each line is a Tcl list (names that need it are quoted); a header\n"
                       "line is printed only on a terminal.")
    p.add_argument("hostname", nargs="?", metavar="HOST",
                   help="host whose port manager to ask (same as --host)")
    p.add_argument("user_pattern", nargs="?", default="*", metavar="USER-PATTERN",
                   help="glob the user must match (default: *)")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")

    p = sub.add_parser("find", parents=[common], epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="print the port of a service",
                       description="Print the port of SERVICE run by USER; exit 1 if none.\n"
                       "A user holding several ports under one name has them listed as\n"
                       "SERVICE, SERVICE_1, ...: this prints the first.")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--user", help="user running the service (default: you)")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = sub.add_parser("allocate", parents=[common], epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="allocate a port and run a command that holds it",
                       usage=f"{_PROG} allocate [options] APPLICATION [--] COMMAND [ARG...]",
                       description="Allocate a port for APPLICATION and run COMMAND with it in "
                       "$PORT and in\nplace of {port} in its arguments.  The port is held until "
                       "COMMAND exits,\nand portalloc exits with its status; signals sent to "
                       "portalloc are passed\non to COMMAND, and if portalloc dies (even by "
                       "SIGKILL) COMMAND is killed.")
    p.add_argument("application", metavar="APPLICATION",
                   help="the name to register the port under")
    if command_split:
        p.set_defaults(argv=[])
    else:
        p.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND",
                       help="the command to run, and its arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``portalloc`` command line; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if args_in[:1] == ["allocate"] and "--" in args_in:
        # Options may come on either side of APPLICATION; COMMAND is
        # everything after the first "--", untouched.
        cut = args_in.index("--")
        args_in, command = args_in[:cut], args_in[cut + 1:]
    try:
        args = _parser(command is not None).parse_args(args_in)
        if command is not None:
            args.argv = command
        if args.command == "list":
            return _list(args)
        if args.command == "find":
            return _find(args)
        return _allocate(args)
    except _UsageError as exc:
        return _fail(EXIT_USAGE, f"error: {exc}")
    except PortAllocationError as exc:
        return _fail(EXIT_NOT_FOUND, str(exc))
    except PortManagerError as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    except ValueError as exc:             # a name the protocol can't carry
        return _fail(EXIT_USAGE, f"error: {exc}")
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # `portalloc list | head`: the reader left; say nothing more.
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:            # a bug; still one line, no traceback
        return _fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def _fail(status: int, message: str) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return status


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _targets(args: argparse.Namespace, positional: str | None = None) -> list[tuple[str, str, int]]:
    """(label, host, port) of every manager to ask, in the order given."""
    hosts = list(args.hosts or [])
    if positional:
        if hosts and [h for h, _ in hosts] != [positional]:
            raise _UsageError("give the host once: as HOST or as --host")
        hosts = hosts or [(positional, None)]
    if not hosts:
        hosts = [("localhost", None)]
    fallback = args.port if args.port is not None else None
    out = []
    for host, port in hosts:
        if port is None:
            port = fallback if fallback is not None else default_port()
            label = host
        else:
            label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out.append((label, host, port))
    return out


def _allocator(args: argparse.Namespace) -> PortAllocator:
    if args.hosts and len(args.hosts) > 1:
        raise _UsageError("allocate takes one --host")
    (_, host, port), = _targets(args)
    return PortAllocator(host, port, timeout=args.timeout)


def _ask_all(args: argparse.Namespace, targets: list[tuple[str, str, int]]
             ) -> list[tuple[str, list[Allocation] | None]]:
    """LIST every target at once on one evloop loop; (label, allocations or
    None for a manager that failed, which is reported on stderr)."""
    import evloop
    loop = evloop.Loop()
    results: dict[int, tuple[Any, BaseException | None]] = {}
    done = evloop.Var()
    allocators = []
    try:
        for i, (_, host, port) in enumerate(targets):
            pa = AsyncPortAllocator(host, port, loop, timeout=args.timeout)
            allocators.append(pa)

            def store(result: Any, error: BaseException | None, i: int = i) -> None:
                results[i] = (result, error)
                done.set(len(results))

            try:
                pa.list_ports(store)
            except OSError as exc:
                results[i] = (None, exc)
        # Each request has its own deadline; this one only guards the loop.
        guard = loop.after((args.timeout + 5) * 1000, done.set, "guard")
        while len(results) < len(targets) and done.get() != "guard":
            loop.vwait(done)
        loop.after_cancel(guard)
    finally:
        for pa in allocators:
            pa.release()
        loop.close()
    out: list[tuple[str, list[Allocation] | None]] = []
    for i, (label, _, _) in enumerate(targets):
        result, error = results.get(i, (None, PortManagerError(
            f"port manager at {label} did not answer")))
        if error is not None:
            print(f"{_PROG}: {error}", file=sys.stderr)
            out.append((label, None))
        else:
            out.append((label, result))
    return out


def _as_dict(a: Allocation, host: str) -> dict[str, object]:
    return {"host": host, "port": a.port, "application": a.application, "user": a.user}


def _list(args: argparse.Namespace) -> int:
    targets = _targets(args, args.hostname)
    answers = _ask_all(args, targets)
    rows: list[tuple[str, Allocation]] = [
        (label, a) for label, allocations in answers for a in allocations or []
        if fnmatch.fnmatchcase(a.user, args.user_pattern)]
    status = EXIT_UNREACHABLE if any(a is None for _, a in answers) else EXIT_OK
    if args.json:
        print(json.dumps([_as_dict(a, label) for label, a in rows]))
        return status
    several = len(targets) > 1
    lines = [([_element(label)] if several else []) + _fields(a) for label, a in rows]
    if sys.stdout.isatty() and lines:
        lines.insert(0, (["HOST"] if several else []) + ["PORT", "APPLICATION", "USER"])
    if lines:
        widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]) - 1)]
        for r in lines:
            print("  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths)) + "  " + r[-1])
    sys.stdout.flush()
    return status


def _fields(a: Allocation) -> list[str]:
    """The three fields of an allocation, each quoted as a Tcl list element."""
    return [str(a.port), _element(a.application), _element(a.user)]


# Tcl's backslash form of an element, for names braces would leave on two
# lines, and for lone surrogates, which no strict encoding can print.
_BACKSLASHED = str.maketrans({
    **{c: "\\" + c for c in '[]$; \\"{}'},
    "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f", "\v": "\\v",
    **{chr(u): f"\\u{u:04X}" for u in range(0xD800, 0xE000)},
})
_NEEDS_BACKSLASHES = re.compile("[\n\r\ud800-\udfff]")


def _element(name: str) -> str:
    """``name`` quoted as a list element that fits on one line."""
    if _NEEDS_BACKSLASHES.search(name):
        return name.translate(_BACKSLASHED)
    # Quoted as a second element: a leading '#' is braced only in the first.
    return format_list(["", name])[3:]


def _find(args: argparse.Namespace) -> int:
    user = args.user if args.user is not None else login_user()
    targets = _targets(args)
    answers = _ask_all(args, targets)
    found = False
    for label, allocations in answers:
        for a in allocations or []:
            if a.application == args.service and a.user == user:
                found = True
                if args.json:
                    print(json.dumps(_as_dict(a, label)))
                else:
                    print(f"{_element(label)} {a.port}" if len(targets) > 1 else a.port)
                break
    if found:
        return EXIT_OK
    if any(a is None for _, a in answers):
        return EXIT_UNREACHABLE
    where = ", ".join(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
                      for _, host, port in targets)
    return _fail(EXIT_NOT_FOUND, f"no service {args.service!r} run by {user!r} at {where}")


def _allocate(args: argparse.Namespace) -> int:
    command = list(args.argv)
    if not command:
        raise _UsageError("allocate needs a COMMAND to run")
    allocator = _allocator(args)
    port = allocator.allocate_port(args.application)
    try:
        return _run_holding(port, command)
    finally:
        allocator.release()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when this process dies
    (``prctl(PR_SET_PDEATHSIG)``, Linux), or None where there is none.

    ``prctl`` is looked up here, before the fork, so the child only calls
    it.  If we died between fork and prctl the child has a new parent
    already; it checks and kills itself, as no signal would come.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _run_holding(port: int, command: list[str]) -> int:
    """Run ``command`` with ``port`` in it; pass signals on; its status."""
    argv = [arg.replace("{port}", str(port)) for arg in command]
    env = dict(os.environ, PORT=str(port))
    # Signals that come before the child is started are remembered by these
    # handlers and passed on once it is; after that they are taken with
    # sigwaitinfo, which tells who sent them.
    early: list[int] = []
    old_handlers = {sig: signal.signal(sig, lambda s, _f: early.append(s)) for sig in _FORWARDED}
    watched = {*_FORWARDED, signal.SIGCHLD}
    try:
        try:
            child = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent())
        except FileNotFoundError:
            return _fail(127, f"{argv[0]}: command not found")
        except OSError as exc:
            return _fail(126, f"{argv[0]}: {exc.strerror or exc}")
        # Blocked after the child exists, so that it starts unblocked; a
        # blocked SIGCHLD stays pending even though its action is "ignore".
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        try:
            passed_on = 0
            while child.poll() is None:
                # (A Python-level handler may run a moment after the block.)
                for sig in early[passed_on:]:
                    _send(child, sig)
                passed_on = len(early)
                info = signal.sigtimedwait(watched, 1.0)
                if info is None or info.si_signo == signal.SIGCHLD:
                    continue
                if info.si_code != _SI_KERNEL:
                    _send(child, info.si_signo)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    status = child.returncode
    return 128 - status if status < 0 else status


def _send(child: subprocess.Popen, sig: int) -> None:
    try:
        child.send_signal(sig)
    except ProcessLookupError:
        pass
