"""Classifier adaptation (ours): kept only when the server's real slice does not get worse."""

import numpy as np
import pytest
import torch

from common.models import build_model
from server_app.strategies.fedavg_adapt import FedAvgAdapt


def adapt_one_round(train_reply, generated_labels, lr: float):
    """One aggregation of a single client's model, then the adaptation.

    The generated set is the validation images themselves with the given
    labels: the true ones (the fine-tune can only help) or shifted ones
    (it can only hurt).
    """
    torch.manual_seed(0)
    model = build_model("resnet10", 1, 3, 4, 28)
    y = torch.arange(48) % 3
    x = torch.randn(48, 1, 28, 28) + y.view(-1, 1, 1, 1).float()  # learnable classes
    strategy = FedAvgAdapt(
        model=model,
        generated=(x, generated_labels(y)),
        validation=(x, y),
        adapt_steps=15,
        adapt_lr=lr,
        batch_size=16,
        trigger_window=2,
        trigger_eps=0.02,
        seed=0,
    )
    logged = []
    strategy.round_log = logged.append
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reply = train_reply(state, 48)
    arrays, _ = strategy.aggregate_train(1, [reply])
    return arrays, state, logged[0]


@pytest.mark.parametrize("lr", [0.05, 0.5], ids=["hurts", "diverges"])
def test_an_adaptation_that_hurts_the_real_slice_is_dropped(train_reply, lr):
    arrays, sent, info = adapt_one_round(train_reply, lambda y: (y + 1) % 3, lr=lr)
    assert info["corrected"] and not info["kept"]
    after, before = info["validation-loss"]["after"], info["validation-loss"]["before"]
    assert not after <= before  # higher, or NaN when the fine-tune diverged
    got = arrays.to_torch_state_dict()
    for name, tensor in sent.items():
        np.testing.assert_array_equal(
            got[name].numpy(), tensor.numpy().astype(got[name].numpy().dtype)
        )


def test_an_adaptation_that_helps_is_kept(train_reply):
    arrays, sent, info = adapt_one_round(train_reply, lambda y: y, lr=0.1)
    assert info["corrected"] and info["kept"]
    assert info["validation-loss"]["after"] < info["validation-loss"]["before"]
    got = arrays.to_torch_state_dict()
    assert any(not torch.equal(got[k], sent[k].to(got[k].dtype)) for k in sent)


@pytest.mark.usefixtures("task_identity")
def test_the_adaptation_data_is_generated_once_and_validated_on_the_public_split(
    defaults,
):
    from common.config import RunConfig
    from common.datasets import get_spec, load_dataset, to_float
    from common.federation import data_split
    from server_app.guidance import guidance_kwargs

    # Prepare: a tiny generation budget; the validation slice must come from
    # the server-held public split, never from a client's partition.
    cfg = RunConfig.from_run_config(
        {
            **defaults,
            "method": "fedavg-adapt",
            "aux-size": 10,
            "sample-steps": 1,
            "heldout-size": 12,
        }
    )
    split = data_split(cfg)
    spec = get_spec(cfg.data.dataset)

    # Act
    kwargs, record = guidance_kwargs(cfg, split)

    # Assert
    images, labels = kwargs["generated"]
    assert images.shape == (10, spec.in_channels, spec.image_size, spec.image_size)
    assert set(labels.tolist()) <= set(range(spec.num_classes))
    x, y = kwargs["validation"]
    assert len(y) == 12 and record["validation-images"] == 12
    train, _ = load_dataset(cfg.data.dataset, cfg.data.data_root)
    public = to_float(train.images[np.sort(split.public)], spec).flatten(1)
    for row in x.flatten(1):  # every validation image is one of the public split's
        assert (public == row).all(dim=1).any()
    assert record["generated-images"] == 10 and record["method"] == "fedavg-adapt"
    assert record["seconds"] > 0
