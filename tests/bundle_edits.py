"""Editing written bundles the ways a careless or hostile user does (for the strict-loader
regression tests and the bundle fuzz suite): raw edits of qspec.json and of the .npz files
(checksums left as they were), edits written back through Bundle.write (fresh checksums:
only the structural checks stand between them and a wrong design), and file-kind swaps."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import qsp
from qsp.bundle import Bundle, ModelRef, TaskInfo
from qsp.bundle.export import make_bundle


def square_mlp():
    """An MLP with a square hidden layer (dense2: 16 x 16), so a transposed weight keeps its shape."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))


def build_square(steps: int = 30, n_test: int = 24, seed: int = 0) -> Bundle:
    torch.manual_seed(seed)
    model = qsp.convert(square_mlp(), total_steps=steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.rand(32, 1, 8, 8)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = torch.Generator().manual_seed(seed + 1)
    tx, ty = torch.rand(n_test, 1, 8, 8, generator=g), torch.randint(0, 10, (n_test,), generator=g)
    task = TaskInfo("random", "classification", "accuracy", [1, 8, 8], [10], 10)
    return make_bundle(model, task, ModelRef("tests.bundle_edits:square_mlp", {}), tx, ty,
                       plan={"total_steps": steps})


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, fn) -> None:
    """Apply ``fn(spec_dict)`` to qspec.json (its return value replaces it when not None)."""
    f = Path(path) / "qspec.json"
    d = json.loads(f.read_text())
    r = fn(d)
    f.write_text(json.dumps(d if r is None else r, indent=1))


def load_npz(path: Path, name: str) -> dict:
    with np.load(Path(path) / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def edit_npz(path: Path, name: str, fn) -> None:
    """Apply ``fn(arrays)`` to one .npz file in place (its checksums in qspec.json unchanged)."""
    arrays = load_npz(path, name)
    fn(arrays)
    np.savez(Path(path) / name, **arrays)


def rewrite(path: Path, fn) -> None:
    """Read the bundle (no validation), apply ``fn(bundle)``, write it back with fresh checksums."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = Bundle.read(path, validate=False)
    fn(b)
    b.write(path)


def node(d: dict, op: str, k: int = 0) -> dict:
    """The k-th node of op ``op`` in a qspec dict."""
    return [n for n in d["graph"] if n["op"] == op][k]


@contextlib.contextmanager
def deadline(seconds: int = 10):
    """Fail instead of hanging (a read that blocks on a FIFO)."""
    def boom(*_):
        raise TimeoutError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def replace_with_kind(path: Path, name: str, kind: str, outside: Path | None = None) -> None:
    """Replace bundle file ``name`` by a directory, FIFO, symlink out of the bundle, empty file,
    random bytes, or nothing."""
    f = Path(path) / name
    data = f.read_bytes() if f.exists() else b""
    f.unlink()
    if kind == "dir":
        f.mkdir()
    elif kind == "fifo":
        os.mkfifo(f)
    elif kind == "symlink_out":
        target = Path(outside) / name
        target.write_bytes(data)
        f.symlink_to(target)
    elif kind == "dangling":
        f.symlink_to(Path(path) / "no-such-file")
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "garbage":
        f.write_bytes(bytes(range(256)) * 4)
    elif kind == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif kind != "missing":
        raise ValueError(kind)
