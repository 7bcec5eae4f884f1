"""Integer-exact emulation of a bundle's quantized graph: the reference of verification.

Every tensor is a batch of integer codes (``int64``) plus one fraction-bit count ``f``:
its values are ``codes * 2**-f``, exactly. Nodes run in graph order, each on the outputs
of the nodes its ``inputs`` name (see :mod:`qsp.bundle.schema` for the semantics).

This module is a driver: each op's range rule (:meth:`qsp.ops.OpRule.infer`) and integer
kernel (:meth:`qsp.ops.OpRule.run`) are defined once, in the op's module of
:mod:`qsp.ops` (``quantize``: :mod:`qsp.ops.quantize`; ``linear`` / ``conv2d`` /
``conv1d``: :mod:`qsp.ops.weight`; ``avgpool2d`` and its truncation rule
:func:`~qsp.ops.pool.avgpool_frac`: :mod:`qsp.ops.pool`; ...). Every op is exact on the
codes; rounding and saturation live only in :mod:`qsp.fixedpoint`.

Range analysis (:func:`analyze`) bounds every tensor's largest code from the bit widths
and the (constant) weights; an ``int64`` overflow is impossible by construction, and a
graph where one could occur raises :class:`~qsp.errors.QspError` before computing. Matmuls
whose bound is below ``2**53`` run on float64 BLAS (every partial sum is an integer below
``2**53``, so the result is exact in any summation order); wider ones on ``int64``.

:func:`fake_quant_forward` is the training-time float32 computation (``F.linear`` /
``F.conv2d`` + :func:`qsp.fixedpoint.quantize_torch`) of the same graph
(:meth:`qsp.ops.OpRule.torch_forward`).
"""
from __future__ import annotations

import numpy as np

from ..bundle import GRAPH_INPUT, Bundle
from ..bundle.schema import consumers, sequential_inputs
from ..errors import BundleError, QspError, UnsupportedLayerError
from ..ops import RULES, Fixed, InferCtx, Step, TensorInfo  # noqa: F401 - re-exported
from ..ops.base import FLOAT64_EXACT, INT64_LIMIT, bias_codes, int_matmul, weight_codes  # noqa: F401 - re-exported
from ..ops.pool import avgpool_frac  # noqa: F401 - re-exported

__all__ = ["analyze", "run_steps", "emulate", "emulate_codes", "trained_model_diff", "fake_quant_forward",
           "multi_input", "Fixed", "Step", "TensorInfo", "InferCtx", "avgpool_frac", "int_matmul", "weight_codes",
           "bias_codes", "INT64_LIMIT", "FLOAT64_EXACT"]


def _rule(node, stage: str = "the emulator"):
    r = RULES.get(node.op)
    if r is None:
        raise UnsupportedLayerError(f"node {node.name!r}: op {node.op!r} is not supported by {stage}")
    return r


def multi_input(op: str) -> bool:
    """Whether ``op`` reads two or more inputs (its rules get lists)."""
    r = RULES.get(op)
    return r is not None and r.multi_input


# ============================================================================ analysis
def analyze(bundle: Bundle) -> list[Step]:
    """Range analysis of the graph: per node, the fraction bits and largest code of its
    inputs and output, plus the integer constants (weights, bias, mask) it uses. Raises
    :class:`QspError` where an exact int64 computation could overflow."""
    graph = sequential_inputs(list(bundle.graph))
    cons = consumers(graph)
    steps: list[Step] = []
    infos: dict[str, TensorInfo | None] = {GRAPH_INPUT: None}
    for i, node in enumerate(graph):
        r = _rule(node)
        ins = [infos[x] for x in node.inputs]
        out, params = r.infer(InferCtx(bundle, graph, i, cons), node, ins if r.multi_input else ins[0])
        steps.append(Step(node, ins[0], out, params, ins))
        infos[node.name] = out
    return steps


# ============================================================================ kernels
def run_steps(steps: list[Step], x, each=None):
    """Run analysed steps on input ``x`` (graph order); ``each(step, Fixed)`` sees every
    node's output. Returns the last node's output."""
    env = {GRAPH_INPUT: x}
    last = steps[-1].node.name
    uses: dict[str, int] = {}
    for st in steps:
        for name in st.node.inputs:
            uses[name] = uses.get(name, 0) + 1
    for st in steps:
        r = RULES[st.node.op]
        ins = [env[n] for n in st.node.inputs]
        y = r.run(st, ins if r.multi_input else ins[0])
        env[st.node.name] = y
        if each is not None:
            each(st, y)
        for name in st.node.inputs:  # free what no later node reads
            uses[name] -= 1
            if uses[name] == 0 and name != last:
                env.pop(name, None)
    return env[last]


# ============================================================================ entry points
def _check_input(bundle: Bundle, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not bundle.graph:
        raise BundleError("the graph is empty")
    first = bundle.graph[0].in_shape
    if list(x.shape[1:]) != list(first):
        raise QspError(f"input of shape {list(x.shape)} does not match the graph input {first} (batch first)")
    return x


def emulate(bundle: Bundle, x: np.ndarray, trace: bool = False, steps: list[Step] | None = None):
    """Exact outputs of the bundle's quantized graph on ``x`` (batch first, NCHW).

    Returns the float64 outputs, or with ``trace=True`` ``{node_name: float64 output}`` of
    every node in graph order. ``steps`` (from :func:`analyze`) may be passed to reuse one
    analysis over several calls."""
    steps = analyze(bundle) if steps is None else steps
    x = _check_input(bundle, x)
    out: dict[str, np.ndarray] = {}
    each = (lambda st, y: out.__setitem__(st.node.name, y.to_float(st.node.name))) if trace else None
    cur = run_steps(steps, x, each)
    if trace:
        return out
    if not isinstance(cur, Fixed):
        raise BundleError("the graph is empty")
    return cur.to_float("output")


def emulate_codes(bundle: Bundle, x: np.ndarray) -> list[tuple[str, Fixed]]:
    """Per node, the exact integer codes and fraction bits (for reports)."""
    res = []
    run_steps(analyze(bundle), _check_input(bundle, x), lambda st, y: res.append((st.node.name, y)))
    return res


def trained_model_diff(bundle: Bundle, emulated: np.ndarray | None = None) -> tuple[int, int, float] | None:
    """The bundle's exact emulation against the trained model's own outputs recorded at
    export (test_data.npz ``model_out``, see :func:`qsp.bundle.export.trained_outputs`):
    ``(outputs compared, outputs that differ, largest |difference|)``, exact equality, no
    tolerance. ``emulated`` is ``emulate(bundle, test_x[:n])`` when already computed (its
    first ``n`` inputs are compared). None when the bundle carries no such outputs (built by
    hand, or schema < 3). A bundle edited after training (a transposed weight, a bias
    replaced by zeros, a format changed) differs here even when every later path agrees
    with its emulation."""
    if bundle.model_out is None or bundle.test_x is None:
        return None
    if emulated is None:
        emulated = emulate(bundle, bundle.test_x)
    want = np.asarray(bundle.model_out, np.float64)[:len(emulated)]
    got = np.asarray(emulated, np.float64)
    if got.shape != want.shape:
        return int(want.size), int(want.size), float("inf")
    diff = np.abs(got - want)
    return int(want.size), int(np.count_nonzero(got != want)), float(diff.max()) if diff.size else 0.0


# ============================================================================ float32 torch
def fake_quant_forward(bundle: Bundle, x, trace: bool = False):
    """The training-time computation of the graph in float32 torch: ``F.linear`` /
    ``F.conv2d`` on the on-grid weights and :func:`qsp.fixedpoint.quantize_torch` at every
    quantize node (``F.avg_pool2d`` for average pooling, not truncated). Equal to
    :func:`emulate` while every float32 partial sum is exact (codes below ``2**24``).
    Returns float64 numpy outputs (or a trace dict like :func:`emulate`)."""
    import torch
    import torch.nn.functional as F

    out = {}
    with torch.no_grad():
        env = {GRAPH_INPUT: torch.as_tensor(np.asarray(x, dtype=np.float32))}
        for n in bundle.graph:
            r = RULES.get(n.op)
            if r is None:
                raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no float32 forward")
            ins = [env[i] for i in n.inputs]
            t = env[n.name] = r.torch_forward(n, ins if r.multi_input else ins[0], bundle, torch, F)
            if trace:
                out[n.name] = t.double().numpy()
    return out if trace else t.double().numpy()
