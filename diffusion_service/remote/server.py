"""The gRPC server: handlers, TLS, auth, batching and graceful shutdown.

Each RPC handler runs on a thread of a bounded pool (``threads``; gRPC's
``maximum_concurrent_rpcs`` is set to the same number, so calls beyond it are
refused with RESOURCE_EXHAUSTED instead of piling up in memory). A Features
handler decodes and validates its request, queues it on the
:class:`~.batcher.MicroBatcher` (full queue: RESOURCE_EXHAUSTED at once) and
blocks on its future; the single batching worker runs the model.

Error codes: INVALID_ARGUMENT (bad payload, shape, dtype, NaN/Inf, size, recipe),
NOT_FOUND (unregistered projection), RESOURCE_EXHAUSTED (queue or concurrency
limit, or a message over the byte limit), UNAUTHENTICATED (token),
UNAVAILABLE (shutting down), INTERNAL (a bug: logged with its traceback).

Shutdown (:meth:`GuidanceServer.stop`): health turns NOT_SERVING, new calls
are refused, in-flight calls get ``grace`` seconds to finish (the worker keeps
running for them), then the worker drains and stops.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from .auth import BearerTokenInterceptor
from .batcher import BatcherClosedError, MicroBatcher, QueueFullError
from .config import ServerConfig, ServerConfigError, split_address
from .engine import GuidanceEngine, ProjectionNotFoundError
from .protocol import (
    ANCHORS,
    FEATURES,
    FEATURES_TENSOR,
    HEALTH,
    INFO,
    NOT_SERVING,
    PROMPT_IDS,
    PROTOCOL_VERSION,
    REGISTER_PROJECTION,
    SERVICE,
    SERVING,
    PayloadError,
    decode_json,
    decode_tensors,
    encode_json,
    encode_tensors,
)
from .validation import (
    RequestError,
    parse_class_names,
    parse_features,
    parse_projection,
    parse_recipe,
)

log = logging.getLogger(__name__)


class GuidanceServer:
    """The guidance service on one address. ``start()``, then ``stop(grace)``."""

    def __init__(self, engine: GuidanceEngine, config: ServerConfig) -> None:  # noqa: D107
        self.engine, self.config = engine, config
        self.batcher = MicroBatcher(
            engine.run,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            max_wait=config.max_wait,
        )
        self._serving = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._health = None
        self.port: int | None = None
        self._model_info = engine.describe()  # fingerprint once, before serving
        limit = config.limits.max_message_bytes
        self._server = grpc.server(
            ThreadPoolExecutor(config.threads, thread_name_prefix="guidance-rpc"),
            interceptors=[BearerTokenInterceptor(config.token)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),  # never share a port with another server
            ],
            maximum_concurrent_rpcs=config.threads,
        )
        handlers = {
            HEALTH: self._health_rpc,
            INFO: self._info_rpc,
            FEATURES: self._features_rpc,
            ANCHORS: self._anchors_rpc,
            REGISTER_PROJECTION: self._register_projection_rpc,
        }
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        name: grpc.unary_unary_rpc_method_handler(_guarded(fn))
                        for name, fn in handlers.items()
                    },
                ),
            )
        )
        self._add_grpc_health()

    def _add_grpc_health(self) -> None:
        """Also answer the standard grpc.health.v1 service when it is installed."""
        try:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError:
            return
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self._health_pb2 = health_pb2
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ("", SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    # --------------------------------------------------------------- control
    def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        cfg = self.config
        try:
            if cfg.insecure:
                log.warning("serving WITHOUT TLS on %s (tests only)", cfg.address)
                port = self._server.add_insecure_port(cfg.address)
            else:
                creds = grpc.ssl_server_credentials([(cfg.key_pem, cfg.cert_pem)])
                port = self._server.add_secure_port(cfg.address, creds)
        except RuntimeError as exc:  # grpcio raises on a failed bind
            port, why = 0, f": {exc}"
        else:
            why = ""
        if not port:
            self.batcher.close(timeout=1.0)
            raise ServerConfigError(
                f"could not bind {cfg.address} (port in use, or no such "
                f"interface?){why}"
            )
        self.port = port
        self._server.start()
        self._serving = True
        if self._health is not None:
            for name in ("", SERVICE):
                self._health.set(name, self._health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "guidance service on %s:%d (%s, model %s..., max batch %d, queue %d)",
            split_address(cfg.address)[0],
            port,
            "insecure" if cfg.insecure else "TLS",
            self._model_info["fingerprint"][:12],
            cfg.max_batch,
            cfg.max_queue,
        )
        return port

    def stop(self, grace: float = 30.0) -> bool:
        """Refuse new calls, let in-flight ones finish within ``grace`` seconds.

        Returns True when every in-flight call finished in time.
        """
        self._serving = False
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        log.info(
            "shutting down: %d Features calls in flight, grace %.0f s",
            self.in_flight,
            grace,
        )
        done = self._server.stop(grace)
        clean = done.wait(grace + 5.0)
        clean = self.batcher.close(timeout=max(grace, 1.0)) and clean
        log.info("stopped%s", "" if clean else " (in-flight work was cut off)")
        return clean

    @property
    def in_flight(self) -> int:
        """Features calls being served right now."""
        with self._lock:
            return self._in_flight

    # -------------------------------------------------------------- handlers
    def _health_rpc(self, request: bytes, context) -> bytes:
        return encode_json({"status": SERVING if self._serving else NOT_SERVING})

    def _info_rpc(self, request: bytes, context) -> bytes:
        cfg = self.config
        return encode_json(
            {
                "protocol": PROTOCOL_VERSION,
                "service": SERVICE,
                "status": SERVING if self._serving else NOT_SERVING,
                "model": self._model_info,
                "limits": cfg.limits.to_dict(),
                "batching": {
                    "max_batch": cfg.max_batch,
                    "max_queue": cfg.max_queue,
                    "max_wait_ms": cfg.max_wait * 1000.0,
                    "threads": cfg.threads,
                },
                "accepts": {
                    "images": "uint8 (N, H, W) or (N, C, H, W), C = 1 or "
                    f"{self._model_info['image_channels']}, any side up to "
                    f"{cfg.limits.max_image_side} (resized to the recipe's resolution)",
                    "latents": "float32/float16 (N, c, h, w) VAE posterior means "
                    "(before scaling_factor), (c, h, w) = the recipe's latent shape, "
                    "finite",
                    "prompts": "kind (noise|cond|neutral) + labels, or prompt_ids",
                    "recipe": "FeatureRecipe.to_dict() keys; up_blocks in "
                    f"0..{self._model_info['num_up_blocks'] - 1}",
                },
                "stats": {
                    **self.batcher.stats.to_dict(),
                    "queued": self.batcher.qsize(),
                    "in_flight": self.in_flight,
                },
            }
        )

    def _features_rpc(self, request: bytes, context) -> bytes:
        with self._lock:
            self._in_flight += 1
        try:
            tensors, fields = decode_tensors(request, "Features request")
            job = parse_features(tensors, fields, self.engine, self.config.limits)
            result = self.batcher.submit(job.batch_key, job.size, job).result()
            return encode_tensors(
                {FEATURES_TENSOR: result.features, PROMPT_IDS: result.prompt_ids},
                {
                    "projected": job.projection is not None,
                    "batch_samples": result.batch_samples,
                    "batch_requests": result.batch_requests,
                },
            )
        finally:
            with self._lock:
                self._in_flight -= 1

    def _anchors_rpc(self, request: bytes, context) -> bytes:
        fields = decode_json(request, "Anchors request")
        limits = self.config.limits
        recipe = parse_recipe(fields.get("recipe"), self.engine, limits)
        names = parse_class_names(fields.get("class_names"), limits)
        try:
            text = self.engine.text_anchors(recipe, names)
        except ValueError as exc:
            raise RequestError(f"invalid recipe for this model: {exc}") from exc
        return encode_tensors({"text": text}, {"dim": recipe.dim})

    def _register_projection_rpc(self, request: bytes, context) -> bytes:
        tensors, _ = decode_tensors(request, "RegisterProjection request")
        projection = parse_projection(tensors, self.config.limits)
        return encode_json(
            {"projection_id": self.engine.register_projection(projection)}
        )


_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (PayloadError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ProjectionNotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BatcherClosedError, grpc.StatusCode.UNAVAILABLE),
)


def _status(exc: Exception, where: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a handler's exception maps to."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc.args[0] if exc.args else exc)
    log.exception("internal error in %s", where)
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}: {exc}); see the server log",
    )


def _guarded(fn: Callable[[bytes, Any], bytes]) -> Callable[[bytes, Any], bytes]:
    """Map the service's exceptions to status codes with their messages."""

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return fn(request, context)
        except Exception as exc:
            code, text = _status(exc, fn.__name__)
        context.abort(code, text)

    return handler


def serve_until_signal(server: GuidanceServer, grace: float) -> int:
    """Block until SIGTERM or SIGINT, then stop gracefully; returns exit code 0."""
    stop = threading.Event()

    def on_signal(signum: int, frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    server.stop(grace)
    return 0
