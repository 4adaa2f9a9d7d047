"""Run-config validation: defaults valid, every bad value a clear error."""

import pytest

from common import keys
from common.config import PAPER_FORMS, ConfigError, RunConfig
from common.federation import local_training_config, make_model, partitioning
from common.methods import METHODS
from server_app.strategies import strategy_class

# A complete guidance-service setting (TLS + token); cases override one key.
SERVICE = {
    "guidance-service": "gpu-host:50051",
    "guidance-service-ca": "certs/ca.crt",
    "guidance-service-token-file": "certs/token",
    # the service computes no zero-shot teacher: SemanticFL's paper form
    "kd-form": "coordinates",
}


def test_pyproject_defaults_are_valid_and_complete(defaults):
    cfg = RunConfig.from_run_config(defaults)
    # every field is exposed in pyproject.toml, so every tunable is overridable
    assert set(defaults) == set(cfg.to_run_config())
    assert cfg.method in METHODS


def test_pyproject_and_the_dataclasses_agree_on_every_default(defaults):
    """One source for each default: pyproject's value is the dataclass's."""
    from common.config import default_run_config

    coded = default_run_config()
    differ = {k: (defaults[k], coded[k]) for k in defaults if defaults[k] != coded[k]}
    assert differ == {}
    # and the types agree (an int where a float is meant would hide in ==)
    assert {k: type(v) for k, v in defaults.items()} == {
        k: type(v) for k, v in coded.items()
    }


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("num-round", "num-server-rounds"),
        ("dirichlet_beta", "dirichlet-beta"),
        ("learning_rate", "learning-rate"),
        ("guidance-modle", "guidance-model"),
        ("tdcl-temp", "tdcl-tau"),
    ],
)
def test_a_misspelt_key_names_the_closest_valid_ones(defaults, typo, suggestion):
    with pytest.raises(ConfigError, match="unknown run-config key") as err:
        RunConfig.from_run_config({**defaults, typo: 1})
    message = str(err.value)
    assert f"did you mean '{suggestion}'" in message or f", '{suggestion}'" in message
    assert len(message) < 300  # the closest keys, not all of them


def test_an_unknown_method_is_a_config_error_with_a_suggestion(defaults):
    with pytest.raises(ConfigError, match=r"'fedavgg' \(did you mean 'fedavg'"):
        RunConfig.from_run_config({**defaults, "method": "fedavgg"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"dirichlet-beta": 0.0}, "dirichlet-beta"),
        ({"dirichlet-beta": -1.0}, "dirichlet-beta"),
        ({"longtail-rho": 0.5}, "longtail-rho"),
        ({"num-clients": 0}, "num-clients"),
        ({"fraction-train": 0.0}, r"fraction-train.*\(0, 1\]"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"learning-rate": 0}, "learning-rate"),
        ({"min-available-clients": 11}, "min-available-clients"),
        ({"device": "tpu"}, "device"),
        ({"dataset": "imagenet"}, "cifar10, cifar100, fashion-mnist, mnist"),
        ({"model": "vgg"}, "mobilenetv2, resnet10"),
        ({"partitioner": "shards"}, "dirichlet, extreme, iid, longtail-dirichlet"),
        ({"batch-size": 2.5}, "batch-size.*int"),
        ({"dataset": 3}, "dataset.*string"),
        ({"augment": "yes"}, "augment.*true or false"),
        ({"dirichlet_beta": 0.1}, "unknown run-config key"),
        ({"validation-fraction": 1.0}, r"validation-fraction.*\[0, 1\)"),
        ({"validation-fraction": -0.1}, "validation-fraction"),
        ({"guidance-model": " "}, "guidance-model"),
        ({"guidance-timestep": 1000}, "guidance-timestep"),
        ({"guidance-timestep": -1}, "guidance-timestep"),
        ({"guidance-layers": "1,x"}, "guidance-layers.*'1,2,3'"),
        ({"guidance-layers": "1,1"}, "guidance-layers"),
        ({"guidance-layers": ""}, "guidance-layers"),
        ({"prompt-template": "a photo"}, r"prompt-template.*\{\}"),
        ({"tdcl-weight": -1.0}, "tdcl-weight.*0 switches the term off"),
        ({"ndcr-weight": -0.5}, "ndcr-weight"),
        ({"kd-weight": -1.0}, "kd-weight"),
        ({"con-weight": -1.0}, "con-weight"),
        ({"tdcl-tau": 0.0}, "tdcl-tau"),
        ({"ndcr-tau": 0.0}, "ndcr-tau"),
        ({"kd-temperature": -1.0}, "kd-temperature"),
        ({"con-tau": 0.0}, "con-tau"),
        ({"ndcr-mode": "l2"}, "ndcr-mode.*cosine, kl"),
        ({"tdcl-negatives": 10}, r"tdcl-negatives.*\[0, 9\]"),
        ({"tdcl-negatives": -1}, "tdcl-negatives"),
        ({"self-supervised": 1}, "self-supervised.*true or false"),
        ({"guidance-service": "gpu-host:50051"}, "guidance-service-token-file"),
        ({**SERVICE, "guidance-service": "gpu-host"}, "guidance-service.*host:port"),
        (
            {**SERVICE, "guidance-service": "gpu-host:0"},
            r"guidance-service.*1\.\.65535",
        ),
        (
            {**SERVICE, "guidance-service": "https://gpu-host:50051"},
            "'guidance-service' = 'https://gpu-host:50051': .*expected host:port",
        ),
        ({**SERVICE, "guidance-service": "::1:50051"}, r"\[::1\]:50051"),
        (
            {**SERVICE, "guidance-service-token-file": " "},
            "guidance-service-token-file",
        ),
        (
            {**SERVICE, "guidance-service-ca": ""},
            "guidance-service-ca.*TLS is not optional",
        ),
        (
            {**SERVICE, "guidance-service-insecure": True},
            "guidance-service-insecure.*loopback",
        ),
        (
            {
                **SERVICE,
                "guidance-service": "127.0.0.1:50051",
                "guidance-service-insecure": True,
            },
            "guidance-service-ca.*TLS is off",
        ),
        (
            {"guidance-service-token-file": "token"},
            "'guidance-service-token-file' set but 'guidance-service' is ''",
        ),
        (
            {"guidance-service-ca": "ca.crt", "guidance-service-insecure": True},
            "'guidance-service-ca', 'guidance-service-insecure' set but",
        ),
        (
            {"guidance-service-insecure": "yes"},
            "guidance-service-insecure.*true or false",
        ),
        ({"model-norm": "layer"}, "model-norm.*valid: batch, group"),
        ({"ce-loss": "focal"}, "ce-loss.*valid: auto, balanced, ce"),
        ({"guidance-head": "deep"}, "guidance-head.*valid: auto, linear, mlp, none"),
        ({"guidance-projection": "lda"}, "guidance-projection.*valid: pca, whitened"),
        ({"eval-bn-images": -1}, "eval-bn-images.*>= 0"),
        (
            {"eval-bn-images": 20000, "public-split-size": 1000},
            "eval-bn-images=20000.*public-split-size=1000",
        ),
        (
            {"eval-bn-images": 100, "model-norm": "group"},
            "model-norm='group' has none",
        ),
        ({"eval-aggregated-too": True}, "eval-aggregated-too.*eval-bn-images > 0"),
        ({"partition-seed": -2}, r"partition-seed.*-1 for the run's seed"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(defaults, override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({**defaults, **override})


def test_ints_are_accepted_for_floats_and_cast(defaults):
    cfg = RunConfig.from_run_config(
        {**defaults, "dirichlet-beta": 1, "num-clients": 4.0}
    )
    assert cfg.data.dirichlet_beta == 1.0 and isinstance(cfg.data.dirichlet_beta, float)
    assert cfg.federation.num_clients == 4 and isinstance(
        cfg.federation.num_clients, int
    )


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        ValueError, match="valid: .*fedavg, .*feddifrc, .*moon, semanticfl"
    ):
        strategy_class("scaffold")


@pytest.mark.parametrize("method", ["feddifrc", "semanticfl"])
def test_guided_methods_need_the_public_split(defaults, method):
    with pytest.raises(ConfigError, match="public-split-size > 0"):
        RunConfig.from_run_config(
            {**defaults, "method": method, "public-split-size": 0}
        )
    cfg = RunConfig.from_run_config(
        {**defaults, "method": method, "public-split-size": 500}
    )
    assert cfg.guidance.up_blocks == (1, 2, 3)


def test_self_supervised_is_feddifrc_only_and_needs_a_term(defaults):
    guided = {**defaults, "public-split-size": 500, "self-supervised": True}
    with pytest.raises(ConfigError, match="needs method 'feddifrc'"):
        RunConfig.from_run_config({**guided, "method": "semanticfl"})
    with pytest.raises(ConfigError, match="nothing to train"):
        RunConfig.from_run_config(
            {**guided, "method": "feddifrc", "tdcl-weight": 0, "ndcr-weight": 0}
        )
    cfg = RunConfig.from_run_config({**guided, "method": "feddifrc"})
    assert cfg.feddifrc.self_supervised


def test_guidance_layers_parse(defaults):
    cfg = RunConfig.from_run_config({**defaults, "guidance-layers": " 3, 0 "})
    assert cfg.guidance.up_blocks == (3, 0)


@pytest.mark.parametrize(
    "service",
    [
        SERVICE,
        {**SERVICE, "guidance-service": "10.0.0.5:443"},
        {**SERVICE, "guidance-service": "[2001:db8::1]:50051"},
        {  # plain text, loopback only: tests
            "kd-form": "coordinates",
            "guidance-service": "localhost:50051",
            "guidance-service-token-file": "token",
            "guidance-service-insecure": True,
        },
    ],
)
def test_guidance_service_settings_that_are_valid(defaults, service):
    cfg = RunConfig.from_run_config({**defaults, **service})
    assert cfg.guidance.service == service["guidance-service"]
    assert RunConfig.from_run_config(defaults).guidance.service == ""  # in-process


def test_partition_seed_fixes_the_split_while_the_seed_varies(defaults):
    def split_seed(seed: int, partition_seed: int) -> int:
        cfg = RunConfig.from_run_config(
            {**defaults, "seed": seed, "partition-seed": partition_seed}
        )
        return partitioning(cfg).seed

    assert [split_seed(s, -1) for s in (0, 1, 2)] == [0, 1, 2]
    assert [split_seed(s, 7) for s in (0, 1, 2)] == [7, 7, 7]


@pytest.mark.parametrize(
    "overrides, balanced",
    [
        ({"method": "semanticfl"}, True),  # the default: teacher + balanced
        ({"method": "feddifrc"}, True),
        ({"method": "semanticfl", "kd-form": "coordinates"}, False),  # paper
        ({"method": "feddifrc", "zero-shot-weight": 0.0}, False),
        ({"method": "feddifrc", "self-supervised": True}, False),
        ({"method": "fedavg"}, False),
        ({"method": "semanticfl", "ce-loss": "ce"}, False),  # explicit wins
        ({"method": "fedavg", "ce-loss": "balanced"}, True),
    ],
)
def test_auto_loss_is_balanced_exactly_where_the_teacher_is_on(
    defaults, overrides, balanced
):
    cfg = RunConfig.from_run_config({**defaults, **overrides})
    assert cfg.sgd.ce_loss == overrides.get("ce-loss", "auto")
    assert cfg.balanced_ce is balanced
    assert (keys.BALANCED_CE in local_training_config(cfg)) is balanced


@pytest.mark.parametrize(
    "overrides, head",
    [
        ({"method": "feddifrc"}, "mlp"),  # its cosine terms need a signed space
        ({"method": "feddifrc", "zero-shot-weight": 0.0}, "mlp"),
        ({"method": "feddifrc", **PAPER_FORMS}, "none"),  # the paper: z itself
        ({"method": "semanticfl"}, "none"),  # its default acts on the logits
        ({"method": "semanticfl", "guidance-head": "linear"}, "linear"),
    ],
)
def test_auto_guidance_head_is_each_methods_validation_choice(
    defaults, overrides, head
):
    cfg = RunConfig.from_run_config({**defaults, **overrides})
    assert cfg.guidance_head == head
    model = make_model(cfg)
    assert hasattr(model, "guidance_head") is (head != "none")
    if head == "mlp":  # Linear, ReLU, Linear at the embedding's width
        assert len(model.guidance_head) == 3


def test_semanticfl_distils_its_teacher_at_weight_3_and_the_paper_form_at_1(defaults):
    # pyproject.toml and the dataclass agree on the default, and the papers'
    # forms take the weight back to the papers' value with the rest.
    assert RunConfig().semanticfl.kd_weight == 3.0
    assert RunConfig.from_run_config(defaults).semanticfl.kd_weight == 3.0
    paper = RunConfig.from_run_config(
        {**defaults, "method": "semanticfl", **PAPER_FORMS}
    )
    assert (paper.semanticfl.kd_weight, paper.semanticfl.kd_form) == (
        1.0,
        "coordinates",
    )


def test_feddifrc_distils_the_teacher_at_weight_3_and_the_paper_form_not_at_all(
    defaults,
):
    assert RunConfig().feddifrc.zero_shot_weight == 3.0
    assert RunConfig.from_run_config(defaults).feddifrc.zero_shot_weight == 3.0
    paper = RunConfig.from_run_config({**defaults, "method": "feddifrc", **PAPER_FORMS})
    assert paper.feddifrc.zero_shot_weight == 0.0
