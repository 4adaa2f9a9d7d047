"""Network addresses in config: ``host:port`` parsing and loopback checks.

Here, not in the gRPC service's package, because the run config checks a
``guidance-service`` address on every side (clients too) without loading gRPC.
"""

from __future__ import annotations

import ipaddress
import re

LOOPBACK_NAMES = ("localhost",)
# A DNS name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_service_address(address: str) -> tuple[str, int]:
    """Where a client connects: ``host:port`` -> (host, port), strictly.

    The port must lie in 1..65535, the host must be a DNS name or an IP
    address, and an IPv6 address needs brackets (``[::1]:50051``), since
    ``::1:50051`` could mean two things. No scheme (``https://``): gRPC
    addresses are bare. Raises ``ValueError`` saying what is valid.
    """
    raw_host, _, port = address.rpartition(":")
    bracketed = raw_host.startswith("[") and raw_host.endswith("]")
    host = raw_host[1:-1] if bracketed else raw_host
    digits = port.isascii() and port.isdigit()
    if not (digits and 1 <= int(port) <= 65535 and _valid_host(host, bracketed)):
        raise ValueError(
            f"address {address!r} is invalid; expected host:port with a port in "
            "1..65535, e.g. gpu-host:50051, 10.0.0.5:50051 or [::1]:50051"
        )
    return host, int(port)


def _valid_host(host: str, bracketed: bool) -> bool:
    """A DNS name or IPv4 address unbracketed, an IPv6 address in brackets."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return not bracketed and _HOSTNAME.fullmatch(host) is not None
    return version == (6 if bracketed else 4)
