"""A guided method with fedavg-public's server fine-tune (``server-finetune``; ours).

The control ``fedavg-public`` fine-tunes each round's aggregate on the
server's labelled public split, the images that trained the embedded
diffusion model, and on the skewed splits it does as well as the guided
methods' teacher. Whether the diffusion model adds anything over those
labels is then a question of the two together: the guided method's clients
keep their terms, and the server runs the same fine-tune (steps, learning
rate, keep-if-validation-does-not-worsen rule) on the aggregate. The gain
over ``fedavg-public``, paired by seed, is the diffusion model's own.

The combination is a class built from the two strategies, not a copy of
either: the guided strategy's ``configure_train`` (its config keys, anchors,
features) and :class:`~server_app.strategies.fedavg_public.FedAvgPublic`'s
``aggregate_train`` (FedAvg, then the checked fine-tune) meet in one
cooperative MRO, and checkpointing collects both sides' state.
"""

from __future__ import annotations

import functools

from flwr.serverapp.strategy import Strategy

from server_app.strategies.fedavg_public import FedAvgPublic


@functools.cache
def with_public_finetune(strategy: type[Strategy]) -> type[Strategy]:
    """``strategy`` whose aggregate the server fine-tunes on its public split.

    The class takes ``strategy``'s arguments plus :class:`FedAvgPublic`'s
    (``public``, ``validation``, ``model``, ``batch_size``, ``seed`` from
    ``server_app.adaptation.prepare_public_split``; the fine-tune's settings
    from ``fedavg_adapt.finetune_settings``). Cached, so one strategy gets
    one combined class.
    """
    if issubclass(strategy, FedAvgPublic):
        raise TypeError(f"{strategy.__name__} already fine-tunes on the public split")
    return type(
        f"{strategy.__name__}PublicFinetune",
        (strategy, FedAvgPublic),
        {"__doc__": f"{strategy.__name__} + the server fine-tune of fedavg-public."},
    )
