"""FedDifRC's latent upload: query round, checks, features equal to the store path.

The nodes of a fake Grid answer the query with the real ClientApp code
(``client_app.latents``) on real Fashion-MNIST partitions; the server side is
``server_app.guidance.guidance_kwargs``. The tiny diffusers model of
diffusion_conftest stands in for the guidance model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_guidance import _cfg

from client_app.guidance import instance_features, uploaded_features
from client_app.latents import answer_query, held_features, opted_in
from client_app.training import LocalSettings
from common import keys
from common.federation import (
    client_indices,
    client_raw_images,
    client_tensors,
    data_split,
)
from diffusion_service import FeatureExtractor
from diffusion_service.remote import encode_posterior_mean
from diffusion_service.vae_encoder import VaeEncoder
from server_app.guidance import guidance_kwargs
from server_app.latent_query import parse_upload
from server_app.strategies.feddifrc import FedDifRC

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread", "task_identity")

# The server holds no client image, so no zero-shot teacher: the paper's form.
LATENT_UPLOAD = {
    "feddifrc-features": "latent-upload",
    "tdcl-negatives": 3,
    "zero-shot-weight": 0.0,
}


class QueryGrid:
    """Nodes 10, 11, 12 are partitions 0, 1, 2; each answers with the ClientApp code."""

    def __init__(self, cfg, share=(True, True, True), tamper=None):
        self.cfg, self.share, self.tamper = cfg, share, tamper or {}

    def get_node_ids(self):
        return [10, 11, 12]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            pid = msg.metadata.dst_node_id - 10
            _, labels = client_tensors(self.cfg, pid)
            content = answer_query(
                msg.content[keys.CONFIG],
                self.cfg,
                share=self.share[pid],
                ids=client_indices(self.cfg, pid),
                images=client_raw_images(self.cfg, pid),
                labels=labels,
            )
            if pid in self.tamper:
                self.tamper[pid](content)
            replies.append(Message(content=content, reply_to=msg))
        return replies


def settings_for(cfg) -> LocalSettings:
    return LocalSettings(
        lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=8,
        tdcl_weight=cfg.feddifrc.tdcl_weight, ndcr_weight=cfg.feddifrc.ndcr_weight,
        feature_source="latent-upload",
    )  # fmt: skip


def test_vae_encoder_alone_gives_the_extractors_latents(
    tiny_sd_dir, tiny_model, fmnist_small, recipe
):
    """The client's VAE-only encoder and the server's extractor: same bits."""
    images, _, names = fmnist_small
    extractor = FeatureExtractor(tiny_model, recipe, names)
    encoder = VaeEncoder.from_pretrained(
        tiny_sd_dir, resolution=extractor.resolution, micro_batch=recipe.micro_batch
    )
    want = encode_posterior_mean(extractor, images[:13])
    got = encoder.encode(images[:13])
    assert got.numpy().tobytes() == want.numpy().tobytes()
    assert encoder.fingerprint == tiny_model.vae_fingerprint


def test_uploaded_features_equal_the_store_path(defaults, tiny_sd_dir, tmp_path):
    """Every node's features from its latents == its rows of the server's store."""
    up_cfg = _cfg(defaults, tiny_sd_dir, tmp_path / "up", **LATENT_UPLOAD)
    store_cfg = up_cfg.with_overrides({"feddifrc-features": "server-store",
                                       "output-dir": str(tmp_path / "store")})  # fmt: skip
    split = data_split(up_cfg)
    kwargs, record = guidance_kwargs(up_cfg, split, QueryGrid(up_cfg))
    assert set(kwargs["node_features"]) == {10, 11, 12}
    assert record["latent-upload"]["shared"] == {"10": 12, "11": 12, "12": 12}
    store_path = guidance_kwargs(store_cfg, split)[0]["store_path"]
    settings = settings_for(up_cfg)
    for node, features in kwargs["node_features"].items():
        pid = node - 10
        own = client_indices(up_cfg, pid)
        _, labels = client_tensors(up_cfg, pid)
        got = uploaded_features(features, own[::-1].copy(), labels.flip(0), settings)
        want = instance_features(store_path, own, labels, tdcl=True, ndcr=True)
        # The store keeps fp16: the uploaded float32 rows round to its bits.
        for part in ("f_pos", "f_neg", "f_noise"):
            a, b = getattr(got, part).flip(0), getattr(want, part)
            assert torch.equal(a.half().float(), b), (node, part)


def test_declined_and_unusable_uploads_are_left_out(defaults, tiny_sd_dir, tmp_path):
    cfg = _cfg(defaults, tiny_sd_dir, tmp_path, **LATENT_UPLOAD)

    def nan(content):
        content[keys.LATENTS][keys.LATENTS] = _array(
            np.full_like(content[keys.LATENTS][keys.LATENTS].numpy(), np.nan)
        )

    grid = QueryGrid(cfg, share=(True, False, True), tamper={2: nan})
    kwargs, record = guidance_kwargs(cfg, data_split(cfg), grid)
    query = record["latent-upload"]
    assert set(kwargs["node_features"]) == {10}
    assert query["declined"] == [11]
    assert "NaN" in query["rejected"]["12"]


def _array(values):
    from flwr.app import Array

    return Array(values)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c, a: c.__setitem__(keys.VAE_FINGERPRINT, "0" * 64), "VAE differs"),
        (lambda c, a: a.__setitem__(keys.LATENTS, _array(np.zeros((4, 1, 2, 2), np.float32))), "shape"),
        (lambda c, a: a.__setitem__(keys.SAMPLE_IDS, _array(np.zeros(4, np.int64))), "repeated"),
        (lambda c, a: a.pop(keys.SAMPLE_LABELS), "needs labels"),
    ],
    ids=["other-vae", "shape", "ids", "labels"],
)  # fmt: skip
def test_parse_upload_says_why_an_upload_is_unusable(change, words):
    arrays = {
        keys.LATENTS: _array(np.zeros((4, 4, 2, 2), np.float32)),
        keys.SAMPLE_IDS: _array(np.arange(4, dtype=np.int64)),
        keys.SAMPLE_LABELS: _array(np.zeros(4, np.int64)),
    }
    config = {keys.SHARED: True, keys.VAE_FINGERPRINT: "f" * 64}
    change(config, arrays)
    content = RecordDict(
        {keys.CONFIG: ConfigRecord(config), keys.LATENTS: ArrayRecord(arrays)}
    )
    got = parse_upload(content, latent_shape=(4, 2, 2), needs_labels=True, vae="f" * 64)
    assert isinstance(got, str) and words in got


def test_share_latents_node_config_wins_over_the_run_default(defaults):
    from common.config import RunConfig

    cfg = RunConfig.from_run_config({**defaults, "share-latents": True})
    assert opted_in({}, cfg) is True
    assert opted_in({"share-latents": False}, cfg) is False
    assert opted_in({"share-latents": "false"}, cfg) is False
    with pytest.raises(ValueError, match="true or false"):
        opted_in({"share-latents": "maybe"}, cfg)


def test_latent_upload_is_feddifrc_only(defaults):
    from common.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="needs method 'feddifrc'"):
        RunConfig.from_run_config(
            {**defaults, "method": "fedavg", "feddifrc-features": "latent-upload"}
        )
    with pytest.raises(ConfigError, match="valid: latent-upload, server-store"):
        RunConfig.from_run_config({**defaults, "feddifrc-features": "client"})


class TwoNodes:
    def get_node_ids(self):
        return [1, 2]


def test_features_are_sent_until_the_node_holds_them():
    """Sent in node 1's first train Message; again after it reports losing them."""
    feats = ArrayRecord({keys.SAMPLE_IDS: _array(np.arange(3, dtype=np.int64))})
    strategy = FedDifRC(node_features={1: feats}, min_available_nodes=2)

    def round_messages(rnd):
        msgs = strategy.configure_train(
            rnd, ArrayRecord(), ConfigRecord({}), TwoNodes()
        )
        return {m.metadata.dst_node_id: m for m in msgs}

    def reply(msg, guided):
        metrics = MetricRecord({keys.NUM_EXAMPLES: 3, keys.INSTANCE_GUIDED: guided})
        return Message(
            content=RecordDict({keys.ARRAYS: ArrayRecord(), keys.METRICS: metrics}),
            reply_to=msg,
        )

    first = round_messages(1)
    assert keys.INSTANCE_FEATURES in first[1].content.array_records
    assert keys.INSTANCE_FEATURES not in first[2].content.array_records
    assert first[1].content[keys.CONFIG][keys.FEATURE_SOURCE] == "latent-upload"
    strategy.aggregate_train(1, [reply(first[1], 1), reply(first[2], 0)])
    second = round_messages(2)
    assert keys.INSTANCE_FEATURES not in second[1].content.array_records
    strategy.aggregate_train(2, [reply(second[1], 0), reply(second[2], 0)])
    assert keys.INSTANCE_FEATURES in round_messages(3)[1].content.array_records


def test_the_node_keeps_its_features_in_state():
    feats = ArrayRecord({keys.SAMPLE_IDS: _array(np.arange(3, dtype=np.int64))})
    state = RecordDict()
    carrying = Message(
        content=RecordDict({keys.INSTANCE_FEATURES: feats}),
        message_type="train",
        dst_node_id=1,
    )
    assert held_features(carrying, state) is feats
    empty = Message(content=RecordDict(), message_type="train", dst_node_id=1)
    assert held_features(empty, state) is feats
    assert held_features(empty, RecordDict()) is None
