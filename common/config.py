"""Typed, validated run configuration, read once at the edge.

Every tunable of a run lives in ``[tool.flwr.app.config]`` of ``pyproject.toml``
(kebab-case keys) and reaches the apps as ``context.run_config``. The apps turn it
into a :class:`RunConfig` once, with :meth:`RunConfig.from_run_config`, and pass
the typed object on; nothing else reads ``run_config`` directly.

Validation happens here, before any data is loaded or any training starts, and
every error says which key was wrong, what it was, and what is valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from common.datasets import DATASETS, get_spec
from common.models import GUIDANCE_HEADS, MODELS
from common.partition import PARTITIONERS


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


GUIDED_METHODS = ("feddifrc", "semanticfl")
"""Methods that need a guidance model (and the server-held public split)."""

NDCR_MODES = ("cosine", "kl")

FEDDIFRC_FEATURES = {
    "server-store": "the server holds the training set and fills the feature "
    "store once (simulation)",
    "latent-upload": "a query round: clients that opted in (share-latents) send "
    "VAE latents and get their features back (deployment)",
}

DIFFUSION_METHODS = ("fedddpm-avg", "fedddpm", "fedddpm+")
"""Methods whose federated model is the latent diffusion U-Net (docs/fedddpm.md)."""

ADAPT_METHODS = ("fedavg-adapt", "fedavg-adapt+")
"""Classification with server-side classifier adaptation on generated images (ours)."""


@dataclass(frozen=True)
class RunConfig:
    """All settings of one federated run (see ``pyproject.toml`` for defaults)."""

    # method and federation
    method: str = "semanticfl"
    num_server_rounds: int = 20
    num_clients: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_available_clients: int = 2
    seed: int = 42
    # local training
    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    # method terms
    proximal_mu: float = 0.01
    moon_mu: float = 1.0
    moon_tau: float = 0.5
    # guidance model and features (FedDifRC, SemanticFL; DESIGN.md section 3)
    guidance_model: str = "embedded"
    guidance_timestep: int = 150
    guidance_layers: str = "1,2,3"
    guidance_head: str = "none"
    prompt_template: str = "a photo of a {}"
    feature_store: str = ""
    # standalone diffusion guidance service ("" = the model runs in the ServerApp)
    guidance_service: str = ""
    guidance_service_ca: str = ""
    guidance_service_token_file: str = ""
    guidance_service_insecure: bool = False
    # FedDifRC terms (papers' values, unverified: notes/papers.md section 2)
    tdcl_weight: float = 1.0
    tdcl_tau: float = 0.04
    tdcl_negatives: int = 0
    ndcr_weight: float = 1.0
    ndcr_mode: str = "cosine"
    ndcr_tau: float = 0.1
    self_supervised: bool = False
    # where FedDifRC's instance features come from (docs/guided-methods.md)
    feddifrc_features: str = "server-store"
    share_latents: bool = False
    # SemanticFL terms (papers' values, unverified: notes/papers.md section 1)
    kd_weight: float = 1.0
    kd_temperature: float = 0.1
    con_weight: float = 0.01
    con_tau: float = 0.05
    # data
    dataset: str = "fashion-mnist"
    data_root: str = ""
    partitioner: str = "dirichlet"
    dirichlet_beta: float = 0.5
    longtail_rho: float = 10.0
    min_partition_size: int = 10
    max_samples_per_client: int = 3000
    public_split_size: int = 10_000
    validation_fraction: float = 0.0
    augment: bool = False
    # model
    model: str = "resnet10"
    model_width: int = 16
    # runtime and outputs
    device: str = "cpu"
    eval_batch_size: int = 1000
    output_dir: str = "outputs"
    run_name: str = ""
    # FedDDPM / FedDDPM+ and classifier adaptation (docs/fedddpm.md). Paper
    # values are unknown (notes/papers.md section 3.4): these are cpu-profile
    # defaults of ours, not the paper's.
    ddpm_unet_channels: str = "16,32,32,32"
    ddpm_pretrain_steps: int = 100
    ddpm_local_steps: int = 20
    ddpm_batch_size: int = 32
    ddpm_lr: float = 1e-3
    ddpm_prompt_dropout: float = 0.1
    aux_size: int = 1000
    aux_steps: int = 20
    aux_lr: float = 5e-4
    adapt_steps: int = 20
    adapt_lr: float = 0.01
    trigger_window: int = 2
    trigger_eps: float = 0.02
    sample_steps: int = 10
    sample_guidance_scale: float = 2.0
    measure_samples: int = 200
    heldout_size: int = 500

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's ``context.run_config`` (kebab-case keys).

        Unknown keys are an error (a typo would otherwise silently run the
        default); missing keys take the dataclass default.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown run-config key(s) {unknown}; valid keys: {sorted(known)}"
            )
        values = {}
        for key, value in run_config.items():
            field = known[key]
            values[field.name] = _cast(key, value, field.type)
        config = cls(**values)
        config.validate()
        return config

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping, as Flower's run config holds it."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first invalid value."""
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("model", self.model, MODELS)
        _one_of("partitioner", self.partitioner, PARTITIONERS)
        _check(self.num_clients >= 1, "num-clients", self.num_clients, "an int >= 1")
        _check(
            0.0 < self.fraction_train <= 1.0,
            "fraction-train",
            self.fraction_train,
            "a float in (0, 1]",
        )
        _check(
            0.0 <= self.fraction_evaluate <= 1.0,
            "fraction-evaluate",
            self.fraction_evaluate,
            "a float in [0, 1]",
        )
        _check(
            1 <= self.min_available_clients <= self.num_clients,
            "min-available-clients",
            self.min_available_clients,
            f"an int in [1, num-clients={self.num_clients}]",
        )
        _check(
            self.num_server_rounds >= 1,
            "num-server-rounds",
            self.num_server_rounds,
            "an int >= 1",
        )
        _check(self.local_epochs >= 1, "local-epochs", self.local_epochs, "an int >= 1")
        _check(self.batch_size >= 1, "batch-size", self.batch_size, "an int >= 1")
        _check(
            self.eval_batch_size >= 1,
            "eval-batch-size",
            self.eval_batch_size,
            "an int >= 1",
        )
        _check(
            self.learning_rate > 0, "learning-rate", self.learning_rate, "a float > 0"
        )
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a float in [0, 1)")
        _check(
            self.weight_decay >= 0, "weight-decay", self.weight_decay, "a float >= 0"
        )
        _check(self.proximal_mu >= 0, "proximal-mu", self.proximal_mu, "a float >= 0")
        _check(self.moon_mu >= 0, "moon-mu", self.moon_mu, "a float >= 0")
        _check(self.moon_tau > 0, "moon-tau", self.moon_tau, "a float > 0")
        _check(
            self.dirichlet_beta > 0,
            "dirichlet-beta",
            self.dirichlet_beta,
            "a float > 0 (smaller = more skewed, e.g. 0.05 to 0.5)",
        )
        _check(
            self.longtail_rho >= 1,
            "longtail-rho",
            self.longtail_rho,
            "a float >= 1 (largest / smallest class size; 1 = balanced)",
        )
        _check(
            self.min_partition_size >= 0,
            "min-partition-size",
            self.min_partition_size,
            "an int >= 0",
        )
        _check(
            self.max_samples_per_client >= 0,
            "max-samples-per-client",
            self.max_samples_per_client,
            "an int >= 0 (0 = no cap)",
        )
        _check(
            self.public_split_size >= 0,
            "public-split-size",
            self.public_split_size,
            "an int >= 0",
        )
        _check(
            0.0 <= self.validation_fraction < 1.0,
            "validation-fraction",
            self.validation_fraction,
            "a float in [0, 1) (share of each client's partition held out)",
        )
        self._validate_guidance()
        _check(self.model_width >= 1, "model-width", self.model_width, "an int >= 1")
        _check(
            self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            self.device,
            "'cpu', 'cuda' or 'cuda:N'",
        )
        _check(bool(self.output_dir), "output-dir", self.output_dir, "a non-empty path")
        self._validate_fedddpm()

    @property
    def guidance_up_blocks(self) -> tuple[int, ...]:
        """``guidance-layers`` parsed: U-Net decoder block indices, e.g. (1, 2, 3)."""
        return parse_layers(self.guidance_layers)

    def _validate_guidance(self) -> None:
        """The guided methods' keys (checked for every method: typos fail early)."""
        _check(
            bool(self.guidance_model.strip()),
            "guidance-model",
            self.guidance_model,
            "'embedded', a diffusers-layout folder or a hub id",
        )
        _check(
            0 <= self.guidance_timestep < 1000,
            "guidance-timestep",
            self.guidance_timestep,
            "an int in [0, 1000) (papers: 150 to 300)",
        )
        try:
            parse_layers(self.guidance_layers)
        except ValueError as exc:
            raise ConfigError(
                f"run-config 'guidance-layers' = {self.guidance_layers!r} is invalid; "
                f"expected distinct U-Net up-block indices like '1,2,3' ({exc})"
            ) from None
        _check(
            self.prompt_template.count("{}") == 1,
            "prompt-template",
            self.prompt_template,
            "a string with exactly one '{}' for the class name",
        )
        for key in ("tdcl-weight", "ndcr-weight", "kd-weight", "con-weight"):
            value = getattr(self, key.replace("-", "_"))
            _check(value >= 0, key, value, "a float >= 0 (0 switches the term off)")
        for key in ("tdcl-tau", "ndcr-tau", "kd-temperature", "con-tau"):
            value = getattr(self, key.replace("-", "_"))
            _check(value > 0, key, value, "a float > 0")
        _one_of("ndcr-mode", self.ndcr_mode, dict.fromkeys(NDCR_MODES))
        _one_of("guidance-head", self.guidance_head, GUIDANCE_HEADS)
        self._validate_guidance_service()
        if self.dataset in DATASETS:
            others = get_spec(self.dataset).num_classes - 1
            _check(
                0 <= self.tdcl_negatives <= others,
                "tdcl-negatives",
                self.tdcl_negatives,
                f"an int in [0, {others}] (0 = every other class of {self.dataset})",
            )
        if self.method in GUIDED_METHODS and self.public_split_size <= 0:
            raise ConfigError(
                f"method '{self.method}' needs the server-held public split: set "
                "public-split-size > 0 (e.g. 1000). The server fits the feature "
                "projection on it and builds the visual class anchors from it; no "
                "client ever gets those samples."
            )
        if self.self_supervised and self.method != "feddifrc":
            raise ConfigError(
                f"run-config 'self-supervised' = true needs method 'feddifrc' (got "
                f"'{self.method}'): only FedDifRC has a self-supervised variant"
            )
        _one_of("feddifrc-features", self.feddifrc_features, FEDDIFRC_FEATURES)
        if self.feddifrc_features == "latent-upload" and self.method != "feddifrc":
            raise ConfigError(
                "run-config 'feddifrc-features' = 'latent-upload' needs method "
                f"'feddifrc' (got '{self.method}'): only FedDifRC uses instance features"
            )
        if self.self_supervised and self.tdcl_weight == 0 and self.ndcr_weight == 0:
            raise ConfigError(
                "self-supervised FedDifRC has no cross-entropy: keep tdcl-weight or "
                "ndcr-weight above 0, or there is nothing to train"
            )

    def _validate_guidance_service(self) -> None:
        """The service keys: an address needs a token, and TLS unless loopback.

        Files are not opened here: clients parse the run config too, and only
        the ServerApp reads the CA and the token (a missing file fails there,
        naming it).
        """
        address = self.guidance_service
        if not address:
            given = {
                "guidance-service-ca": self.guidance_service_ca,
                "guidance-service-token-file": self.guidance_service_token_file,
                "guidance-service-insecure": self.guidance_service_insecure,
            }
            stray = [key for key, value in given.items() if value]
            if stray:
                raise ConfigError(
                    f"run-config {', '.join(map(repr, stray))} set but "
                    "'guidance-service' is '' (the model runs in the ServerApp): "
                    "set guidance-service = 'host:port' to use the service, or "
                    "clear them"
                )
            return
        # Imported only when a service is configured: it pulls in grpc.
        from diffusion_service.remote.config import is_loopback, parse_service_address

        try:
            host, _ = parse_service_address(address)
        except ValueError as exc:
            raise ConfigError(
                f"run-config 'guidance-service' = {address!r}: {exc} "
                "('' runs the guidance model in the ServerApp)"
            ) from None
        _check(
            bool(self.guidance_service_token_file.strip()),
            "guidance-service-token-file",
            self.guidance_service_token_file,
            "the path of the service's bearer-token file (required with "
            "guidance-service; deploy/make_certs.sh writes one)",
        )
        if self.guidance_service_insecure:
            _check(
                is_loopback(host),
                "guidance-service-insecure",
                True,
                f"false for {host!r}: plain text is for loopback tests only "
                "(127.0.0.1, ::1, localhost); give guidance-service-ca instead",
            )
            _check(
                not self.guidance_service_ca,
                "guidance-service-ca",
                self.guidance_service_ca,
                "'' with guidance-service-insecure = true (TLS is off)",
            )
        else:
            _check(
                bool(self.guidance_service_ca.strip()),
                "guidance-service-ca",
                self.guidance_service_ca,
                "the path of the CA certificate that signed the service's "
                "certificate (required with guidance-service; TLS is not optional)",
            )


    @property
    def ddpm_channels(self) -> tuple[int, ...]:
        """``ddpm-unet-channels`` parsed, e.g. (16, 32, 32, 32)."""
        return parse_channels(self.ddpm_unet_channels)

    def _validate_fedddpm(self) -> None:
        """FedDDPM and classifier-adaptation keys (checked for every method)."""
        try:
            parse_channels(self.ddpm_unet_channels)
        except ValueError as exc:
            raise ConfigError(
                f"run-config 'ddpm-unet-channels' = {self.ddpm_unet_channels!r} is "
                f"invalid; expected 2 to 5 comma-separated multiples of 8 like "
                f"'16,32,32,32' ({exc})"
            ) from None
        for key in ("ddpm-local-steps", "ddpm-batch-size", "sample-steps"):
            value = getattr(self, key.replace("-", "_"))
            _check(value >= 1, key, value, "an int >= 1")
        for key in ("ddpm-pretrain-steps", "aux-steps", "adapt-steps"):
            value = getattr(self, key.replace("-", "_"))
            _check(value >= 0, key, value, "an int >= 0")
        for key in ("ddpm-lr", "aux-lr", "adapt-lr"):
            value = getattr(self, key.replace("-", "_"))
            _check(value > 0, key, value, "a float > 0")
        _check(
            0 <= self.ddpm_prompt_dropout < 1,
            "ddpm-prompt-dropout",
            self.ddpm_prompt_dropout,
            "a float in [0, 1) (share of empty prompts, for classifier-free guidance)",
        )
        _check(
            self.sample_guidance_scale >= 1,
            "sample-guidance-scale",
            self.sample_guidance_scale,
            "a float >= 1 (1 = no classifier-free guidance)",
        )
        _check(
            self.trigger_window >= 1,
            "trigger-window",
            self.trigger_window,
            "an int >= 1 (rounds over which the relative loss drop is measured)",
        )
        _check(
            0 <= self.trigger_eps < 1,
            "trigger-eps",
            self.trigger_eps,
            "a float in [0, 1) (relative loss drop below which learning is slow)",
        )
        needs = self.method in DIFFUSION_METHODS or self.method in ADAPT_METHODS
        if not needs:
            return
        for key in ("measure-samples", "heldout-size"):
            value = getattr(self, key.replace("-", "_"))
            _check(value >= 1, key, value, f"an int >= 1 for method '{self.method}'")
        if self.dataset in DATASETS:
            num_classes = get_spec(self.dataset).num_classes
            _check(
                self.aux_size >= num_classes,
                "aux-size",
                self.aux_size,
                f"an int >= {num_classes} (the classes of {self.dataset})",
            )
        if self.public_split_size < self.heldout_size:
            raise ConfigError(
                f"method '{self.method}' needs the server-held public split for its "
                f"slow-learning check and its frozen VAE: set public-split-size >= "
                f"heldout-size={self.heldout_size} (got {self.public_split_size})"
            )


def parse_channels(text: str) -> tuple[int, ...]:
    """``"16,32,32,32"`` -> (16, 32, 32, 32): 2 to 5 multiples of 8."""
    parts = [p.strip() for p in str(text).split(",")]
    if any(not p.isdigit() for p in parts):
        raise ValueError("comma-separated positive ints")
    channels = tuple(int(p) for p in parts)
    if not 2 <= len(channels) <= 5:
        raise ValueError(f"{len(channels)} blocks")
    if any(c < 8 or c % 8 for c in channels):
        raise ValueError("each a multiple of 8 (GroupNorm uses 8 groups)")
    return channels


def parse_layers(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); distinct non-negative ints, at least one."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise ValueError("comma-separated non-negative ints")
    layers = tuple(int(p) for p in parts)
    if len(set(layers)) != len(layers):
        raise ValueError("repeated index")
    return layers


def _cast(key: str, value: Any, type_name: str) -> Any:
    """Cast a TOML/CLI value to the field's type, refusing lossy conversions."""
    # Annotations are strings because of `from __future__ import annotations`.
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"run-config '{key}' must be true or false, got {value!r}")
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run-config '{key}' must be an int, got {value!r}")
        if float(value) != int(value):
            raise ConfigError(f"run-config '{key}' must be an int, got {value!r}")
        return int(value)
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run-config '{key}' must be a number, got {value!r}")
        return float(value)
    if type_name == "str":
        if not isinstance(value, str):
            raise ConfigError(
                f"run-config '{key}' must be a string (quote it: {key}='...'), "
                f"got {value!r}"
            )
        return value
    raise TypeError(f"unsupported config field type {type_name} for '{key}'")


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(
            f"run-config '{key}' = {value!r} is invalid; expected {valid}"
        )


def _one_of(key: str, value: str, registry: Mapping[str, Any]) -> None:
    if value not in registry:
        raise ConfigError(
            f"unknown {key} {value!r}; valid: {', '.join(sorted(registry))}"
        )
