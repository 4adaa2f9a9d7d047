"""The run's own sections: federation, local SGD, data, model, runtime."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import check, keyed, one_of
from common.datasets import DATASETS
from common.models import MODELS, NORMS
from common.partition import PARTITIONERS

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FederationConfig:
    """Rounds, clients and who takes part in each round."""

    num_server_rounds: int = 20
    num_clients: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_available_clients: int = 2

    def validate(self) -> None:
        check(self.num_clients >= 1, "num-clients", self.num_clients, "an int >= 1")
        check(
            0.0 < self.fraction_train <= 1.0,
            "fraction-train",
            self.fraction_train,
            "a float in (0, 1]",
        )
        check(
            0.0 <= self.fraction_evaluate <= 1.0,
            "fraction-evaluate",
            self.fraction_evaluate,
            "a float in [0, 1]",
        )
        check(
            1 <= self.min_available_clients <= self.num_clients,
            "min-available-clients",
            self.min_available_clients,
            f"an int in [1, num-clients={self.num_clients}]",
        )
        check(
            self.num_server_rounds >= 1,
            "num-server-rounds",
            self.num_server_rounds,
            "an int >= 1",
        )


CE_LOSSES = ("auto", "ce", "balanced")


@dataclass(frozen=True)
class SGDConfig:
    """Every client's local SGD (FedDifRC's code defaults)."""

    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    # The clients' classification loss: "ce" (every paper's but FedETF's) or
    # "balanced", the balanced softmax (Ren et al., NeurIPS 2020; FedETF's
    # local loss): the client's log class prior added to the logits, so a
    # client stops pushing the classes it never sees toward zero. Any
    # classifier method takes it; it is the control that separates a
    # method's own ingredients from the loss (docs/methods.md). "auto" (the
    # default) is "balanced" where the zero-shot teacher is on and "ce"
    # elsewhere (RunConfig.balanced_ce): alone, the balanced loss of a
    # client holding one class is exactly 0, so it needs the teacher's
    # target over every class to learn anything (docs/guided-methods.md).
    ce_loss: str = "auto"
    # The clients' learning rate over the rounds: "constant" (the papers') or
    # "cosine" (common.federation.scheduled_lr: from learning-rate in round 1
    # down toward 0 in the last), which damps the round-to-round swing of
    # the global model at the end of a run.
    lr_schedule: str = "constant"

    def validate(self) -> None:
        one_of("ce-loss", self.ce_loss, CE_LOSSES)
        one_of("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        check(self.local_epochs >= 1, "local-epochs", self.local_epochs, "an int >= 1")
        check(self.batch_size >= 1, "batch-size", self.batch_size, "an int >= 1")
        check(
            self.learning_rate > 0, "learning-rate", self.learning_rate, "a float > 0"
        )
        check(0 <= self.momentum < 1, "momentum", self.momentum, "a float in [0, 1)")
        check(self.weight_decay >= 0, "weight-decay", self.weight_decay, "a float >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Dataset, non-IID split, the server's public split, client caps."""

    dataset: str = "fashion-mnist"
    data_root: str = ""
    partitioner: str = "dirichlet"
    dirichlet_beta: float = 0.5
    longtail_rho: float = 10.0
    min_partition_size: int = 10
    max_samples_per_client: int = 3000
    # -1: the run's seed draws the split. A fixed value keeps one split (and
    # each client's capped sample) while the seed varies everything else, so
    # seeds measure training noise on that split, not the luck of the split.
    partition_seed: int = -1
    public_split_size: int = 10_000
    validation_fraction: float = 0.0
    augment: bool = False

    def validate(self) -> None:
        one_of("dataset", self.dataset, DATASETS)
        one_of("partitioner", self.partitioner, PARTITIONERS)
        check(
            self.dirichlet_beta > 0,
            "dirichlet-beta",
            self.dirichlet_beta,
            "a float > 0 (smaller = more skewed, e.g. 0.05 to 0.5)",
        )
        check(
            self.longtail_rho >= 1,
            "longtail-rho",
            self.longtail_rho,
            "a float >= 1 (largest / smallest class size; 1 = balanced)",
        )
        check(
            self.min_partition_size >= 0,
            "min-partition-size",
            self.min_partition_size,
            "an int >= 0",
        )
        check(
            self.max_samples_per_client >= 0,
            "max-samples-per-client",
            self.max_samples_per_client,
            "an int >= 0 (0 = no cap)",
        )
        check(
            self.partition_seed >= -1,
            "partition-seed",
            self.partition_seed,
            "an int >= 0, or -1 for the run's seed",
        )
        check(
            self.public_split_size >= 0,
            "public-split-size",
            self.public_split_size,
            "an int >= 0",
        )
        check(
            0.0 <= self.validation_fraction < 1.0,
            "validation-fraction",
            self.validation_fraction,
            "a float in [0, 1) (share of each client's partition held out)",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The client model: architecture, ResNet-10 base width, normalisation."""

    name: str = keyed("resnet10", "model")
    width: int = keyed(16, "model-width")
    # batch (the papers') or group (common.models.NORMS: no running statistics
    # to average, which under label skew match no client's data).
    norm: str = keyed("batch", "model-norm")

    def validate(self) -> None:
        one_of("model", self.name, MODELS)
        check(self.width >= 1, "model-width", self.width, "an int >= 1")
        one_of("model-norm", self.norm, NORMS)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the run computes and writes."""

    device: str = "cpu"
    # Small batches stay in the CPU's cache: on a 2-core EPYC the 10,000 test
    # images score 2.2x faster at 128 than at 1000, with the same accuracy
    # and a loss equal to 8 digits (the batch size only changes float rounding).
    eval_batch_size: int = 128
    output_dir: str = "outputs"
    run_name: str = ""
    # Crash safety (server_app/checkpoint.py): a checkpoint after every round
    # always; also keep every N-th (0 = only the latest two).
    # Mixed precision of client training: "bf16" autocasts the forward pass
    # and losses (meant for a GPU; works but is slow on most CPUs).
    autocast: str = "none"
    checkpoint_every: int = 0
    resume: str = ""  # a run folder to continue from its last complete round
    tensorboard: bool = False  # also write TensorBoard event files
    # Central evaluation (common.evaluation.recalibrated_copy): N > 0 scores
    # the global weights with BatchNorm statistics recomputed on N unlabelled
    # images of the server's public split instead of the clients' averaged
    # ones (0: as aggregated, the papers'). eval-aggregated-too also records
    # the as-aggregated score, to compare the two on the same run.
    eval_bn_images: int = 0
    eval_aggregated_too: bool = False

    def validate(self) -> None:
        check(
            self.eval_batch_size >= 1,
            "eval-batch-size",
            self.eval_batch_size,
            "an int >= 1",
        )
        check(
            self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            self.device,
            "'cpu', 'cuda' or 'cuda:N'",
        )
        check(bool(self.output_dir), "output-dir", self.output_dir, "a non-empty path")
        one_of("autocast", self.autocast, ("none", "bf16"))
        check(
            self.eval_bn_images >= 0,
            "eval-bn-images",
            self.eval_bn_images,
            "an int >= 0 (0 = BatchNorm statistics as aggregated)",
        )
        check(
            self.checkpoint_every >= 0,
            "checkpoint-every",
            self.checkpoint_every,
            "an int >= 0 (0 = keep only the latest checkpoints)",
        )
