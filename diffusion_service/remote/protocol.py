"""Wire contract of the guidance service: RPC names, metadata keys, payload codec.

No ``.proto`` and no generated code: every RPC is unary-unary over raw bytes
(``grpc.unary_unary_rpc_method_handler`` with identity serializers), and this
module is the one place both sides agree on what the bytes mean.

Payloads are either

- **JSON** (UTF-8): Health, Info, and the Anchors request; or
- **a safetensors blob** (https://github.com/huggingface/safetensors): tensors
  plus a string-to-string ``__metadata__`` header whose single key ``json``
  holds the non-tensor fields as JSON. safetensors is already a dependency,
  has a strict, documented format (8-byte little-endian header length, JSON
  header, raw little-endian bytes) and is parsed by a Rust reader that rejects
  truncated or overlapping buffers, so untrusted bytes never reach pickle.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

from diffusion_service.projection import Projection
from diffusion_service.recipe import array_digest

PROTOCOL_VERSION = 1
SERVICE = "semanticfl.guidance.v1.DiffusionGuidance"

# RPC method names (full path: /<SERVICE>/<name>).
HEALTH = "Health"
INFO = "Info"
FEATURES = "Features"
ANCHORS = "Anchors"
REGISTER_PROJECTION = "RegisterProjection"
METHODS = (HEALTH, INFO, FEATURES, ANCHORS, REGISTER_PROJECTION)

# Call metadata carrying the bearer token (gRPC metadata keys are lower case).
AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "

# Health answers.
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"

# Tensor names of a Features request / response.
IMAGES = "images"
LATENTS = "latents"
INDICES = "indices"
LABELS = "labels"
PROMPT_IDS = "prompt_ids"
FEATURES_TENSOR = "features"
REQUEST_TENSORS = (IMAGES, LATENTS, INDICES, LABELS, PROMPT_IDS)

# Tensor names of a projection (what Projection.save writes).
PROJECTION_TENSORS = ("mean", "components", "rank")

_META_KEY = "json"
_HEADER_LEN = struct.Struct("<Q")


class PayloadError(ValueError):
    """Bytes that are not a valid payload of this protocol."""


def method_path(name: str) -> str:
    """The gRPC path of an RPC, e.g. ``/semanticfl.guidance.v1...../Features``."""
    return f"/{SERVICE}/{name}"


def encode_json(obj: Any) -> bytes:
    """A JSON payload."""
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def decode_json(data: bytes, what: str = "payload") -> dict[str, Any]:
    """Parse a JSON object payload; :class:`PayloadError` says what is wrong."""
    if not data:
        return {}
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{what} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def encode_tensors(tensors: dict[str, Tensor], fields: dict[str, Any]) -> bytes:
    """A safetensors blob of ``tensors`` (made contiguous, on the CPU) + ``fields``."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return _st_save(plain, metadata={_META_KEY: json.dumps(fields, sort_keys=True)})


def decode_tensors(
    data: bytes, what: str = "payload"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Inverse of :func:`encode_tensors`; :class:`PayloadError` on bad bytes."""
    if len(data) < _HEADER_LEN.size:
        raise PayloadError(
            f"{what} is {len(data)} bytes: too short for a safetensors blob"
        )
    (n,) = _HEADER_LEN.unpack_from(data)
    if n > len(data) - _HEADER_LEN.size:
        raise PayloadError(
            f"{what} is not a safetensors blob: header length {n} exceeds the "
            f"{len(data)} bytes received"
        )
    try:
        header = json.loads(data[_HEADER_LEN.size : _HEADER_LEN.size + n])
        tensors = _st_load(bytes(data))
    except Exception as exc:  # SafetensorError, JSON errors: all mean bad bytes
        raise PayloadError(f"{what} is not a valid safetensors blob: {exc}") from exc
    meta = header.get("__metadata__") or {}
    fields = decode_json(meta.get(_META_KEY, "").encode("utf-8"), f"{what} fields")
    return tensors, fields


def tensor_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Size in bytes of a tensor of this shape and dtype."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def projection_id(projection: Projection) -> str:
    """Content address of a projection: the same on client and server."""
    return array_digest(
        projection.mean.float(),
        projection.components.float(),
        torch.tensor([projection.rank], dtype=torch.int64),
    )
