"""Integer-exact emulation of a bundle's quantized graph: the reference of verification.

Every tensor is a batch of integer codes (``int64``) plus one fraction-bit count ``f``:
its values are ``codes * 2**-f``, exactly. Nodes run in graph order, each on the outputs
of the nodes its ``inputs`` name (see :mod:`qsp.bundle.schema` for the semantics):

``quantize``
    :meth:`qsp.fixedpoint.FixedFormat.quantize_np` on the exact values (rounding and
    saturation live only in :mod:`qsp.fixedpoint`), then the codes at the node's ``frac``.
``linear`` / ``conv2d``
    exact sum of products of the codes (fraction bits ``f_x + f_w``) plus the bias aligned to
    the finer of the product's and the bias's fraction bits. Never rounded. Per-channel
    weight formats are brought to one grid with :func:`qsp.fixedpoint.widen_to_cover`.
    Convolution is an exact im2col matmul.
``relu``, ``mask``, ``maxpool2d``, ``flatten`` (NCHW order), ``pixel_shuffle`` (PyTorch's
channel order)
    exact on the codes.
``add`` / ``concat``
    inputs aligned to the finest fraction bits (exact shifts), summed / concatenated.
``clip``, ``leaky_relu`` (``x`` or ``slope * x`` at ``f + f_slope``), ``scale_shift``
(``x * scale + shift`` at full width), grouped / depthwise ``conv2d``
    exact on the codes.
``avgpool2d``
    the window sum ``S`` (exact) divided by the window size ``n``. When ``n`` is a power of
    two the mean is exact at ``f + log2 n`` fraction bits. Otherwise the mean has no finite
    binary expansion; the emulator keeps ``F = avgpool_frac(...)`` fraction bits and
    truncates toward zero (what hls4ml's pooling does with an accumulator of ``F``
    fraction bits). With ``F = max(f, d + 1) + ceil(log2 n)``, where ``d`` is the fraction
    bits of the next ``quantize`` node (reached through relu/mask/maxpool/flatten/
    pixel_shuffle, which commute with truncation), no mean lies closer than ``2**-F`` to a
    grid or half-grid point of ``d``, so the quantized result equals the quantized exact
    mean for every rounding mode. With no quantize node after it, ``F = f + ceil(log2 n)``.

Range analysis (:func:`analyze`) bounds every tensor's largest code from the bit widths
and the (constant) weights; an ``int64`` overflow is impossible by construction, and a
graph where one could occur raises :class:`~qsp.errors.QspError` before computing. Matmuls
whose bound is below ``2**53`` run on float64 BLAS (every partial sum is an integer below
``2**53``, so the result is exact in any summation order); wider ones on ``int64``.

:func:`fake_quant_forward` is the training-time float32 computation (``F.linear`` /
``F.conv2d`` + :func:`qsp.fixedpoint.quantize_torch`) of the same graph.

The 1-D ops ``conv1d``, ``maxpool1d``, ``avgpool1d`` on ``[C, L]`` are their 2-D ops on
``[C, 1, L]`` (kernel ``(1, k)``): the same code path, the same exactness.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..bundle.schema import ONE_D, as_2d_lists, sequential_inputs
from ..bundle import (GRAPH_INPUT, AvgPool2dNode, Bundle, ClipNode, Conv2dNode, FlattenNode, LinearNode,
                      MaskNode, MaxPool2dNode, Node, PixelShuffleNode, QuantNode, ReluNode, ScaleShiftNode,
                      consumers)
from ..errors import BundleError, QspError, UnsupportedLayerError
from ..fixedpoint import ceil_log2, round_np, to_int_np, widen_to_cover

#: codes of every tensor stay below this (int64 with a bit of margin for the bias shift)
INT64_LIMIT = 2 ** 62
#: integers below this are exact in float64
FLOAT64_EXACT = 2 ** 53
#: elements of one im2col chunk (bounds the emulator's memory)
_CHUNK_ELEMENTS = 2 ** 24


# ============================================================================ data types
@dataclass(frozen=True)
class TensorInfo:
    """Static range of a tensor: values are ``k * 2**-frac`` with ``|k| <= bound``."""

    frac: int
    bound: int
    signed: bool = True

    @property
    def bits(self) -> int:
        """Bits of a two's-complement (or unsigned) integer that holds every code."""
        return max(1, int(self.bound).bit_length() + (1 if self.signed else 0))


@dataclass
class Step:
    """One node with its input/output ranges and the integer constants it needs."""

    node: Node
    in_info: TensorInfo | None  # first input; None: the raw (float) graph input
    out_info: TensorInfo
    params: dict = field(default_factory=dict)
    in_infos: list = field(default_factory=list)  # every input (multi-input ops)


@dataclass
class Fixed:
    """A batch of exact fixed-point values: ``codes * 2**-frac``."""

    codes: np.ndarray  # int64
    frac: int

    def to_float(self, where: str = "") -> np.ndarray:
        if self.codes.size and int(np.max(np.abs(self.codes))) >= FLOAT64_EXACT:
            raise QspError(f"{where}: codes of {int(np.max(np.abs(self.codes))).bit_length()} bits cannot be "
                           "converted to float64 exactly")
        return np.ldexp(self.codes.astype(np.float64), -self.frac)


# ============================================================================ helpers
def _check_bound(node: Node, bound: int, what: str = "output") -> int:
    if bound >= INT64_LIMIT:
        raise QspError(f"node {node.name!r} ({node.op}): its {what} can reach {int(bound).bit_length()} bits, "
                       "beyond the emulator's exact int64 range; narrow the formats")
    return int(bound)


def avgpool_frac(in_frac: int, window: int, next_quant_frac: int | None) -> int:
    """Fraction bits the average pool keeps (see the module doc); the compiler gives
    hls4ml's pooling accumulator the same."""
    if window & (window - 1) == 0:  # power of two: the mean is exact
        return in_frac + ceil_log2(window)
    base = in_frac if next_quant_frac is None else max(in_frac, next_quant_frac + 1)
    return base + ceil_log2(window)


#: nodes through which the avgpool's truncation commutes (monotone, odd, value-preserving)
_TRANSPARENT = (ReluNode, MaskNode, MaxPool2dNode, FlattenNode, PixelShuffleNode)


def _next_quant_frac(graph: list[Node], i: int) -> int | None:
    """Fraction bits of the quantize node that alone reads node ``i``'s value (through
    single-consumer transparent nodes), else None."""
    cons = consumers(graph)
    name = graph[i].name
    while len(cons[name]) == 1:
        n = cons[name][0]
        if isinstance(n, QuantNode):
            return n.format.frac
        if not isinstance(n, _TRANSPARENT):
            return None
        name = n.name
    return None


def weight_codes(bundle: Bundle, node: LinearNode | Conv2dNode) -> tuple[np.ndarray, int]:
    """Integer weight codes on one grid (per-channel formats widened) and their frac."""
    fmt = widen_to_cover(node.weight.formats())
    try:
        return to_int_np(bundle.weight(node.name), fmt.frac), fmt.frac
    except (KeyError, ValueError) as e:
        raise BundleError(f"node {node.name!r}: weights not usable ({e})") from None


def bias_codes(bundle: Bundle, node: LinearNode | Conv2dNode) -> tuple[np.ndarray | None, int | None]:
    b = bundle.bias(node.name)
    if b is None:
        return None, None
    if node.bias is None:
        raise BundleError(f"node {node.name!r}: has a bias array but no bias format in qspec.json")
    try:
        return to_int_np(b, node.bias.frac), node.bias.frac
    except ValueError as e:
        raise BundleError(f"node {node.name!r}: bias not on its grid ({e})") from None


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _spatial(node) -> dict:
    """kernel / stride / padding as 2-D pairs: a 1-D node (conv1d, maxpool1d, avgpool1d) is
    its 2-D op with height 1 (schema.as_2d_lists)."""
    d = as_2d_lists(node)
    return {k: tuple(d[key]) for k, key in (("kernel", "kernel_size"), ("stride", "stride"),
                                              ("padding", "padding")) if key in d}


# ============================================================================ analysis
_INFER: dict[str, Callable] = {}
_RUN: dict[str, Callable] = {}


def _op(op: str, table: dict):
    def deco(fn):
        table[op] = fn
        return fn
    return deco


def _need_info(node, info):
    if info is None:
        raise BundleError(f"node {node.name!r} ({node.op}) gets the raw float input: the graph must start "
                          "with a quantize node")
    return info


@_op("quantize", _INFER)
def _infer_quant(bundle, graph, i, node: QuantNode, info):
    f = node.format
    return TensorInfo(f.frac, max(abs(f.int_min), abs(f.int_max)), f.signed), {"format": f}


def _infer_weighted(bundle, node, info, fan_in_rows: np.ndarray, w: np.ndarray, wf: int):
    """Shared by linear and conv: bound = max over outputs of sum|w| * max|x| + |b|."""
    b, bf = bias_codes(bundle, node)
    pf = info.frac + wf
    out_f = pf if bf is None else max(pf, bf)
    sp = out_f - pf
    abs_rows = [int(v) for v in fan_in_rows]
    if b is None:
        bound = max(abs_rows, default=0) * info.bound << sp
    else:
        sb = out_f - bf
        bound = max((r * info.bound << sp) + (abs(int(bb)) << sb) for r, bb in zip(abs_rows, b))
    prod_bound = max(abs_rows, default=0) * info.bound  # partial sums before the shift
    _check_bound(node, bound)
    params = {"w": w, "w_frac": wf, "b": b, "b_frac": bf, "shift_prod": sp,
              "shift_bias": None if bf is None else out_f - bf, "prod_bound": prod_bound}
    return TensorInfo(out_f, bound, True), params


@_op("linear", _INFER)
def _infer_linear(bundle, graph, i, node: LinearNode, info):
    info = _need_info(node, info)
    w, wf = weight_codes(bundle, node)
    if w.ndim != 2 or w.shape[1] != node.in_shape[-1]:
        raise BundleError(f"node {node.name!r}: weight shape {list(w.shape)} does not match input {node.in_shape}")
    return _infer_weighted(bundle, node, info, np.abs(w).sum(axis=1), w, wf)


@_op("conv2d", _INFER)
def _infer_conv(bundle, graph, i, node: Conv2dNode, info):
    info = _need_info(node, info)
    w, wf = weight_codes(bundle, node)
    g = int(node.groups)
    nd = len(node.in_shape) - 1
    if g < 1 or node.in_shape[0] % g or w.ndim != nd + 2 or w.shape[0] % g or w.shape[1] * g != node.in_shape[0]:
        raise BundleError(f"node {node.name!r}: weight shape {list(w.shape)} (groups {g}) does not match input "
                          f"{node.in_shape}")
    out, params = _infer_weighted(bundle, node, info, np.abs(w).reshape(w.shape[0], -1).sum(axis=1), w, wf)
    if nd == 1:  # conv1d: the conv2d of height 1
        params["w"] = w[:, :, None, :]
    params.update(_spatial(node), groups=g, out_hw=_hw(node.out_shape))
    return out, params


def _hw(shape) -> tuple[int, int]:
    """(H, W) of a [C, H, W] or (1, L) of a [C, L] shape."""
    return (1, int(shape[1])) if len(shape) == 2 else (int(shape[1]), int(shape[2]))


@_op("relu", _INFER)
def _infer_relu(bundle, graph, i, node, info):
    info = _need_info(node, info)
    return TensorInfo(info.frac, info.bound, False), {}


@_op("mask", _INFER)
def _infer_mask(bundle, graph, i, node: MaskNode, info):
    info = _need_info(node, info)
    try:
        m = np.asarray(bundle.mask(node.name))
    except KeyError:
        raise BundleError(f"masks.npz: missing array '{node.name}.mask'") from None
    if list(m.shape) != list(node.in_shape) or not np.isin(m, (0, 1)).all():
        raise BundleError(f"masks.npz: {node.name}.mask must be 0/1 of shape {node.in_shape}")
    return info, {"mask": m.astype(np.int64)}


@_op("maxpool2d", _INFER)
def _infer_maxpool(bundle, graph, i, node, info):
    return _need_info(node, info), _spatial(node)


@_op("avgpool2d", _INFER)
def _infer_avgpool(bundle, graph, i, node: AvgPool2dNode, info):
    info = _need_info(node, info)
    sp = _spatial(node)
    k, s = sp["kernel"], sp["stride"]
    n = k[0] * k[1]
    frac = avgpool_frac(info.frac, n, _next_quant_frac(graph, i))
    up = frac - info.frac
    _check_bound(node, info.bound * n << up, "window sum")
    if (info.bound * n << up) >= FLOAT64_EXACT:
        raise QspError(f"node {node.name!r} (avgpool2d): window sums of {(info.bound * n << up).bit_length()} bits "
                       "are too wide for the exact division")
    return TensorInfo(frac, info.bound << up, info.signed), {"kernel": k, "stride": s, "window": n, "up": up}


@_op("flatten", _INFER)
def _infer_flatten(bundle, graph, i, node, info):
    return _need_info(node, info), {}


@_op("pixel_shuffle", _INFER)
def _infer_shuffle(bundle, graph, i, node: PixelShuffleNode, info):
    info = _need_info(node, info)
    r = int(node.factor)
    if r < 1 or len(node.in_shape) != 3 or node.in_shape[0] % (r * r):
        raise BundleError(f"node {node.name!r} (pixel_shuffle): factor {r} does not divide the channels of "
                          f"{node.in_shape}")
    return info, {"factor": r}


@_op("clip", _INFER)
def _infer_clip(bundle, graph, i, node: ClipNode, info):
    info = _need_info(node, info)
    lo, hi = (np.ldexp(float(v), info.frac) for v in (node.lo, node.hi))
    if lo != np.floor(lo) or hi != np.floor(hi) or lo > hi:
        raise BundleError(f"node {node.name!r} (clip): bounds [{node.lo}, {node.hi}] are not on the input grid "
                          f"2^-{info.frac}")
    lo, hi = int(lo), int(hi)
    return TensorInfo(info.frac, max(min(info.bound, max(abs(lo), abs(hi))), 0), lo < 0), {"lo": lo, "hi": hi}


@_op("leaky_relu", _INFER)
def _infer_leaky(bundle, graph, i, node, info):
    info = _need_info(node, info)
    pf = node.param.frac
    a = int(round(float(node.slope) * 2 ** pf))
    if a / 2 ** pf != float(node.slope):
        raise BundleError(f"node {node.name!r} (leaky_relu): slope {node.slope} is not on its grid 2^-{pf}")
    bound = max(info.bound << pf, info.bound * abs(a))  # 0 <= slope < 1: pf >= 15
    _check_bound(node, bound)
    return TensorInfo(info.frac + pf, bound, True), {"alpha": a, "shift": pf}


@_op("scale_shift", _INFER)
def _infer_scale_shift(bundle, graph, i, node: ScaleShiftNode, info):
    info = _need_info(node, info)
    try:
        sc = to_int_np(bundle.weight(node.name), node.weight.frac)
        sh = to_int_np(bundle.bias(node.name), node.bias.frac)
    except (KeyError, ValueError, AttributeError) as e:
        raise BundleError(f"node {node.name!r} (scale_shift): scale/shift not usable ({e})") from None
    pf = info.frac + node.weight.frac
    out_f = max(pf, node.bias.frac)
    sp, sb = out_f - pf, out_f - node.bias.frac
    bound = max((abs(int(a)) * info.bound << sp) + (abs(int(b)) << sb) for a, b in zip(sc, sh))
    _check_bound(node, bound)
    return TensorInfo(out_f, bound, True), {"scale": sc, "shift": sh, "sp": sp, "sb": sb}


@_op("add", _INFER)
def _infer_add(bundle, graph, i, node, infos):
    for x in infos:
        _need_info(node, x)
    f = max(x.frac for x in infos)
    shifts = [f - x.frac for x in infos]
    bound = sum(x.bound << s for x, s in zip(infos, shifts))
    _check_bound(node, bound)
    return TensorInfo(f, bound, any(x.signed for x in infos)), {"shifts": shifts}


@_op("concat", _INFER)
def _infer_concat(bundle, graph, i, node, infos):
    for x in infos:
        _need_info(node, x)
    f = max(x.frac for x in infos)
    shifts = [f - x.frac for x in infos]
    bound = max(x.bound << s for x, s in zip(infos, shifts))
    _check_bound(node, bound)
    return TensorInfo(f, bound, any(x.signed for x in infos)), {"shifts": shifts}


#: ops that read two or more inputs (their handlers get lists)
MULTI_INPUT = {"add", "concat"}


def analyze(bundle: Bundle) -> list[Step]:
    """Range analysis of the graph: per node, the fraction bits and largest code of its
    inputs and output, plus the integer constants (weights, bias, mask) it uses. Raises
    :class:`QspError` where an exact int64 computation could overflow."""
    graph = sequential_inputs(list(bundle.graph))
    steps: list[Step] = []
    infos: dict[str, TensorInfo | None] = {GRAPH_INPUT: None}
    for i, node in enumerate(graph):
        fn = _INFER.get(node.op)
        if fn is None:
            raise UnsupportedLayerError(f"node {node.name!r}: op {node.op!r} is not supported by the emulator")
        ins = [infos[x] for x in node.inputs]
        out, params = fn(bundle, graph, i, node, ins if node.op in MULTI_INPUT else ins[0])
        steps.append(Step(node, ins[0], out, params, ins))
        infos[node.name] = out
    return steps


# ============================================================================ kernels
def int_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """Exact ``a @ b`` of int64 arrays whose partial sums are at most ``bound`` in
    magnitude: float64 BLAS when ``bound < 2**53`` (exact in any order), int64 otherwise."""
    if bound < FLOAT64_EXACT:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def _add_bias(acc: np.ndarray, p: dict, channel_axis: int) -> np.ndarray:
    if p["shift_prod"]:
        acc = acc << p["shift_prod"]
    if p["b"] is not None:
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        acc = acc + (p["b"] << p["shift_bias"]).reshape(shape)
    return acc


def _windows(codes: np.ndarray, kernel, stride) -> np.ndarray:
    """(B, C, OH, OW, kh, kw) view of the pooling/conv windows (no padding)."""
    v = np.lib.stride_tricks.sliding_window_view(codes, kernel, axis=(2, 3))
    return v[:, :, ::stride[0], ::stride[1]]


@_op("quantize", _RUN)
def _run_quant(step: Step, x):
    fmt = step.params["format"]
    values = x if not isinstance(x, Fixed) else x.to_float(step.node.name)
    q = fmt.quantize_np(values)  # exact float64 (rounding + saturation of qsp.fixedpoint)
    return Fixed(to_int_np(q, fmt.frac), fmt.frac)


@_op("linear", _RUN)
def _run_linear(step: Step, x: Fixed):
    p = step.params
    acc = int_matmul(x.codes, p["w"].T, p["prod_bound"])
    return Fixed(_add_bias(acc, p, acc.ndim - 1), step.out_info.frac)


@_op("conv2d", _RUN)
def _run_conv(step: Step, x: Fixed):
    p = step.params
    (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
    w, g = p["w"], p.get("groups", 1)
    o = w.shape[0]
    og, cg = o // g, w.shape[1]  # outputs and input channels per group
    codes = np.pad(x.codes, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    b = codes.shape[0]
    oh, ow = p["out_hw"]
    per_sample = oh * ow * cg * kh * kw * g
    chunk = max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    out = np.empty((b, o, oh, ow), dtype=np.int64)
    for s in range(0, b, chunk):
        win = _windows(codes[s:s + chunk], (kh, kw), (sh, sw))[:, :, :oh, :ow]
        nb = win.shape[0]
        # (B, OH, OW, G, Cg*kh*kw) @ (G, Cg*kh*kw, Og) per group
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(nb * oh * ow, g, cg * kh * kw)
        w2 = w.reshape(g, og, cg * kh * kw).transpose(0, 2, 1)
        if g == 1:
            acc = int_matmul(cols[:, 0], w2[0], p["prod_bound"])
        else:
            acc = np.stack([int_matmul(cols[:, k], w2[k], p["prod_bound"]) for k in range(g)], axis=1)
        out[s:s + chunk] = acc.reshape(nb, oh, ow, o).transpose(0, 3, 1, 2)
    return Fixed(_add_bias(out, p, 1), step.out_info.frac)


def _one_d(run2d):
    """The run function of a 1-D op: its 2-D op on [B, C, 1, L]."""
    def run(step: Step, x: Fixed):
        y = run2d(step, Fixed(x.codes[:, :, None, :], x.frac))
        return Fixed(y.codes[:, :, 0, :], y.frac)
    return run


@_op("relu", _RUN)
def _run_relu(step: Step, x: Fixed):
    return Fixed(np.maximum(x.codes, 0), x.frac)


@_op("mask", _RUN)
def _run_mask(step: Step, x: Fixed):
    return Fixed(x.codes * step.params["mask"], x.frac)


@_op("maxpool2d", _RUN)
def _run_maxpool(step: Step, x: Fixed):
    return Fixed(_windows(x.codes, step.params["kernel"], step.params["stride"]).max(axis=(4, 5)), x.frac)


@_op("avgpool2d", _RUN)
def _run_avgpool(step: Step, x: Fixed):
    p = step.params
    sums = _windows(x.codes, p["kernel"], p["stride"]).sum(axis=(4, 5)) << p["up"]
    # a / n correctly rounded in float64 then truncated equals the exact truncated
    # quotient while |a| < 2**53 (checked in the analysis)
    q = round_np(sums.astype(np.float64) / p["window"], "zero")
    return Fixed(q.astype(np.int64), step.out_info.frac)


@_op("flatten", _RUN)
def _run_flatten(step: Step, x: Fixed):
    return Fixed(x.codes.reshape(x.codes.shape[0], -1), x.frac)


@_op("pixel_shuffle", _RUN)
def _run_shuffle(step: Step, x: Fixed):
    r = step.params["factor"]
    b, c, h, w = x.codes.shape
    y = x.codes.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return Fixed(y.reshape(b, c // (r * r), h * r, w * r), x.frac)


@_op("clip", _RUN)
def _run_clip(step: Step, x: Fixed):
    return Fixed(np.clip(x.codes, step.params["lo"], step.params["hi"]), x.frac)


@_op("leaky_relu", _RUN)
def _run_leaky(step: Step, x: Fixed):
    p = step.params
    c = x.codes
    return Fixed(np.where(c >= 0, c << p["shift"], c * p["alpha"]), step.out_info.frac)


@_op("scale_shift", _RUN)
def _run_scale_shift(step: Step, x: Fixed):
    p = step.params
    shape = (1, -1) + (1,) * (x.codes.ndim - 2)
    y = ((x.codes * p["scale"].reshape(shape)) << p["sp"]) + (p["shift"].reshape(shape) << p["sb"])
    return Fixed(y, step.out_info.frac)


@_op("add", _RUN)
def _run_add(step: Step, xs: list):
    y = sum(x.codes << s for x, s in zip(xs, step.params["shifts"]))
    return Fixed(y, step.out_info.frac)


@_op("concat", _RUN)
def _run_concat(step: Step, xs: list):
    return Fixed(np.concatenate([x.codes << s for x, s in zip(xs, step.params["shifts"])], axis=1),
                 step.out_info.frac)


for _op1, _op2 in ONE_D.items():
    _INFER[_op1], _RUN[_op1] = _INFER[_op2], _one_d(_RUN[_op2])


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
        ins = [env[n] for n in st.node.inputs]
        y = _RUN[st.node.op](st, ins if st.node.op in MULTI_INPUT else ins[0])
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

    handlers = {
        "quantize": lambda n, t: n.format.quantize_torch(t),
        "linear": lambda n, t: F.linear(t, _t(bundle.weight(n.name)), _tb(bundle.bias(n.name))),
        "conv2d": lambda n, t: F.conv2d(t, _t(bundle.weight(n.name)), _tb(bundle.bias(n.name)),
                                        stride=_pair(n.stride), padding=_pair(n.padding), groups=int(n.groups)),
        "clip": lambda n, t: torch.clamp(t, float(n.lo), float(n.hi)),
        "leaky_relu": lambda n, t: F.leaky_relu(t, float(n.slope)),
        "scale_shift": lambda n, t: (t * _t(bundle.weight(n.name)).reshape((-1,) + (1,) * (t.ndim - 2))
                                     + _t(bundle.bias(n.name)).reshape((-1,) + (1,) * (t.ndim - 2))),
        "add": lambda n, ts: sum(ts[1:], ts[0]),
        "concat": lambda n, ts: torch.cat(ts, dim=1),
        "relu": lambda n, t: F.relu(t),
        "mask": lambda n, t: t * _t(bundle.mask(n.name)),
        "conv1d": lambda n, t: F.conv1d(t, _t(bundle.weight(n.name)), _tb(bundle.bias(n.name)),
                                        stride=int(n.stride[0]), padding=int(n.padding[0])),
        "maxpool1d": lambda n, t: F.max_pool1d(t, int(n.kernel_size[0]), int(n.stride[0])),
        "avgpool1d": lambda n, t: F.avg_pool1d(t, int(n.kernel_size[0]), int(n.stride[0])),
        "maxpool2d": lambda n, t: F.max_pool2d(t, _pair(n.kernel_size), _pair(n.stride)),
        "avgpool2d": lambda n, t: F.avg_pool2d(t, _pair(n.kernel_size), _pair(n.stride)),
        "flatten": lambda n, t: torch.flatten(t, 1),
        "pixel_shuffle": lambda n, t: F.pixel_shuffle(t, int(n.factor)),
    }

    def _t(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float32))

    def _tb(a):
        return None if a is None else _t(a)

    out = {}
    with torch.no_grad():
        env = {GRAPH_INPUT: torch.as_tensor(np.asarray(x, dtype=np.float32))}
        for n in bundle.graph:
            if n.op not in handlers:
                raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no float32 forward")
            ins = [env[i] for i in n.inputs]
            t = env[n.name] = handlers[n.op](n, ins if n.op in MULTI_INPUT else ins[0])
            if trace:
                out[n.name] = t.double().numpy()
    return out if trace else t.double().numpy()
