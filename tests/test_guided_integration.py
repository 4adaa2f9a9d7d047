"""Real Flower simulations of the guided methods with a tiny random guidance model.

Same launcher and checks as ``test_integration.py``: the run's status, what it
wrote, and that each guided term ran on the clients.
"""

import json
from pathlib import Path

import pytest

from common.config import PAPER_FORMS
from common.io import read_jsonl
from deploy.local_sim import run_simulation

APP_DIR = Path(__file__).resolve().parents[1]
pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.integration

TINY_RUN = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "local-epochs": 1,
    "partitioner": "iid",
    "max-samples-per-client": 100,
    "public-split-size": 60,
    "model-width": 4,
    "guidance-layers": "0,1",  # the tiny U-Net has 2 up blocks
}


@pytest.mark.parametrize(
    ("method", "extra", "term_metrics"),
    [
        # the defaults: both guided methods distil the zero-shot teacher (the
        # server stores every client sample's denoising errors once: 60 U-Net
        # passes each, so fewer samples)
        ("semanticfl", {"max-samples-per-client": 40}, ("train-kd", "train-con")),
        (
            "feddifrc",
            {"max-samples-per-client": 40},
            ("train-tdcl", "train-ndcr", "train-kd"),
        ),
        # the papers' forms, one key away
        ("semanticfl", dict(PAPER_FORMS), ("train-kd", "train-con")),
        # ours: the anchors as a fixed classifier and the diffusion model's
        # zero-shot posterior distilled into it (the server stores every
        # client sample's denoising errors); clients also evaluate, so the
        # frame travels in evaluate Messages too
        (
            "semanticfl",
            {
                "anchor-classifier": "visual",
                "anchor-etf-mix": 0.5,
                "kd-form": "posterior",
                "fraction-evaluate": 1.0,
                "validation-fraction": 0.2,
            },
            ("train-kd", "train-con"),
        ),
        # self-supervised (no CE on the clients, a linear probe on the server)
        # on the simulation's feature path (the server fills the store), with
        # K sampled negative prompts per sample
        (
            "feddifrc",
            {"self-supervised": True, "tdcl-negatives": 3},
            ("train-tdcl", "train-ndcr"),
        ),
        # deployment's path: a query round collects VAE latents, features ride
        # in the train Messages
        (
            "feddifrc",
            {
                "feddifrc-features": "latent-upload",
                "share-latents": True,
                "zero-shot-weight": 0.0,  # no client image on the server
            },
            ("train-tdcl", "train-ndcr"),
        ),
    ],
    ids=[
        "semanticfl",
        "feddifrc",
        "semanticfl-paper",
        "semanticfl-anchor-classifier",
        "feddifrc-self-supervised",
        "feddifrc-latent-upload",
    ],
)
def test_guided_federation_completes(
    method, extra, term_metrics, tiny_sd_dir, tmp_path
):
    result = run_simulation(
        APP_DIR,
        {
            **TINY_RUN,
            **extra,
            "method": method,
            "guidance-model": str(tiny_sd_dir),
            "output-dir": str(tmp_path),
            "run-name": "it",
        },
        stream=False,
        timeout=600,
    )
    assert result.status == "finished:completed", result.output[-3000:]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["train"]["clients"] == 3
    for metric in term_metrics:
        assert rows[-1]["train"][metric] > 0, (metric, rows[-1]["train"])
    if extra.get("self-supervised"):
        assert rows[-1]["train"]["train-ce"] == 0.0
        assert 0.0 < rows[-1]["central-accuracy"] <= 1.0  # the probe's score
    # the teacher's default weight (3) reaches the run, or the form's own
    ran = json.loads((result.run_dir / "config.json").read_text())
    key = "kd-weight" if method == "semanticfl" else "zero-shot-weight"
    assert ran[key] == extra.get(key, 3.0), (key, ran[key])
    record = json.loads((result.run_dir / "guidance.json").read_text())
    assert record["method"] == method and record["seconds"] > 0
    assert (tmp_path / "feature-store").is_dir()
    teacher = not (
        extra.get("kd-form") == "coordinates"
        or extra.get("zero-shot-weight") == 0.0
        or extra.get("self-supervised")
    )
    assert ("teacher" in record) == teacher, record
    if teacher:
        assert record["teacher"]["tau"] > 0 and record["teacher"]["computed"] > 0
    if "anchor-classifier" in extra:
        assert record["anchor-classifier"] == "visual"
        assert 0.0 <= rows[-1]["validation"]["eval-accuracy"] <= 1.0
    # the defaults add fedavg-public's server step; the papers' forms and the
    # self-supervised variant do not
    finetune = not (
        extra.get("kd-form") == "coordinates" or extra.get("self-supervised")
    )
    assert (record.get("server-finetune") == "public") == finetune, record
    if finetune:  # 60 public images: 30 check the fine-tune (half), 30 train it
        assert record["public-images"] == 30 and record["validation-images"] == 30
        assert all(r["server"]["corrected"] is True for r in rows[1:]), rows
        assert all("kept" in r["server"] for r in rows[1:]), rows
    else:
        assert all("server" not in r for r in rows), rows
    if extra.get("feddifrc-features") == "latent-upload":
        query = record["latent-upload"]
        assert query["asked"] == 3 and len(query["shared"]) == 3, query
        assert sum(query["shared"].values()) == 300  # 3 clients x 100 samples
        assert rows[-1]["train"]["instance-guided"] == 1.0
        assert "decode back to the images" in result.output
