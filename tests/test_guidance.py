"""Server-side guidance prep and the client's reads, with a tiny random model."""

import numpy as np
import pytest
import torch
from diffusion_conftest import tiny_guided_config

from client_app.guidance import instance_features
from common.config import RunConfig
from common.federation import data_split
from diffusion_service import embedded_model
from server_app import guidance as server_guidance

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")

D = 32  # ResNet-10 width 4


_cfg = tiny_guided_config


def test_embedded_without_weights_names_the_pretraining_command(tmp_path, monkeypatch):
    empty = tmp_path / "embedded"
    empty.mkdir()
    monkeypatch.setattr(embedded_model, "embedded_candidates", lambda: [empty])
    with pytest.raises(server_guidance.GuidanceModelMissingError) as err:
        server_guidance.resolve_guidance_model("embedded")
    assert server_guidance.PRETRAIN_COMMAND in str(err.value)
    assert str(empty) in str(err.value)
    for part in ("vae", "unet"):  # configs only: what a FAB install holds
        (empty / part).mkdir()
        (empty / part / "config.json").write_text("{}")
    with pytest.raises(server_guidance.GuidanceModelMissingError):
        server_guidance.resolve_guidance_model("embedded")
    for part in ("vae", "unet"):
        (empty / part / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert server_guidance.resolve_guidance_model("embedded") == str(empty)
    assert server_guidance.resolve_guidance_model("some/hub-id") == "some/hub-id"


def test_default_embedded_candidates_include_the_package_folder():
    import diffusion_service

    first = server_guidance.embedded_candidates()[0]
    assert first.parent == server_guidance.Path(diffusion_service.__file__).parent


@pytest.mark.parametrize(
    ("overrides", "kinds"),
    [
        ({}, ("cond",)),
        ({"tdcl-weight": 0.0}, ("noise",)),
        ({"tdcl-weight": 0.0, "ndcr-weight": 0.0}, ()),
        ({"self-supervised": True, "tdcl-weight": 0.0}, ("cond",)),
    ],
)
def test_feddifrc_extracts_only_what_its_terms_need(defaults, overrides, kinds):
    cfg = RunConfig.from_run_config(
        {**defaults, "method": "feddifrc", "public-split-size": 10, **overrides}
    )
    assert server_guidance.feddifrc_kinds(cfg) == kinds


def test_store_root_defaults_under_the_output_dir(defaults, tmp_path):
    cfg = RunConfig.from_run_config({**defaults, "output-dir": str(tmp_path)})
    assert server_guidance.store_root(cfg) == tmp_path / "feature-store"


def test_semanticfl_anchors_come_from_the_public_split(
    paper_defaults, tiny_sd_dir, tmp_path
):
    cfg = _cfg(paper_defaults, tiny_sd_dir, tmp_path, method="semanticfl")
    split = data_split(cfg)
    anchors, info, teacher = server_guidance.prepare_semanticfl(cfg, split)
    assert teacher is None  # kd-form "coordinates" (paper): no zero-shot teacher
    assert info["anchors-from"] == 30
    for name in ("text", "visual"):
        a = anchors[name]
        assert a.shape == (10, D) and a.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(anchors["text"], anchors["visual"])
    # only public samples were featurised (no client data on the server side)
    (store,) = (tmp_path / "feature-store").glob("*/manifest.json")
    from diffusion_service import FeatureStore

    stored = FeatureStore(store.parent).stored_indices("noise")
    np.testing.assert_array_equal(stored, np.sort(split.public))
    again, _, _ = server_guidance.prepare_semanticfl(
        cfg, split
    )  # cached, deterministic
    np.testing.assert_array_equal(again["visual"], anchors["visual"])


def test_feddifrc_store_holds_every_client_sample_and_clients_read_their_own(
    paper_defaults, tiny_sd_dir, tmp_path
):
    from diffusion_service import FeatureStore, extract

    cfg = _cfg(paper_defaults, tiny_sd_dir, tmp_path)
    split = data_split(cfg)
    path, info, teacher = server_guidance.prepare_feddifrc(cfg, split)
    assert teacher is None  # the paper's form: zero-shot-weight 0
    store = FeatureStore(server_guidance.Path(path))
    everyone = np.unique(np.concatenate(split.clients))
    np.testing.assert_array_equal(store.stored_indices("cond"), everyone)
    assert info == {
        "samples": 36,
        "computed": {"cond": 36},
        "model": store.key["model"],
    }

    from common.datasets import load_dataset

    labels = load_dataset(cfg.data.dataset)[0].labels
    own = split.clients[1]
    g = instance_features(path, own, labels[own], tdcl=True, ndcr=True)
    assert g.f_pos.shape == (len(own), D) and g.f_neg.shape == (len(own), 9, D)
    assert g.f_noise is g.f_pos
    # the positive is the true-class row, i.e. exactly the "noise" feature
    with server_guidance.guidance_session(
        cfg, split, num_negatives=None, self_supervised=False
    ) as session:
        extract(session, kinds=("noise",), indices=own, progress=False)
        noise, _ = session.store.read("noise", own)
    assert torch.equal(noise.float(), g.f_pos)
    # negatives are the other class rows, not the positive
    cos = torch.einsum("nd,nkd->nk", g.f_pos, g.f_neg)
    assert (cos < 1 - 1e-4).all()


def test_feddifrc_sampled_negatives_and_self_supervised_layouts(
    defaults, tiny_sd_dir, tmp_path
):
    from common.datasets import load_dataset

    labels = load_dataset("fashion-mnist")[0].labels
    cfg = _cfg(defaults, tiny_sd_dir, tmp_path, **{"tdcl-negatives": 3})
    split = data_split(cfg)
    own = split.clients[0]
    path, _, _ = server_guidance.prepare_feddifrc(cfg, split)
    g = instance_features(path, own, labels[own], tdcl=True, ndcr=False)
    assert g.f_neg.shape == (len(own), 3, D) and g.f_noise is None

    ss = _cfg(defaults, tiny_sd_dir, tmp_path, **{"self-supervised": True})
    ss_path, _, _ = server_guidance.prepare_feddifrc(ss, split)
    assert ss_path != path
    wrong = torch.full_like(labels[own], 99)  # labels are not read
    g = instance_features(
        ss_path, own, wrong, tdcl=True, ndcr=True, self_supervised=True
    )
    assert g.f_pos.shape == (len(own), D) and g.f_noise.shape == (len(own), D)
    assert g.f_neg.shape == (len(own), 10, D)  # every class name is a negative
    assert not torch.equal(g.f_pos, g.f_noise)  # "similar" vs "visual object"


def test_feddifrc_gets_the_anchor_classifiers_frame_from_the_public_split(
    defaults, tiny_sd_dir, tmp_path
):
    cfg = _cfg(
        defaults,
        tiny_sd_dir,
        tmp_path,
        **{"anchor-classifier": "visual", "anchor-etf-mix": 0.5},
    )
    split = data_split(cfg)
    kwargs, record = server_guidance.guidance_kwargs(cfg, split)
    assert kwargs["store_path"] and kwargs["frame"].shape == (10, 10)
    np.testing.assert_allclose(np.linalg.norm(kwargs["frame"], axis=1), 1.0, rtol=1e-5)
    assert record["anchor-classifier"] == "visual" and record["anchor-etf-mix"] == 0.5
    # The same frame SemanticFL would build from the same model and recipe.
    anchors, _, _ = server_guidance.prepare_semanticfl(cfg, split)
    np.testing.assert_array_equal(
        server_guidance.classifier_anchors(cfg, split)["visual"], anchors["visual"]
    )


def test_aligned_text_anchors_are_the_random_ones_rotated(
    defaults, tiny_sd_dir, tmp_path
):
    cfg = _cfg(defaults, tiny_sd_dir, tmp_path, method="semanticfl")
    split = data_split(cfg)
    plain, info, _ = server_guidance.prepare_semanticfl(cfg, split)
    aligned_cfg = cfg.with_overrides({"text-anchor-map": "aligned"})
    aligned, aligned_info, _ = server_guidance.prepare_semanticfl(aligned_cfg, split)
    assert (info["text-anchor-map"], aligned_info["text-anchor-map"]) == (
        "random",
        "aligned",
    )
    np.testing.assert_array_equal(aligned["visual"], plain["visual"])
    gram = plain["text"] @ plain["text"].T
    np.testing.assert_allclose(aligned["text"] @ aligned["text"].T, gram, atol=1e-5)
    closer = np.linalg.norm(aligned["text"] - plain["visual"])
    assert closer < np.linalg.norm(plain["text"] - plain["visual"])


@pytest.mark.parametrize("projection", ["pca", "whitened"])
def test_the_run_config_chooses_the_recipe_projection(defaults, projection):
    cfg = RunConfig.from_run_config({**defaults, "guidance-projection": projection})
    recipe = server_guidance.make_recipe(cfg, dim=8)
    assert recipe.projection == projection and recipe.dim == 8
