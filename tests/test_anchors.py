"""The anchor classifier: its frame's geometry, the ETF mix that keeps the
similarity order, and a frame that is never trained, sent or aggregated."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from client_app.guidance import classifier_frame
from common import keys
from common.anchors import (
    anchor_frame,
    cosine_gram,
    etf_gram,
    frame_from_gram,
    toward_etf,
)
from common.config import ConfigError, RunConfig
from common.federation import make_model
from common.models import FixedFrameClassifier

C = 10


def _anchors(seed=0, d=32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, d, generator=g)
    # Correlated anchors, as the diffusion model's are (cosines well above 0).
    return base + 0.6 * torch.randn(C, d, generator=g)


def test_the_frame_has_the_anchors_geometry():
    visual = _anchors()
    frame = anchor_frame(_anchors(1), visual, "visual", 0.0)
    assert frame.shape == (C, C)
    torch.testing.assert_close(
        frame.double() @ frame.double().T, cosine_gram(visual), atol=1e-5, rtol=0
    )


def test_the_etf_mix_keeps_the_similarity_order_and_spreads_classes():
    gram = cosine_gram(_anchors())
    i, j = torch.triu_indices(C, C, offset=1)  # each pair once (no ties)
    off = (i, j)
    order = torch.argsort(gram[off])
    for mix in (0.25, 0.5, 0.9):
        mixed = toward_etf(gram, mix)
        assert torch.equal(torch.argsort(mixed[off]), order)
        assert mixed[off].max() < gram[off].max()  # the closest pair moves apart
    frame = frame_from_gram(toward_etf(gram, 1.0))
    torch.testing.assert_close(
        frame.double() @ frame.double().T, etf_gram(C), atol=1e-5, rtol=0
    )  # mix 1 is FedETF's simplex: every cosine -1/9


def test_fused_anchors_average_the_two_grams():
    text, visual = _anchors(2), _anchors(3)
    frame = anchor_frame(text, visual, "fused", 0.0).double()
    want = 0.5 * (cosine_gram(text) + cosine_gram(visual))
    torch.testing.assert_close(frame @ frame.T, want, atol=1e-5, rtol=0)


def test_bad_sources_and_mixes_are_named():
    with pytest.raises(ValueError, match="unknown anchor source 'clip'"):
        anchor_frame(_anchors(), _anchors(), "clip", 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        toward_etf(cosine_gram(_anchors()), 1.5)


def _cfg(defaults, **changes):
    return RunConfig.from_run_config(
        {**defaults, "method": "semanticfl", "model-width": 8, **changes}
    )


def test_the_config_chooses_the_classifier(defaults):
    assert _cfg(defaults).classifier == "linear"  # the paper's form
    assert _cfg(defaults, **{"anchor-classifier": "fused"}).classifier == "anchors"
    assert (
        RunConfig.from_run_config({**defaults, "method": "fedetf"}).classifier == "etf"
    )
    with pytest.raises(ConfigError, match="anchor-classifier"):
        _cfg(defaults, **{"anchor-classifier": "both"})
    with pytest.raises(ConfigError, match="anchor-etf-mix"):
        _cfg(defaults, **{"anchor-classifier": "text", "anchor-etf-mix": -0.1})


def test_the_frame_is_never_sent_aggregated_or_trained(defaults):
    cfg = _cfg(defaults, **{"anchor-classifier": "visual"})
    frame = anchor_frame(_anchors(1), _anchors(), "visual", 0.3)
    clients = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = make_model(cfg)
        assert isinstance(model.classifier, FixedFrameClassifier)
        with pytest.raises(RuntimeError, match="frame was never set"):
            model(torch.randn(2, 1, 28, 28))
        model.classifier.set_frame(frame)
        clients.append(model)
    state = clients[0].state_dict()
    assert "classifier.frame" not in state and "classifier.project.weight" in state

    # A local step: gradients reach the projector and the scale, never the frame.
    model = clients[0].train()
    before = model.classifier.frame.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(8, 1, 28, 28)).logits, torch.arange(8) % C
    )
    loss.backward()
    assert model.classifier.project.weight.grad is not None
    assert (
        model.classifier.frame.grad is None and not model.classifier.frame.requires_grad
    )
    opt.step()
    assert torch.equal(model.classifier.frame, before)

    # Aggregation (Flower's weighted mean) sees weights only; the frame stays put.
    records = [ArrayRecord(m.state_dict()) for m in clients]
    from flwr.app import MetricRecord, RecordDict

    mean = aggregate_arrayrecords(
        [
            RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": 1})})
            for r in records
        ],
        "num-examples",
    )
    server = make_model(cfg)
    server.load_state_dict(mean.to_torch_state_dict())
    server.classifier.set_frame(frame)
    for m in (server, *clients):
        assert torch.equal(m.classifier.frame, clients[1].classifier.frame)
    assert np.isfinite(server(torch.randn(2, 1, 28, 28)).logits.detach().numpy()).all()


@pytest.mark.parametrize("method", ["semanticfl", "feddifrc"])
def test_both_guided_methods_send_the_frame_in_train_and_evaluate_messages(
    paper_defaults, task_identity, method
):
    from flwr.app import ConfigRecord

    from server_app.strategies import strategy_class

    cfg = RunConfig.from_run_config(
        {**paper_defaults, "method": method, "anchor-classifier": "visual"}
    )
    assert cfg.classifier == "anchors"
    frame = anchor_frame(_anchors(1), _anchors(), "visual", 0.5).numpy()
    prepared = (
        {"anchors": {"text": frame, "visual": frame}}
        if method == "semanticfl"
        else {"store_path": "/store"}
    )
    strategy = strategy_class(method).from_config(
        cfg.section(cfg.method_info.section),
        frame=frame,
        fraction_evaluate=1.0,
        **prepared,
    )

    class Grid:
        def get_node_ids(self):
            return [4, 5]

    arrays = ArrayRecord([np.ones(1)])
    for configure in (strategy.configure_train, strategy.configure_evaluate):
        messages = list(configure(1, arrays, ConfigRecord({}), Grid()))
        assert len(messages) == 2
        for msg in messages:
            sent = msg.content[keys.CLASSIFIER][keys.CLASSIFIER_FRAME].numpy()
            np.testing.assert_array_equal(sent, frame)
            assert classifier_frame(msg).shape == (C, C)


def test_the_anchor_classifier_needs_a_labelled_guided_method(defaults):
    with pytest.raises(ConfigError, match="guided method"):
        RunConfig.from_run_config(
            {**defaults, "method": "fedavg", "anchor-classifier": "visual"}
        )
    with pytest.raises(ConfigError, match="self-supervised"):
        RunConfig.from_run_config(
            {
                **defaults,
                "method": "feddifrc",
                "self-supervised": True,
                "anchor-classifier": "visual",
            }
        )


def test_aligned_text_anchors_keep_their_geometry_and_land_on_the_visual_axes():
    from common.anchors import align_rows

    text = torch.nn.functional.normalize(_anchors(3), dim=1)
    q, _ = torch.linalg.qr(
        torch.randn(32, 32, generator=torch.Generator().manual_seed(5))
    )
    visual = text @ q  # the same geometry in other axes
    aligned = align_rows(text, visual)
    torch.testing.assert_close(aligned, visual, atol=1e-5, rtol=0)
    # Any target: the cosines among the text anchors do not move.
    other = align_rows(text, _anchors(4))
    torch.testing.assert_close(cosine_gram(other), cosine_gram(text), atol=1e-6, rtol=0)
    assert (other - torch.nn.functional.normalize(_anchors(4), dim=1)).norm() < (
        text - torch.nn.functional.normalize(_anchors(4), dim=1)
    ).norm()
    with pytest.raises(ValueError, match="one shape"):
        align_rows(text, text[:3])
