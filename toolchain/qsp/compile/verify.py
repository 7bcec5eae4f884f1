"""Three-way bit-exact verification of a compiled bundle on its test set.

Reference: :func:`qsp.verify.emulate.emulate` (integer-exact). Compared with exact
equality (no tolerance): onnxruntime on the bundle's ONNX export, hls4ml's ``compile()`` +
``predict()``, and the standalone g++ testbench's ``csim_results.log``. The transformed
bundle (folded masks, removed channels) must give the same outputs as the original one.
On a mismatch a per-layer report compares hls4ml's trace of every layer with the
emulator's trace of the transformed bundle (with the quantizer folded into that layer
applied) and names the first diverging layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import VerificationError
from .precision import PrecisionPlan


@dataclass
class PathResult:
    path: str
    inputs: int
    outputs_compared: int
    mismatches: int
    max_abs_diff: float
    ran: bool = True
    note: str = ""
    #: the first differing output: {"input": i, "output": j, "got": ..., "expected": ...}
    #: (j in hls4ml's channels-last order; onnxruntime: the model's own order)
    first_mismatch: dict | None = None

    def first_text(self) -> str:
        f = self.first_mismatch
        return (f"first differing output: input {f['input']}, output {f['output']}: {f['got']!r}, "
                f"expected {f['expected']!r}") if f else ""


@dataclass
class LayerDiff:
    layer: str
    node: str
    compared: int
    mismatches: int
    max_abs_diff: float


@dataclass
class VerifyReport:
    inputs: int
    paths: list[PathResult] = field(default_factory=list)
    metric: dict = field(default_factory=dict)
    transforms: list[str] = field(default_factory=list)
    layers: list[LayerDiff] = field(default_factory=list)
    first_diverging_layer: str | None = None
    #: the emulation against the trained model's outputs recorded at export (None: the bundle has none)
    trained_model: PathResult | None = None

    @property
    def mismatches(self) -> int:
        return int(sum(p.mismatches for p in self.paths))

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and all(p.ran for p in self.paths)

    def to_dict(self) -> dict:
        d = {"summary": {"ok": self.ok, "inputs": self.inputs, "mismatches": self.mismatches,
                         "paths": {p.path: {"compared": p.outputs_compared, "mismatches": p.mismatches,
                                            "max_abs_diff": p.max_abs_diff} for p in self.paths},
                         "metric": self.metric},
             "mismatches": self.mismatches, "inputs": self.inputs,
             "paths": [asdict(p) for p in self.paths], "metric": self.metric, "transforms": self.transforms}
        d["trained_model"] = asdict(self.trained_model) if self.trained_model else None
        if self.layers:
            d["per_layer"] = [asdict(x) for x in self.layers]
            d["first_diverging_layer"] = self.first_diverging_layer
        return d


def to_hls_layout(a: np.ndarray) -> np.ndarray:
    """Batch of NCHW (or N x C x L) values -> hls4ml's flat channels-last order."""
    a = np.asarray(a, np.float64)
    if a.ndim == 4:
        a = a.transpose(0, 2, 3, 1)
    elif a.ndim == 3:
        a = a.transpose(0, 2, 1)
    return a.reshape(len(a), -1)


def compare(path: str, ref: np.ndarray, got, note: str = "") -> PathResult:
    n = len(ref)
    if got is None:
        return PathResult(path, n, 0, 0, 0.0, ran=False, note=note)
    r = to_hls_layout(ref) if path != "onnxruntime" else np.asarray(ref, np.float64).reshape(n, -1)
    g = np.asarray(got, np.float64).reshape(n, -1)
    if r.shape != g.shape:
        return PathResult(path, n, int(r.size), int(r.size), float("inf"), note=f"shape {g.shape} != {r.shape}")
    diff = np.abs(r - g)
    bad = np.argwhere(r != g)
    first = None
    if len(bad):
        i, j = (int(v) for v in bad[0])
        first = {"input": i, "output": j, "got": float(g[i, j]), "expected": float(r[i, j])}
    return PathResult(path, n, int(r.size), len(bad), float(diff.max()) if diff.size else 0.0,
                      note=note, first_mismatch=first)


def trained_model_path(bundle, ref: np.ndarray) -> PathResult | None:
    """The emulation ``ref`` against the trained model's outputs recorded in the bundle at
    export (path ``trained_model``; None when the bundle has none)."""
    from ..verify.emulate import trained_model_diff

    d = trained_model_diff(bundle, ref)
    if d is None:
        return None
    return PathResult("trained_model", len(ref), d[0], d[1], d[2],
                      note="emulation vs the trained PyTorch model's outputs recorded at export")


def trained_model_error(p: PathResult, report: "VerifyReport") -> VerificationError:
    return VerificationError(
        f"the bundle is not the trained model: its emulation differs from the trained model's outputs recorded at "
        f"export on {p.mismatches} of {p.outputs_compared} outputs (max {p.max_abs_diff:g}); weights.npz or "
        "qspec.json were changed after training. Re-export the bundle from its run (qsp-train --resume --out RUN) "
        "or train again", report)


def task_metric(task, out_hls: np.ndarray, ref_nchw_shape, y) -> dict:
    """The task metric from the csim outputs (accuracy or PSNR)."""
    if y is None:
        return {}
    out = np.asarray(out_hls, np.float64)
    if task.metric == "accuracy" or task.kind == "classification":
        pred = out.reshape(len(out), -1).argmax(axis=1)
        return {"name": "accuracy", "value": float(np.mean(pred == np.asarray(y).reshape(-1))),
                "source": "csim"}
    if task.metric == "psnr":
        shp = ref_nchw_shape
        o = out.reshape((len(out),) + tuple(shp[2:]) + (shp[1],)).transpose(0, 3, 1, 2) if len(shp) == 4 else out
        yt = np.asarray(y, np.float64).reshape(o.shape)
        mse = np.mean((np.clip(o, 0, 1) - yt) ** 2, axis=tuple(range(1, o.ndim)))
        psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-12))
        return {"name": "psnr", "value": float(np.mean(psnr)), "unit": "dB", "source": "csim"}
    return {}


def layer_report(plan: PrecisionPlan, hls_trace: dict, emu_trace: dict) -> tuple[list[LayerDiff], str | None]:
    diffs, first = [], None
    for lp in plan.layers:
        if lp.name not in hls_trace or lp.node not in emu_trace:
            continue
        exp = to_hls_layout(lp.expected(emu_trace))
        got = np.asarray(hls_trace[lp.name], np.float64).reshape(len(exp), -1)
        if exp.shape != got.shape:
            diffs.append(LayerDiff(lp.name, lp.node, int(exp.size), int(exp.size), float("inf")))
            first = first or lp.name
            continue
        bad = int(np.count_nonzero(exp != got))
        diffs.append(LayerDiff(lp.name, lp.node, int(exp.size), bad, float(np.abs(exp - got).max())))
        if bad and first is None:
            first = lp.name
    return diffs, first


def check(report: VerifyReport) -> VerifyReport:
    if not report.ok:
        bad = [f"{p.path}: {p.mismatches} of {p.outputs_compared} outputs differ (max {p.max_abs_diff:g}; "
               f"{p.first_text()})" for p in report.paths if p.mismatches]
        where = (f"; first diverging layer: {report.first_diverging_layer}"
                 if report.first_diverging_layer else "")
        raise VerificationError("bit-exact verification failed: " + "; ".join(bad) + where, report)
    return report
