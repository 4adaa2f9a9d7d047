"""The diffusion guidance service over gRPC, for a ServerApp on another host.

The Flower ServerApp (and only it; clients talk to the SuperLink alone, see
``docs/architecture.md``) may run the frozen diffusion model on a GPU host instead
of in its own process. This package is that host's server and the ServerApp's
client. It imports no Flower.

RPCs (service ``semanticfl.guidance.v1.DiffusionGuidance``, all unary, no
protoc: raw-bytes handlers, see :mod:`.protocol`):

- ``Health``: ``{"status": "SERVING" | "NOT_SERVING"}``; the standard
  ``grpc.health.v1.Health`` is registered too when grpcio-health-checking is
  installed.
- ``Info``: model fingerprint and geometry (resolution, latent shape, up
  blocks), what inputs and recipes are accepted, limits, batching counters.
- ``Features``: a batch of images (uint8) or VAE posterior means (float16/32)
  + per-sample indices (noise seeds) + prompts (``kind`` + labels, or
  ``prompt_ids``) + the :class:`~diffusion_service.FeatureRecipe` + class
  names, and optionally a ``projection_id``. Returns the features and the
  prompt ids used.
- ``RegisterProjection``: stores a fitted :class:`~diffusion_service.Projection`
  and returns its id (SHA-256 of its tensors).
- ``Anchors``: text anchors (C, d) for a list of class names, exactly
  :func:`diffusion_service.text_anchors`.

**Why raw features plus registered projections.** The PCA projection is
fitted once, by whoever owns the store, on the public split's raw features
(``docs/guidance-features.md``). So the service returns raw features (N, S, r) by
default: the ServerApp fits its projection from them and keeps it with its
store. Later requests may name that projection (registered once, a few
hundred KB, instead of riding in every request) to get projected, unit-length
(N, S, d) features: the projection then runs inside
``FeatureExtractor.features`` exactly as in process, micro-batch by
micro-batch, so remote and local features are the same bits. The server keeps
a small LRU of projections; a request naming an evicted one gets NOT_FOUND and
:class:`RemoteGuidance` registers it again by itself.

**Same features as in process.** The server calls the real
:class:`~diffusion_service.FeatureExtractor` (cached per recipe and class list);
latent inputs go through :class:`~diffusion_service.LatentFeatureExtractor`,
which only swaps the VAE for a pass-through. Every model call is padded to
``recipe.micro_batch`` rows, so merging requests does not change a sample's
bits.

**Batching** (:mod:`.batcher`): one worker thread merges queued requests with
the same batch key up to ``max_batch`` samples, waiting at most ``max_wait``
for the oldest, runs one extractor call and splits the result. The queue is
bounded (``max_queue``): when full, RESOURCE_EXHAUSTED at once.

**Security** (:mod:`.auth`, :mod:`.server`): TLS (server certificate and key)
is required; ``--insecure`` is accepted only on a loopback address. Every call
needs ``authorization: Bearer <token>`` (``hmac.compare_digest`` in a server
interceptor; otherwise UNAUTHENTICATED). Requests are validated before they
are queued: size (samples per request; bytes per message, enforced by gRPC),
shape, dtype, finiteness (NaN/Inf), recipe; a bad one gets INVALID_ARGUMENT
naming what was wrong and what is valid, and the service keeps serving.
Latents are invertible (the VAE decoder rebuilds the image): TLS is not
optional for them.

**The store driver on the service** (:mod:`.session`): :func:`connect` checks
Health first; :func:`open_remote_session` binds a
:class:`RemoteFeatureExtractor` to a feature store keyed by the service's model
fingerprint, device and dtype, and ``extract`` / ``build_anchors`` then run
unchanged, with the same bits as in process.

Start it with ``python -m diffusion_service.remote serve --help``; certificates
and the token come from ``deploy/make_certs.sh``.
"""

from diffusion_service.features import LatentFeatureExtractor
from diffusion_service.vae_io import encode_posterior_mean

from .client import GuidanceServiceError, RemoteFeatures, RemoteGuidance
from .protocol import SERVICE, projection_id
from .session import (
    GuidanceServiceUnavailableError,
    RemoteFeatureExtractor,
    ServiceModel,
    connect,
    open_remote_session,
)

__all__ = [
    "SERVICE",
    "GuidanceServiceError",
    "GuidanceServiceUnavailableError",
    "LatentFeatureExtractor",
    "RemoteFeatureExtractor",
    "RemoteFeatures",
    "RemoteGuidance",
    "ServiceModel",
    "connect",
    "encode_posterior_mean",
    "open_remote_session",
    "projection_id",
]
