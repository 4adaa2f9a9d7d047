"""The guidance model, its feature recipe, and the optional remote service."""

from __future__ import annotations

from dataclasses import dataclass

from common.addresses import is_loopback, parse_service_address
from common.anchors import SOURCES as ANCHOR_SOURCES
from common.config.fields import ConfigError, check, keyed, one_of
from common.models import GUIDANCE_HEADS


def parse_layers(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); distinct non-negative ints, at least one."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise ValueError("comma-separated non-negative ints")
    layers = tuple(int(p) for p in parts)
    if len(set(layers)) != len(layers):
        raise ValueError("repeated index")
    return layers


PROJECTIONS = ("pca", "whitened")
"""``guidance-projection`` values: the raw features' principal directions
(the papers' reading), or the same directions scaled to unit variance (ours;
the feature study's best nearest-anchor accuracy, docs/guidance-features.md)."""

SERVER_FINETUNES = ("auto", "none", "public")
"""``server-finetune`` values: each method's own choice, none, or the labelled
public split (ours; ``RunConfig.server_finetune`` resolves ``auto``)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Which frozen diffusion model guides, how its features are taken
    (docs/guidance-features.md), and where it runs."""

    model: str = keyed("embedded", "guidance-model")  # "embedded", a folder or a hub id
    timestep: int = keyed(150, "guidance-timestep")  # papers: 150 to 300
    layers: str = keyed("1,2,3", "guidance-layers")  # U-Net up blocks pooled
    # A learnable projector the guided terms see (ours): "auto" is each
    # method's default, chosen on validation (RunConfig.guidance_head).
    head: str = keyed("auto", "guidance-head")
    # How the raw features reach d dimensions: PCA, or PCA whitened so that no
    # few directions dominate every cosine (ours; diffusion_service/projection.py).
    projection: str = keyed("pca", "guidance-projection")
    prompt_template: str = "a photo of a {}"
    feature_store: str = ""  # "" = <output-dir>/feature-store
    # "" = the model runs in the ServerApp; "host:port" = the standalone service
    service: str = keyed("", "guidance-service")
    service_ca: str = keyed("", "guidance-service-ca")
    service_token_file: str = keyed("", "guidance-service-token-file")
    service_insecure: bool = keyed(False, "guidance-service-insecure")
    # Ours, for both guided methods (common/anchors.py): the class anchors as
    # a fixed classifier frame (none = the model's own linear head, the
    # papers' form), optionally mixed toward a simplex ETF (0 = as they are,
    # 1 = FedETF's geometry).
    anchor_classifier: str = "none"
    anchor_etf_mix: float = 0.0
    # The zero-shot teacher of both guided methods (SemanticFL's kd-form
    # "posterior", FedDifRC's zero-shot-weight): the diffusion model's
    # posterior of each image, or its control (ours): the sample's own label
    # smoothed by the teacher's average off-label mass, which carries no
    # diffusion content beyond that one number.
    kd_teacher: str = "zero-shot"
    # Ours, for both guided methods (server_app/strategies/public_finetune.py):
    # "public" adds fedavg-public's server step, a fine-tune of the aggregate
    # on the server's labelled public split kept only if its validation slice
    # does not get worse (adapt-steps, adapt-lr, heldout-size). "auto" is
    # "public" for a guided method with labels, "none" for every other
    # (RunConfig.server_finetune).
    server_finetune: str = "auto"

    @property
    def up_blocks(self) -> tuple[int, ...]:
        """``guidance-layers`` parsed: U-Net decoder block indices, e.g. (1, 2, 3)."""
        return parse_layers(self.layers)

    @property
    def where(self) -> str:
        """Where the guidance model runs: ``"in-process"`` or the service's address."""
        return self.service or "in-process"

    def validate(self) -> None:
        one_of("kd-teacher", self.kd_teacher, ("zero-shot", "smoothed-labels"))
        one_of("anchor-classifier", self.anchor_classifier, ("none", *ANCHOR_SOURCES))
        one_of("server-finetune", self.server_finetune, SERVER_FINETUNES)
        one_of("guidance-projection", self.projection, PROJECTIONS)
        check(
            0.0 <= self.anchor_etf_mix <= 1.0,
            "anchor-etf-mix",
            self.anchor_etf_mix,
            "a float in [0, 1] (0: the anchors' own geometry, 1: a simplex ETF)",
        )
        check(
            bool(self.model.strip()),
            "guidance-model",
            self.model,
            "'embedded', a diffusers-layout folder or a hub id",
        )
        check(
            0 <= self.timestep < 1000,
            "guidance-timestep",
            self.timestep,
            "an int in [0, 1000) (papers: 150 to 300)",
        )
        try:
            parse_layers(self.layers)
        except ValueError as exc:
            raise ConfigError(
                f"run-config 'guidance-layers' = {self.layers!r} is invalid; "
                f"expected distinct U-Net up-block indices like '1,2,3' ({exc})"
            ) from None
        check(
            self.prompt_template.count("{}") == 1,
            "prompt-template",
            self.prompt_template,
            "a string with exactly one '{}' for the class name",
        )
        one_of("guidance-head", self.head, ("auto", *GUIDANCE_HEADS))
        self._validate_service()

    def _validate_service(self) -> None:
        """The service keys: an address needs a token, and TLS unless loopback.

        Files are not opened here: clients parse the run config too, and only
        the ServerApp reads the CA and the token (a missing file fails there,
        naming it).
        """
        if not self.service:
            given = {
                "guidance-service-ca": self.service_ca,
                "guidance-service-token-file": self.service_token_file,
                "guidance-service-insecure": self.service_insecure,
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
        try:
            host, _ = parse_service_address(self.service)
        except ValueError as exc:
            raise ConfigError(
                f"run-config 'guidance-service' = {self.service!r}: {exc} "
                "('' runs the guidance model in the ServerApp)"
            ) from None
        check(
            bool(self.service_token_file.strip()),
            "guidance-service-token-file",
            self.service_token_file,
            "the path of the service's bearer-token file (required with "
            "guidance-service; deploy/make_certs.sh writes one)",
        )
        if self.service_insecure:
            check(
                is_loopback(host),
                "guidance-service-insecure",
                True,
                f"false for {host!r}: plain text is for loopback tests only "
                "(127.0.0.1, ::1, localhost); give guidance-service-ca instead",
            )
            check(
                not self.service_ca,
                "guidance-service-ca",
                self.service_ca,
                "'' with guidance-service-insecure = true (TLS is off)",
            )
        else:
            check(
                bool(self.service_ca.strip()),
                "guidance-service-ca",
                self.service_ca,
                "the path of the CA certificate that signed the service's "
                "certificate (required with guidance-service; TLS is not optional)",
            )
