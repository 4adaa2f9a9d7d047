"""`python -m diffusion_service extract|anchors|info` on real Fashion-MNIST."""

import subprocess
import sys

import pytest
from safetensors.torch import load_file

from diffusion_service import FeatureStore
from diffusion_service.cli import main

pytest_plugins = ("diffusion_conftest",)
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_args(model, store):
    return ["--model", str(model), "--dataset", "fashion-mnist", "--store", str(store),
            "--resolution", "32", "--up-blocks", "0,1", "--dim", "8", "--fit-size", "16",
            "--micro-batch", "8"]


def test_extract_info_anchors(tiny_sd_dir, tmp_path, capsys):
    store = tmp_path / "stores"
    assert main(["extract", *tiny_args(tiny_sd_dir, store), "--limit", "24",
                 "--kinds", "noise,neutral", "--shard-size", "16"]) == 0
    out, err = capsys.readouterr()
    assert "noise: computed 24 samples" in out
    assert "img/s" in err and "extract noise" in err  # the progress display
    path = next(store.glob("fashion-mnist-train-*"))
    s = FeatureStore(path)
    assert s.stored_indices("noise").tolist() == list(range(24))
    assert s.key["num_samples"] == 60000 and s.key["recipe"]["up_blocks"] == [0, 1]

    assert main(["extract", *tiny_args(tiny_sd_dir, store), "--limit", "24",
                 "--no-progress"]) == 0
    assert "noise: computed 0 samples" in capsys.readouterr().out

    assert main(["anchors", *tiny_args(tiny_sd_dir, store), "--public-size", "20",
                 "--no-progress"]) == 0
    assert "text (10, 8), visual (10, 8) from 20 public samples" in capsys.readouterr().out
    anchors = load_file(str(path / "anchors.safetensors"))
    assert anchors["counts"].sum() == 20

    assert main(["info", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-train (60000 samples)" in out and "anchors True" in out
    assert "noise" in out and "neutral" in out


def test_cli_reports_a_broken_model_folder(tmp_path):
    (tmp_path / "m" / "vae").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_service", "extract", "--model",
         str(tmp_path / "m"), "--dataset", "fashion-mnist", "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
             "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing vae, unet, text_encoder, tokenizer, scheduler" in proc.stderr
