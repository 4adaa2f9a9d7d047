"""Feature store: reruns compute nothing, bad shards are recomputed, runs resume."""

import json

import numpy as np
import pytest
import torch
from diffusion_conftest import UNetCalls, as_np

from diffusion_service import (
    CorruptShardError,
    FeatureRecipe,
    FeatureStore,
    MissingFeaturesError,
    Projection,
    StoreMismatchError,
    build_anchors,
    extract,
    open_session,
)
from diffusion_service.derive import whitening_scale

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")


def session(model, recipe, data, root, **kw):
    images, labels, names = data
    return open_session(model, recipe, dataset="fashion-mnist-train", images=images,
                        labels=labels, class_names=names, root=root, **kw)


def calls_per(n: int, micro_batch: int, prompts: int = 1) -> int:
    return -(-n // micro_batch) * prompts


def test_rerun_makes_zero_unet_calls_and_reads_what_was_computed(
    tiny_model, recipe, fmnist_small, tmp_path
):
    s = session(tiny_model, recipe, fmnist_small, tmp_path)
    with UNetCalls(tiny_model.unet) as calls:
        stats = extract(s, kinds=("noise", "neutral"), shard_size=16, progress=False)
    # fit (24 samples) + noise (40) + neutral (40), micro-batch 8
    assert calls.n == 3 + 5 + 5
    assert stats["noise"]["computed"] == 40
    with UNetCalls(tiny_model.unet) as calls:
        stats = extract(s, kinds=("noise", "neutral"), shard_size=16, progress=False)
        s2 = session(tiny_model, recipe, fmnist_small, tmp_path)  # a new process
        extract(s2, kinds=("noise", "neutral"), progress=False)
    assert calls.n == 0 and stats["noise"]["computed"] == 0
    # stored = fp16 of what the extractor computes directly
    images, labels, _ = fmnist_small
    proj = s.store.load_projection()
    direct = s.extractor.features(images[[3, 17]], [3, 17], labels[[3, 17]].view(-1, 1), proj)
    got, classes = s2.store.read("noise", [3, 17])
    assert classes is None and got.dtype == torch.float16 and got.shape == (2, 8)
    assert np.array_equal(as_np(got), as_np(direct[:, 0].half()))


def test_projection_is_fitted_once(tiny_model, recipe, fmnist_small, tmp_path, monkeypatch):
    fits = []
    real_fit = Projection.fit.__func__
    monkeypatch.setattr(Projection, "fit", classmethod(
        lambda cls, raw, dim, **kw: fits.append(len(raw)) or real_fit(cls, raw, dim, **kw)))
    s = session(tiny_model, recipe, fmnist_small, tmp_path)
    extract(s, kinds=("noise",), indices=range(16), progress=False)
    first = (s.store.path / "projection.safetensors").read_bytes()
    extract(s, kinds=("noise", "neutral"), progress=False)
    extract(session(tiny_model, recipe, fmnist_small, tmp_path), kinds=("cond",),
            indices=range(30, 40), progress=False)
    assert fits == [24]  # once, on the whole fit subset, never per batch
    assert (s.store.path / "projection.safetensors").read_bytes() == first
    assert s.store.manifest["projection"]["fit_size"] == 24


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_bad_shard_is_detected_never_used_and_recomputed(
    tiny_model, recipe, fmnist_small, tmp_path, damage
):
    s = session(tiny_model, recipe, fmnist_small, tmp_path / "a")
    extract(s, kinds=("noise",), shard_size=16, progress=False)
    good, _ = s.store.read("noise", range(40))
    entry = s.store.shards("noise")[1]  # samples 16..31
    path = s.store.path / entry["file"]
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-3] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:  # a valid shard of another recipe, manifest entry forged to match it
        other = session(tiny_model, FeatureRecipe(**{**recipe.to_dict(), "seed": 9}),
                        fmnist_small, tmp_path / "b")
        extract(other, kinds=("noise",), shard_size=16, progress=False)
        blob = bytearray((other.store.path / other.store.shards("noise")[1]["file"])
                         .read_bytes())
        import hashlib

        entry.update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
        s.store._save_manifest()
    path.write_bytes(bytes(blob))
    fresh = FeatureStore(s.store.path)
    with pytest.raises(CorruptShardError):
        fresh.read("noise", [20])
    fresh.read("noise", [3, 35])  # other shards stay readable
    with UNetCalls(tiny_model.unet) as calls:
        stats = extract(session(tiny_model, recipe, fmnist_small, tmp_path / "a"),
                        kinds=("noise",), shard_size=16, progress=False)
    assert len(stats["noise"]["problems"]) == 1
    assert stats["noise"]["computed"] == 16 and calls.n == 2  # only that shard
    again, _ = FeatureStore(s.store.path).read("noise", range(40))
    assert np.array_equal(as_np(again), as_np(good))


def test_interrupted_extraction_resumes(tiny_model, recipe, fmnist_small, tmp_path):
    ref = session(tiny_model, recipe, fmnist_small, tmp_path / "ref")
    extract(ref, kinds=("noise",), shard_size=16, progress=False)
    s = session(tiny_model, recipe, fmnist_small, tmp_path / "run")
    # killed during the third U-Net call of shard 2 (fit: 3 calls, shard 1: 2 calls)
    with UNetCalls(tiny_model.unet, fail_after=3 + 2 + 1), pytest.raises(KeyboardInterrupt):
        extract(s, kinds=("noise",), shard_size=16, progress=False)
    assert s.store.stored_indices("noise").tolist() == list(range(16))
    with UNetCalls(tiny_model.unet) as calls:
        stats = extract(session(tiny_model, recipe, fmnist_small, tmp_path / "run"),
                        kinds=("noise",), shard_size=16, progress=False)
    assert stats["noise"]["computed"] == 24 and calls.n == 3  # 16 + 8: no refit
    a, _ = ref.store.read("noise", range(40))
    b, _ = FeatureStore(s.store.path).read("noise", range(40))
    assert np.array_equal(as_np(a), as_np(b))


def test_other_model_or_recipe_never_mixes_in(tiny_model, recipe, fmnist_small, tmp_path):
    a = session(tiny_model, recipe, fmnist_small, tmp_path)
    extract(a, kinds=("noise",), indices=range(8), progress=False)
    for change in ({"timestep": 300}, {"up_blocks": (1,)}, {"seed": 4},
                   {"prompt_template": "a {}"}, {"dim": 4}, {"projection": "whitened"}):
        other = session(tiny_model, FeatureRecipe(**{**recipe.to_dict(), **change}),
                        fmnist_small, tmp_path)
        assert other.store.path != a.store.path, change
        assert len(other.store.missing("noise", range(8))) == 8
    images, labels, names = fmnist_small
    shifted = (images[torch.arange(40).roll(1)], labels[torch.arange(40).roll(1)], names)
    assert session(tiny_model, recipe, shifted, tmp_path).store.path != a.store.path
    with pytest.raises(StoreMismatchError, match="never mixed in"):
        FeatureStore(a.store.path, other.store.key)


def test_default_projection_keeps_the_store_keys_made_before_the_option(
    tiny_model, recipe, fmnist_small, tmp_path
):
    # Stores made before `projection` existed have no such entry in their key;
    # the default must find them, the whitened recipe must not.
    key = session(tiny_model, recipe, fmnist_small, tmp_path).store.key
    assert "projection" not in key["recipe"]
    whitened = FeatureRecipe(**{**recipe.to_dict(), "projection": "whitened"})
    key_w = session(tiny_model, whitened, fmnist_small, tmp_path).store.key
    assert key_w["recipe"]["projection"] == "whitened"


def test_whitened_store_holds_unit_variance_coordinates(
    tiny_model, recipe, fmnist_small, tmp_path
):
    whitened = FeatureRecipe(**{**recipe.to_dict(), "projection": "whitened"})
    s = session(tiny_model, whitened, fmnist_small, tmp_path)
    extract(s, kinds=("noise",), indices=range(4), progress=False)
    proj = s.store.load_projection()
    plain = session(tiny_model, recipe, fmnist_small, tmp_path)
    extract(plain, kinds=("noise",), indices=range(4), progress=False)
    pca = plain.store.load_projection()
    # the same directions, each scaled by 1/std: column norms are 1/std > 0,
    # and normalising the columns gives PCA's orthonormal ones back
    k = proj.rank
    norms = proj.components[:, :k].norm(dim=0)
    assert torch.all(norms > 0)
    assert torch.allclose(proj.components[:, :k] / norms, pca.components[:, :k], atol=1e-4)
    # largest-variance direction first: its scale is the smallest
    assert torch.all(norms[1:] >= norms[:-1] - 1e-6)


def test_whitened_store_is_derived_from_its_pca_twin_without_unet_passes(
    tiny_model, recipe, fmnist_small, tmp_path
):
    plain = session(tiny_model, recipe, fmnist_small, tmp_path)
    extract(plain, kinds=("noise", "cond"), shard_size=16, progress=False)
    whitened = FeatureRecipe(**{**recipe.to_dict(), "projection": "whitened"})
    w = session(tiny_model, whitened, fmnist_small, tmp_path)
    with UNetCalls(tiny_model.unet) as calls:
        stats = extract(w, kinds=("noise", "cond"), progress=False)
    assert calls.n == calls_per(24, 8)  # the whitened fit (24 samples), nothing else
    assert stats["noise"] == {"computed": 0, "derived": 40, "problems": []}
    assert stats["cond"]["computed"] == 0 and stats["cond"]["derived"] == 40
    # against a whitened store extracted directly (no twin under its root)
    direct = session(tiny_model, whitened, fmnist_small, tmp_path / "alone")
    assert extract(direct, kinds=("noise", "cond"), progress=False)["noise"][
        "derived"] == 0
    for kind in ("noise", "cond"):
        got, got_c = FeatureStore(w.store.path).read(kind, range(40))
        want, want_c = direct.store.read(kind, range(40))
        # equal up to the fp16 rounding of the stored PCA feature
        assert (got.float() - want.float()).abs().max() < 4e-3, kind
        assert (got_c is None) == (want_c is None)
        if got_c is not None:
            assert torch.equal(got_c, want_c)
    # the whitened projection whitens the twin's: same mean and directions
    pca, wp = plain.store.load_projection(), w.store.load_projection()
    scale = whitening_scale(pca, wp)
    assert scale is not None and torch.equal(wp.mean, pca.mean)
    assert torch.allclose(wp.components, pca.components * scale, rtol=1e-6, atol=0)
    # one fitted on other features (a twin refitted since) is not rescaled
    refit = Projection.fit(torch.randn(30, pca.components.shape[0]), 8, whiten=True)
    assert whitening_scale(pca, refit) is None


def test_reading_a_client_touches_only_its_shards(
    tiny_model, recipe, fmnist_small, tmp_path, monkeypatch
):
    s = session(tiny_model, recipe, fmnist_small, tmp_path)
    extract(s, kinds=("noise",), shard_size=8, progress=False)
    opened = []
    real = FeatureStore._load_shard
    monkeypatch.setattr(FeatureStore, "_load_shard",
                        lambda self, e, k, v: opened.append(e["file"]) or real(self, e, k, v))
    client = [33, 2, 5, 38]  # shards 0 and 4 of 5
    feats, _ = FeatureStore(s.store.path).read("noise", client)
    assert sorted(opened) == [s.store.shards("noise")[i]["file"] for i in (0, 4)]
    full, _ = FeatureStore(s.store.path).read("noise", range(40))
    assert np.array_equal(as_np(feats), as_np(full[client]))
    with pytest.raises(MissingFeaturesError, match="1 of 2 samples"):
        FeatureStore(s.store.path).read("noise", [3, 40])


def test_cond_features_and_anchors(tiny_model, recipe, fmnist_small, tmp_path):
    r = FeatureRecipe(**{**recipe.to_dict(), "num_negatives": 2})
    s = session(tiny_model, r, fmnist_small, tmp_path)
    extract(s, kinds=("cond", "noise"), indices=range(12), progress=False)
    cond, classes = s.store.read("cond", [4, 9])
    _, labels, names = fmnist_small
    assert cond.shape == (2, 3, 8) and torch.equal(classes[:, 0], labels[[4, 9]])
    # the positive row equals the denoising feature: same noise, prompt, shape
    noise, _ = s.store.read("noise", [4, 9])
    assert np.array_equal(as_np(cond[:, 0]), as_np(noise))
    anchors = build_anchors(s, range(40), progress=False)  # extracts the rest
    assert anchors["text"].shape == anchors["visual"].shape == (10, 8)
    feats, _ = s.store.read("noise", range(40))
    y = labels[:40]
    for c in (0, 5):
        mean = torch.nn.functional.normalize(feats[y == c].float().mean(0), dim=0)
        assert torch.allclose(anchors["visual"][c], mean, atol=1e-6)
    meta = json.loads((s.store.path / "manifest.json").read_text())
    assert meta["key"]["recipe"]["num_negatives"] == 2
