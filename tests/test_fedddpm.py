"""FedDDPM pieces: trigger, auxiliary set, measures, saved model, config errors.

Tiny seeded U-Nets on the real (small) embedded VAE; no Flower here
(tests/test_fedddpm_integration.py runs the federation).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import ConfigError, RunConfig
from diffusion_service.federated.auxiliary import aux_plan, sample_auxiliary
from diffusion_service.federated.ldm import (
    build_federated_unet,
    encode_scaled_latents,
    load_frozen_parts,
    save_diffusers,
    train_unet,
)
from diffusion_service.federated.measures import DenoisingProbe, frechet_distance
from diffusion_service.federated.trigger import (
    CorrectionSchedule,
    relative_drop,
    slow_learning,
)

EMBEDDED = Path(__file__).resolve().parents[1] / "diffusion_service" / "embedded"
TINY = (8, 16, 16, 16)


@pytest.fixture(scope="module")
def parts():
    torch.set_num_threads(1)
    return load_frozen_parts(EMBEDDED, [f"a photo of a {c}" for c in "abc"])


# ----------------------------------------------------------------- trigger
def test_trigger_fires_on_a_plateau_not_on_steady_progress():
    steady = [1.0, 0.9, 0.81, 0.73, 0.66, 0.59]  # 10 % per round
    plateau = [1.0, 0.8, 0.7, 0.695, 0.694, 0.6939]
    assert not any(slow_learning(steady[: i + 1], 2, 0.05) for i in range(6))
    fired = [slow_learning(plateau[: i + 1], 2, 0.05) for i in range(6)]
    assert fired == [False, False, False, False, True, True]
    assert relative_drop(plateau[:5], 2) == pytest.approx((0.7 - 0.694) / 0.7)
    # a rise is no progress either
    assert slow_learning([1.0, 1.1, 1.2], 2, 0.01)


def test_trigger_cools_down_for_a_window_after_firing():
    schedule = CorrectionSchedule("trigger", window=2, eps=0.05)
    flat = [1.0, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99]
    fired = [schedule.decide(r + 1, loss) for r, loss in enumerate(flat)]
    # fires at round 3 (first full window), then waits 2 rounds each time
    assert fired == [False, False, True, False, True, False, True]
    assert schedule.fired_rounds == [3, 5, 7]
    every = CorrectionSchedule("every", 2, 0.05)
    never = CorrectionSchedule("never", 2, 0.05)
    assert all(every.decide(r) for r in range(3))
    assert not any(never.decide(r) for r in range(3))
    with pytest.raises(ValueError, match="loss"):
        CorrectionSchedule("trigger", 2, 0.05).decide(1)


# ------------------------------------------------------- auxiliary dataset
def test_aux_plan_has_the_size_and_follows_the_client_counts():
    counts = np.array([[30, 0, 10], [0, 50, 10], [0, 0, 0]])
    plan = aux_plan(counts, 20)
    assert plan.sum() == 20
    assert plan.sum(0).tolist() == [6, 10, 4]  # global mix 30:50:20
    assert (plan[counts == 0] == 0).all()  # no model is asked for unseen classes
    assert plan[2].sum() == 0
    assert plan[:, 2].tolist() == [2, 2, 0]


def test_auxiliary_set_has_the_requested_size_and_mix(parts):
    unets = [build_federated_unet(TINY, seed=k) for k in range(2)]
    plan = aux_plan(np.array([[5, 0, 1], [0, 4, 2]]), 24)
    z, y, source = sample_auxiliary(
        unets, plan, parts.scheduler, parts.text, steps=2, guidance_scale=2.0, seed=0
    )
    assert z.shape == (24, 4, 8, 8) and len(y) == 24
    assert torch.bincount(y, minlength=3).tolist() == plan.sum(0).tolist()
    for k in range(2):
        mine = torch.bincount(y[source == k], minlength=3).tolist()
        assert mine == plan[k].tolist()


# -------------------------------------------------- training and measures
def test_training_lowers_the_fixed_heldout_loss(parts):
    torch.manual_seed(0)
    images = (torch.rand(32, 1, 28, 28) * 255).to(torch.uint8)
    labels = torch.arange(32) % 3
    z = encode_scaled_latents(parts.vae, images)
    probe = DenoisingProbe.fixed(z[:8], labels[:8], seed=0)
    unet = build_federated_unet(TINY, seed=0)
    before = probe.loss(unet, parts.scheduler, parts.text)
    assert probe.loss(unet, parts.scheduler, parts.text) == before  # fixed draws
    train_unet(
        unet, parts, z, labels, steps=30, lr=3e-3, batch_size=16,
        prompt_dropout=0.1, seed=0,
    )  # fmt: skip
    assert probe.loss(unet, parts.scheduler, parts.text) < before


def test_frechet_distance_is_zero_for_equal_stats_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    mu, cov = a.mean(0), np.cov(a, rowvar=False)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(mu + 1, cov, mu, cov) == pytest.approx(4, rel=1e-6)
    # diagonal case in closed form: sum (s1 - s2)^2 for std devs s1, s2
    c1, c2 = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    assert frechet_distance(np.zeros(2), c1, np.zeros(2), c2) == pytest.approx(2.0)


# ----------------------------------------------------------- saved result
def test_a_saved_result_loads_as_a_guidance_model(parts, tmp_path):
    from diffusion_service import GuidanceModel
    from diffusion_service.embedded_model import resolve_guidance_model

    unet = build_federated_unet(TINY, seed=3)
    folder = save_diffusers(tmp_path / "model", parts, unet)
    assert resolve_guidance_model(str(folder)) == str(folder)
    model = GuidanceModel.from_pretrained(folder)
    assert tuple(model.unet.config.block_out_channels) == TINY
    assert model.num_up_blocks == 4  # the feature recipe's taps 1, 2, 3 exist
    assert model.resolution == 32
    for key, value in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value)
    states, pooled = model.encode_prompts(["a photo of a a", ""])
    assert states.shape[-1] == 384 and pooled.shape == (2, 384)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ddpm-unet-channels": "16,30"}, "ddpm-unet-channels"),
        ({"ddpm-unet-channels": "16"}, "ddpm-unet-channels"),
        ({"ddpm-local-steps": 0}, "ddpm-local-steps"),
        ({"aux-lr": 0.0}, "aux-lr"),
        ({"ddpm-prompt-dropout": 1.0}, "ddpm-prompt-dropout"),
        ({"trigger-window": 0}, "trigger-window"),
        ({"trigger-eps": -0.1}, "trigger-eps"),
        ({"sample-guidance-scale": 0.5}, "sample-guidance-scale"),
        ({"method": "fedddpm", "aux-size": 5}, "aux-size"),
        ({"method": "fedddpm+", "public-split-size": 100}, "public-split-size"),
        ({"method": "fedavg-adapt", "measure-samples": 0}, "measure-samples"),
    ],
)
def test_bad_fedddpm_values_fail_with_a_message_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config(override)


def test_fedddpm_methods_are_registered():
    from server_app.strategies import strategy_class
    from server_app.strategies.fedddpm import FedDDPM, FedDDPMAvg, FedDDPMPlus

    assert strategy_class("fedddpm") is FedDDPM
    assert strategy_class("fedddpm+") is FedDDPMPlus
    assert strategy_class("fedddpm-avg") is FedDDPMAvg
    assert RunConfig.from_run_config({"method": "fedddpm+"}).fedddpm.channels == (
        16, 32, 32, 32,
    )  # fmt: skip
