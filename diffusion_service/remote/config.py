"""Server configuration: address, TLS material, token, batching and limits.

Checked when built, so a server that would run without TLS off loopback, or
with a nonsensical limit, never starts (the CLI turns these errors into
usage errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.addresses import is_loopback

from .validation import Limits


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
