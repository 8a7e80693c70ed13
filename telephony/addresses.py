"""Peer addresses for a socket's family: an IPv6 socket (listen on [::]) reaches IPv4 peers as
v4-mapped addresses (::ffff:a.b.c.d), which SDP and Contact headers never carry."""

from __future__ import annotations

import ipaddress


def is_ip(host: str) -> bool:
    """An IP address literal (no brackets), as opposed to a name that needs resolving."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def for_v6_socket(addr: tuple[str, int]) -> tuple[str, int]:
    host = addr[0]
    return (f"::ffff:{host}", addr[1]) if ":" not in host else addr
