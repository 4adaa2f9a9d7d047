"""Bearer-token authentication: token files and the server interceptor.

Every RPC (ours and grpc.health.v1) must carry ``authorization: Bearer
<token>`` in its metadata. The interceptor compares it with
``hmac.compare_digest`` (constant time) before any handler runs, so an
unauthenticated caller never reaches request parsing or the model: it gets
UNAUTHENTICATED. TLS is what keeps the token secret on the wire.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import grpc

from .protocol import AUTH_METADATA_KEY, BEARER_PREFIX

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


class TokenFileError(ValueError):
    """A token file that is missing, empty, too short or malformed."""


def check_token(token: str, source: str = "token") -> str:
    """A token of at least :data:`MIN_TOKEN_CHARS` visible ASCII characters."""
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError(
            f"{source} has {len(token)} characters; a token needs at least "
            f"{MIN_TOKEN_CHARS} (deploy/make_certs.sh writes a 64-character one)"
        )
    if not all(33 <= ord(c) <= 126 for c in token):
        raise TokenFileError(
            f"{source} must be printable ASCII without spaces (e.g. hex)"
        )
    return token


def load_token(path: str | Path) -> str:
    """Read a token file (surrounding whitespace stripped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise TokenFileError(f"token file {p} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read token file {p}: {exc}") from exc
    mode = os.stat(p).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "token file %s is readable by others (mode %o): chmod 600 it",
            p,
            stat.S_IMODE(mode),
        )
    return check_token(text.strip(), f"token file {p}")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return ((AUTH_METADATA_KEY, BEARER_PREFIX + token),)


def _deny(handler: grpc.RpcMethodHandler | None, message: str):
    """A handler of the same streaming kind as ``handler`` that aborts."""

    def abort(request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    streaming = (
        (handler.request_streaming, handler.response_streaming)
        if handler is not None
        else (False, False)
    )
    make: Callable = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[streaming]
    return make(abort)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks the right bearer token."""

    def __init__(self, token: str) -> None:  # noqa: D107
        self._expected = (BEARER_PREFIX + check_token(token)).encode()

    def intercept_service(self, continuation, handler_call_details):  # noqa: D102
        given = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                given = value
        if given is None:
            message = (
                f"missing '{AUTH_METADATA_KEY}: {BEARER_PREFIX}<token>' metadata: "
                "this service needs the token the operator gave you"
            )
        elif isinstance(given, str) and hmac.compare_digest(
            given.encode(), self._expected
        ):
            return continuation(handler_call_details)
        else:
            message = "invalid bearer token"
        log.warning("refused %s: %s", handler_call_details.method, message)
        return _deny(continuation(handler_call_details), message)
