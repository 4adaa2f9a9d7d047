"""The store driver and the ServerApp's guidance prep on the guidance service.

A real TLS server (certificates and token from deploy/make_certs.sh) runs the
tiny diffusers model of diffusion_conftest on a free loopback port; what it
fills (features, projection, anchors, the whole store folder) is compared bit
for bit with the in-process path on a separately loaded copy of the model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_guidance import _cfg

from common.federation import data_split
from diffusion_service import (
    FeatureExtractor,
    GuidanceModel,
    ImageInputError,
    build_anchors,
    extract,
    open_session,
)
from diffusion_service.remote import (
    GuidanceServiceUnavailableError,
    RemoteFeatureExtractor,
    RemoteGuidance,
    connect,
    open_remote_session,
)
from diffusion_service.remote.config import ServerConfig
from diffusion_service.remote.engine import GuidanceEngine
from diffusion_service.remote.server import GuidanceServer
from diffusion_service.remote.validation import Limits, MiB
from server_app.guidance import guidance_kwargs

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")

MAKE_CERTS = Path(__file__).resolve().parents[1] / "deploy" / "make_certs.sh"
# Fewer samples per request than the store driver's 4 micro-batches, so the
# remote extractor must split its calls (the bits must not change).
LIMITS = Limits(max_samples=16, max_message_bytes=1 * MiB)


def make_certs(out: Path) -> Path:
    """CA, server certificate (localhost, 127.0.0.1) and token, from the script."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["bash", str(MAKE_CERTS), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """The service's TLS material and token."""
    return make_certs(tmp_path_factory.mktemp("certs") / "tls")


@pytest.fixture(scope="module")
def address(tiny_sd_dir, certs) -> Iterator[str]:
    """A TLS guidance service with its own copy of the tiny model; its address."""
    config = ServerConfig(
        token=(certs / "token").read_text().strip(),
        address="127.0.0.1:0",
        cert_pem=(certs / "server.pem").read_bytes(),
        key_pem=(certs / "server.key").read_bytes(),
        limits=LIMITS,
        max_wait=0.002,
    )
    engine = GuidanceEngine(GuidanceModel.from_pretrained(tiny_sd_dir))
    server = GuidanceServer(engine, config)
    port = server.start()
    try:
        yield f"localhost:{port}"
    finally:
        assert server.stop(grace=5)


@pytest.fixture(scope="module")
def client(address, certs) -> Iterator[RemoteGuidance]:
    """A checked connection to the service (closed after the module)."""
    with connect(address, root_ca=certs / "ca.crt", token_file=certs / "token") as c:
        yield c


def store_content(root: Path) -> dict[str, object]:
    """Everything a store folder holds, for exact comparison, minus file checksums.

    Tensors are kept as dtype, shape and raw bytes (so -0.0 != 0.0), JSON and
    header metadata as parsed values. File checksums are left out: safetensors
    (0.8) writes a header's metadata keys in random order, so even two
    in-process fills with identical tensors differ in file bytes.
    """
    out: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if path.suffix == ".json":
            out[name] = _without_checksums(json.loads(path.read_text()))
            continue
        with safe_open(str(path), "pt") as f:
            meta = {k: v for k, v in (f.metadata() or {}).items() if k != "projection"}
            tensors = {
                k: (str(t.dtype), tuple(t.shape), t.numpy().tobytes())
                for k in f.keys()
                for t in [f.get_tensor(k)]
            }
        out[name] = (meta, tensors)
    return out


def _without_checksums(obj):
    """A manifest without its ``sha256`` entries (hashes of file bytes)."""
    if isinstance(obj, dict):
        return {k: _without_checksums(v) for k, v in obj.items() if k != "sha256"}
    if isinstance(obj, list):
        return [_without_checksums(v) for v in obj]
    return obj


def service_keys(address: str, certs: Path, token_file: Path | None = None) -> dict:
    """Run-config keys pointing the ServerApp at the service."""
    return {
        "guidance-service": address,
        "guidance-service-ca": str(certs / "ca.crt"),
        "guidance-service-token-file": str(token_file or certs / "token"),
    }


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ store driver
def test_remote_store_equals_in_process_store_bit_for_bit(
    client, tiny_model, fmnist_small, recipe, tmp_path
):
    """extract (cond) + build_anchors: same store key, same files, same anchors."""
    images, labels, names = fmnist_small
    # Sampled negatives: prompt ids are drawn locally on both paths.
    rec = dataclasses.replace(recipe, num_negatives=3)
    fit, idx = np.arange(3, 27), np.arange(1, 40, 3)  # 24 public (all classes), 13
    common = dict(
        dataset="fmnist-40", images=images, labels=labels, class_names=names,
        fit_indices=fit,
    )  # fmt: skip
    local = open_session(tiny_model, rec, root=tmp_path / "local", **common)
    remote = open_remote_session(client, rec, root=tmp_path / "remote", **common)
    assert isinstance(remote.extractor, RemoteFeatureExtractor)
    assert remote.store.key == local.store.key  # fingerprint, compute, recipe...
    assert remote.store.path.name == local.store.path.name
    stats, anchors = {}, {}
    for name, session in (("local", local), ("remote", remote)):
        stats[name] = extract(session, kinds=("cond",), indices=idx, progress=False)
        anchors[name] = build_anchors(session, fit, progress=False)
    assert stats["remote"]["cond"]["computed"] == len(idx) == 13
    assert stats["remote"] == stats["local"]
    for part in ("text", "visual", "counts"):
        assert torch.equal(anchors["remote"][part], anchors["local"][part]), part
    content = store_content(remote.store.path)
    assert content == store_content(local.store.path)
    assert {"projection.safetensors", "anchors.safetensors"} <= set(content)
    assert any(name.startswith("shards/cond-") for name in content)
    # The store holds fp16; the extractors agree at full float32 precision too
    # (24 rows: the remote extractor splits them into requests of 16 and 8).
    proj = remote.store.load_projection()
    rows, ids = fit, local.extractor.prompt_ids("cond", fit, labels[fit])
    for what, args in (("raw", ()), ("features", (proj,))):
        want = getattr(local.extractor, what)(images[rows], rows, ids, *args)
        got = getattr(remote.extractor, what)(images[rows], rows, ids, *args)
        assert got.dtype == want.dtype == torch.float32, what
        assert got.numpy().tobytes() == want.numpy().tobytes(), what
    # One store: an in-process session finds the remote features, computes none.
    again = open_session(tiny_model, rec, root=tmp_path / "remote", **common)
    assert again.store.path == remote.store.path
    redo = extract(again, kinds=("cond",), indices=idx, progress=False)
    assert redo["cond"]["computed"] == 0


def test_remote_extractor_bookkeeping_is_the_in_process_code(
    client, tiny_model, fmnist_small, recipe
):
    """Model identity from Info; prompt ids, checks and errors as in process."""
    images, labels, names = fmnist_small
    rec = dataclasses.replace(recipe, num_negatives=4)
    remote = RemoteFeatureExtractor(client, rec, names)
    local = FeatureExtractor(tiny_model, rec, names)
    assert remote.model.fingerprint == tiny_model.fingerprint
    assert (remote.model.device, remote.model.dtype) == (
        tiny_model.device,
        tiny_model.dtype,
    )
    assert remote.resolution == local.resolution == 32
    ids = remote.prompt_ids("cond", range(40), labels)
    assert ids.shape == (40, 5)
    assert torch.equal(ids, local.prompt_ids("cond", range(40), labels))
    assert torch.equal(remote.text_anchors(8, 5), local.text_anchors(8, 5))
    for extractor in (remote, local):
        with pytest.raises(ImageInputError, match="must be uint8"):
            extractor.preprocess(images[:1].float())
    bad = dataclasses.replace(recipe, up_blocks=(0, 2))
    with pytest.raises(ValueError, match=r"up_blocks \[2\] out of range"):
        RemoteFeatureExtractor(client, bad, names)


# ------------------------------------------------------- ServerApp guidance
@pytest.mark.parametrize("method", ["semanticfl", "feddifrc"])
def test_guidance_kwargs_through_the_service_equal_in_process(
    paper_defaults, tiny_sd_dir, tmp_path, address, certs, method
):
    """Same anchors / the same store folder, bit for bit; the record says where."""
    local = _cfg(paper_defaults, tiny_sd_dir, tmp_path / "local", method=method)
    remote = _cfg(
        paper_defaults, tiny_sd_dir, tmp_path / "remote", method=method,
        **service_keys(address, certs),
    )  # fmt: skip
    split = data_split(local)
    kw_local, rec_local = guidance_kwargs(local, split)
    kw_remote, rec_remote = guidance_kwargs(remote, split)
    assert rec_local["guidance-service"] == "in-process"
    assert rec_local["guidance-model"] == str(tiny_sd_dir)
    assert rec_remote["guidance-service"] == address
    assert "guidance-model" not in rec_remote  # the service's model ran
    assert rec_remote["model"] == rec_local["model"]
    if method == "semanticfl":
        for name in ("text", "visual"):
            a, b = kw_remote["anchors"][name], kw_local["anchors"][name]
            assert a.shape == (10, 32) and a.tobytes() == b.tobytes(), name
    else:
        assert rec_remote["computed"] == rec_local["computed"] == {"cond": 36}
    (store_local,) = (tmp_path / "local" / "feature-store").iterdir()
    (store_remote,) = (tmp_path / "remote" / "feature-store").iterdir()
    assert store_remote.name == store_local.name
    assert store_content(store_remote) == store_content(store_local)


@pytest.mark.parametrize("why", ["nothing listening", "untrusted CA"])
def test_unreachable_service_fails_naming_the_address(
    paper_defaults, tiny_sd_dir, tmp_path, address, certs, why
):
    """No server there, or a certificate the CA did not sign: a clear error first."""
    if why == "nothing listening":
        target, ca = f"127.0.0.1:{free_port()}", certs
    else:
        target, ca = address, make_certs(tmp_path / "other")
    keys = {
        **service_keys(target, ca),
        "guidance-service-token-file": str(certs / "token"),
    }
    cfg = _cfg(paper_defaults, tiny_sd_dir, tmp_path, method="semanticfl", **keys)
    with pytest.raises(GuidanceServiceUnavailableError) as err:
        guidance_kwargs(cfg, data_split(cfg))
    message = str(err.value)
    assert f"guidance service at {target} is unreachable" in message
    assert str(ca / "ca.crt") in message  # what to check
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert not (tmp_path / "feature-store").exists()  # failed before any work


def test_wrong_token_fails_naming_the_address_and_token_file(
    paper_defaults, tiny_sd_dir, tmp_path, address, certs
):
    """A token the service does not know: refused before any work, and said so."""
    wrong = tmp_path / "wrong-token"
    wrong.write_text("ab" * 32)
    wrong.chmod(0o600)
    keys = service_keys(address, certs, token_file=wrong)
    cfg = _cfg(paper_defaults, tiny_sd_dir, tmp_path, method="feddifrc", **keys)
    with pytest.raises(GuidanceServiceUnavailableError) as err:
        guidance_kwargs(cfg, data_split(cfg))
    message = str(err.value)
    assert f"guidance service at {address} refused the token from {wrong}" in message
    assert "invalid bearer token" in message
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert not (tmp_path / "feature-store").exists()
