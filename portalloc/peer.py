"""Who owns the other end of a local TCP connection: the kernel's word.

A port manager on a shared host hears ``GIMME app fox`` and must not take
"fox" on trust.  For a connection from this host the kernel knows the
process owner of *both* sockets, so the server can ask it who opened the
client's end:

*NETLINK_SOCK_DIAG* (``ss`` uses it).  A ``SOCK_DIAG_BY_FAMILY`` request
with a full ``inet_diag_req_v2`` -- family, protocol, and the socket's
exact four-tuple in ``inet_diag_sockid`` -- and without ``NLM_F_DUMP`` is an
exact lookup: the kernel finds that one socket (``inet_diag_find_one_icsk``)
and answers one ``inet_diag_msg`` whose ``idiag_uid`` is the uid that
created it, or an ``NLMSG_ERROR`` with ``ENOENT``.  The lookup treats the
``src`` of the id as the socket's *local* end, so we put the client's
address and port there and ours in ``dst``.  One request, one answer, both
inside the ``sendto``/``recv`` pair: some microseconds, however many
sockets the host has.  It needs no privilege.

*/proc/net/tcp and tcp6* work wherever netlink is refused (some
sandboxes): one line per socket with the local and remote address in hex
(each 32-bit word in host byte order) and the uid.  Reading them costs time
in proportion to the number of sockets, so they are the fallback only.

An IPv4 client of a dual-stack server is seen as ``::ffff:a.b.c.d``, but its
own socket is usually an AF_INET one: the lookup asks AF_INET first for a
mapped address and AF_INET6 (a dual-stack client socket) second.

Linux only; elsewhere `peer_uid` returns None.  For a Unix-domain socket
``SO_PEERCRED`` answers directly.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import struct
import sys

__all__ = ["peer_uid", "peer_uid_netlink", "peer_uid_proc"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF

# nlmsghdr: len, type, flags, seq, pid (native order)
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states (native), then
# inet_diag_sockid: sport, dport (network order), src[4], dst[4] (network
# order, IPv4 in the first word), if, cookie[2] (native).
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retrans; sockid (48 bytes);
# expires, rqueue, wqueue, uid, inode.
_UID_OFFSET = 4 + 48 + 12

# Errors that say "not now" rather than "never here".
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

_nl: socket.socket | None = None      # one netlink socket per process, kept
_nl_broken = False
_seq = 0


@functools.lru_cache(maxsize=4096)
def _packed(address: str, family: int) -> bytes:
    """The 16 bytes of an address in ``inet_diag_sockid`` (IPv4 in the first 4)."""
    return socket.inet_pton(family, address).ljust(16, b"\0")


def _ipv4_of(address: str) -> str | None:
    """The IPv4 address of ``a.b.c.d`` or ``::ffff:a.b.c.d``, else None.
    (String tests: ``ipaddress`` costs tens of microseconds a call.)"""
    if ":" not in address:
        return address
    if address[:7].lower() == "::ffff:" and "." in address:
        return address[7:]
    return None


@functools.lru_cache(maxsize=4096)
def _families(client: str, server: str) -> tuple[tuple[int, str, str], ...]:
    """The (family, client address, server address) to ask, in order."""
    client, server = client.split("%", 1)[0], server.split("%", 1)[0]
    c4, s4 = _ipv4_of(client), _ipv4_of(server)
    if c4 is not None and s4 is not None:
        return ((socket.AF_INET, c4, s4),
                (socket.AF_INET6, f"::ffff:{c4}", f"::ffff:{s4}"))
    if c4 is None and s4 is None:
        return ((socket.AF_INET6, client, server),)
    return ()


def open_netlink() -> None:
    """Open the process's netlink socket now, if it is not open yet.

    A server calls this at start, so that the descriptor it costs is taken
    before clients fill the descriptor table (a first lookup at the limit
    would fail with EMFILE).  Raises OSError when netlink is refused."""
    global _nl
    if _nl is None:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                           _NETLINK_SOCK_DIAG)
        nl.settimeout(1.0)          # the kernel answers inside sendto(); a bound anyway
        _nl = nl


def peer_uid_netlink(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket whose local end is ``client`` and whose
    peer is ``server``, by an exact NETLINK_SOCK_DIAG lookup; None when no
    such socket exists.  Raises OSError when netlink itself is refused."""
    global _seq
    open_netlink()
    assert _nl is not None
    for family, caddr, saddr in _families(client[0], server[0]):
        _seq = (_seq + 1) & 0xFFFFFFFF
        body = (_REQ.pack(family, socket.IPPROTO_TCP, 0, _ALL_STATES)
                + _SOCKID.pack(client[1], server[1], _packed(caddr, family),
                               _packed(saddr, family))
                + _SOCKID_TAIL.pack(0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE))
        _nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_REQUEST, _seq, 0) + body)
        while True:
            data = _nl.recv(8192)
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data)
            if seq == _seq:
                break               # (a late answer to an earlier request: skip it)
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
            if -code in (errno.ENOENT, 0):
                continue            # not in this family: try the next
            raise OSError(-code, os.strerror(-code))
        if kind == _SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _UID_OFFSET + 4:
            (uid,) = struct.unpack_from("=I", data, _NLMSGHDR.size + _UID_OFFSET)
            return int(uid)
    return None


def _proc_address(text: str, v6: bool) -> str:
    """An address of /proc/net/tcp{,6}: hex, each 32-bit word in host order."""
    raw = bytes.fromhex(text)
    words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    if sys.byteorder == "little":
        words = [w[::-1] for w in words]
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, b"".join(words))


def peer_uid_proc(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """As `peer_uid_netlink`, from /proc/net/tcp and /proc/net/tcp6."""
    for family, caddr, saddr in _families(client[0], server[0]):
        v6 = family == socket.AF_INET6
        want_local = (ipaddress.ip_address(caddr), client[1])
        want_remote = (ipaddress.ip_address(saddr), server[1])
        try:
            f = open("/proc/net/tcp6" if v6 else "/proc/net/tcp", encoding="ascii")
        except OSError:
            continue
        with f:
            next(f, None)                           # the header
            for line in f:
                fields = line.split()
                if len(fields) < 8:
                    continue
                local, remote = fields[1].split(":"), fields[2].split(":")
                if int(local[1], 16) != want_local[1] or int(remote[1], 16) != want_remote[1]:
                    continue
                if (ipaddress.ip_address(_proc_address(local[0], v6)) == want_local[0]
                        and ipaddress.ip_address(_proc_address(remote[0], v6)) == want_remote[0]):
                    return int(fields[7])
    return None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid that owns the other end of ``sock``, a connection accepted
    from this host; None when the kernel does not know (the peer is on
    another host, already gone, or this is not Linux).  Never raises."""
    global _nl_broken
    try:
        if sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return int(struct.unpack("3i", creds)[1])
        server = sock.getsockname()[:2]
        client = sock.getpeername()[:2]
    except (OSError, AttributeError):
        return None
    try:
        if not _nl_broken and sys.platform.startswith("linux"):
            try:
                return peer_uid_netlink(client, server)
            except OSError as exc:
                if exc.errno not in _SHORTAGES:
                    _nl_broken = True   # refused here: /proc from now on
        return peer_uid_proc(client, server)
    except (OSError, ValueError):
        return None
