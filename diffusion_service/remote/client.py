"""Client of the guidance service: what the ServerApp calls instead of a local model.

:class:`RemoteGuidance` mirrors the in-process API:

- ``FeatureExtractor.raw(x, idx, ids)`` -> ``features(x, idx, recipe=...,
  class_names=..., prompt_ids=ids)``;
- ``FeatureExtractor.features(x, idx, ids, proj)`` -> the same with
  ``projection=proj``;
- ``extractor.prompt_ids(kind, idx, y)`` then one of the above ->
  ``features(..., kind=kind, labels=y)`` (the ids used come back too);
- ``text_anchors(extractor, d, seed)`` -> ``text_anchors(recipe, class_names)``;
- ``GuidanceModel.fingerprint``, ``latent_shape`` ... -> ``info()``.

Every failure raises :class:`GuidanceServiceError` carrying the gRPC status
code and the server's message. Calls have a deadline (``timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from torch import Tensor

from diffusion_service.projection import Projection
from diffusion_service.recipe import FeatureRecipe

from .auth import bearer, load_token
from .protocol import (
    ANCHORS,
    FEATURES,
    FEATURES_TENSOR,
    HEALTH,
    IMAGES,
    INDICES,
    INFO,
    LABELS,
    LATENTS,
    PROMPT_IDS,
    REGISTER_PROJECTION,
    PayloadError,
    decode_json,
    decode_tensors,
    encode_json,
    encode_tensors,
    method_path,
    projection_id,
)

DEFAULT_TIMEOUT = 60.0
# The client sends up to this much; the server's own limit is what applies.
CLIENT_MAX_MESSAGE = 1 << 30


class GuidanceServiceError(RuntimeError):
    """A call to the guidance service failed.

    Attributes: ``code`` (``grpc.StatusCode``), ``details`` (the server's or
    gRPC's message), ``method`` (the RPC name).
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:  # noqa: D107
        self.method, self.code, self.details = method, code, details
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = (
                " (is the service up, and does the client's TLS setting, CA and "
                "server name match the server's certificate?)"
            )
        super().__init__(f"{method} failed: {code.name}: {details}{hint}")


@dataclass(frozen=True)
class RemoteFeatures:
    """Features of one request, with the prompt ids they were computed under.

    ``features`` is (N, S, r) raw or (N, S, d) projected, float32;
    ``prompt_ids`` is (N, S); ``batch_samples`` / ``batch_requests`` say how
    large the server's merged micro-batch was.
    """

    features: Tensor
    prompt_ids: Tensor
    batch_samples: int
    batch_requests: int


class RemoteGuidance:
    """A connection to one guidance service.

    Parameters
    ----------
    address : str
        ``host:port`` of the service.
    root_ca : path or None
        PEM of the CA that signed the server certificate (required with TLS).
    token, token_file : str or path
        The bearer token, or a file holding it (one of them).
    timeout : float
        Deadline of every call, in seconds.
    insecure : bool
        Plain-text channel (tests against an ``--insecure`` loopback server).
    server_name : str or None
        TLS name to verify when ``address`` is not a name in the certificate.
    """

    def __init__(
        self,
        address: str,
        *,
        root_ca: str | Path | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        insecure: bool = False,
        server_name: str | None = None,
    ) -> None:  # noqa: D107
        if (token is None) == (token_file is None):
            raise ValueError("give exactly one of token= or token_file=")
        self._metadata = bearer(token if token is not None else load_token(token_file))
        self.address, self.timeout = address, timeout
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
            ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
        ]
        if insecure:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if root_ca is None:
                raise ValueError(
                    "TLS needs root_ca= (the CA certificate that signed the "
                    "server's); insecure=True is for loopback tests only"
                )
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(root_ca).read_bytes()
            )
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(address, creds, options=options)
        self._projection_ids: dict[int, tuple[Projection, str]] = {}

    # ------------------------------------------------------------- plumbing
    def _call(self, method: str, payload: bytes, timeout: float | None) -> bytes:
        stub = self._channel.unary_unary(method_path(method))
        try:
            return stub(
                payload,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise GuidanceServiceError(
                method, exc.code(), exc.details() or ""
            ) from None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> RemoteGuidance:  # noqa: D105
        return self

    def __exit__(self, *exc: object) -> None:  # noqa: D105
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (TLS handshake included)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise GuidanceServiceError(
                "connect",
                grpc.StatusCode.UNAVAILABLE,
                f"no connection to {self.address} within {timeout} s",
            ) from None

    # ------------------------------------------------------------------ RPCs
    def health(self, timeout: float | None = None) -> str:
        """``"SERVING"`` or ``"NOT_SERVING"``."""
        return decode_json(self._call(HEALTH, b"", timeout))["status"]

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        """Model fingerprint and geometry, accepted inputs, limits, batch stats."""
        return decode_json(self._call(INFO, b"", timeout))

    def register_projection(
        self, projection: Projection, timeout: float | None = None
    ) -> str:
        """Send a fitted projection once; returns its id (a content hash)."""
        payload = encode_tensors(
            {
                "mean": projection.mean.float(),
                "components": projection.components.float(),
                "rank": torch.tensor([projection.rank], dtype=torch.int64),
            },
            {},
        )
        pid = decode_json(self._call(REGISTER_PROJECTION, payload, timeout))[
            "projection_id"
        ]
        self._projection_ids[id(projection)] = (projection, pid)
        return pid

    def features(
        self,
        images: Tensor | None = None,
        indices=None,
        *,
        recipe: FeatureRecipe,
        class_names,
        latents: Tensor | None = None,
        prompt_ids: Tensor | None = None,
        kind: str | None = None,
        labels: Tensor | None = None,
        projection: Projection | None = None,
        timeout: float | None = None,
    ) -> RemoteFeatures:
        """Raw (no ``projection``) or projected features of a batch.

        Inputs: ``images`` uint8 (N, H, W) / (N, C, H, W), or ``latents``
        (VAE posterior means, see
        :func:`~diffusion_service.vae_io.encode_posterior_mean`);
        ``indices`` (N,) seed each sample's noise. Prompts: ``prompt_ids``
        (N, S), or ``kind`` ("noise", "cond", "neutral") with ``labels``.
        A ``projection`` is registered on first use (and again if the server
        lost it), then applied on the server.
        """
        tensors: dict[str, Tensor] = {}
        if images is not None:
            tensors[IMAGES] = torch.as_tensor(images)
        if latents is not None:
            tensors[LATENTS] = torch.as_tensor(latents)
        if indices is not None:
            tensors[INDICES] = torch.as_tensor(indices, dtype=torch.int64)
        if prompt_ids is not None:
            tensors[PROMPT_IDS] = torch.as_tensor(prompt_ids)
        if labels is not None:
            tensors[LABELS] = torch.as_tensor(labels)
        fields: dict[str, Any] = {
            "recipe": recipe.to_dict(),
            "class_names": list(class_names),
            "kind": kind,
            "projection_id": None,
        }
        if projection is not None:
            known = self._projection_ids.get(id(projection))
            fields["projection_id"] = (
                known[1]
                if known and known[0] is projection
                else self.register_projection(projection, timeout)
            )
        try:
            reply = self._call(FEATURES, encode_tensors(tensors, fields), timeout)
        except GuidanceServiceError as exc:
            if projection is None or exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            fields["projection_id"] = self.register_projection(projection, timeout)
            reply = self._call(FEATURES, encode_tensors(tensors, fields), timeout)
        try:
            out, meta = decode_tensors(reply, "Features response")
        except PayloadError as exc:
            raise GuidanceServiceError(
                FEATURES, grpc.StatusCode.INTERNAL, f"bad response: {exc}"
            ) from None
        return RemoteFeatures(
            features=out[FEATURES_TENSOR],
            prompt_ids=out[PROMPT_IDS],
            batch_samples=int(meta.get("batch_samples", 0)),
            batch_requests=int(meta.get("batch_requests", 0)),
        )

    def text_anchors(
        self, recipe: FeatureRecipe, class_names, timeout: float | None = None
    ) -> Tensor:
        """(C, d) text anchors (d and the map's seed from ``recipe``)."""
        payload = encode_json(
            {"recipe": recipe.to_dict(), "class_names": list(class_names)}
        )
        out, _ = decode_tensors(
            self._call(ANCHORS, payload, timeout), "Anchors response"
        )
        return out["text"]


__all__ = [
    "GuidanceServiceError",
    "RemoteFeatures",
    "RemoteGuidance",
    "projection_id",
]
