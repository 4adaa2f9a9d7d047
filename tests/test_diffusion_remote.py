"""The standalone guidance service over gRPC (diffusion_service.remote).

Real TLS (certificates from deploy/make_certs.sh), a real bearer token, the
tiny diffusers model of diffusion_conftest, and servers on free loopback
ports. The service's features are compared bit for bit with the in-process
FeatureExtractor on a separately loaded copy of the same model.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch

from diffusion_service import FeatureExtractor, FeatureRecipe, GuidanceModel, Projection
from diffusion_service.extract import text_anchors
from diffusion_service.remote import (
    GuidanceServiceError,
    LatentFeatureExtractor,
    RemoteGuidance,
    encode_posterior_mean,
)
from diffusion_service.remote.auth import bearer
from diffusion_service.remote.batcher import MicroBatcher
from diffusion_service.remote.cli import main as cli_main
from diffusion_service.remote.config import ServerConfig
from diffusion_service.remote.engine import GuidanceEngine
from diffusion_service.remote.protocol import (
    FEATURES,
    HEALTH,
    encode_tensors,
    method_path,
)
from diffusion_service.remote.server import GuidanceServer
from diffusion_service.remote.validation import Limits, MiB

pytest_plugins = ("diffusion_conftest",)

REPO = Path(__file__).resolve().parents[1]
MAKE_CERTS = REPO / "deploy" / "make_certs.sh"
# Sized for the tiny model: 32 px (latent 4x16x16), both up blocks, 8-row calls.
REC = FeatureRecipe(
    resolution=32, up_blocks=(0, 1), dim=8, fit_size=24, micro_batch=8, seed=3
)
LIMITS = Limits(max_samples=16, max_message_bytes=1 * MiB)
CODE = grpc.StatusCode


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """CA, server certificate (localhost, 127.0.0.1) and token from the script."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("certs") / "tls"
    subprocess.run(["bash", str(MAKE_CERTS), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def server_model(tiny_sd_dir) -> GuidanceModel:
    """The server's own copy of the tiny model (hooks never cross with the reference)."""
    return GuidanceModel.from_pretrained(tiny_sd_dir)


@pytest.fixture(scope="module")
def names(fmnist_small) -> tuple[str, ...]:
    """Fashion-MNIST class names."""
    return tuple(fmnist_small[2])


@pytest.fixture(scope="module")
def ref(tiny_model, names) -> FeatureExtractor:
    """The in-process extractor the service must agree with."""
    return FeatureExtractor(tiny_model, REC, names)


def _token(certs: Path) -> str:
    return (certs / "token").read_text().strip()


@contextmanager
def running(
    model: GuidanceModel, certs: Path, *, max_projections: int = 4, **cfg
) -> Iterator[tuple[GuidanceServer, RemoteGuidance]]:
    """A TLS server on a free loopback port and a client of it; both closed after."""
    config = ServerConfig(
        token=_token(certs),
        address="127.0.0.1:0",
        cert_pem=(certs / "server.pem").read_bytes(),
        key_pem=(certs / "server.key").read_bytes(),
        **{"limits": LIMITS, **cfg},
    )
    server = GuidanceServer(
        GuidanceEngine(model, max_projections=max_projections), config
    )
    port = server.start()
    client = RemoteGuidance(
        f"localhost:{port}", root_ca=certs / "ca.crt", token=_token(certs), timeout=30
    )
    try:
        yield server, client
    finally:
        client.close()
        server.stop(grace=5)


@pytest.fixture(scope="module")
def service(server_model, certs):
    """One shared server (max 1 stored projection, to exercise re-registration)."""
    with running(server_model, certs, max_projections=1, max_wait=0.002) as pair:
        yield pair


@pytest.fixture(scope="module")
def client(service) -> RemoteGuidance:
    """A TLS + token client of the shared server."""
    return service[1]


class Gate:
    """Blocks the server's U-Net until released (a real forward pre-hook)."""

    def __init__(self, model: GuidanceModel) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        self.handle = model.unet.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        self.entered.set()
        assert self.opened.wait(30), "gate never opened"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.opened.set()
        self.handle.remove()


class Call(threading.Thread):
    """Runs ``fn`` in a thread, keeping its result or exception."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except Exception as exc:  # checked by the test
            self.error = exc

    def value(self, timeout: float = 30.0):
        self.join(timeout)
        assert not self.is_alive(), "call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(cond, timeout: float = 10.0) -> None:
    """Poll ``cond`` until true or fail."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


def batch(fmnist_small, start: int, n: int):
    """n real images, their labels and (offset) sample indices."""
    images, labels, _ = fmnist_small
    idx = torch.arange(start, start + n) + 1000
    return images[start : start + n], labels[start : start + n], idx


def expected_raw(ref: FeatureExtractor, images, labels, idx, kind="noise"):
    """In-process raw features and prompt ids."""
    ids = ref.prompt_ids(kind, idx.tolist(), labels)
    return ref.raw(images, idx.tolist(), ids), ids


def status_of(excinfo) -> tuple[grpc.StatusCode, str]:
    """Code and message of a GuidanceServiceError."""
    return excinfo.value.code, excinfo.value.details


# ------------------------------------------------------------ correctness
def test_image_features_equal_in_process_bitwise(client, ref, fmnist_small, names):
    """Raw features of noise and cond prompts are the in-process bits."""
    images, labels, idx = batch(fmnist_small, 0, 11)  # 2 micro-batches, one padded
    for kind in ("noise", "cond", "neutral"):
        want, ids = expected_raw(ref, images, labels, idx, kind)
        got = client.features(
            images, idx, recipe=REC, class_names=names, kind=kind, labels=labels
        )
        assert torch.equal(got.prompt_ids, ids), kind
        assert got.features.dtype == torch.float32
        assert got.features.shape == (11, ids.shape[1], 16)
        assert torch.equal(got.features, want), kind
    # (N, H, W) grayscale is accepted as (N, 1, H, W).
    flat = client.features(
        images[:, 0], idx, recipe=REC, class_names=names, kind="noise", labels=labels
    )
    assert torch.equal(flat.features, expected_raw(ref, images, labels, idx)[0])


def test_explicit_prompt_ids_and_projection_equal_in_process(
    client, service, ref, fmnist_small, names
):
    """Projected features through a registered projection are the in-process bits."""
    images, labels, idx = batch(fmnist_small, 0, 24)
    raw = ref.raw(images, idx.tolist(), ref.prompt_ids("noise", idx.tolist(), labels))
    proj = Projection.fit(raw[:, 0], REC.dim)
    ids = torch.tensor([[0, 10], [3, 3], [9, 1]])  # class 3, neutral (10), ...
    want = ref.features(images[:3], idx[:3].tolist(), ids, proj)
    got = client.features(
        images[:3], idx[:3], recipe=REC, class_names=names, prompt_ids=ids,
        projection=proj,
    )  # fmt: skip
    assert torch.equal(got.features, want)
    assert torch.allclose(got.features.norm(dim=-1), torch.ones(3, 2))
    # The server keeps one projection: a second one evicts the first, and the
    # client re-registers the first by itself on NOT_FOUND.
    other = Projection.fit(raw[:, 0].flip(0) * 2, REC.dim)
    client.register_projection(other)
    again = client.features(
        images[:3], idx[:3], recipe=REC, class_names=names, prompt_ids=ids,
        projection=proj,
    )  # fmt: skip
    assert torch.equal(again.features, want)


def test_unknown_projection_is_not_found(client, certs, service, names, fmnist_small):
    """A projection id the server does not hold: NOT_FOUND saying what to do."""
    images, labels, idx = batch(fmnist_small, 0, 2)
    payload = encode_tensors(
        {"images": images, "indices": idx, "labels": labels},
        {"recipe": REC.to_dict(), "class_names": list(names), "kind": "noise",
         "projection_id": "f" * 64},
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        raw_call(service[0].port, certs, FEATURES, payload, _token(certs))
    assert err.value.code() == CODE.NOT_FOUND
    assert "register it again" in err.value.details()


def test_latents_give_the_image_path_bits(client, ref, fmnist_small, names):
    """VAE posterior means uploaded as latents: same bits as sending the images."""
    images, labels, idx = batch(fmnist_small, 5, 9)
    want, _ = expected_raw(ref, images, labels, idx)
    latents = encode_posterior_mean(ref, images)
    assert latents.shape == (9, 4, 16, 16)
    got = client.features(
        latents=latents, indices=idx, recipe=REC, class_names=names, kind="noise",
        labels=labels,
    )  # fmt: skip
    assert torch.equal(got.features, want)
    # float16 latents are accepted and upcast: equal to the in-process latent path.
    half = client.features(
        latents=latents.half(), indices=idx, recipe=REC, class_names=names,
        kind="noise", labels=labels,
    )  # fmt: skip
    local = LatentFeatureExtractor(ref)
    ids = ref.prompt_ids("noise", idx.tolist(), labels)
    assert torch.equal(
        half.features, local.raw(latents.half().float(), idx.tolist(), ids)
    )


def test_text_anchors_equal_in_process(client, ref, names):
    """Anchors are diffusion_service.text_anchors, bit for bit."""
    got = client.text_anchors(REC, names)
    assert got.shape == (len(names), REC.dim)
    assert torch.equal(got, text_anchors(ref, REC.dim, REC.seed))


def test_health_and_info(client, tiny_model, certs, service):
    """Health answers SERVING (ours and grpc.health.v1); Info describes the model."""
    assert client.health() == "SERVING"
    info = client.info()
    assert info["status"] == "SERVING"
    assert info["model"]["fingerprint"] == tiny_model.fingerprint
    assert info["model"]["resolution"] == 64  # native: sample_size 32 x VAE factor 2
    assert info["model"]["latent_shape"] == [4, 32, 32]
    assert info["model"]["num_up_blocks"] == 2
    assert info["limits"]["max_samples"] == LIMITS.max_samples
    pytest.importorskip("grpc_health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with tls_channel(service[0].port, certs) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=""),
            metadata=bearer(_token(certs)),
            timeout=10,
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # the token is needed here too
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert err.value.code() == CODE.UNAUTHENTICATED


# --------------------------------------------------------------- batching
def test_concurrent_callers_get_their_own_results(
    server_model, certs, ref, fmnist_small, names
):
    """Six queued requests merge into one run; each caller gets its own rows."""
    with running(server_model, certs, max_batch=64, max_wait=0.0) as (server, cl):
        parts = [batch(fmnist_small, 3 * k, 1 + k % 3) for k in range(6)]
        with Gate(server_model) as gate:
            first = Call(lambda: client_call(cl, *parts[0], names))
            assert gate.entered.wait(10)  # the worker is busy with `first`
            calls = [Call(lambda p=p: client_call(cl, *p, names)) for p in parts[1:]]
            wait_until(lambda: server.batcher.qsize() == 5)
            gate.opened.set()
        results = [first.value()] + [c.value() for c in calls]
        for (images, labels, idx), got in zip(parts, results, strict=True):
            want, _ = expected_raw(ref, images, labels, idx)
            assert torch.equal(got.features, want)
        merged = results[1:]
        assert {r.batch_requests for r in merged} == {5}
        assert {r.batch_samples for r in merged} == {sum(len(p[2]) for p in parts[1:])}
        assert server.batcher.stats.batches == 2


def test_micro_batcher_keys_limits_and_drain():
    """Only equal keys merge, max_batch is respected, close() drains the queue."""
    runs: list[list[str]] = []
    hold = threading.Event()

    def run(payloads):
        hold.wait(10)
        runs.append(list(payloads))
        return [p.upper() for p in payloads]

    b = MicroBatcher(run, max_batch=4, max_queue=8, max_wait=0.0)
    futs = [b.submit("k0", 1, "blocker")]
    wait_until(lambda: b.qsize() == 0)  # the worker holds the blocker
    jobs = [("a", 2, "a1"), ("b", 1, "b1"), ("a", 2, "a2"), ("a", 1, "a3"),
            ("a", 9, "big"), ("b", 1, "b2")]  # fmt: skip
    futs += [b.submit(*j) for j in jobs]
    hold.set()
    assert b.close(timeout=10)
    assert [f.result() for f in futs] == [
        "BLOCKER",
        "A1",
        "B1",
        "A2",
        "A3",
        "BIG",
        "B2",
    ]
    assert runs == [["blocker"], ["a1", "a2"], ["b1", "b2"], ["a3"], ["big"]]
    assert b.stats.largest_batch == 9  # a request over max_batch runs alone


def test_full_queue_is_resource_exhausted(
    server_model, certs, ref, fmnist_small, names
):
    """max-queue 1 with a blocked worker: the third request is refused at once."""
    images, labels, idx = batch(fmnist_small, 0, 2)

    def call():
        return client_call(cl, images, labels, idx, names)

    with running(server_model, certs, max_batch=1, max_queue=1) as (server, cl):
        with Gate(server_model) as gate:
            a = Call(call)
            assert gate.entered.wait(10)
            b = Call(call)
            wait_until(lambda: server.batcher.qsize() == 1)
            t0 = time.monotonic()
            with pytest.raises(GuidanceServiceError) as err:
                call()
            assert time.monotonic() - t0 < 5  # rejected, not queued
            code, msg = status_of(err)
            assert code == CODE.RESOURCE_EXHAUSTED
            assert "queue full" in msg
            gate.opened.set()
        want, _ = expected_raw(ref, images, labels, idx)
        assert torch.equal(a.value().features, want)
        assert torch.equal(b.value().features, want)
        assert server.batcher.stats.rejected_full == 1
        assert torch.equal(call().features, want)  # serving again


def client_call(cl, images, labels, idx, names, **kw):
    """A valid noise-features request."""
    return cl.features(
        images, idx, recipe=REC, class_names=names, kind="noise", labels=labels, **kw
    )


# ------------------------------------------------------------- validation
def _bad_requests(fmnist_small, names):
    images, labels, idx = batch(fmnist_small, 0, 2)
    ok = {"recipe": REC, "class_names": names, "kind": "noise", "labels": labels}
    lat = torch.zeros(2, 4, 16, 16)
    nan, inf = lat.clone(), lat.clone()
    nan[1, 2, 3, 4], inf[0, 0, 0, 0] = float("nan"), float("inf")
    many = fmnist_small[0][:17]
    return {
        "too many samples": (
            dict(images=many, indices=torch.arange(17), **{**ok, "labels": fmnist_small[1][:17]}),
            "17 samples in one request; valid: 1 to 16",
        ),
        "wrong ndim": (dict(images=images[:, 0, 0], indices=idx, **ok),
                       "images must be (N, H, W) or (N, C, H, W)"),
        "wrong channels": (dict(images=images.expand(-1, 2, -1, -1), indices=idx, **ok),
                           "valid: 1 (grayscale) or 3"),
        "float images": (dict(images=images.float(), indices=idx, **ok),
                         "images must be uint8"),
        "latent shape": (dict(latents=torch.zeros(2, 4, 7, 7), indices=idx, **ok),
                         "latents must be (N, 4, 16, 16)"),
        "latent dtype": (dict(latents=lat.double(), indices=idx, **ok),
                         "latents must be float32 or float16"),
        "NaN latents": (dict(latents=nan, indices=idx, **ok), "1 NaN/Inf values"),
        "Inf latents": (dict(latents=inf, indices=idx, **ok), "1 NaN/Inf values"),
        "indices length": (dict(images=images, indices=idx[:1], **ok),
                           "indices must have shape (2,)"),
        "negative index": (dict(images=images, indices=-idx, **ok), "indices must be >= 0"),
        "label range": (dict(images=images, indices=idx, **{**ok, "labels": labels + 10}),
                        "labels must lie in [0, 10)"),
        "no prompts": (dict(images=images, indices=idx, **{**ok, "kind": None}),
                       "give exactly one of 'kind'"),
        "up block": (dict(images=images, indices=idx,
                          **{**ok, "recipe": FeatureRecipe(resolution=32, up_blocks=(2,))}),
                     "valid indices 0..1"),
        "timestep": (dict(images=images, indices=idx,
                          **{**ok, "recipe": FeatureRecipe(resolution=32, up_blocks=(0,),
                                                           timestep=5000)}),
                     "timestep must lie in [0, 1000)"),
        "both inputs": (dict(images=images, latents=lat, indices=idx, **ok),
                        "give exactly one of 'images'"),
    }  # fmt: skip


def test_bad_requests_are_invalid_argument_and_service_survives(
    client, ref, fmnist_small, names
):
    """Each malformed request: INVALID_ARGUMENT naming the problem; then all is fine."""
    for what, (kwargs, message) in _bad_requests(fmnist_small, names).items():
        images = kwargs.pop("images", None)
        with pytest.raises(GuidanceServiceError) as err:
            client.features(images, **kwargs)
        code, msg = status_of(err)
        assert code == CODE.INVALID_ARGUMENT, (what, code, msg)
        assert message in msg, (what, msg)
    images, labels, idx = batch(fmnist_small, 0, 3)
    want, _ = expected_raw(ref, images, labels, idx)
    assert torch.equal(client_call(client, images, labels, idx, names).features, want)
    assert client.health() == "SERVING"


def test_garbage_bytes_and_oversized_messages(
    client, service, certs, fmnist_small, names
):
    """Non-safetensors bytes: INVALID_ARGUMENT; over the byte limit: RESOURCE_EXHAUSTED."""
    port, token = service[0].port, _token(certs)
    for junk in (
        b"\x00",
        b"\xff" * 64,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}!!",
    ):
        with pytest.raises(grpc.RpcError) as err:
            raw_call(port, certs, FEATURES, junk, token)
        assert err.value.code() == CODE.INVALID_ARGUMENT
        assert "safetensors" in err.value.details()
    big = torch.zeros(4, 3, 320, 320, dtype=torch.uint8)  # 1.2 MB > 1 MiB limit
    with pytest.raises(GuidanceServiceError) as err:
        client.features(big, torch.arange(4), recipe=REC, class_names=names,
                        kind="neutral")  # fmt: skip
    code, msg = status_of(err)
    assert code == CODE.RESOURCE_EXHAUSTED
    assert "larger than max" in msg
    assert client.health() == "SERVING"


# ------------------------------------------------------------------- auth
@contextmanager
def tls_channel(port: int, certs: Path):
    """A TLS channel trusting the test CA (no token attached)."""
    creds = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        yield ch


def raw_call(port: int, certs: Path, method: str, payload: bytes, token: str | None):
    """One unary call with exactly the metadata given."""
    with tls_channel(port, certs) as ch:
        stub = ch.unary_unary(method_path(method))
        return stub(payload, timeout=10, metadata=bearer(token) if token else None)


def test_missing_or_wrong_token_is_unauthenticated(service, certs, fmnist_small, names):
    """No token or a wrong one: UNAUTHENTICATED before anything else runs."""
    port = service[0].port
    for token in (None, "0" * 64, _token(certs)[:-1] + "x"):
        for method in (HEALTH, FEATURES):
            with pytest.raises(grpc.RpcError) as err:
                raw_call(port, certs, method, b"", token)
            assert err.value.code() == CODE.UNAUTHENTICATED, (token, method)
            assert ("missing" if token is None else "invalid") in err.value.details()
    wrong = RemoteGuidance(
        f"localhost:{port}", root_ca=certs / "ca.crt", token="1" * 32
    )
    with wrong, pytest.raises(GuidanceServiceError) as err:
        client_call(wrong, *batch(fmnist_small, 0, 2), names)
    assert err.value.code == CODE.UNAUTHENTICATED
    assert raw_call(port, certs, HEALTH, b"", _token(certs)) == b'{"status": "SERVING"}'


def test_insecure_or_untrusted_client_cannot_connect(service, certs, tmp_path):
    """A plain-text client, or one trusting another CA, gets no answer."""
    port, token = service[0].port, _token(certs)
    plain = RemoteGuidance(f"127.0.0.1:{port}", token=token, insecure=True, timeout=5)
    with plain, pytest.raises(GuidanceServiceError) as err:
        plain.health()
    assert err.value.code == CODE.UNAVAILABLE
    other = tmp_path / "other"
    subprocess.run(
        ["bash", str(MAKE_CERTS), str(other)], check=True, capture_output=True
    )
    stranger = RemoteGuidance(
        f"localhost:{port}", root_ca=other / "ca.crt", token=token, timeout=5
    )
    with stranger, pytest.raises(GuidanceServiceError) as err:
        stranger.health()
    assert err.value.code == CODE.UNAVAILABLE
    good = RemoteGuidance(
        f"127.0.0.1:{port}", root_ca=certs / "ca.crt", token=token, timeout=5
    )  # the certificate's IP SAN
    with good:
        assert good.health() == "SERVING"


def test_insecure_mode_is_loopback_only_and_still_needs_the_token(server_model, certs):
    """--insecure works on 127.0.0.1 (tests), never elsewhere; the token still counts."""
    with pytest.raises(ValueError, match="only allowed on a loopback"):
        ServerConfig(token=_token(certs), address="0.0.0.0:0", insecure=True)
    with pytest.raises(ValueError, match="TLS needs a certificate"):
        ServerConfig(token=_token(certs), address="127.0.0.1:0")
    config = ServerConfig(token=_token(certs), address="127.0.0.1:0", insecure=True)
    server = GuidanceServer(GuidanceEngine(server_model), config)
    port = server.start()
    try:
        with RemoteGuidance(
            f"127.0.0.1:{port}", token=_token(certs), insecure=True
        ) as ok:
            assert ok.health() == "SERVING"
        with (
            RemoteGuidance(f"127.0.0.1:{port}", token="2" * 32, insecure=True) as bad,
            pytest.raises(GuidanceServiceError) as err,
        ):
            bad.health()
        assert err.value.code == CODE.UNAUTHENTICATED
    finally:
        assert server.stop(grace=5)


def test_cli_health_command(service, certs, tmp_path, capsys):
    """``health`` exits 0 and prints SERVING; with a wrong token it exits 1."""
    port = service[0].port
    base = ["health", "--address", f"localhost:{port}", "--ca", str(certs / "ca.crt")]
    assert cli_main([*base, "--token-file", str(certs / "token")]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    wrong = tmp_path / "wrong-token"
    wrong.write_text("3" * 32)
    wrong.chmod(0o600)
    assert cli_main([*base, "--token-file", str(wrong)]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_make_certs_modes_and_sans(certs):
    """Keys and token are private (600); the default SANs are localhost, 127.0.0.1."""
    for name in ("ca.key", "server.key", "token"):
        assert (certs / name).stat().st_mode & 0o777 == 0o600, name
    assert re.fullmatch(r"[0-9a-f]{64}", _token(certs))
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


# ----------------------------------------------------- shutdown and CLI
def test_graceful_stop_finishes_in_flight_request(
    server_model, certs, ref, fmnist_small, names
):
    """stop(): new calls are refused while the in-flight one completes correctly."""
    images, labels, idx = batch(fmnist_small, 0, 3)
    with running(server_model, certs) as (server, cl):
        with Gate(server_model) as gate:
            inflight = Call(lambda: client_call(cl, images, labels, idx, names))
            assert gate.entered.wait(10)
            stopping = Call(lambda: server.stop(grace=20))
            late = RemoteGuidance(
                f"localhost:{server.port}", root_ca=certs / "ca.crt",
                token=_token(certs), timeout=5,
            )  # fmt: skip
            with late, pytest.raises(GuidanceServiceError) as err:
                wait_until(lambda: server.in_flight == 1 and not server._serving)
                late.health()
            assert err.value.code == CODE.UNAVAILABLE
            assert inflight.is_alive()
            gate.opened.set()
        want, _ = expected_raw(ref, images, labels, idx)
        assert torch.equal(inflight.value().features, want)
        assert stopping.value() is True


def test_cli_rejects_bad_arguments(certs, capsys):
    """Bad flags exit 2 with a message saying what is wrong."""
    token = str(certs / "token")
    cases = {
        ("--insecure", "--address", "0.0.0.0:50051"): "only allowed on a loopback",
        ("--address", "127.0.0.1:50051"): "TLS needs --certfile and --keyfile",
        ("--address", "nonsense", "--insecure"): "address must be host:port",
        ("--insecure", "--max-batch", "0"): "must be >= 1",
        ("--insecure", "--certfile", "/nonexistent"): "is not a readable file",
    }
    for extra, message in cases.items():
        with pytest.raises(SystemExit) as exit_:
            cli_main(["serve", "--model", "embedded", "--token-file", token, *extra])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err, extra


def test_cli_serves_and_exits_0_on_sigterm_after_in_flight_work(
    tiny_sd_dir, certs, ref, fmnist_small, names
):
    """``python -m diffusion_service.remote serve``: SIGTERM mid-request -> answer, exit 0."""
    cmd = [
        sys.executable, "-m", "diffusion_service.remote", "serve",
        "--model", str(tiny_sd_dir), "--address", "127.0.0.1:0",
        "--certfile", str(certs / "server.pem"), "--keyfile", str(certs / "server.key"),
        "--token-file", str(certs / "token"), "--torch-threads", "1", "--grace", "20",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    try:
        port = None
        for line in proc.stderr:
            log.append(line)
            if m := re.search(r"guidance service on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "".join(log)
        threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
        cl = RemoteGuidance(
            f"localhost:{port}", root_ca=certs / "ca.crt", token=_token(certs)
        )
        with cl:
            assert cl.health() == "SERVING"
            # 256 rows run one model call each (micro_batch 1): long enough to
            # be in flight when SIGTERM arrives.
            slow = dataclasses.replace(REC, micro_batch=1)
            images = fmnist_small[0][:32].repeat(8, 1, 1, 1)
            idx = torch.arange(256)
            job = Call(lambda: cl.features(images, idx, recipe=slow, class_names=names,
                                           kind="neutral"))  # fmt: skip
            wait_until(lambda: cl.info()["stats"]["in_flight"] == 1, timeout=30)
            proc.send_signal(signal.SIGTERM)
            got = job.value(timeout=60)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert got.features.shape == (256, 1, 16)
    local = FeatureExtractor(ref.model, slow, names)
    ids = local.prompt_ids("neutral", [0, 1], torch.zeros(2, dtype=torch.long))
    assert torch.equal(got.features[:2], local.raw(images[:2], [0, 1], ids))
    text = "".join(log)
    assert "received SIGTERM" in text
    assert "1 Features calls in flight" in text
    assert "stopped" in text and "cut off" not in text
