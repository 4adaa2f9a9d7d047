"""A checkpoint after every round: what a resumed run needs, in one checked file.

``<run folder>/checkpoints/round-NNNN.safetensors`` holds, after round N's
aggregation and evaluation:

- the global arrays (``global/<name>``, in the model's key order);
- the strategy's own state: the attributes its classes list in
  ``checkpointed`` (FedAvgM's momentum, FedAdam's moments, a correction
  schedule's loss history, the rejected updates), ``state/<name>...``;
- the RNG states the server draws from (Python's ``random``, which Flower's
  node sampling uses, numpy's and torch's global generators);
- the metrics rows written so far, so ``metrics.jsonl`` can be restored to
  exactly the rounds the checkpoint covers.

Everything but the tensors lives in the safetensors header as JSON, with a
SHA-256 digest over the tensors and that JSON: a truncated file fails to
open, a flipped bit fails the digest, and :func:`load_latest` then falls
back to the previous round's file (the latest two are always kept, and every
``checkpoint-every``-th if set). Files are written to a temporary name and
renamed, so a crash mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common import log
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from common.io import atomic_write

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
_NAME = re.compile(r"^round-(\d{4,})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (truncated, corrupt, wrong format)."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint, decoded."""

    server_round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]
    rng: dict[str, Any]
    rows: list[dict[str, Any]]
    path: Path


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"round-{server_round:04d}.safetensors"


# --- strategy state ----------------------------------------------------------


def checkpointed_attributes(strategy: object) -> list[str]:
    """Names every class in the strategy's MRO lists in its ``checkpointed``."""
    names: list[str] = []
    for klass in type(strategy).__mro__:
        for name in vars(klass).get("checkpointed", ()):
            if name not in names:
                names.append(name)
    return names


def _is_array(value: Any) -> bool:
    # numpy scalars too: arithmetic on 0-d arrays (BatchNorm's counter) gives them.
    return isinstance(value, np.ndarray | np.generic)


def _encode(name: str, value: Any, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON description of one attribute; its arrays go into ``tensors``."""
    if value is None:
        return {"kind": "none"}
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
        return {"kind": "object", "state": value.state_dict()}
    if _is_array(value):
        tensors[f"state/{name}"] = np.asarray(value, order="C")
        return {"kind": "array"}
    if isinstance(value, list | tuple) and value and all(map(_is_array, value)):
        for i, v in enumerate(value):
            tensors[f"state/{name}/{i}"] = np.asarray(v, order="C")
        return {"kind": "array-list", "n": len(value)}
    if isinstance(value, dict) and value and all(map(_is_array, value.values())):
        for k, v in value.items():
            tensors[f"state/{name}/{k}"] = np.asarray(v, order="C")
        return {"kind": "array-dict", "keys": list(value)}
    try:
        json.dumps(value)
    except TypeError:
        raise TypeError(
            f"strategy attribute {name!r} ({type(value).__name__}) cannot be "
            "checkpointed: give it state_dict()/load_state_dict() or keep it "
            "to arrays and JSON values"
        ) from None
    return {"kind": "json", "value": value}


@dataclass(frozen=True)
class ObjectState:
    """The ``state_dict()`` of a strategy attribute, loaded back in place."""

    state: dict[str, Any]


def _decode(name: str, spec: dict[str, Any], tensors: dict[str, np.ndarray]) -> Any:
    kind = spec["kind"]
    if kind == "none":
        return None
    if kind == "object":
        return ObjectState(spec["state"])
    if kind == "array":
        return tensors[f"state/{name}"]
    if kind == "array-list":
        return [tensors[f"state/{name}/{i}"] for i in range(spec["n"])]
    if kind == "array-dict":
        return {k: tensors[f"state/{name}/{k}"] for k in spec["keys"]}
    if kind == "json":
        return spec["value"]
    raise CheckpointError(f"unknown state kind {kind!r} for {name!r}")


def restore_strategy(strategy: object, state: dict[str, Any]) -> None:
    """Put a checkpoint's strategy state back into a freshly built strategy."""
    for name, value in state.items():
        if isinstance(value, ObjectState):
            getattr(strategy, name).load_state_dict(value.state)
        else:
            setattr(strategy, name, value)


# --- RNG states ----------------------------------------------------------------


def rng_state(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng/numpy"] = np.asarray(np_keys)
    tensors["rng/torch"] = torch.get_rng_state().numpy()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Set Python's, numpy's and torch's global generators to a checkpoint's."""
    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, rng["numpy-keys"], pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(rng["torch"].copy()))


# --- files ---------------------------------------------------------------------


def _digest(tensors: dict[str, np.ndarray], header: str) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        array = tensors[name]
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    strategy: object,
    rows: list[dict[str, Any]],
    keep_every: int = 0,
) -> Path:
    """Write round ``server_round``'s checkpoint atomically; prune older ones."""
    tensors: dict[str, np.ndarray] = {}
    order = list(arrays.keys())
    for name in order:
        tensors[f"global/{name}"] = np.asarray(arrays[name].numpy(), order="C")
    state = {
        name: _encode(name, getattr(strategy, name, None), tensors)
        for name in checkpointed_attributes(strategy)
    }
    header = json.dumps(
        {
            "format": FORMAT_VERSION,
            "round": server_round,
            "strategy": type(strategy).__name__,
            "global-keys": order,
            "state": state,
            "rng": rng_state(tensors),
            "rows": rows,
        }
    )
    metadata = {"checkpoint": header, "digest": _digest(tensors, header)}
    path = checkpoint_path(run_dir, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    _prune(path.parent, server_round, keep_every)
    return path


def _rounds_on_disk(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(
        int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name))
    )


def _prune(folder: Path, latest: int, keep_every: int) -> None:
    """Keep the latest two and every ``keep_every``-th; delete the rest."""
    rounds = [r for r in _rounds_on_disk(folder) if r <= latest]
    keep = set(rounds[-2:])
    if keep_every > 0:
        keep |= {r for r in rounds if r % keep_every == 0}
    for r in rounds:
        if r not in keep:
            checkpoint_path(folder.parent, r).unlink(missing_ok=True)


def read_checkpoint(path: Path) -> Checkpoint:
    """Open and verify one checkpoint file (CheckpointError if unusable)."""
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    header = metadata.get("checkpoint")
    if header is None or "digest" not in metadata:
        raise CheckpointError(f"{path}: not a SemanticFL checkpoint (no header)")
    if _digest(tensors, header) != metadata["digest"]:
        raise CheckpointError(f"{path}: digest mismatch (the file is corrupt)")
    meta = json.loads(header)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')}, this code reads "
            f"{FORMAT_VERSION}"
        )
    state = {name: _decode(name, spec, tensors) for name, spec in meta["state"].items()}
    rng = {
        **meta["rng"],
        "numpy-keys": tensors["rng/numpy"],
        "torch": tensors["rng/torch"],
    }
    arrays = ArrayRecord(
        {k: Array(tensors[f"global/{k}"]) for k in meta["global-keys"]}
    )
    return Checkpoint(meta["round"], arrays, state, rng, meta["rows"], path)


def load_latest(run_dir: Path) -> Checkpoint | None:
    """The newest usable checkpoint of a run folder (None if it has none).

    An unusable file is logged and skipped: the round before it is used.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    for server_round in reversed(_rounds_on_disk(folder)):
        path = checkpoint_path(run_dir, server_round)
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            log(WARNING, "Checkpoint skipped: %s; trying the round before", exc)
    return None
