"""On-disk feature store: fp16 safetensors shards, a manifest, checked on read.

Layout of one store (one model + recipe + dataset, see :func:`.recipe.store_key`)::

    <root>/<dataset>-<key hash[:16]>/
        manifest.json            key, projection checksum, shards per kind
        projection.safetensors   the PCA projection, fitted once
        anchors.safetensors      text and visual class anchors (optional)
        shards/<kind>-<n>.safetensors

A shard holds ``indices`` (n,), ``features`` (n, d) or (n, S, d) in fp16 and,
for conditional features, ``classes`` (n, S). Shards and the manifest are
written atomically; the manifest is rewritten after each shard, so a killed
extraction loses at most the shard in progress. Each shard's size, SHA-256,
indices and header metadata (store key, kind, projection checksum) are checked
before use: a shard failing any check is dropped and its samples recomputed.
One writer per store at a time (no lock is taken).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save
from torch import Tensor

from common.io import atomic_write, atomic_write_json

from .projection import Projection, file_sha256
from .recipe import KINDS, key_hash


class StoreMismatchError(ValueError):
    """The folder holds a store written for another model, recipe or dataset."""


class CorruptShardError(RuntimeError):
    """A shard on disk does not match its manifest entry."""


class MissingFeaturesError(KeyError):
    """Requested samples are not in the store."""


def store_path(root: Path, key: dict[str, Any]) -> Path:
    """The folder of the store with this key under ``root``."""
    return Path(root) / f"{key['dataset']}-{key_hash(key)[:16]}"


class FeatureStore:
    """Features of one (model, recipe, dataset) key, sharded on disk.

    Parameters
    ----------
    path : Path
        The store folder (see :func:`store_path`).
    key : dict or None
        The expected key. A new store is created with it; an existing store with
        another key raises :class:`StoreMismatchError`. None opens an existing
        store as it is (readers that got the path from elsewhere).
    """

    def __init__(self, path: Path, key: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if mpath.exists():
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
            if key is not None and self.manifest["key_hash"] != key_hash(key):
                raise StoreMismatchError(
                    f"{self.path} holds features of another model/recipe/dataset "
                    f"(key {self.manifest['key_hash'][:16]}, expected "
                    f"{key_hash(key)[:16]}); they are never mixed in"
                )
        elif key is None:
            raise FileNotFoundError(
                f"no feature store at {self.path} (no manifest.json)"
            )
        else:
            self.manifest = {
                "key_hash": key_hash(key), "key": key, "projection": None,
                "next_shard": 0, "shards": {k: [] for k in KINDS},
            }  # fmt: skip
            self._save_manifest()
        self._verified: set[tuple[str, str]] = set()

    @property
    def key(self) -> dict[str, Any]:
        """The store key (model fingerprint, data, recipe...)."""
        return self.manifest["key"]

    @property
    def key_hash(self) -> str:
        """SHA-256 of the key."""
        return self.manifest["key_hash"]

    def _save_manifest(self) -> None:
        atomic_write_json(self.path / "manifest.json", self.manifest)

    # ------------------------------------------------------------ projection
    def load_projection(self) -> Projection | None:
        """Return the saved projection (None if absent or failing its checksum)."""
        entry = self.manifest["projection"]
        p = self.path / "projection.safetensors"
        if entry is None or not p.is_file() or file_sha256(p) != entry["sha256"]:
            return None
        return Projection.load(p)

    def save_projection(self, projection: Projection, fit_indices: np.ndarray) -> None:
        """Save the projection. Shards made with an older one become invalid."""
        meta = {
            "key_hash": self.key_hash,
            "fit_indices": json.dumps([int(i) for i in fit_indices]),
        }
        sha = projection.save(self.path / "projection.safetensors", meta)
        self.manifest["projection"] = {
            "sha256": sha,
            "rank": projection.rank,
            "fit_size": len(fit_indices),
        }
        self._save_manifest()

    @property
    def projection_sha(self) -> str:
        """Checksum of the projection the stored features were made with."""
        entry = self.manifest["projection"]
        return entry["sha256"] if entry else ""

    # ---------------------------------------------------------------- shards
    def shards(self, kind: str) -> list[dict[str, Any]]:
        """Manifest entries of a kind's shards."""
        if kind not in KINDS:
            raise ValueError(
                f"unknown feature kind {kind!r}; valid: {', '.join(KINDS)}"
            )
        # A store made before a kind existed has no list for it yet.
        return self.manifest["shards"].setdefault(kind, [])

    def write_shard(
        self, kind: str, indices, features: Tensor, classes: Tensor | None = None
    ) -> None:
        """Store features of ``indices`` as one new shard (fp16), atomically."""
        indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        tensors = {
            "indices": indices,
            "features": features.to(torch.float16).contiguous(),
        }
        if classes is not None:
            tensors["classes"] = classes.to(torch.int64).contiguous()
        meta = {
            "key_hash": self.key_hash,
            "kind": kind,
            "projection": self.projection_sha,
        }
        blob = save(tensors, metadata=meta)
        name = f"shards/{kind}-{self.manifest['next_shard']:06d}.safetensors"
        atomic_write(self.path / name, lambda tmp: tmp.write_bytes(blob))
        self.shards(kind).append({
            "file": name, "sha256": _sha(blob), "bytes": len(blob),
            "indices": indices.tolist(),
        })  # fmt: skip
        self.manifest["next_shard"] += 1
        self._save_manifest()

    def _check(
        self, entry: dict[str, Any], kind: str, blob: bytes | None = None
    ) -> str:
        """Why a shard is unusable ("" if it is fine); reads the whole shard."""
        p = self.path / entry["file"]
        if blob is None:
            if not p.is_file():
                return "file missing"
            if p.stat().st_size != entry["bytes"]:
                return f"size {p.stat().st_size} != {entry['bytes']} (truncated?)"
            blob = p.read_bytes()
        if _sha(blob) != entry["sha256"]:
            return "checksum mismatch (corrupt)"
        try:
            meta = _header(blob).get("__metadata__", {})
            stored = load_bytes(blob)["indices"].tolist()
        except Exception as exc:  # noqa: BLE001 - any parse failure means unusable
            return f"unreadable ({exc})"
        want = {
            "key_hash": self.key_hash,
            "kind": kind,
            "projection": self.projection_sha,
        }
        if any(meta.get(k) != v for k, v in want.items()):
            return "written for another store, kind or projection"
        if stored != entry["indices"]:
            return "its sample indices differ from the manifest's"
        return ""

    def verify(self, kind: str) -> list[str]:
        """Drop every invalid shard of ``kind`` (and stray files); list problems.

        Their samples then count as missing and are recomputed by the next
        extraction; a dropped shard is never read.
        """
        problems, keep = [], []
        for entry in self.shards(kind):
            why = self._check(entry, kind)
            if why:
                problems.append(f"{entry['file']}: {why}")
                (self.path / entry["file"]).unlink(missing_ok=True)
            else:
                keep.append(entry)
                self._verified.add((entry["file"], entry["sha256"]))
        if len(keep) != len(self.shards(kind)):
            self.manifest["shards"][kind] = keep
            self._save_manifest()
        listed = {e["file"] for k in KINDS for e in self.shards(k)}
        for p in (self.path / "shards").glob(f"*{kind}-*"):
            if f"shards/{p.name}" not in listed:  # killed mid-write or dropped
                p.unlink(missing_ok=True)
        return problems

    def stored_indices(self, kind: str) -> np.ndarray:
        """Sorted sample indices of ``kind`` listed in the manifest."""
        parts = [np.asarray(e["indices"], dtype=np.int64) for e in self.shards(kind)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def missing(self, kind: str, indices) -> np.ndarray:
        """Which of ``indices`` are not stored (sorted, unique)."""
        want = np.unique(np.asarray(indices, dtype=np.int64))
        return np.setdiff1d(want, self.stored_indices(kind), assume_unique=True)

    def read(
        self, kind: str, indices, *, verify: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Features (n, d) or (n, S, d) fp16 of ``indices``, in that order.

        Touches only the shards holding them. With ``verify`` each shard's
        checksum and header are checked (once per store object); a bad one raises
        :class:`CorruptShardError` (re-run ``extract`` to recompute it). Also
        returns the per-row class ids of conditional features (else None).
        """
        want = np.asarray(indices, dtype=np.int64).reshape(-1)
        entries = self.shards(kind)
        if not entries:
            raise MissingFeaturesError(f"no {kind!r} features in {self.path}")
        all_idx = [np.asarray(e["indices"], dtype=np.int64) for e in entries]
        flat = np.concatenate(all_idx)
        shard_of = np.repeat(np.arange(len(entries)), [len(a) for a in all_idx])
        row_of = np.concatenate([np.arange(len(a)) for a in all_idx])
        order = np.argsort(flat, kind="stable")
        pos = np.searchsorted(flat[order], want).clip(max=len(flat) - 1)
        found = flat[order][pos] == want
        if not found.all():
            raise MissingFeaturesError(
                f"{int((~found).sum())} of {len(want)} samples have no {kind!r} "
                f"features in {self.path} (first: {want[~found][:5].tolist()})"
            )
        hit = order[pos]
        hit_shard, hit_row = shard_of[hit], row_of[hit]
        out_f: np.ndarray | None = None
        out_c: np.ndarray | None = None
        # Gather with numpy: torch's threaded fp16 index kernel is ~100x slower
        # for these small gathers when the cores are busy (measured).
        for s in np.unique(hit_shard):
            sel = np.nonzero(hit_shard == s)[0]
            feats, classes = self._load_shard(entries[s], kind, verify)
            feats = feats.numpy()
            if out_f is None:
                out_f = np.empty((len(want), *feats.shape[1:]), dtype=feats.dtype)
                if classes is not None:
                    out_c = np.empty((len(want), *classes.shape[1:]), dtype=np.int64)
            out_f[sel] = feats[hit_row[sel]]
            if out_c is not None and classes is not None:
                out_c[sel] = classes.numpy()[hit_row[sel]]
        return torch.from_numpy(out_f), None if out_c is None else torch.from_numpy(
            out_c
        )

    def _load_shard(self, entry, kind, verify) -> tuple[Tensor, Tensor | None]:
        p = self.path / entry["file"]
        if verify and (entry["file"], entry["sha256"]) not in self._verified:
            blob = p.read_bytes() if p.is_file() else b""
            why = self._check(entry, kind, blob) if blob else "file missing"
            if why:
                raise CorruptShardError(
                    f"{p}: {why}. Run `python -m diffusion_service extract` again: it "
                    "drops the shard and recomputes its samples."
                )
            self._verified.add((entry["file"], entry["sha256"]))
            t = load_bytes(blob)  # one read: the bytes just hashed
            return t["features"], t.get("classes")
        with safe_open(str(p), "pt") as f:
            classes = f.get_tensor("classes") if "classes" in f.keys() else None
            return f.get_tensor("features"), classes

    # --------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """Describe what the store holds (``python -m diffusion_service info``)."""
        kinds = {}
        for kind in KINDS:
            es = self.shards(kind)
            if es:
                kinds[kind] = {
                    "shards": len(es),
                    "samples": int(len(self.stored_indices(kind))),
                    "bytes": int(sum(e["bytes"] for e in es)),
                }
        return {
            "path": str(self.path),
            "key_hash": self.key_hash,
            "key": self.key,
            "projection": self.manifest["projection"],
            "kinds": kinds,
            "anchors": (self.path / "anchors.safetensors").is_file(),
        }


def _header(blob: bytes) -> dict[str, Any]:
    """Parse the JSON header of a safetensors blob (8-byte little-endian length first)."""
    n = int.from_bytes(blob[:8], "little")
    if not 0 < n <= len(blob) - 8:
        raise ValueError("bad safetensors header length")
    return json.loads(blob[8 : 8 + n])


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
