"""GuidanceModel: loading through from_pretrained, freezing, fingerprint, bad input."""

import shutil

import pytest
import torch
from diffusion_conftest import (
    minilm_dir,
    save_components,
    tiny_components,
    tiny_unet,
    toy_clip_tokenizer,
)

from diffusion_service import (
    FeatureExtractor,
    FeatureRecipe,
    GuidanceModel,
    ModelLayoutError,
    TextWidthError,
)

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")


def test_toy_clip_tokenizer_really_tokenizes():
    """The vocab=/merges= form works (the vocab_file= form yields only <|endoftext|>)."""
    tok = toy_clip_tokenizer()
    assert tok.tokenize("lower newer") == ["lo", "w", "er</w>", "n", "e", "w", "er</w>"]
    assert tok("lower newer").input_ids == [21, 10, 2, 16, 9, 3, 2, 16, 22]


def test_from_pretrained_loads_frozen_components(tiny_model, tiny_sd_dir):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    m = tiny_model
    assert isinstance(m.vae, AutoencoderKL) and isinstance(m.unet, UNet2DConditionModel)
    assert isinstance(m.text_encoder, CLIPTextModel)
    assert isinstance(m.scheduler, DDIMScheduler)  # the class named in the folder
    assert isinstance(m.noise_scheduler, DDPMScheduler)
    assert torch.equal(m.noise_scheduler.alphas_cumprod, m.scheduler.alphas_cumprod)
    for module in (m.vae, m.unet, m.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    # 7.1 configs: U-Net sample_size 32, VAE factor 2 -> 64 px, latent 4x32x32
    assert (m.resolution, m.vae_scale_factor, m.num_up_blocks) == (64, 2, 2)
    assert m.latent_shape(m.resolution) == (4, 32, 32)
    assert tiny_model.tokenizer.tokenize("lower") == ["lo", "w", "er</w>"]
    # the saved weights are what got loaded
    fresh = tiny_components()["unet"].state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in m.unet.state_dict().items())


def test_fingerprint_is_stable_and_sees_weight_changes(tiny_sd_dir, tiny_model, tmp_path):
    again = GuidanceModel.from_pretrained(tiny_sd_dir)
    assert again.fingerprint == tiny_model.fingerprint
    comps = tiny_components()
    with torch.no_grad():
        comps["unet"].conv_out.bias[0] += 1e-3
    changed = GuidanceModel(**comps)
    assert changed.fingerprint != tiny_model.fingerprint
    comps = tiny_components()
    comps["scheduler"] = type(comps["scheduler"]).from_config(
        comps["scheduler"].config, beta_end=0.02)
    assert GuidanceModel(**comps).fingerprint != tiny_model.fingerprint


@pytest.mark.parametrize("missing", ["unet", "tokenizer", "scheduler"])
def test_missing_component_names_it_and_the_layout(tiny_sd_dir, tmp_path, missing):
    broken = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, broken)
    shutil.rmtree(broken / missing)
    with pytest.raises(ModelLayoutError) as err:
        GuidanceModel.from_pretrained(broken)
    msg = str(err.value)
    assert f"missing {missing}" in msg
    for name in ("vae/", "unet/", "text_encoder/", "tokenizer/", "scheduler/"):
        assert name in msg


def test_not_a_folder_is_an_error(tmp_path):
    with pytest.raises(ModelLayoutError, match="not a model folder"):
        GuidanceModel.from_pretrained(tmp_path / "nope")


def test_text_width_mismatch_is_a_clear_error():
    comps = tiny_components(cross_attention_dim=8)
    comps["unet"] = tiny_unet(cross_attention_dim=16)
    with pytest.raises(TextWidthError, match="width 8 != U-Net cross-attention width 16"):
        GuidanceModel(**comps)


def test_half_precision_is_cuda_only():
    with pytest.raises(ValueError, match="CUDA-only"):
        GuidanceModel(**tiny_components(), dtype=torch.float16)


def test_minilm_text_encoder_path(tmp_path, fmnist_small):
    """Real all-MiniLM-L6-v2 (BERT, 384-d) as text encoder of a 384-wide U-Net."""
    from transformers import BertModel

    src = minilm_dir()
    comps = tiny_components()
    root = tmp_path / "minilm-model"
    save_components({k: comps[k] for k in ("vae", "scheduler")}, root)
    tiny_unet(cross_attention_dim=384).save_pretrained(root / "unet")
    (root / "text_encoder").symlink_to(src, target_is_directory=True)
    (root / "tokenizer").symlink_to(src, target_is_directory=True)
    m = GuidanceModel.from_pretrained(root)
    assert isinstance(m.text_encoder, BertModel)
    assert m.text_max_length == 77
    states, pooled = m.encode_prompts(["a photo of a cat", "a photo of a dog",
                                       "a photo of a airplane"])
    assert states.shape == (3, 77, 384) and pooled.shape == (3, 384)
    # real sentence embeddings (mask mean-pool): cat is closer to dog than to airplane
    p = torch.nn.functional.normalize(pooled, dim=-1)
    assert p[0] @ p[1] > p[0] @ p[2]
    images, labels, names = fmnist_small
    r = FeatureRecipe(resolution=32, up_blocks=(0, 1), dim=8, micro_batch=4)
    ex = FeatureExtractor(m, r, names)
    raw = ex.raw(images[:4], range(4), ex.prompt_ids("noise", range(4), labels[:4]))
    assert raw.shape == (4, 1, 4 + 8 + 4) and torch.isfinite(raw).all()


def test_folder_with_text_encoder_reference_loads_minilm(tiny_sd_dir, tmp_path):
    """text_encoder.json stands in for text_encoder/ + tokenizer/ (embedded model)."""
    import json

    from diffusion_service.text_encoder_ref import text_encoder_spec

    folder = tmp_path / "ref-model"
    torch.manual_seed(0)
    tiny_unet(cross_attention_dim=384).save_pretrained(folder / "unet")
    for name in ("vae", "scheduler"):
        shutil.copytree(tiny_sd_dir / name, folder / name)
    (folder / "text_encoder.json").write_text(json.dumps(text_encoder_spec()))
    model = GuidanceModel.from_pretrained(folder)
    assert type(model.text_encoder).__name__ == "BertModel"
    assert model.text_encoder.config.hidden_size == 384

    spec = {**text_encoder_spec(), "sha256": "0" * 64}
    (folder / "text_encoder.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="SHA-256"):
        GuidanceModel.from_pretrained(folder)
