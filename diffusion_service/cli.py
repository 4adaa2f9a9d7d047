"""Command line: extract features, build anchors, show what a store holds.

    python -m diffusion_service extract --model DIR --dataset fashion-mnist \
        --store cache/guidance --kinds noise,cond --limit 5000
    python -m diffusion_service anchors --model DIR --dataset fashion-mnist \
        --store cache/guidance --public-size 1000
    python -m diffusion_service info --store cache/guidance

The embedded default model does not exist yet: ``--model`` is required.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from common.datasets import get_spec, load_dataset

from .recipe import KINDS, FeatureRecipe

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="diffusers-layout folder or hub id")
    p.add_argument("--dataset", required=True, help="a common.datasets name")
    p.add_argument("--data-root", default="", help="dataset folder ('' = default)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--store", required=True, type=Path, help="root folder of stores")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument(
        "--local-files-only",
        action="store_true",
        help="never touch the network for a hub id",
    )
    r = FeatureRecipe()
    p.add_argument("--resolution", type=int, default=None, help="default: the model's")
    p.add_argument("--timestep", type=int, default=r.timestep)
    p.add_argument("--up-blocks", type=_ints, default=r.up_blocks, help="e.g. 1,2,3")
    p.add_argument("--prompt-template", default=r.prompt_template)
    p.add_argument("--neutral-prompt", default=r.neutral_prompt)
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--dim", type=int, default=r.dim)
    p.add_argument("--fit-size", type=int, default=r.fit_size)
    p.add_argument(
        "--num-negatives",
        type=int,
        default=None,
        help="conditional features: K negatives (default: every class)",
    )
    p.add_argument("--micro-batch", type=int, default=r.micro_batch)
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m diffusion_service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="compute the missing features of a dataset")
    _add_common(ex)
    ex.add_argument(
        "--kinds", default="noise", help=f"comma list of {', '.join(KINDS)}"
    )
    ex.add_argument("--limit", type=int, default=0, help="first N samples (0 = all)")
    ex.add_argument("--shard-size", type=int, default=1024)
    an = sub.add_parser("anchors", help="text + visual class anchors")
    _add_common(an)
    an.add_argument(
        "--public-size",
        type=int,
        default=1000,
        help="server-held split (common.partition.carve_public_split)",
    )
    an.add_argument(
        "--partition-seed",
        type=int,
        default=42,
        help="seed of the public split (the run's `seed`)",
    )
    inf = sub.add_parser("info", help="show what the stores under a folder hold")
    inf.add_argument("--store", required=True, type=Path)
    return ap


def _session(args):
    from .extract import open_session
    from .model import GuidanceModel

    spec = get_spec(args.dataset)
    train, test = load_dataset(args.dataset, args.data_root)
    split = train if args.split == "train" else test
    recipe = FeatureRecipe(
        resolution=args.resolution,
        timestep=args.timestep,
        up_blocks=args.up_blocks,
        prompt_template=args.prompt_template,
        neutral_prompt=args.neutral_prompt,
        seed=args.seed,
        dim=args.dim,
        fit_size=args.fit_size,
        num_negatives=args.num_negatives,
        micro_batch=args.micro_batch,
    )
    model = GuidanceModel.from_pretrained(
        args.model,
        device=args.device,
        dtype=_DTYPES[args.dtype],
        local_files_only=args.local_files_only,
    )
    name = f"{args.dataset}-{args.split}"
    return open_session(
        model,
        recipe,
        dataset=name,
        images=split.images,
        labels=split.labels,
        class_names=spec.class_names,
        root=args.store,
    )


def _info(root: Path) -> int:
    from .store import FeatureStore

    paths = (
        [root]
        if (root / "manifest.json").is_file()
        else sorted(p.parent for p in root.glob("*/manifest.json"))
    )
    if not paths:
        print(f"no feature store under {root}")
        return 1
    for path in paths:
        s = FeatureStore(path).summary()
        key = s["key"]
        print(
            f"{path}\n  model {key['model'][:16]}  data {key['dataset']} "
            f"({key['num_samples']} samples)  compute {key['compute']}"
        )
        print(f"  recipe {json.dumps(key['recipe'])}")
        print(
            f"  prompts {key['prompts'][:3]}{' ...' if len(key['prompts']) > 3 else ''}"
        )
        print(f"  projection {s['projection']}  anchors {s['anchors']}")
        for kind, k in s["kinds"].items():
            print(
                f"  {kind:8s} {k['samples']:>8d} samples  {k['shards']:>4d} shards  "
                f"{k['bytes'] / 1e6:8.1f} MB"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "info":
        return _info(args.store)
    from common.datasets import DatasetNotFoundError

    from .extract import build_anchors, extract
    from .model import ModelLayoutError, TextWidthError
    from .store import StoreMismatchError
    from .vae_io import ImageInputError

    try:
        session = _session(args)
    except (
        ModelLayoutError,
        TextWidthError,
        ImageInputError,
        StoreMismatchError,
        DatasetNotFoundError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "extract":
        n = len(session.images)
        indices = np.arange(min(args.limit, n) if args.limit else n)
        stats = extract(
            session,
            kinds=tuple(k for k in args.kinds.split(",") if k),
            indices=indices,
            shard_size=args.shard_size,
            progress=not args.no_progress,
        )
        for kind, st in stats.items():
            print(
                f"{kind}: computed {st['computed']} samples, "
                f"derived {st['derived']} from the PCA store, "
                f"{len(st['problems'])} bad shards dropped"
            )
    else:
        from common.partition import carve_public_split

        idx = carve_public_split(
            session.labels.numpy(), args.public_size, args.partition_seed
        )
        anchors = build_anchors(session, idx, progress=not args.no_progress)
        print(
            f"anchors: text {tuple(anchors['text'].shape)}, visual "
            f"{tuple(anchors['visual'].shape)} from {len(idx)} public samples"
        )
    print(f"store: {session.store.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
