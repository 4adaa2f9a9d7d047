"""Linear-probe evidence: do the guidance features carry class information?

Issue 4 (b): a linear classifier fitted on the model's neutral-prompt guidance
features of the public split, scored on the test set, next to the same probe
on raw pixels. The features come through the standard path (from_pretrained ->
FeatureExtractor -> projection fitted once on the public split).

    python -m diffusion_service.pretrain.probe --model diffusion_service/embedded
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.datasets import DATASETS, load_dataset
from common.io import atomic_write_json
from common.partition import carve_public_split

from ..extract import extract, open_session
from ..model import GuidanceModel
from ..recipe import FeatureRecipe


def linear_probe_accuracy(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    epochs: int = 300,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of multinomial logistic regression (full-batch Adam).

    Features are standardised with the training statistics; the same probe and
    budget are used for every feature set so the numbers compare.
    """
    torch.manual_seed(seed)
    x_train, x_test = x_train.float(), x_test.float()
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    probe = torch.nn.Linear(x_train.shape[1], num_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(probe(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(x_test).argmax(1) == y_test).float().mean())


def probe_evidence(
    model_dir: Path,
    *,
    dataset: str = "fashion-mnist",
    public_size: int = 10_000,
    test_size: int = 10_000,
    dim: int = 128,
    store_root: Path | None = None,
) -> dict:
    """Probe accuracy on guidance features vs raw pixels; chance for reference."""
    train, test = load_dataset(dataset)
    public = carve_public_split(train.labels.numpy(), public_size)
    test_idx = np.arange(min(test_size, len(test.labels)))
    # One session over [public ; test] so both get the projection fitted on
    # the public split only (the test images never shape the features).
    images = torch.cat([train.images[public], test.images[test_idx]])
    labels = torch.cat([train.labels[public], test.labels[test_idx]])
    model = GuidanceModel.from_pretrained(model_dir)
    recipe = FeatureRecipe(dim=dim, fit_size=len(public))
    root = store_root or Path(tempfile.mkdtemp(prefix="probe-store-"))
    session = open_session(
        model,
        recipe,
        dataset=f"{dataset}-public{public_size}+test{len(test_idx)}",
        images=images,
        labels=labels,
        class_names=DATASETS[dataset].class_names,
        root=root,
        fit_indices=np.arange(len(public)),
    )
    t0 = time.perf_counter()
    extract(session, kinds=("neutral",))
    seconds = time.perf_counter() - t0
    feats, _ = session.store.read("neutral", np.arange(len(labels)))
    feats = feats.float()
    n = len(public)
    pixels = images.flatten(1).float() / 255
    return {
        "protocol": f"linear probe fitted on the {n}-image public split, scored on "
        f"{len(test_idx)} {dataset} test images; neutral prompt, t={recipe.timestep}, "
        f"up_blocks={list(recipe.up_blocks)}, d={dim}",
        "guidance_features_accuracy": linear_probe_accuracy(
            feats[:n], labels[:n], feats[n:], labels[n:]
        ),
        "raw_pixels_accuracy": linear_probe_accuracy(
            pixels[:n], labels[:n], pixels[n:], labels[n:]
        ),
        "chance": 1 / len(DATASETS[dataset].class_names),
        "extraction_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffusion_service.pretrain.probe")
    ap.add_argument("--model", type=Path, required=True, help="guidance model folder")
    ap.add_argument("--public-split-size", type=int, default=10_000)
    ap.add_argument("--test-size", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON (default: <model>/probe.json)"
    )
    args = ap.parse_args(argv)
    result = probe_evidence(
        args.model,
        public_size=args.public_split_size,
        test_size=args.test_size,
        dim=args.dim,
    )
    atomic_write_json(args.out or args.model / "probe.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
