"""Feature recipe: preprocessing, per-sample noise, hooks, projection, determinism."""

import numpy as np
import pytest
import torch
from diffusion_conftest import as_np

from diffusion_service import (
    FeatureExtractor,
    FeatureRecipe,
    ImageInputError,
    Projection,
    text_anchors,
    text_map,
)

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def ex(tiny_model, recipe, fmnist_small):
    return FeatureExtractor(tiny_model, recipe, fmnist_small[2])


def test_preprocess_scales_to_minus_one_one_and_converts_grayscale(ex):
    img = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    img[1] = 255
    x = ex.preprocess(img)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.all(x[0] == -1) and torch.all(x[1] == 1)  # not FedDifRC's near-black
    mid = ex.preprocess(torch.full((1, 3, 32, 32), 128, dtype=torch.uint8))
    assert torch.allclose(mid, torch.tensor(128 / 255 * 2 - 1), atol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 2, 28, 28, dtype=torch.uint8), "2 channels"),
        (torch.zeros(2, 4, 28, 28, dtype=torch.uint8), "4 channels"),
        (torch.zeros(2, 28, 28, dtype=torch.uint8), r"\(N, C, H, W\)"),
        (torch.zeros(2, 1, 28, 28), "uint8"),
    ],
)
def test_bad_images_are_clear_errors(ex, bad, match):
    with pytest.raises(ImageInputError, match=match):
        ex.preprocess(bad)


def test_up_block_out_of_range(tiny_model, fmnist_small):
    with pytest.raises(ValueError, match=r"2 up blocks \(indices 0..1\)"):
        FeatureExtractor(tiny_model, FeatureRecipe(up_blocks=(1, 2, 3)), fmnist_small[2])


def test_raw_and_projected_shapes(ex, fmnist_small):
    images, labels, _ = fmnist_small
    idx = np.arange(10)
    ids = ex.prompt_ids("cond", idx, labels[:10])
    raw = ex.raw(images[:10], idx, ids)
    assert raw.shape == (10, 10, 4 + 8 + 4)  # pooled latent + up_blocks 0 (8) and 1 (4)
    proj = Projection.fit(raw.reshape(-1, raw.shape[-1]), dim=8)
    f = ex.features(images[:10], idx, ids, proj)
    assert f.shape == (10, 10, 8)
    assert torch.allclose(f.norm(dim=-1), torch.ones(10, 10), atol=1e-5)
    # the prompt matters: class-k features differ between prompts
    assert not torch.allclose(f[:, 0], f[:, 1])


def test_hooks_capture_the_up_block_outputs(ex, tiny_model, fmnist_small):
    images, labels, _ = fmnist_small
    captured = {}
    hook = tiny_model.unet.up_blocks[1].register_forward_hook(
        lambda m, a, o: captured.__setitem__("o", o))
    try:
        raw = ex.raw(images[:8], range(8), labels[:8].view(-1, 1))
    finally:
        hook.remove()
    assert torch.equal(raw[:, 0, -4:], captured["o"].mean(dim=(2, 3)))
    assert len(tiny_model.unet.up_blocks[1]._forward_hooks) == 0  # taps removed


def test_same_sample_is_bitwise_identical_in_any_batch(ex, fmnist_small):
    images, labels, _ = fmnist_small
    proj = Projection.fit(torch.randn(64, 16), dim=8)
    ids = labels.view(-1, 1)
    full = ex.features(images[:20], range(20), ids[:20], proj)  # 8 + 8 + 4 rows
    alone = ex.features(images[13:14], [13], ids[13:14], proj)  # batch of one
    mixed_order = [13, 2, 39, 7, 5]
    mixed = ex.features(images[mixed_order], mixed_order, ids[mixed_order], proj)
    assert np.array_equal(as_np(full[13]), as_np(alone[0]))
    assert np.array_equal(as_np(full[13]), as_np(mixed[0]))
    assert np.array_equal(as_np(full[7]), as_np(mixed[3]))


def test_noise_is_per_sample_and_seeded(ex, tiny_model, recipe, fmnist_small):
    a = ex.noise([5, 6, 5])
    assert a.shape == (3, 4, 16, 16)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    other = FeatureExtractor(tiny_model, FeatureRecipe(**{**recipe.to_dict(), "seed": 4}),
                             fmnist_small[2])
    assert not torch.equal(other.noise([5])[0], a[0])


def test_cond_negatives_are_sampled_per_sample(tiny_model, recipe, fmnist_small):
    _, labels, names = fmnist_small
    r = FeatureRecipe(**{**recipe.to_dict(), "num_negatives": 3})
    ex = FeatureExtractor(tiny_model, r, names)
    ids = ex.prompt_ids("cond", range(40), labels)
    assert ids.shape == (40, 4)
    assert torch.equal(ids[:, 0], labels)  # positive first
    for row in ids:
        assert len(set(row.tolist())) == 4  # negatives distinct, never the positive
    assert torch.equal(ids, ex.prompt_ids("cond", range(40), labels))
    assert torch.equal(ex.prompt_ids("neutral", range(3), labels[:3]),
                       torch.full((3, 1), len(names)))
    with pytest.raises(ValueError, match="num_negatives=10"):
        FeatureExtractor(tiny_model, FeatureRecipe(**{**recipe.to_dict(),
                         "num_negatives": 10}), names).prompt_ids("cond", [0], labels[:1])


def test_projection_zero_pads_when_raw_is_narrower_than_d():
    raw = torch.randn(50, 6, dtype=torch.float64).float()
    p = Projection.fit(raw, dim=16)
    assert p.rank == 6 and p.components.shape == (6, 16)
    assert torch.all(p.components[:, 6:] == 0)
    out = p(raw)
    centred = torch.nn.functional.normalize(raw - raw.mean(0), dim=-1)
    # a rotation of the centred data: cosine similarities are kept
    assert torch.allclose(out @ out.T, centred @ centred.T, atol=1e-5)
    assert torch.equal(Projection.fit(raw, dim=16).components, p.components)


def test_whitened_projection_by_hand():
    # Principal directions e1 (variance 200/3) and e2 (variance 2/3), centred:
    # whitened coordinates are the raw ones over each direction's std.
    raw = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    p = Projection.fit(raw, dim=3, whiten=True)
    coords = (raw - p.mean) @ p.components
    c = 1.5**0.5  # 10 / sqrt(200/3) = 1 / sqrt(2/3)
    expected = torch.tensor([[c, 0, 0], [-c, 0, 0], [0, c, 0], [0, -c, 0]])
    assert torch.allclose(coords, expected, atol=1e-6)
    assert p.rank == 2 and torch.all(p.components[:, 2] == 0)
    # unwhitened, the large direction dominates every cosine; whitened, the
    # two directions count equally
    assert torch.allclose(p(torch.tensor([[10.0, 1.0]])),
                          torch.tensor([[2**-0.5, 2**-0.5, 0.0]]), atol=1e-6)
    pca = Projection.fit(raw, dim=3)
    assert pca(torch.tensor([[10.0, 1.0]]))[0, 0] > 0.99


def test_recipe_rejects_an_unknown_projection():
    with pytest.raises(ValueError, match="projection must be one of pca, whitened"):
        FeatureRecipe(projection="lda")


def test_text_map_isometric_when_text_fits(ex):
    m = text_map(8, 16, seed=0)
    assert torch.allclose(m @ m.T, torch.eye(8), atol=1e-6)
    assert torch.equal(m, text_map(8, 16, seed=0))
    anchors = text_anchors(ex, dim=16, seed=0)
    assert anchors.shape == (10, 16)
    pooled = torch.nn.functional.normalize(ex.text_pooled[:10], dim=-1)
    assert torch.allclose(anchors @ anchors.T, pooled @ pooled.T, atol=1e-5)
