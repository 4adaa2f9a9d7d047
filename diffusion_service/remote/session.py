"""The store driver on the guidance service: a remote extractor and its session.

:class:`RemoteFeatureExtractor` offers the :class:`~diffusion_service.Extractor`
interface, so :func:`~diffusion_service.extract`,
:func:`~diffusion_service.extract.ensure_projection` and
:func:`~diffusion_service.build_anchors` run unchanged on a session opened with
:func:`open_remote_session`. Only the model work travels: raw features (to fit
the projection), projected features and text anchors. The bookkeeping (prompt
ids, the resolution, image checks) runs here, with the very helpers
:class:`~diffusion_service.FeatureExtractor` uses, so it cannot drift.

**Store keys.** The service runs a real ``FeatureExtractor`` and pads every
model call to ``recipe.micro_batch`` rows, so its features are the in-process
bits of the same model on the same compute. The store key takes the model
fingerprint, device type and dtype from the service's Info, so a store filled
remotely and one filled in process are one and the same store exactly when
their features are the same bits (a CUDA fp16 service gets a store of its own).

:func:`connect` opens a channel and checks Health first, so a wrong address,
CA or token fails at once with :class:`GuidanceServiceUnavailableError`
naming the address, before any data is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from torch import Tensor

from diffusion_service.extract import Session, open_extractor_session
from diffusion_service.features import feature_resolution, make_prompt_ids
from diffusion_service.projection import Projection
from diffusion_service.recipe import FeatureRecipe
from diffusion_service.vae_io import check_images

from .client import DEFAULT_TIMEOUT, GuidanceServiceError, RemoteGuidance
from .protocol import FEATURES, INFO, SERVING

# Room left in a message for the safetensors header and gRPC framing.
_HEADER_ROOM = 64 * 1024
HEALTH_TIMEOUT = 10.0


class GuidanceServiceUnavailableError(ConnectionError):
    """The guidance service failed the connection check (see :func:`connect`).

    Attributes: ``address``, and ``code`` (the ``grpc.StatusCode``, or None
    when the service answered but is not serving).
    """

    def __init__(self, address: str, code: grpc.StatusCode | None, message: str):  # noqa: D107
        self.address, self.code = address, code
        super().__init__(message)


@dataclass(frozen=True)
class ServiceModel:
    """The service's model as its Info describes it: identity and geometry.

    Stands where :class:`~diffusion_service.GuidanceModel` stands for the
    store key (``fingerprint``, ``device``, ``dtype``) and for the checks that
    need the geometry, without the weights.
    """

    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    resolution: int
    vae_scale_factor: int
    image_channels: int
    latent_channels: int
    num_up_blocks: int
    up_block_channels: tuple[int, ...]
    vae_fingerprint: str = ""  # checks uploaded latents (empty from older services)

    @classmethod
    def from_info(cls, model: dict[str, Any]) -> ServiceModel:
        """Parse Info's ``model`` entry; a malformed one is a service error."""
        try:
            dtype = getattr(torch, model["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{model['dtype']!r} is not a torch dtype")
            return cls(
                fingerprint=str(model["fingerprint"]),
                device=torch.device(model["device"]),
                dtype=dtype,
                resolution=int(model["resolution"]),
                vae_scale_factor=int(model["vae_scale_factor"]),
                image_channels=int(model["image_channels"]),
                latent_channels=int(model["latent_shape"][0]),
                num_up_blocks=int(model["num_up_blocks"]),
                up_block_channels=tuple(int(c) for c in model["up_block_channels"]),
                vae_fingerprint=str(model.get("vae_fingerprint", "")),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise GuidanceServiceError(
                INFO, grpc.StatusCode.INTERNAL, f"bad model description: {exc!r}"
            ) from None

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(c, h, w) of the VAE latents of ``resolution``-px images."""
        side = resolution // self.vae_scale_factor
        return (self.latent_channels, side, side)

    def raw_width(self, recipe: FeatureRecipe) -> int:
        """Width r of a recipe's raw features: latent + tapped up-block channels."""
        return self.latent_channels + sum(
            self.up_block_channels[i] for i in recipe.up_blocks
        )


class RemoteFeatureExtractor:
    """The :class:`~diffusion_service.Extractor` interface, served remotely.

    Parameters
    ----------
    guidance : RemoteGuidance
        An open connection (see :func:`connect`); the caller closes it.
    recipe : FeatureRecipe
        The feature recipe; checked against the service's model here.
    class_names : sequence of str
        Fills the prompt template; prompt id k is class k, id C the neutral one.
    info : dict or None
        The service's Info answer, if the caller already has it.
    """

    def __init__(
        self,
        guidance: RemoteGuidance,
        recipe: FeatureRecipe,
        class_names: Sequence[str],
        *,
        info: dict[str, Any] | None = None,
    ) -> None:  # noqa: D107
        info = guidance.info() if info is None else info
        self.guidance, self.recipe = guidance, recipe
        self.model = ServiceModel.from_info(info.get("model") or {})
        self.class_names = tuple(class_names)
        self.resolution = feature_resolution(
            recipe,
            num_up_blocks=self.model.num_up_blocks,
            native_resolution=self.model.resolution,
            vae_scale_factor=self.model.vae_scale_factor,
        )
        limits = info.get("limits") or {}
        self.max_samples = int(limits.get("max_samples", recipe.micro_batch))
        self.max_message_bytes = int(limits.get("max_message_bytes", 4 << 20))

    # ------------------------------------------------------- local bookkeeping
    def preprocess(self, images: Tensor) -> Tensor:
        """Check images as ``FeatureExtractor.preprocess`` does; return them.

        Resizing and scaling to [-1, 1] happen on the service, so this returns
        the checked uint8 images (grayscale repeated to the VAE's channels).
        """
        return check_images(images, self.model.image_channels)

    def prompt_ids(self, kind: str, indices, labels: Tensor) -> Tensor:
        """(B, S) prompt ids, exactly ``FeatureExtractor.prompt_ids``."""
        return make_prompt_ids(
            kind, indices, labels, self.recipe, len(self.class_names)
        )

    # ------------------------------------------------------------ model work
    def raw(self, images: Tensor, indices, prompt_ids: Tensor) -> Tensor:
        """Raw features (B, S, r), float32, computed by the service."""
        return self._run(images, indices, prompt_ids, None)

    def features(
        self, images: Tensor, indices, prompt_ids: Tensor, projection: Projection
    ) -> Tensor:
        """Projected, unit-length features (B, S, d), computed by the service.

        The projection is registered once (a content hash names it) and then
        applied on the service, micro-batch by micro-batch, as in process.
        """
        return self._run(images, indices, prompt_ids, projection)

    def for_latents(self) -> RemoteFeatureExtractor:
        """This extractor, for VAE latents: the service takes them as they are.

        ``features``/``raw`` send floating-point inputs as ``latents``.
        """
        return self

    def text_anchors(self, dim: int, seed: int) -> Tensor:
        """(C, d) text anchors of the class prompts, computed by the service."""
        recipe = dataclasses.replace(self.recipe, dim=dim, seed=seed)
        return self.guidance.text_anchors(recipe, self.class_names)

    def _run(
        self, images: Tensor, indices, prompt_ids, projection: Projection | None
    ) -> Tensor:
        """Features in requests within the service's limits, concatenated."""
        indices = [int(i) for i in indices]
        ids = torch.as_tensor(prompt_ids, dtype=torch.long)
        if len(indices) != len(images) or ids.shape[0] != len(images):
            raise ValueError("images, indices and prompt_ids must have the same length")
        if len(images) == 0:
            raise ValueError("no images given")
        width = (
            self.model.raw_width(self.recipe) if projection is None else projection.dim
        )
        rows = self._rows_per_request(images, ids.shape[1], width)
        outs = []
        for start in range(0, len(images), rows):
            part = slice(start, start + rows)
            # Floating-point inputs are VAE latents (see for_latents).
            inputs = (
                {"latents": images[part]}
                if images.is_floating_point()
                else {"images": images[part]}
            )
            got = self.guidance.features(
                indices=indices[part],
                **inputs,
                recipe=self.recipe,
                class_names=self.class_names,
                prompt_ids=ids[part],
                projection=projection,
            ).features
            if tuple(got.shape) != (len(indices[part]), ids.shape[1], width):
                raise GuidanceServiceError(
                    FEATURES,
                    grpc.StatusCode.INTERNAL,
                    f"features of shape {tuple(got.shape)}; expected "
                    f"{(len(indices[part]), ids.shape[1], width)}",
                )
            outs.append(got)
        return torch.cat(outs)

    def _rows_per_request(self, images: Tensor, prompts: int, width: int) -> int:
        """Samples per request: within the service's sample and byte limits.

        A whole number of micro-batches when possible (each model call is
        padded to ``recipe.micro_batch`` rows, so a sample's bits do not depend
        on how requests are cut; whole micro-batches only waste less padding).
        """
        per_sample = max(images[0].numel() * images.element_size(), prompts * width * 4)
        fit = max(1, (self.max_message_bytes - _HEADER_ROOM) // per_sample)
        rows = max(1, min(self.max_samples, fit))
        mb = self.recipe.micro_batch
        return rows - rows % mb if rows >= mb else rows


def connect(
    address: str,
    *,
    root_ca: str | Path | None,
    token_file: str | Path,
    insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    health_timeout: float = HEALTH_TIMEOUT,
) -> RemoteGuidance:
    """A connection to the service at ``address`` that has passed Health.

    ``timeout`` is the deadline of every later call (a Features call of a few
    hundred samples on a CPU service can take minutes). Raises
    :class:`GuidanceServiceUnavailableError`, naming the address, when the
    service is unreachable, refuses the token or is not serving.
    """
    guidance = RemoteGuidance(
        address,
        root_ca=root_ca,
        token_file=token_file,
        insecure=insecure,
        timeout=timeout,
    )
    try:
        status = guidance.health(timeout=health_timeout)
    except GuidanceServiceError as exc:
        guidance.close()
        raise _unavailable(address, exc, root_ca, token_file) from None
    if status != SERVING:
        guidance.close()
        raise GuidanceServiceUnavailableError(
            address,
            None,
            f"guidance service at {address} answers {status!r}, not {SERVING!r} "
            "(shutting down?): try again once it serves",
        )
    return guidance


def _unavailable(
    address: str,
    exc: GuidanceServiceError,
    root_ca: str | Path | None,
    token_file: str | Path,
) -> GuidanceServiceUnavailableError:
    """The error for a failed Health call, saying what to check."""
    code, why = exc.code, f"{exc.code.name}: {exc.details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        message = (
            f"guidance service at {address} refused the token from {token_file} "
            f"({why}): use the token file the service was started with"
        )
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        tls = (
            "plain text (insecure)"
            if root_ca is None
            else f"TLS trusting the CA in {root_ca}"
        )
        message = (
            f"guidance service at {address} is unreachable ({why}). Is it "
            f"running there, and does its certificate match? This client uses "
            f"{tls}, and the certificate must name the host of the address."
        )
    else:
        message = f"guidance service at {address} failed its health check ({why})"
    return GuidanceServiceUnavailableError(address, code, message)


def open_remote_session(
    guidance: RemoteGuidance,
    recipe: FeatureRecipe,
    *,
    dataset: str,
    images: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    root: str | Path,
    fit_indices=None,
) -> Session:
    """:func:`~diffusion_service.open_session`, with the service as the model.

    The session's store is keyed by the service's model fingerprint, device
    and dtype; ``extract``, ``build_anchors`` and the store work on it as on
    an in-process session.
    """
    return open_extractor_session(
        RemoteFeatureExtractor(guidance, recipe, class_names),
        dataset=dataset,
        images=images,
        labels=labels,
        root=root,
        fit_indices=fit_indices,
    )
