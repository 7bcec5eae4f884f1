"""Atomic, pickle-free checkpoints.

A checkpoint is a dict of tensors and plain Python values (ints, floats, strings, bools,
lists, dicts), so ``torch.load(path, weights_only=True)`` reads it. It is written to a
temporary file in the same directory and renamed into place (``os.replace``), so a run
killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import DataError

CHECKPOINT_VERSION = 1
LAST = "last.pt"


def save_checkpoint(state: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state, version=CHECKPOINT_VERSION), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist: nothing to resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several kinds for corrupt files
        raise DataError(f"checkpoint {path}: cannot load ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise DataError(f"checkpoint {path}: not a qsp-train checkpoint of version {CHECKPOINT_VERSION}")
    return state


def rng_state(device: torch.device) -> dict:
    """Torch RNG states as tensors (CPU, and the CUDA device in use: under torchrun each
    process owns one GPU, and a run may resume on another number of them)."""
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        s = st["cuda"]
        if isinstance(s, (list, tuple)):  # checkpoints that stored every device's state
            s = s[0] if s else None
        if s is not None:
            dev = device if device is not None and device.type == "cuda" else torch.device("cuda", 0)
            torch.cuda.set_rng_state(s.cpu(), dev)
