"""Server configuration: address, TLS material, token, batching and limits.

Checked when built, so a server that would run without TLS off loopback, or
with a nonsensical limit, never starts (the CLI turns these errors into
usage errors).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .validation import Limits

LOOPBACK_NAMES = ("localhost",)
# A DNS name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


class ServerConfigError(ValueError):
    """A server configuration that cannot work (e.g. insecure off loopback)."""


@dataclass(frozen=True)
class ServerConfig:
    """How one server listens, authenticates and batches.

    ``cert_pem``/``key_pem`` (the PEM bytes of --certfile/--keyfile) turn TLS
    on; ``insecure`` must be set explicitly to go without, and only on a
    loopback address. The token and key are kept out of ``repr`` (logs).
    """

    token: str = field(repr=False)
    address: str = "127.0.0.1:50051"
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    max_batch: int = 64
    max_queue: int = 256
    max_wait: float = 0.005
    threads: int = 64
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        host = split_address(self.address)[0]
        if self.insecure:
            if not is_loopback(host):
                raise ServerConfigError(
                    f"--insecure is only allowed on a loopback address (127.0.0.1, "
                    f"::1, localhost), got {host!r}: give --certfile and --keyfile"
                )
        elif not (self.cert_pem and self.key_pem):
            raise ServerConfigError(
                "TLS needs a certificate and its key (--certfile, --keyfile); "
                "--insecure is for loopback tests only"
            )
        if not self.max_wait >= 0:
            raise ServerConfigError(f"max_wait must be >= 0, got {self.max_wait}")
        for name in ("max_batch", "max_queue", "threads"):
            if getattr(self, name) < 1:
                raise ServerConfigError(
                    f"{name} must be >= 1, got {getattr(self, name)}"
                )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ServerConfigError(
            f"address must be host:port (e.g. 0.0.0.0:50051, [::1]:50051), got "
            f"{address!r}"
        )
    return host.strip("[]"), int(port)


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

    Stricter than :func:`split_address` (which also takes port 0 to bind any
    port): the port must lie in 1..65535, the host must be a DNS name or an IP
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
