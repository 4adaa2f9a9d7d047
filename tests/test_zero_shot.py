"""The zero-shot teacher: denoising errors, their posterior, storage and reads."""

import json
import math

import numpy as np
import pytest
import torch
from diffusion_conftest import tiny_guided_config

from client_app.guidance import zero_shot_teacher
from client_app.training import Guidance, LocalSettings
from common.config import ConfigError, RunConfig
from common.federation import data_split
from common.losses import posterior_distillation
from diffusion_service import FeatureExtractor, FeatureRecipe, FeatureStore
from diffusion_service.zero_shot import (
    ERROR_TIMESTEPS,
    centred,
    class_errors,
    fit_temperature,
    posterior,
)
from server_app import guidance as server_guidance
from server_app.strategies.feddifrc import FedDifRC
from server_app.strategies.semanticfl import SemanticFL

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")


def test_posterior_distillation_matches_a_hand_computed_kl():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    # KL(q || p) = sum q (log q - log p), averaged over the 2 rows
    p = [
        [math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2), 1 / (math.exp(2) + 2)],
        [1 / (1 + math.e + math.exp(-1)), math.e / (1 + math.e + math.exp(-1)),
         math.exp(-1) / (1 + math.e + math.exp(-1))],
    ]  # fmt: skip
    want = (
        sum(
            qi * (math.log(qi) - math.log(pi))
            for qr, pr in zip(q.tolist(), p, strict=True)
            for qi, pi in zip(qr, pr, strict=True)
        )
        / 2
    )
    got = posterior_distillation(logits, q)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # The teacher is a constant: gradients reach the logits only.
    logits.requires_grad_(True)
    teacher = q.clone().requires_grad_(True)
    posterior_distillation(logits, teacher).backward()
    assert teacher.grad is None and logits.grad.abs().sum() > 0


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    g = torch.Generator().manual_seed(0)
    errors = torch.rand(4000, 5, generator=g) * 0.02
    tau = 0.004
    labels = torch.multinomial(posterior(errors, tau), 1, generator=g).view(-1)
    assert fit_temperature(errors, labels) == pytest.approx(tau, rel=0.1)


def test_posterior_ignores_each_images_offset_and_rejects_a_bad_temperature():
    errors = torch.tensor([[1.00, 1.01, 1.03], [0.50, 0.49, 0.52]])
    c = centred(errors)
    assert torch.allclose(c.sum(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(posterior(c, 0.01), posterior(errors, 0.01), atol=1e-6)
    assert posterior(errors, 0.01).argmax(1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="temperature"):
        posterior(errors, 0.0)


def test_extractor_errors_are_each_samples_own_whatever_the_batch(
    tiny_model, fmnist_small
):
    images, labels, names = fmnist_small
    recipe = FeatureRecipe(up_blocks=(0, 1), dim=8, micro_batch=4)
    ex = FeatureExtractor(tiny_model, recipe, names)
    idx = np.arange(6)
    errors = ex.denoising_errors(images[:6], idx)
    assert errors.shape == (6, len(names)) and errors.dtype == torch.float32
    assert torch.allclose(errors.sum(1), torch.zeros(6), atol=1e-5)
    alone = ex.denoising_errors(images[4:5], idx[4:5])
    torch.testing.assert_close(alone[0], errors[4], rtol=0, atol=0)
    # The same numbers by hand: one padded micro-batch through class_errors.
    m = tiny_model
    rows = [4, 4, 4, 4]
    z0 = ex._latents(images[rows])
    eps = ex.error_noise(idx[rows]).to(m.device, m.unet.dtype)
    by_hand = class_errors(
        m.unet, m.noise_scheduler, z0, eps, ERROR_TIMESTEPS,
        ex.text_states[: len(names)],
    )  # fmt: skip
    torch.testing.assert_close(centred(by_hand)[0], errors[4], rtol=0, atol=0)


def _cfg(defaults, tiny_sd_dir, tmp_path, **overrides):
    return tiny_guided_config(
        defaults,
        tiny_sd_dir,
        tmp_path,
        **{"method": "semanticfl", "kd-form": "posterior", **overrides},
    )


def test_the_teacher_is_stored_for_every_client_sample_and_read_per_client(
    defaults, tiny_sd_dir, tmp_path
):
    cfg = _cfg(defaults, tiny_sd_dir, tmp_path)
    split = data_split(cfg)
    _, info, teacher = server_guidance.prepare_semanticfl(cfg, split)
    store = FeatureStore(server_guidance.Path(teacher["store"]))
    everyone = np.unique(np.concatenate(split.clients))
    stored = store.stored_indices("errors")
    assert set(everyone) <= set(stored) and set(split.public) <= set(stored)
    assert teacher["tau"] == info["teacher"]["tau"] > 0
    assert info["teacher"]["calibration-images"] == 30  # all of this tiny split
    for key in ("zero-shot-accuracy-public", "zero-shot-accuracy-clients"):
        assert 0.0 <= info["teacher"][key] <= 1.0
    # A client reads its own rows: calibrated class distributions.
    own = split.clients[1]
    q = zero_shot_teacher(teacher["store"], own, teacher["tau"])
    errors, _ = store.read("errors", own)
    assert q.shape == (len(own), 10)
    torch.testing.assert_close(q.sum(1), torch.ones(len(own)))
    torch.testing.assert_close(q, posterior(errors, teacher["tau"]))
    # A second preparation computes nothing again.
    _, again, _ = server_guidance.prepare_semanticfl(cfg, split)
    assert again["teacher"]["computed"] == 0
    assert again["teacher"]["tau"] == teacher["tau"]


def test_a_store_made_before_the_errors_kind_still_opens_and_takes_it(tmp_path):
    key = {"format": 1, "what": "test"}
    FeatureStore(tmp_path / "s", key)  # creates the store
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del manifest["shards"]["errors"]  # as an older store wrote it
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    old = FeatureStore(tmp_path / "s")
    assert old.missing("errors", [3, 1]).tolist() == [1, 3]
    old.write_shard("errors", [1, 3], torch.tensor([[0.1, -0.1], [0.0, 0.0]]))
    got, _ = FeatureStore(tmp_path / "s").read("errors", [3, 1])
    assert got.tolist() == [[0.0, 0.0], [pytest.approx(0.1, abs=1e-3),
                                         pytest.approx(-0.1, abs=1e-3)]]  # fmt: skip


def test_the_strategy_and_the_client_refuse_a_posterior_without_its_teacher():
    anchors = {
        "text": np.eye(3, dtype=np.float32),
        "visual": np.eye(3, dtype=np.float32),
    }
    with pytest.raises(ValueError, match="teacher"):
        SemanticFL(anchors=anchors, kd_form="posterior")
    with pytest.raises(ValueError, match="teacher"):
        SemanticFL(anchors=anchors, kd_form="classes", teacher={"store": "s", "tau": 1})
    settings = LocalSettings(
        lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=4,
        kd_weight=1.0, kd_form="posterior", kd_teacher_tau=0.01,
    )  # fmt: skip
    assert settings.needs_teacher
    with pytest.raises(ValueError, match="teacher"):
        Guidance(visual_anchors=torch.eye(3)).check(settings, 4)
    with pytest.raises(ValueError, match="rows"):
        Guidance(teacher=torch.full((3, 3), 1 / 3)).check(settings, 4)


def test_the_smoothed_labels_control_carries_one_number_of_the_teacher(
    defaults, tiny_sd_dir, tmp_path
):
    from client_app.guidance import smoothed_labels

    q = smoothed_labels(torch.tensor([2, 0]), 4, 0.3)
    torch.testing.assert_close(
        q, torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]])
    )
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        smoothed_labels(torch.tensor([0]), 4, 1.0)

    cfg = _cfg(defaults, tiny_sd_dir, tmp_path, **{"kd-teacher": "smoothed-labels"})
    split = data_split(cfg)
    _, info, teacher = server_guidance.prepare_semanticfl(cfg, split)
    assert set(teacher) == {"smoothing"}
    assert teacher["smoothing"] == info["teacher"]["off-label-mass-public"]
    assert 0.0 < teacher["smoothing"] < 1.0
    assert "zero-shot-accuracy-clients" not in info["teacher"]
    # Only the public calibration images were scored: no client sample's errors.
    store = next((tmp_path / "feature-store").glob("*/manifest.json")).parent
    stored = FeatureStore(store).stored_indices("errors")
    assert set(stored) <= set(split.public)


def test_kd_teacher_belongs_to_a_run_with_the_teacher(defaults, tiny_sd_dir, tmp_path):
    for overrides in (
        {"kd-form": "classes"},
        {"method": "feddifrc", "zero-shot-weight": 0.0},  # FedDifRC's paper form
        {"method": "feddifrc", "self-supervised": True},  # no classifier to distil
    ):
        with pytest.raises(ConfigError, match="kd-teacher"):
            _cfg(
                defaults,
                tiny_sd_dir,
                tmp_path,
                **{**overrides, "kd-teacher": "smoothed-labels"},
            )


def test_the_teacher_is_both_guided_methods_default_and_no_one_elses(
    defaults, tiny_sd_dir, tmp_path
):
    def on(**overrides):
        cfg = tiny_guided_config(defaults, tiny_sd_dir, tmp_path, **overrides)
        return cfg.zero_shot_teacher

    assert on(method="semanticfl") and on(method="feddifrc")
    # the papers' forms, one key away
    assert not on(method="semanticfl", **{"kd-form": "coordinates"})
    assert not on(method="feddifrc", **{"zero-shot-weight": 0.0})
    # methods that do not read the keys ignore them, as they do every guided key
    assert not on(method="fedavg") and not on(method="moon")
    assert not on(method="feddifrc", **{"self-supervised": True})


def test_self_supervised_feddifrc_builds_without_the_teacher(defaults):
    # zero-shot-weight keeps its default; the variant runs without the term
    from server_app.strategies import strategy_class

    cfg = RunConfig.from_run_config(
        {**defaults, "method": "feddifrc", "self-supervised": True}
    )
    assert cfg.feddifrc.zero_shot_weight == 3.0 and not cfg.zero_shot_teacher
    strategy = strategy_class("feddifrc").from_config(cfg.feddifrc, store_path="/s")
    assert strategy.zero_shot_weight == 0.0 and strategy.teacher is None


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"method": "semanticfl"}, "kd-form = 'coordinates'"),
        ({"method": "feddifrc"}, "zero-shot-weight = 0"),
    ],
)
def test_the_teacher_with_a_guidance_service_names_the_papers_form(
    defaults, tiny_sd_dir, tmp_path, overrides, says
):
    service = {
        "guidance-service": "127.0.0.1:50099",
        "guidance-service-token-file": "token",
        "guidance-service-insecure": True,
    }
    with pytest.raises(ConfigError, match=says):
        _cfg(defaults, tiny_sd_dir, tmp_path, **overrides, **service)


def test_feddifrcs_teacher_is_refused_with_latent_upload(
    defaults, tiny_sd_dir, tmp_path
):
    with pytest.raises(ConfigError, match="latent-upload.*zero-shot-weight = 0"):
        _cfg(
            defaults,
            tiny_sd_dir,
            tmp_path,
            **{"method": "feddifrc", "feddifrc-features": "latent-upload"},
        )


def test_feddifrc_distils_the_same_teacher_next_to_its_own_terms(
    defaults, tiny_sd_dir, tmp_path, task_identity
):
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from client_app.guidance import guidance_for
    from common import keys

    cfg = _cfg(
        defaults,
        tiny_sd_dir,
        tmp_path,
        **{"method": "feddifrc", "zero-shot-weight": 0.5, "kd-form": "coordinates"},
    )
    assert cfg.zero_shot_teacher
    split = data_split(cfg)
    path, info, teacher = server_guidance.prepare_feddifrc(cfg, split)
    assert teacher["store"] == path and teacher["tau"] == info["teacher"]["tau"]
    # The paper's form takes no teacher, and a weight needs one.
    with pytest.raises(ValueError, match="teacher"):
        FedDifRC(store_path=path, zero_shot_weight=0.5)
    with pytest.raises(ValueError, match="teacher"):
        FedDifRC(store_path=path, teacher=teacher)

    class _Grid:
        def get_node_ids(self):
            return [4, 5]  # FedAvg waits for 2 nodes

    strategy = FedDifRC(store_path=path, zero_shot_weight=0.5, teacher=teacher)
    config = ConfigRecord({keys.LR: 0.1, keys.MOMENTUM: 0.0, keys.WEIGHT_DECAY: 0.0,
                           keys.LOCAL_EPOCHS: 1, keys.BATCH_SIZE: 4})  # fmt: skip
    strategy.configure_train(1, ArrayRecord(), config, _Grid())
    assert config[keys.KD_WEIGHT] == 0.5 and config[keys.KD_FORM] == "posterior"
    assert config[keys.KD_TEACHER_TAU] == teacher["tau"]
    assert config[keys.FEATURE_STORE] == path
    # The client reads its rows of the teacher without SemanticFL's anchors.
    settings = LocalSettings.from_config(config)
    assert settings.needs_teacher and not settings.needs_anchors
    own = split.clients[0]
    msg = Message(content=RecordDict({}), dst_node_id=1, message_type="train")
    labels = torch.zeros(len(own), dtype=torch.long)
    g = guidance_for(msg, settings, own, labels, num_classes=10)
    torch.testing.assert_close(g.teacher, zero_shot_teacher(path, own, teacher["tau"]))
    assert g.f_pos is not None and g.visual_anchors is None


def test_a_client_builds_the_controls_teacher_from_its_own_labels(task_identity):
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from client_app.guidance import guidance_for
    from common import keys

    anchors = ArrayRecord(
        {
            keys.TEXT_ANCHORS: Array(np.eye(3, dtype=np.float32)),
            keys.VISUAL_ANCHORS: Array(np.eye(3, dtype=np.float32)),
        }
    )
    msg = Message(
        content=RecordDict({keys.GUIDANCE: anchors}),
        dst_node_id=1,
        message_type="train",
    )
    settings = LocalSettings(
        lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=4,
        kd_weight=1.0, kd_form="posterior", kd_teacher_smoothing=0.2,
    )  # fmt: skip
    g = guidance_for(
        msg, settings, np.array([5, 9]), torch.tensor([1, 2]), num_classes=3
    )
    torch.testing.assert_close(
        g.teacher, torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    )
    no_teacher = LocalSettings(**{**settings.__dict__, "kd_teacher_smoothing": None})
    with pytest.raises(KeyError, match="smoothing"):
        guidance_for(msg, no_teacher, np.array([5, 9]), torch.tensor([1, 2]), None, 3)
