"""Command line of the standalone guidance service.

    python -m diffusion_service.remote serve --model embedded \
        --address 0.0.0.0:50051 --certfile certs/server.pem \
        --keyfile certs/server.key --token-file certs/token
    python -m diffusion_service.remote health --address HOST:50051 \
        --ca certs/ca.crt --token-file certs/token

``serve`` runs until SIGTERM/SIGINT, then stops gracefully and exits 0.
``health`` exits 0 when the service answers SERVING (a container healthcheck).
Certificates and the token come from ``deploy/make_certs.sh``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..embedded_model import GuidanceModelMissingError, resolve_guidance_model
from .auth import TokenFileError, load_token
from .config import ServerConfigError, split_address
from .validation import Limits, MiB


class ModelNotFoundError(FileNotFoundError):
    """``--model`` names nothing loadable."""


def resolve_model(name: str) -> str:
    """``embedded`` -> the folder holding its weights (the ServerApp's lookup)."""
    try:
        return resolve_guidance_model(name)
    except GuidanceModelMissingError as exc:
        raise ModelNotFoundError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _readable(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path} is not a readable file")
    return path


def parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``serve`` and ``health``)."""
    ap = argparse.ArgumentParser(
        prog="python -m diffusion_service.remote",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve guidance features over gRPC (TLS + token)")
    s.add_argument(
        "--model", required=True, help="diffusers-layout folder, hub id, or 'embedded'"
    )
    s.add_argument("--address", default="0.0.0.0:50051", help="host:port to bind")
    s.add_argument("--certfile", type=_readable, help="server certificate (PEM)")
    s.add_argument("--keyfile", type=_readable, help="server private key (PEM)")
    s.add_argument(
        "--token-file",
        type=_readable,
        required=True,
        help="file holding the bearer token",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS; refused unless --address is loopback (tests only)",
    )
    s.add_argument(
        "--max-batch", type=_positive, default=64, help="samples merged per model call"
    )
    s.add_argument(
        "--max-queue", type=_positive, default=256, help="requests waiting at most"
    )
    s.add_argument(
        "--max-wait-ms",
        type=_nonneg_float,
        default=5.0,
        help="how long a request may wait for others to merge with",
    )
    s.add_argument(
        "--threads",
        type=_positive,
        default=64,
        help="RPC handler threads = concurrent calls accepted",
    )
    lim = Limits()
    s.add_argument(
        "--max-request-samples",
        type=_positive,
        default=lim.max_samples,
        help="samples per Features request",
    )
    s.add_argument(
        "--max-message-mb",
        type=_positive,
        default=lim.max_message_bytes // MiB,
        help="largest request/response message (MiB)",
    )
    s.add_argument(
        "--grace", type=_nonneg_float, default=30.0, help="shutdown grace (seconds)"
    )
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda:0")
    s.add_argument(
        "--torch-threads", type=_positive, default=None, help="torch intra-op threads"
    )
    h = sub.add_parser("health", help="exit 0 if a service answers SERVING")
    h.add_argument("--address", required=True, help="host:port of the service")
    h.add_argument("--ca", type=_readable, help="CA certificate (PEM) to trust")
    h.add_argument("--token-file", type=_readable, required=True)
    h.add_argument("--insecure", action="store_true", help="no TLS (tests only)")
    h.add_argument("--server-name", default=None, help="TLS name if not the host")
    h.add_argument("--timeout", type=_nonneg_float, default=5.0)
    return ap


def _serve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    if not args.insecure and not (args.certfile and args.keyfile):
        ap.error("TLS needs --certfile and --keyfile (or --insecure on loopback)")
    if args.insecure and (args.certfile or args.keyfile):
        ap.error("--insecure and --certfile/--keyfile exclude each other")
    try:
        split_address(args.address)
        token = load_token(args.token_file)
        model_path = resolve_model(args.model)
    except (ServerConfigError, TokenFileError, ModelNotFoundError) as exc:
        ap.error(str(exc))

    import torch

    from diffusion_service.model import GuidanceModel

    from .config import ServerConfig
    from .engine import GuidanceEngine
    from .server import GuidanceServer, serve_until_signal

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    limits = Limits(
        max_samples=args.max_request_samples,
        max_message_bytes=args.max_message_mb * MiB,
    )
    try:
        config = ServerConfig(
            token=token,
            address=args.address,
            cert_pem=args.certfile.read_bytes() if args.certfile else None,
            key_pem=args.keyfile.read_bytes() if args.keyfile else None,
            insecure=args.insecure,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            max_wait=args.max_wait_ms / 1000.0,
            threads=args.threads,
            limits=limits,
        )
    except ServerConfigError as exc:
        ap.error(str(exc))
    model = GuidanceModel.from_pretrained(model_path, device=args.device)
    server = GuidanceServer(GuidanceEngine(model), config)
    try:
        server.start()
    except ServerConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return serve_until_signal(server, args.grace)


def _health(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    from .client import GuidanceServiceError, RemoteGuidance

    if not args.insecure and not args.ca:
        ap.error("give --ca (the CA that signed the server certificate) or --insecure")
    try:
        with RemoteGuidance(
            args.address,
            root_ca=args.ca,
            token=load_token(args.token_file),
            insecure=args.insecure,
            server_name=args.server_name,
            timeout=args.timeout,
        ) as client:
            status = client.health()
    except (GuidanceServiceError, TokenFileError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m diffusion_service.remote``."""
    ap = parser()
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(args, ap)
    return _health(args, ap)
