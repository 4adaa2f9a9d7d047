"""FedDifRC and SemanticFL terms in the local training loop (synthetic guidance)."""

import math

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord

from client_app.training import Guidance, LocalSettings, train
from common import keys
from common.losses import tdcl
from common.models import build_model

N, C, WIDTH = 192, 10, 4
D = 8 * WIDTH  # ResNet-10's embedding width


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(N, 1, 28, 28, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    return images, labels


def _guidance(requires_grad=False, k=C - 1):
    g = torch.Generator().manual_seed(1)

    def unit(*shape):
        t = F.normalize(torch.randn(*shape, generator=g), dim=-1)
        return t.requires_grad_(requires_grad)

    return Guidance(
        f_pos=unit(N, D),
        f_neg=unit(N, k, D),
        f_noise=unit(N, D),
        text_anchors=unit(C, D),
        visual_anchors=unit(C, D),
    )


def _model():
    torch.manual_seed(0)
    return build_model("resnet10", 1, C, WIDTH, 28)


def _settings(**terms):
    return LocalSettings(
        lr=0.05, momentum=0.9, weight_decay=0.0, epochs=1, batch_size=32, **terms
    )


TERMS = {
    "tdcl": ({"tdcl_weight": 0.5, "tdcl_tau": 0.04}, keys.TRAIN_TDCL),
    "ndcr": ({"ndcr_weight": 2.0}, keys.TRAIN_NDCR),
    "ndcr-kl": ({"ndcr_weight": 1.0, "ndcr_mode": "kl"}, keys.TRAIN_NDCR),
    "kd": ({"kd_weight": 1.0, "kd_temperature": 0.1}, keys.TRAIN_KD),
    "con": ({"con_weight": 0.01, "con_tau": 0.05}, keys.TRAIN_CON),
}
GUIDED_METRICS = (keys.TRAIN_TDCL, keys.TRAIN_NDCR, keys.TRAIN_KD, keys.TRAIN_CON)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_each_term_runs_alone_and_is_logged(name, data):
    terms, metric = TERMS[name]
    metrics = train(_model(), *data, _settings(**terms), guidance=_guidance())
    assert metrics[metric] > 0
    for other in GUIDED_METRICS:
        if other != metric:
            assert metrics[other] == 0.0  # the other terms are off
    weight = next(v for k, v in terms.items() if k.endswith("_weight"))
    # train-loss is the mean of CE + weight * term, batch by batch
    assert math.isclose(
        metrics[keys.TRAIN_LOSS],
        metrics[keys.TRAIN_CE] + weight * metrics[metric],
        rel_tol=1e-5,
    )


def test_all_terms_compose(data):
    settings = _settings(
        tdcl_weight=1.0, ndcr_weight=1.0, kd_weight=1.0, con_weight=0.01
    )
    metrics = train(_model(), *data, settings, guidance=_guidance())
    assert all(metrics[m] > 0 for m in GUIDED_METRICS)
    expected = metrics[keys.TRAIN_CE] + sum(
        w * metrics[m]
        for w, m in zip((1.0, 1.0, 1.0, 0.01), GUIDED_METRICS, strict=True)
    )
    assert math.isclose(metrics[keys.TRAIN_LOSS], expected, rel_tol=1e-5)


def test_gradients_reach_only_the_client_model(data):
    guidance = _guidance(requires_grad=True)
    before = {
        n: getattr(guidance, n).detach().clone()
        for n in ("f_pos", "f_neg", "f_noise", "text_anchors", "visual_anchors")
    }
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    settings = _settings(tdcl_weight=1.0, ndcr_weight=1.0, kd_weight=1.0, con_weight=1)
    train(model, *data, settings, guidance=guidance)
    for name, value in before.items():
        tensor = getattr(guidance, name)
        assert tensor.grad is None, name  # the diffusion side is detached
        assert torch.equal(tensor.detach(), value), name
    assert any(
        not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True)
    )


def test_tdcl_training_moves_embeddings_toward_their_positives(data):
    images, labels = data
    guidance = _guidance()
    model = _model()

    def mean_cos():
        model.eval()
        with torch.no_grad():
            z = model(images).embedding
        model.train()
        return F.cosine_similarity(z, guidance.f_pos, dim=1).mean().item()

    first = mean_cos()
    for seed in range(3):
        train(
            model,
            images,
            labels,
            _settings(tdcl_weight=1.0, tdcl_tau=0.1),
            guidance=guidance,
            seed=seed,
        )
    assert mean_cos() > first + 0.05


def test_tdcl_lowers_when_an_embedding_moves_toward_its_positive():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, D, generator=g)
    f_pos = torch.randn(8, D, generator=g)
    f_neg = torch.randn(8, 5, D, generator=g)
    values = [
        tdcl(z + a * (F.normalize(f_pos, dim=1) * z.norm(dim=1, keepdim=True) - z),
             f_pos, f_neg, 0.04).item()
        for a in (0.0, 0.3, 0.6, 1.0)
    ]  # fmt: skip
    assert values == sorted(values, reverse=True) and values[-1] < values[0]


def test_self_supervised_reads_no_labels(data):
    images, _ = data
    labels = torch.full((N,), 10_000)  # any use (CE, accuracy) would fail or show
    settings = _settings(
        tdcl_weight=1.0, ndcr_weight=1.0, self_supervised=True, tdcl_negatives=4
    )
    metrics = train(_model(), images, labels, settings, guidance=_guidance())
    assert metrics[keys.TRAIN_CE] == 0.0 and metrics[keys.TRAIN_ACCURACY] == 0.0
    assert metrics[keys.TRAIN_TDCL] > 0 and metrics[keys.TRAIN_NDCR] > 0


def test_a_switched_on_term_without_its_guidance_fails_clearly(data):
    with pytest.raises(ValueError, match="visual_anchors"):
        train(_model(), *data, _settings(kd_weight=1.0), guidance=Guidance())
    with pytest.raises(ValueError, match="f_pos"):
        train(_model(), *data, _settings(tdcl_weight=1.0))


def test_settings_switch_terms_by_present_keys():
    base = {
        keys.LR: 0.1,
        keys.MOMENTUM: 0.0,
        keys.WEIGHT_DECAY: 0.0,
        keys.LOCAL_EPOCHS: 1,
        keys.BATCH_SIZE: 8,
    }
    plain = LocalSettings.from_config(base)
    assert not plain.needs_instance_features and not plain.needs_anchors
    s = LocalSettings.from_config(
        {
            **base,
            keys.NDCR_WEIGHT: 0.5,
            keys.NDCR_MODE: "kl",
            keys.NDCR_TAU: 0.1,
            keys.FEATURE_STORE: "/x",
            keys.CON_WEIGHT: 0.01,
            keys.CON_TAU: 0.05,
        }
    )
    assert s.ndcr_weight == 0.5 and s.ndcr_mode == "kl" and s.tdcl_weight is None
    assert s.con_weight == 0.01 and s.kd_weight is None and s.feature_store == "/x"
    assert s.needs_instance_features and s.needs_anchors
    # The strategy sends a term's settings with its weight: none may be missing.
    with pytest.raises(KeyError, match=r"'con-weight' but lacks \['con-tau'\]"):
        LocalSettings.from_config({**base, keys.CON_WEIGHT: 0.01})


def test_client_handler_reads_anchors_from_the_message(defaults, task_identity):
    """The ClientApp's train handler, in process: anchors in, one reply record each."""
    from flwr.app import Array, Context, Message, RecordDict

    from client_app import app as client
    from common.config import RunConfig
    from common.federation import make_model

    run_config = {
        **defaults,
        "method": "semanticfl",
        "public-split-size": 100,
        "num-clients": 20,
        "partitioner": "iid",
        "max-samples-per-client": 64,
        "model-width": WIDTH,
    }
    cfg = RunConfig.from_run_config(run_config)
    model = make_model(cfg)
    g = torch.Generator().manual_seed(0)
    anchors = {
        k: Array(F.normalize(torch.randn(C, D, generator=g), dim=1).numpy())
        for k in (keys.TEXT_ANCHORS, keys.VISUAL_ANCHORS)
    }
    config = ConfigRecord(
        {
            keys.LR: 0.05,
            keys.MOMENTUM: 0.9,
            keys.WEIGHT_DECAY: 0.0,
            keys.LOCAL_EPOCHS: 1,
            keys.BATCH_SIZE: 32,
            keys.SERVER_ROUND: 1,
            keys.KD_WEIGHT: 1.0,
            keys.KD_TEMPERATURE: 0.1,
            keys.KD_FORM: "coordinates",
            keys.CON_WEIGHT: 0.01,
            keys.CON_TAU: 0.05,
        }
    )
    msg = Message(
        content=RecordDict(
            {
                keys.ARRAYS: ArrayRecord(model.state_dict()),
                keys.CONFIG: config,
                keys.GUIDANCE: ArrayRecord(anchors),
            }
        ),
        dst_node_id=7,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=7,
        node_config={keys.PARTITION_ID: 0, keys.NUM_PARTITIONS: 20},
        state=RecordDict(),
        run_config=run_config,
    )
    reply = client.train(msg, context)
    assert list(reply.content.array_records) == [keys.ARRAYS]
    metrics = reply.content[keys.METRICS]
    assert metrics[keys.TRAIN_KD] > 0 and metrics[keys.TRAIN_CON] > 0
    assert metrics[keys.NUM_EXAMPLES] == 64


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_guided_terms_train_the_guidance_head_and_ce_does_not(kind, data):
    from common.models import attach_guidance_head

    model = attach_guidance_head(_model(), kind)
    head_before = [p.detach().clone() for p in model.guidance_head.parameters()]
    guided = train(model, *data, _settings(kd_weight=1.0), guidance=_guidance())
    assert guided[keys.TRAIN_KD] > 0
    assert any(
        not torch.equal(p, b)
        for p, b in zip(model.guidance_head.parameters(), head_before, strict=True)
    )
    # Without a guided term the head gets no gradient: CE never sees it.
    model = attach_guidance_head(_model(), kind)
    head_before = [p.detach().clone() for p in model.guidance_head.parameters()]
    train(model, *data, _settings(), guidance=_guidance())
    assert all(
        torch.equal(p, b)
        for p, b in zip(model.guidance_head.parameters(), head_before, strict=True)
    )


def test_guidance_head_is_part_of_guided_models_only(defaults):
    from common.config import ConfigError, RunConfig
    from common.federation import make_model

    def build(method, head):
        cfg = RunConfig.from_run_config(
            {
                **defaults,
                "method": method,
                "guidance-head": head,
                "public-split-size": 100,
            }
        )
        return make_model(cfg)

    assert not hasattr(build("semanticfl", "none"), "guidance_head")
    assert not hasattr(build("fedavg", "mlp"), "guidance_head")
    state = build("feddifrc", "linear").state_dict()
    assert state["guidance_head.weight"].shape == (128, 128)  # width 16: d = 128
    with pytest.raises(ConfigError, match="guidance-head.*linear, mlp, none"):
        build("semanticfl", "transformer")
