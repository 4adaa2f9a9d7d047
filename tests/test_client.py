"""The local training loop and the ClientApp handlers, called in-process."""

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client_app import app as client
from client_app.training import LocalSettings, augment_batch, train
from common import keys
from common.config import RunConfig
from common.evaluation import evaluate
from common.federation import client_tensors, make_model

SMALL = {"num-clients": 20, "partitioner": "iid", "max-samples-per-client": 256}


def _settings(**method_keys):
    return LocalSettings(
        lr=0.05, momentum=0.9, weight_decay=0.0, epochs=2, batch_size=32, **method_keys
    )


def _train_msg(model, **extra) -> Message:
    config = ConfigRecord(
        {
            keys.LR: 0.05,
            keys.MOMENTUM: 0.9,
            keys.WEIGHT_DECAY: 0.0,
            keys.LOCAL_EPOCHS: 1,
            keys.BATCH_SIZE: 32,
            keys.SERVER_ROUND: 1,
            **extra,
        }
    )
    content = RecordDict(
        {keys.ARRAYS: ArrayRecord(model.state_dict()), keys.CONFIG: config}
    )
    return Message(content=content, dst_node_id=7, message_type="train")


def test_plain_training_learns_on_real_data(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    x, y = client_tensors(cfg, 0)
    torch.manual_seed(0)
    model = make_model(cfg)
    first = train(model, x, y, _settings(), seed=0)
    again = train(model, x, y, _settings(), seed=1)
    assert again[keys.TRAIN_LOSS] < first[keys.TRAIN_LOSS]
    assert again[keys.TRAIN_ACCURACY] > 0.5  # 10 classes: chance is 0.1
    assert first[keys.TRAIN_PROX] == first[keys.TRAIN_MOON] == 0.0


def test_training_is_reproducible_with_a_seed(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    x, y = client_tensors(cfg, 1)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = make_model(cfg)
        train(model, x, y, _settings(proximal_mu=0.01), seed=3)
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_fedprox_term_is_zero_at_start_and_positive_after(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    x, y = client_tensors(cfg, 2)
    model = make_model(cfg)
    metrics = train(model, x, y, _settings(proximal_mu=1.0), seed=0)
    assert metrics[keys.TRAIN_PROX] > 0
    assert math.isclose(
        metrics[keys.TRAIN_LOSS],
        metrics[keys.TRAIN_CE] + metrics[keys.TRAIN_PROX],
        rel_tol=1e-6,
    )


def test_moon_first_round_term_is_log2(defaults):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    x, y = client_tensors(cfg, 3)
    model = make_model(cfg)
    # one step: the model has not moved yet when the first term is computed
    settings = LocalSettings(
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        epochs=1,
        batch_size=len(y),
        moon_mu=1.0,
        moon_tau=0.5,
    )
    metrics = train(model, x, y, settings, seed=0)
    assert math.isclose(metrics[keys.TRAIN_MOON], math.log(2), rel_tol=1e-5)


def test_client_handler_keeps_moon_previous_model_in_state(defaults, task_identity):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    context = Context(
        run_id=1,
        node_id=7,
        node_config={keys.PARTITION_ID: 4, keys.NUM_PARTITIONS: 20},
        state=RecordDict(),
        run_config=cfg.to_run_config(),
    )
    model = make_model(cfg)
    reply = client.train(
        _train_msg(model, **{keys.MOON_MU: 1.0, keys.MOON_TAU: 0.5}), context
    )
    assert keys.PREV_LOCAL_MODEL in context.state
    stored = context.state[keys.PREV_LOCAL_MODEL].to_torch_state_dict()
    sent = reply.content[keys.ARRAYS].to_torch_state_dict()
    assert all(torch.equal(stored[k], sent[k]) for k in sent)
    assert reply.content[keys.METRICS][keys.NUM_EXAMPLES] == 256
    # Round 2 from the same global model: now z_prev != z_global, so the term moves off log 2
    reply2 = client.train(
        _train_msg(model, **{keys.MOON_MU: 1.0, keys.MOON_TAU: 0.5}), context
    )
    assert abs(reply2.content[keys.METRICS][keys.TRAIN_MOON] - math.log(2)) > 1e-3


def test_client_handler_without_moon_keeps_no_state(defaults, task_identity):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    context = Context(
        run_id=1,
        node_id=7,
        node_config={keys.PARTITION_ID: 0, keys.NUM_PARTITIONS: 20},
        state=RecordDict(),
        run_config=cfg.to_run_config(),
    )
    client.train(_train_msg(make_model(cfg), **{keys.PROXIMAL_MU: 0.01}), context)
    assert keys.PREV_LOCAL_MODEL not in context.state


def test_client_refuses_a_federation_of_the_wrong_size(defaults, task_identity):
    cfg = RunConfig.from_run_config({**defaults, **SMALL})
    context = Context(
        run_id=1,
        node_id=7,
        node_config={keys.PARTITION_ID: 0, keys.NUM_PARTITIONS: 3},
        state=RecordDict(),
        run_config=cfg.to_run_config(),
    )
    with pytest.raises(ValueError, match="num-supernodes=20"):
        client.train(_train_msg(make_model(cfg)), context)


def test_client_trains_on_its_train_part_and_evaluates_on_its_validation_part(
    defaults, task_identity
):
    cfg = RunConfig.from_run_config({**defaults, **SMALL, "validation-fraction": 0.25})
    context = Context(
        run_id=1,
        node_id=7,
        node_config={keys.PARTITION_ID: 3, keys.NUM_PARTITIONS: 20},
        state=RecordDict(),
        run_config=cfg.to_run_config(),
    )
    torch.manual_seed(0)
    model = make_model(cfg)
    reply = client.train(_train_msg(model), context)
    assert reply.content[keys.METRICS][keys.NUM_EXAMPLES] == 192  # 256 - 25 %

    msg = Message(
        content=RecordDict({keys.ARRAYS: ArrayRecord(model.state_dict())}),
        dst_node_id=7,
        message_type="evaluate",
    )
    scored = client.evaluate(msg, context).content[keys.METRICS]
    x, y = client_tensors(cfg, 3, "validation")
    expected = evaluate(
        model, x, y, 10, cfg.runtime.eval_batch_size, torch.device("cpu")
    )
    assert scored[keys.NUM_EXAMPLES] == len(y) == 64
    assert scored[keys.EVAL_ACCURACY] == pytest.approx(expected.accuracy)
    assert scored[keys.EVAL_LOSS] == pytest.approx(expected.loss)


def test_augment_batch_keeps_shape_and_content_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    out = augment_batch(x, g)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_missing_train_config_key_is_reported():
    with pytest.raises(KeyError, match="lr"):
        LocalSettings.from_config({keys.MOMENTUM: 0.9})


def test_cuda_request_without_cuda_is_a_clear_error():
    from common.federation import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cosine_lr_schedule_by_hand_and_applied_by_the_client():
    from client_app.training import LocalSettings
    from common import keys
    from common.config import ConfigError, RunConfig
    from common.federation import local_training_config, scheduled_lr

    # lr 0.01 over R = 4 rounds: 0.01 * (1 + cos(pi (r - 1) / 4)) / 2.
    expected = [0.01, 0.005 * (1 + 2**-0.5), 0.005, 0.005 * (1 - 2**-0.5)]
    got = [scheduled_lr(0.01, "cosine", r, 4) for r in (1, 2, 3, 4)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert scheduled_lr(0.01, "constant", 3, 4) == 0.01
    with pytest.raises(ValueError, match="outside 1..4"):
        scheduled_lr(0.01, "cosine", 5, 4)

    cfg = RunConfig.from_run_config(
        {"method": "fedavg", "lr-schedule": "cosine", "num-server-rounds": 4}
    )
    sent = {**local_training_config(cfg), keys.SERVER_ROUND: 3}
    assert LocalSettings.from_config(sent).lr == pytest.approx(0.005)
    plain = RunConfig.from_run_config({"method": "fedavg"})
    assert keys.LR_SCHEDULE not in local_training_config(plain)
    with pytest.raises(ConfigError, match="lr-schedule.*valid: constant, cosine"):
        RunConfig.from_run_config({"lr-schedule": "step"})
