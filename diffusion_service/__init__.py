"""Guidance features from a frozen latent diffusion model, computed once and cached.

Knows nothing of Flower (``docs/architecture.md``; the recipe and the store:
``docs/guidance-features.md``). Entry points:

- :class:`GuidanceModel`: the frozen diffusers components (``from_pretrained``);
- :class:`FeatureRecipe`: every knob that changes a feature;
- :class:`FeatureExtractor`: image -> raw / projected features (the
  :class:`Extractor` interface; ``remote.RemoteFeatureExtractor`` is the other one);
  :class:`LatentFeatureExtractor` the same from VAE posterior means
  (:func:`encode_posterior_mean`);
- :func:`open_session`, :func:`extract`, :func:`build_anchors`: the store driver
  (:func:`open_extractor_session` for an extractor built elsewhere);
- :class:`FeatureStore`: verified fp16 shards, read per client;
- ``python -m diffusion_service extract|anchors|info``: the command line.
"""

from .extract import (
    Session,
    build_anchors,
    ensure_projection,
    extract,
    open_extractor_session,
    open_session,
    text_anchors,
    visual_anchors,
)
from .features import Extractor, FeatureExtractor, LatentFeatureExtractor
from .model import GuidanceModel, ModelLayoutError, TextWidthError
from .projection import Projection, text_map
from .recipe import KINDS, FeatureRecipe
from .store import (
    CorruptShardError,
    FeatureStore,
    MissingFeaturesError,
    StoreMismatchError,
)
from .vae_io import ImageInputError, encode_posterior_mean

__all__ = [
    "KINDS",
    "CorruptShardError",
    "Extractor",
    "FeatureExtractor",
    "FeatureRecipe",
    "FeatureStore",
    "GuidanceModel",
    "ImageInputError",
    "LatentFeatureExtractor",
    "MissingFeaturesError",
    "ModelLayoutError",
    "Projection",
    "Session",
    "StoreMismatchError",
    "TextWidthError",
    "build_anchors",
    "encode_posterior_mean",
    "ensure_projection",
    "extract",
    "open_extractor_session",
    "open_session",
    "text_anchors",
    "text_map",
    "visual_anchors",
]
