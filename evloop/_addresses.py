"""Socket addresses as evloop shows them: shared by channel.py and sockets.py.

A module of its own (private to the package) so that neither of the two
reaches into the other's private names.
"""

from __future__ import annotations

from typing import Any


def shown(addr: Any) -> tuple[str, int] | str:
    """A socket address as (host, port), IPv4-mapped IPv6 shown as IPv4,
    or the path of a Unix socket."""
    if isinstance(addr, (str, bytes)):
        return addr.decode() if isinstance(addr, bytes) else addr
    return host_port(addr)


def host_port(addr: tuple) -> tuple[str, int]:
    """An IPv4 or IPv6 socket address as (host, port), IPv4-mapped IPv6
    shown as IPv4."""
    if len(addr) == 2:
        return addr                 # IPv4: (host, port) as it is
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port
