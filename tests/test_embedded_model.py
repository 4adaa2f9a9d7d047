"""The shipped embedded guidance model: loads offline, matches its card, works.

These tests use the real weights in ``diffusion_service/embedded`` (committed
with the repository), through the same ``from_pretrained`` path as Stable
Diffusion.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.datasets import DATASETS, load_dataset
from diffusion_service import FeatureExtractor, FeatureRecipe, GuidanceModel
from diffusion_service.pretrain.card import weights_sha256

EMBEDDED = Path(__file__).resolve().parents[1] / "diffusion_service" / "embedded"
CLASSES = DATASETS["fashion-mnist"].class_names


@pytest.fixture(scope="module")
def embedded():
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a hub
    torch.set_num_threads(1)
    return GuidanceModel.from_pretrained(EMBEDDED)


def test_hashes_match_the_model_card_and_log(embedded):
    hashes = weights_sha256(EMBEDDED)
    card = (EMBEDDED / "MODEL_CARD.md").read_text()
    assert hashes["combined"] in card
    for rel, info in hashes["files"].items():
        assert info["sha256"] in card, rel


def test_trained_on_exactly_the_public_split_that_clients_never_get():
    from common.partition import carve_public_split
    from diffusion_service.pretrain.data import indices_sha256

    log = json.loads((EMBEDDED / "training_log.json").read_text())
    size = log["data"]["public_split_size"]
    train, _ = load_dataset("fashion-mnist")
    public = carve_public_split(train.labels.numpy(), size)
    assert log["data"]["indices_sha256"] == indices_sha256(public)


def test_shipped_model_is_small_and_text_conditioned(embedded):
    assert embedded.unet.config.cross_attention_dim == 384
    assert type(embedded.text_encoder).__name__ == "BertModel"
    size = sum(
        (EMBEDDED / rel).stat().st_size for rel in weights_sha256(EMBEDDED)["files"]
    )
    assert size < 20e6


def test_features_have_the_right_shape_and_are_deterministic(embedded):
    train, _ = load_dataset("fashion-mnist")
    images, labels = train.images[:24], train.labels[:24]
    recipe = FeatureRecipe(dim=16, fit_size=24, micro_batch=8)
    extractor = FeatureExtractor(embedded, recipe, CLASSES)
    ids = extractor.prompt_ids("noise", np.arange(24), labels)
    raw_a = extractor.raw(images, np.arange(24), ids)
    raw_b = extractor.raw(images[8:16], np.arange(8, 16), ids[8:16])
    assert raw_a.ndim == 3 and raw_a.shape[0] == 24
    assert torch.equal(raw_a[8:16], raw_b)  # same sample, same bits, any batch
