"""Read, validate and write bundles (see :mod:`qsp.bundle.schema`)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .schema import (GRAPH_INPUT, Conv2dNode, LeakyReluNode, LinearNode, MaskNode, QSpec, ScaleShiftNode, check_graph,
                     input_shapes_ok, sequential_inputs)

QSPEC = "qspec.json"
WEIGHTS = "weights.npz"
MASKS = "masks.npz"
STATE = "state_dict.npz"
TEST_DATA = "test_data.npz"
ONNX = "model.onnx"
REQUIRED = (QSPEC, WEIGHTS, STATE, TEST_DATA)


@dataclass
class Bundle:
    """A bundle in memory: the spec plus its arrays."""

    qspec: QSpec
    weights: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    state_dict: dict[str, np.ndarray] = field(default_factory=dict)
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    path: Path | None = None

    # ------------------------------------------------------------------ accessors
    def weight(self, node_name: str) -> np.ndarray:
        return self.weights[f"{node_name}.weight"]

    def bias(self, node_name: str) -> np.ndarray | None:
        return self.weights.get(f"{node_name}.bias")

    def mask(self, node_name: str) -> np.ndarray:
        return self.masks[f"{node_name}.mask"]

    @property
    def graph(self):
        return self.qspec.graph

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Bundle":
        """Every weight on its grid, pruned weights exactly zero, masks 0/1 of the right
        shape, shapes consistent along the graph."""
        graph = self.qspec.graph
        sequential_inputs(graph)
        check_graph(graph)
        out_shape = {GRAPH_INPUT: list(graph[0].in_shape)} if graph else {}
        for n in graph:
            wrong = input_shapes_ok(n, [out_shape[x] for x in n.inputs])
            if wrong:
                raise BundleError(f"graph: node {n.name!r} ({n.op}) {wrong}")
            out_shape[n.name] = list(n.out_shape)
            if isinstance(n, (LinearNode, Conv2dNode)):
                key = f"{n.name}.weight"
                if key not in self.weights:
                    raise BundleError(f"{WEIGHTS}: missing array {key!r} for node {n.name!r}")
                w = self.weights[key]
                fmts = n.weight.formats()
                for c, f in enumerate(fmts):
                    wc = w if len(fmts) == 1 else w[c]
                    if not f.contains(wc):
                        raise BundleError(f"{WEIGHTS}: {key} is not on its {f.bits}-bit grid 2^-{f.frac}"
                                          + ("" if len(fmts) == 1 else f" (channel {c})"))
                b = self.weights.get(f"{n.name}.bias")
                if b is not None and n.bias is not None and not n.bias.contains(b):
                    raise BundleError(f"{WEIGHTS}: {n.name}.bias is not on its grid {n.bias}")
                nz = int(np.count_nonzero(w))
                if nz != n.nonzeros:
                    raise BundleError(f"qspec.json: node {n.name!r} says {n.nonzeros} nonzeros, weights have {nz}")
            elif isinstance(n, LeakyReluNode):
                if n.param is None or not n.param.contains(np.array([n.slope])) or not 0 <= n.slope < 1:
                    raise BundleError(f"qspec.json: node {n.name!r} (leaky_relu): slope {n.slope!r} must lie in "
                                      f"[0, 1) on the grid of its param format {n.param}")
            elif isinstance(n, ScaleShiftNode):
                for key, f in ((f"{n.name}.weight", n.weight), (f"{n.name}.bias", n.bias)):
                    a = self.weights.get(key)
                    if a is None or f is None or a.shape != (n.channels,) or not f.contains(a):
                        raise BundleError(f"{WEIGHTS}: {key} must be {n.channels} values on the grid of {f}")
            elif isinstance(n, MaskNode):
                key = f"{n.name}.mask"
                if key not in self.masks:
                    raise BundleError(f"{MASKS}: missing array {key!r}")
                m = self.masks[key]
                if list(m.shape) != list(n.in_shape):
                    raise BundleError(f"{MASKS}: {key} has shape {list(m.shape)}, node expects {n.in_shape}")
                if not np.isin(m, (0, 1)).all():
                    raise BundleError(f"{MASKS}: {key} holds values other than 0 and 1")
        return self

    # ------------------------------------------------------------------ io
    @classmethod
    def read(cls, path, validate: bool = True) -> "Bundle":
        p = Path(path)
        if p.suffix == ".onnx" and p.is_file():  # a QONNX model made elsewhere (Brevitas, ...)
            from .qonnx import read_qonnx

            return read_qonnx(p, validate)
        if p.is_dir() and not (p / QSPEC).exists() and (p / "bundle" / QSPEC).exists():
            p = p / "bundle"  # a run directory was given
        if not p.is_dir():
            raise BundleError(f"bundle {str(path)!r} does not exist or is not a directory")
        for f in REQUIRED:
            if not (p / f).exists():
                raise BundleError(f"bundle {str(p)!r} is missing {f}")
        try:
            spec = json.loads((p / QSPEC).read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{p / QSPEC}: not valid JSON ({e})") from None
        qspec = QSpec.from_dict(spec)

        def load(name):
            f = p / name
            if not f.exists():
                return {}
            try:
                with np.load(f, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            except Exception as e:  # numpy raises many kinds here
                raise BundleError(f"{f}: cannot read ({e})") from None

        td = load(TEST_DATA)
        b = cls(qspec, load(WEIGHTS), load(MASKS), load(STATE), td.get("x"), td.get("y"), p)
        return b.validate() if validate else b

    def write(self, path) -> Path:
        """Write atomically: into a temporary sibling directory, then renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is an ordinary directory
        try:
            (tmp / QSPEC).write_text(json.dumps(self.qspec.to_dict(), indent=1))
            np.savez(tmp / WEIGHTS, **self.weights)
            np.savez(tmp / MASKS, **self.masks)
            np.savez(tmp / STATE, **self.state_dict)
            td = {}
            if self.test_x is not None:
                td["x"] = self.test_x
            if self.test_y is not None:
                td["y"] = self.test_y
            np.savez(tmp / TEST_DATA, **td)
            if self.path is not None and Path(self.path).resolve() != path.resolve():
                for extra in Path(self.path).iterdir():
                    if extra.is_file() and not (tmp / extra.name).exists():
                        shutil.copy2(extra, tmp / extra.name)
            if path.exists():
                old = path.with_name(path.name + ".old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        return path

    def write_json(self, name: str, obj) -> Path:
        """Add or replace a JSON side file (metrics.json, ...) in a written bundle."""
        if self.path is None:
            raise BundleError("bundle has not been written yet")
        f = Path(self.path) / name
        tmp = f.with_suffix(f.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, f)
        return f


def read_bundle(path, validate: bool = True) -> Bundle:
    return Bundle.read(path, validate)
