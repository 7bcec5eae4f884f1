"""A bundle's quantized graph as a standard ONNX model, bit-exact under onnxruntime.

:func:`build_onnx` walks the bundle graph (schema 2: a DAG in topological order, each node
naming its inputs, ``"input"`` being the graph input) and writes one group of ONNX nodes
per bundle node, reading the tensors of the nodes its ``inputs`` name. The group's last
output is named after the bundle node, so ``run_onnx(..., trace=True)`` lines up with
:func:`qsp.verify.emulate.emulate`'s trace. Sequential (schema-1 style) graphs export to
the same model as before the DAG.

Tensors
    every tensor holds its exact values ``codes * 2**-frac`` in float32 while its codes fit
    24 bits (bound from :func:`qsp.verify.emulate.analyze`), else in float64. A node whose
    codes can reach ``2**53`` is refused (:class:`~qsp.errors.QspError`): float64 could not
    hold it exactly.
Quantization points
    ``convergent`` rounding with at most 16 bits: ``[Clip] -> QuantizeLinear ->
    DequantizeLinear`` (scale ``2**-frac``, zero point 0, int8/uint8/int16/uint16 storage;
    the Clip to the N-bit code range comes first when N is narrower than the storage type;
    QuantizeLinear rounds half to even). Other modes (and wider or float64 tensors): the
    exact chain ``Mul(2**frac) -> R -> Clip(k_min, k_max) -> Mul(2**-frac)`` with ``R`` =
    ``Floor`` (floor), ``Floor(x + 0.5)`` (nearest), ``Sign * Floor(Abs)`` (zero),
    ``Round`` (convergent).
Weights and biases
    integer initializers (int8/uint8/int16/uint16/int32 by their bits) + DequantizeLinear
    (per-axis scales for per-channel formats); float64 initializers above 24 bits.
Exactness guard
    onnxruntime's CPU Gemm/Conv run in float32. A sum of products of codes is exact in
    float32 while every partial sum is an integer below ``2**24`` in units of the result's
    LSB. :func:`qsp.verify.emulate.analyze` bounds that from the bits of the input and the
    (constant) weights and bias: ``max_o sum_i |w_oi| * max|x| + |b_o|``. A layer whose bound
    reaches ``2**24`` is computed in float64 (exact below ``2**53``): ``Gemm`` on doubles for
    linear layers, and for convolutions (no float64 Conv on the CPU) an im2col built with
    ``Pad/Gather`` followed by a float64 ``MatMul`` (grouped: one batched MatMul over the
    groups). Any tensor whose codes fit 24 bits is cast back to float32 after its node.
    Average pooling divides the exact window sum in float64 and truncates at the emulator's
    fraction bits; global pooling is the same node with the kernel = the input's H, W.
Grouped / depthwise convolution
    ``Conv`` with its ``group`` attribute on the float32 path (only written when groups > 1),
    the grouped im2col MatMul on the float64 path; the bound is per output over its group's
    fan-in, as in the emulator.
``add`` (two or more inputs)
    a chain of ``Add`` on the inputs' exact values. Inputs at different fraction bits need
    no shifting: the sum and every partial sum are multiples of the finest input's LSB and
    at most the output bound, so float32 is exact when every input is float32 and the
    output bound is below ``2**24`` LSBs of the output's frac; otherwise all inputs are cast
    to float64 (exact below ``2**53``).
``concat``
    ``Concat(axis=1)`` of the exact values (the emulator's shift to the finest frac does not
    change a value); float64 if any input is float64, else float32.
``clip``
    ``Clip(lo, hi)`` with the node's bounds (on the input grid: exact constants) in the
    input's dtype.
``scale_shift``
    ``Mul`` by the per-channel scale then ``Add`` of the per-channel shift (integer codes +
    DequantizeLinear, shaped ``[C, 1, 1]`` / ``[C]``). The product and the sum are multiples
    of the output LSB at most the output bound: float32 when the input is float32 and the
    bound is below ``2**24``, else float64.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..bundle import Bundle
from ..bundle.schema import ONE_D
from ..errors import QspError, UnsupportedLayerError
from ..verify.emulate import Step, TensorInfo, analyze, multi_input

#: ONNX opset (21: QuantizeLinear/DequantizeLinear with int16/uint16)
OPSET = 21
IR_VERSION = 10
INPUT_NAME = "input"
#: integers below these are exact in float32 sums / in a float32 rounding chain (the
#: nearest mode adds 0.5, which needs one bit of headroom)
F32_EXACT = 2 ** 24
F32_CHAIN = 2 ** 23
#: integers below this are exact in float64 sums
F64_EXACT = 2 ** 53
#: window sums recovered exactly from a float32 AveragePool by Round(mean * n)
AVG_F32_SUM = 2 ** 21
_FRAC_LIMIT = 100  # 2**+-frac stays a normal float32


@dataclass
class _T:
    """A tensor of the ONNX graph: name, float64 or float32, static range (None: the raw
    float input)."""

    name: str
    double: bool
    info: TensorInfo | None


def _elem(double: bool) -> int:
    return TensorProto.DOUBLE if double else TensorProto.FLOAT


def _fdt(double: bool):
    return np.float64 if double else np.float32


def _storage(bits: int, signed: bool) -> np.dtype | None:
    """Smallest Q/DQ integer type for ``bits``-bit codes."""
    for width in (8, 16, 32):
        if bits <= width and not (width == 32 and not signed):
            return np.dtype(f"{'' if signed else 'u'}int{width}")
    return None


def _storage_bits(dt: np.dtype) -> int:
    return dt.itemsize * 8


def _code_bits(codes: np.ndarray, bits: int, signed: bool) -> tuple[int, bool]:
    """Storage (bits, signed) for integer ``codes``: the format's, widened where a code
    needs more (the integer initializer must never wrap)."""
    if not codes.size:
        return int(bits), signed
    lo, hi = int(np.min(codes)), int(np.max(codes))
    signed = signed or lo < 0
    need = max(hi.bit_length(), (-lo - 1).bit_length()) + 1 if signed else hi.bit_length()
    return max(int(bits), need), signed


class _Builder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.value_info: dict[str, onnx.ValueInfoProto] = {}
        self._n = 0
        self.prefix = ""
        self.used_double = False  # whether the current node computes in float64

    def uid(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}/{what}_{self._n}"

    def const(self, arr, what: str = "const") -> str:
        name = self.uid(what)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def scalar(self, v, double: bool, what: str = "c") -> str:
        return self.const(np.array(v, dtype=_fdt(double)), what)

    def op(self, op_type: str, inputs: list[str], what: str | None = None, **attrs) -> str:
        out = self.uid(what or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def to_double(self, t: _T) -> _T:
        self.used_double = True
        if t.double:
            return t
        return _T(self.op("Cast", [t.name], "to_double", to=TensorProto.DOUBLE), True, t.info)

    def dequant(self, codes: np.ndarray, fracs, bits: int, signed: bool, double: bool, what: str) -> str:
        """An exact constant from integer codes: int initializer + DequantizeLinear (or a
        float64 initializer above 24 bits). ``fracs``: int, or one per slice of axis 0."""
        self.used_double |= double
        dt = _storage(bits, signed)
        per_axis = np.ndim(fracs) == 1
        if dt is None or bits > 24:
            shape = (-1,) + (1,) * (codes.ndim - 1) if per_axis else ()
            vals = np.ldexp(codes.astype(np.float64), -np.asarray(fracs).reshape(shape))
            name = self.const(vals.astype(np.float64), what)
            return name if double else self.op("Cast", [name], what + "_f32", to=TensorProto.FLOAT)
        scale = self.const(np.ldexp(np.ones(np.shape(fracs), np.float32), -np.asarray(fracs)), what + "_scale")
        zp = self.const(np.zeros(np.shape(fracs), dt), what + "_zp")
        q = self.const(codes.astype(dt), what + "_q")
        attrs = {"axis": 0} if per_axis else {}
        name = self.op("DequantizeLinear", [q, scale, zp], what, **attrs)
        return self.op("Cast", [name], what + "_f64", to=TensorProto.DOUBLE) if double else name


# ============================================================================ rounding chains
ROUND_CHAIN: dict[str, Callable[[_Builder, str, bool], str]] = {
    "convergent": lambda b, y, d: b.op("Round", [y]),
    "floor": lambda b, y, d: b.op("Floor", [y]),
    "nearest": lambda b, y, d: b.op("Floor", [b.op("Add", [y, b.scalar(0.5, d, "half")])]),
    "zero": lambda b, y, d: b.op("Mul", [b.op("Sign", [y]), b.op("Floor", [b.op("Abs", [y])])]),
}


def _check_frac(step: Step, frac: int):
    if abs(frac) > _FRAC_LIMIT:
        raise QspError(f"node {step.node.name!r}: {frac} fraction bits are out of the range ONNX export supports")


# ============================================================================ handlers
_HANDLERS: dict[str, Callable] = {}


def _handler(op: str):
    def deco(fn):
        _HANDLERS[op] = fn
        return fn
    return deco


_QDQ_PROPAGATED = {"MaxPool", "Concat"}


@_handler("quantize")
def _quant(b: _Builder, st: Step, x: _T, bundle: Bundle) -> _T:
    fmt = st.params["format"]
    _check_frac(st, fmt.frac)
    out = st.out_info
    dt = _storage(fmt.bits, fmt.signed)
    prod = next((n.op_type for n in reversed(b.nodes) if x.name in n.output), None)
    # onnxruntime's QDQ propagation moves a QuantizeLinear up across these ops and then
    # rejects the model when the DequantizeLinear before them has the other signedness
    # (INT8 vs UINT8 zero point): the exact chain there
    from ..bundle.schema import consumers
    readers = {n.op for n in consumers(bundle.graph).get(st.node.name, [])}
    if fmt.rounding == "convergent" and fmt.bits <= 16 and not x.double and prod not in _QDQ_PROPAGATED \
            and not readers & {"maxpool2d", "maxpool1d", "concat"}:
        y = x.name
        if fmt.bits < _storage_bits(dt):
            y = b.op("Clip", [y, b.scalar(fmt.min, False, "lo"), b.scalar(fmt.max, False, "hi")], "clip")
        scale = b.scalar(fmt.step, False, "scale")
        zp = b.const(np.array(0, dt), "zp")
        q = b.op("QuantizeLinear", [y, scale, zp], "q")
        return _T(b.op("DequantizeLinear", [q, scale, zp], "dq"), False, out)
    # exact chain; float32 only where the scaled input is an integer grid below 2**23
    double = x.double or x.info is None or x.info.bound >= F32_CHAIN or out.bound >= F32_EXACT
    if double:
        x = b.to_double(x)
    y = b.op("Mul", [x.name, b.scalar(2.0 ** fmt.frac, double, "scale")], "scale")
    y = ROUND_CHAIN[fmt.rounding](b, y, double)
    y = b.op("Clip", [y, b.scalar(fmt.int_min, double, "kmin"), b.scalar(fmt.int_max, double, "kmax")], "clip")
    return _T(b.op("Mul", [y, b.scalar(fmt.step, double, "step")], "descale"), double, out)


def _weights(b: _Builder, st: Step, double: bool) -> tuple[str, str | None]:
    """Weight and bias constants (exact) in the compute dtype."""
    node, p = st.node, st.params
    fmts = node.weight.formats()
    w = p["w"]
    if len(fmts) > 1:  # per-channel: each channel's codes at its own frac (exact shifts)
        fr = np.array([f.frac for f in fmts])
        codes = w >> (p["w_frac"] - fr).reshape((-1,) + (1,) * (w.ndim - 1))
        wname = b.dequant(codes, fr, node.weight.bits, node.weight.signed, double, "weight")
    else:
        wname = b.dequant(w, p["w_frac"], node.weight.bits, node.weight.signed, double, "weight")
    bname = None
    if p["b"] is not None:
        bname = b.dequant(p["b"], p["b_frac"], node.bias.bits, node.bias.signed, double, "bias")
    return wname, bname


def _use_f32(x: _T, st: Step) -> bool:
    """The float32 kernel is exact: float32 input and every partial sum below 2**24 LSBs."""
    return not x.double and st.out_info.bound < F32_EXACT


@_handler("linear")
def _linear(b: _Builder, st: Step, x: _T, bundle: Bundle) -> _T:
    f32 = _use_f32(x, st)
    if not f32:
        x = b.to_double(x)
    w, bias = _weights(b, st, not f32)
    if len(st.node.in_shape) == 1:
        y = b.op("Gemm", [x.name, w] + ([bias] if bias else []), "gemm", transB=1)
    else:
        y = b.op("MatMul", [x.name, b.op("Transpose", [w], "wT", perm=[1, 0])], "matmul")
        if bias:
            y = b.op("Add", [y, bias], "bias")
    return _T(y, not f32, st.out_info)


def _patches(b: _Builder, x: _T, in_shape, kernel, stride, padding, out_hw) -> str:
    """im2col of an NCHW tensor of any dtype: [N, C, kh*kw, OH*OW] by Pad + Gather."""
    c, h, w = in_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = out_hw
    y = x.name
    if ph or pw:
        y = b.op("Pad", [y, b.const(np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64), "pads")], "pad")
    y = b.op("Reshape", [y, b.const(np.array([0, c, hp * wp], np.int64), "shape")], "rows")
    ki, kj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    oi, oj = np.meshgrid(np.arange(oh) * sh, np.arange(ow) * sw, indexing="ij")
    idx = (ki.reshape(-1, 1) + oi.reshape(1, -1)) * wp + (kj.reshape(-1, 1) + oj.reshape(1, -1))
    return b.op("Gather", [y, b.const(idx.astype(np.int64), "im2col_idx")], "im2col", axis=2)


@_handler("conv2d")
def _conv(b: _Builder, st: Step, x: _T, bundle: Bundle) -> _T:
    p, node = st.params, st.node
    o, oh, ow = node.out_shape
    g = int(p.get("groups", 1))
    f32 = _use_f32(x, st)
    w, bias = _weights(b, st, not f32)
    if f32:
        ph, pw = p["padding"]
        y = b.op("Conv", [x.name, w] + ([bias] if bias else []), "conv", kernel_shape=list(p["kernel"]),
                 strides=list(p["stride"]), pads=[ph, pw, ph, pw], **({"group": g} if g > 1 else {}))
        return _T(y, False, st.out_info)
    # float64: im2col [N, C, K, P] -> [N, P, C*K] @ W[C*K, O] -> [N, O, OH, OW]; with groups
    # [N, G, P, Cg*K] @ W[G, Cg*K, Og] (MatMul broadcasts N) -> [N, P, O]
    x = b.to_double(x)
    cols = _patches(b, x, node.in_shape, p["kernel"], p["stride"], p["padding"], (oh, ow))
    cols = b.op("Transpose", [cols], "cols_t", perm=[0, 3, 1, 2])
    ck = int(np.prod(p["w"].shape[1:]))  # Cg*K
    if g == 1:
        cols = b.op("Reshape", [cols, b.const(np.array([0, oh * ow, ck], np.int64), "shape")], "cols")
        w2 = b.op("Transpose", [b.op("Reshape", [w, b.const(np.array([o, ck], np.int64), "shape")], "w2")],
                  "w2t", perm=[1, 0])
        y = b.op("MatMul", [cols, w2], "matmul")
    else:
        cols = b.op("Reshape", [cols, b.const(np.array([0, oh * ow, g, ck], np.int64), "shape")], "cols")
        cols = b.op("Transpose", [cols], "cols_g", perm=[0, 2, 1, 3])
        w2 = b.op("Transpose", [b.op("Reshape", [w, b.const(np.array([g, o // g, ck], np.int64), "shape")],
                                     "w2")], "w2t", perm=[0, 2, 1])
        y = b.op("MatMul", [cols, w2], "matmul")  # [N, G, P, Og]
        y = b.op("Transpose", [y], "groups_t", perm=[0, 2, 1, 3])
        y = b.op("Reshape", [y, b.const(np.array([0, oh * ow, o], np.int64), "shape")], "groups")
    if bias:
        y = b.op("Add", [y, bias], "bias")
    y = b.op("Transpose", [y], "out_t", perm=[0, 2, 1])
    y = b.op("Reshape", [y, b.const(np.array([0, o, oh, ow], np.int64), "shape")], "out")
    return _T(y, True, st.out_info)


@_handler("relu")
def _relu(b, st, x, bundle):
    return _T(b.op("Relu", [x.name]), x.double, st.out_info)


@_handler("mask")
def _mask(b, st, x, bundle):
    m = st.params["mask"].astype(_fdt(x.double))
    return _T(b.op("Mul", [x.name, b.const(m, "mask")], "mask"), x.double, st.out_info)


@_handler("maxpool2d")
def _maxpool(b, st, x, bundle):
    p = st.params
    return _T(b.op("MaxPool", [x.name], "maxpool", kernel_shape=list(p["kernel"]), strides=list(p["stride"])),
              x.double, st.out_info)


@_handler("avgpool2d")
def _avgpool(b, st, x, bundle):
    p, node = st.params, st.node
    n, f = p["window"], x.info.frac
    _check_frac(st, st.out_info.frac)
    if not x.double and x.info.bound * n < AVG_F32_SUM:
        # float32 AveragePool, then the exact window sum S = Round(mean * n * 2**f)
        r = b.op("AveragePool", [x.name], "avgpool", kernel_shape=list(p["kernel"]), strides=list(p["stride"]))
        s = b.op("Round", [b.op("Mul", [r, b.scalar(n * 2.0 ** f, False, "n")], "sum")], "sum_int")
        s = b.op("Cast", [s], "sum_f64", to=TensorProto.DOUBLE)
    else:  # exact window sums in float64 from im2col patches
        c, oh, ow = node.out_shape
        cols = _patches(b, b.to_double(x), node.in_shape, p["kernel"], p["stride"], (0, 0), (oh, ow))
        s = b.op("ReduceSum", [cols, b.const(np.array([2], np.int64), "axes")], "sum", keepdims=0)
        s = b.op("Reshape", [s, b.const(np.array([0, c, oh, ow], np.int64), "shape")], "sum_nchw")
        s = b.op("Mul", [s, b.scalar(2.0 ** f, True, "scale")], "sum_int")
    # a = S * 2**up; code = trunc(a / n) (float64 division, exact after truncation); value
    b.used_double = True
    a = b.op("Mul", [s, b.scalar(2.0 ** p["up"], True, "up")], "a")
    code = ROUND_CHAIN["zero"](b, b.op("Div", [a, b.scalar(float(n), True, "n")], "mean"), True)
    y = b.op("Mul", [code, b.scalar(2.0 ** -st.out_info.frac, True, "step")], "value")
    return _T(y, True, st.out_info)


@_handler("flatten")
def _flatten(b, st, x, bundle):
    return _T(b.op("Flatten", [x.name], axis=1), x.double, st.out_info)


@_handler("pixel_shuffle")
def _shuffle(b, st, x, bundle):
    return _T(b.op("DepthToSpace", [x.name], blocksize=st.params["factor"], mode="CRD"), x.double, st.out_info)


@_handler("clip")
def _clip(b, st, x, bundle):
    p, f = st.params, x.info.frac
    _check_frac(st, f)
    b.used_double |= x.double
    lo, hi = (b.scalar(np.ldexp(float(p[k]), -f), x.double, k) for k in ("lo", "hi"))
    return _T(b.op("Clip", [x.name, lo, hi], "clip"), x.double, st.out_info)


@_handler("leaky_relu")
def _leaky(b, st, x, bundle):
    """max(x, 0) + alpha * min(x, 0): each part exact (one of them is 0), float64 where the
    product's codes reach 2**24."""
    double = _exact_dtype(st, [x])
    if double:
        x = b.to_double(x)
    neg = b.op("Min", [x.name, b.scalar(0.0, double, "zero")], "neg")
    neg = b.op("Mul", [neg, b.scalar(float(st.node.slope), double, "alpha")], "scaled")
    y = b.op("Add", [b.op("Max", [x.name, b.scalar(0.0, double, "zero")], "pos"), neg], "leaky")
    return _T(y, double, st.out_info)


def _exact_dtype(st: Step, xs: list[_T]) -> bool:
    """float64 unless every input is float32 and the output (hence every partial result,
    all on the output's grid) stays below ``2**24`` LSBs."""
    return any(x.double for x in xs) or st.out_info.bound >= F32_EXACT


@_handler("scale_shift")
def _scale_shift(b, st, x, bundle):
    p, node = st.params, st.node
    _check_frac(st, st.out_info.frac)
    double = _exact_dtype(st, [x])
    if double:
        x = b.to_double(x)
    shape = (-1,) + (1,) * (len(node.in_shape) - 1)  # per channel (axis 1 with the batch)
    sc = b.dequant(p["scale"].reshape(shape), node.weight.frac,
                   *_code_bits(p["scale"], node.weight.bits, node.weight.signed), double, "scale")
    sh = b.dequant(p["shift"].reshape(shape), node.bias.frac,
                   *_code_bits(p["shift"], node.bias.bits, node.bias.signed), double, "shift")
    y = b.op("Add", [b.op("Mul", [x.name, sc], "mul"), sh], "add")
    return _T(y, double, st.out_info)


@_handler("add")
def _add(b, st, xs, bundle):
    # the inputs' values are exact whatever their fraction bits; their sum (and each
    # partial sum) is a multiple of the finest input LSB below the output bound
    _check_frac(st, st.out_info.frac)
    double = _exact_dtype(st, xs)
    names = [b.to_double(x).name if double else x.name for x in xs]
    y = names[0]
    for other in names[1:]:
        y = b.op("Add", [y, other], "add")
    return _T(y, double, st.out_info)


@_handler("concat")
def _concat(b, st, xs, bundle):
    double = b.used_double = any(x.double for x in xs)
    names = [b.to_double(x).name if double else x.name for x in xs]
    return _T(b.op("Concat", names, "concat", axis=1), double, st.out_info)


# ============================================================================ model
def _rename_last(b: _Builder, t: _T, name: str) -> _T:
    """Name the node group's result after the bundle node: rename the output of the group's
    last ONNX node, or add an Identity where the result is not made by this group."""
    last = b.nodes[-1] if b.nodes else None
    if last is not None and last.output[0] == t.name and last.name.startswith(b.prefix + "/"):
        last.output[0] = name
    else:
        b.nodes.append(helper.make_node("Identity", [t.name], [name], name=name))
    return _T(name, t.double, t.info)


def build_onnx(bundle: Bundle) -> onnx.ModelProto:
    """The bundle's graph as an ONNX model (opset :data:`OPSET`), checked with
    ``onnx.checker``. Input ``input`` (float32, batch first); one output named after the
    last node; every node's output tensor is named after the node. Nodes run in graph
    order, each reading the tensors of the nodes its ``inputs`` name (``"input"``: the
    graph input); ``add``/``concat`` read all of theirs."""
    return build_graph_model(bundle, _Builder(), _HANDLERS)


def _one_d(handler2d):
    """The ONNX of a 1-D op (conv1d, maxpool1d, avgpool1d): Unsqueeze to [N, C, 1, L], its
    2-D op (kernel (1, k), the emulator's params), Squeeze back."""
    def fn(b: _Builder, st: Step, x: _T, bundle: Bundle) -> _T:
        n = st.node
        view = dataclasses.replace(st, node=dataclasses.replace(
            n, in_shape=[n.in_shape[0], 1, n.in_shape[1]], out_shape=[n.out_shape[0], 1, n.out_shape[1]]))
        axes = b.const(np.array([2], np.int64), "axes")
        y = handler2d(b, view, _T(b.op("Unsqueeze", [x.name, axes], "to_2d"), x.double, x.info), bundle)
        return _T(b.op("Squeeze", [y.name, axes], "to_1d"), y.double, y.info)
    return fn


for _op1, _op2 in ONE_D.items():
    _HANDLERS[_op1] = _one_d(_HANDLERS[_op2])


def build_graph_model(bundle: Bundle, b: _Builder, handlers: dict, opsets=(), full_check: bool = True,
                      fmt: str = "qdq") -> onnx.ModelProto:
    """The walk shared by the QDQ export and :mod:`qsp.export.qonnx`: one group of ONNX
    nodes per bundle node made by ``handlers[op]`` with builder ``b``, the float64/float32
    bookkeeping, the node naming and the metadata. ``opsets``: extra opset imports."""
    steps = analyze(bundle)  # also fills the inputs of sequential (schema-1 style) graphs
    first = bundle.graph[0]
    env: dict[str, _T] = {INPUT_NAME: _T(INPUT_NAME, False, None)}
    layers = []
    y = None
    for st in steps:
        node = st.node
        fn = handlers.get(node.op)
        if fn is None:
            raise UnsupportedLayerError(f"node {node.name!r}: op {node.op!r} has no ONNX export")
        if st.out_info.bound >= F64_EXACT:
            raise QspError(f"node {node.name!r} ({node.op}): codes of {int(st.out_info.bound).bit_length()} bits "
                           "cannot be computed exactly in float64; narrow the formats")
        xs = [env[name] for name in node.inputs]
        b.prefix = node.name
        b.used_double = False
        y = fn(b, st, xs if multi_input(node.op) else xs[0], bundle)
        if y.double and y.info.bound < F32_EXACT and abs(y.info.frac) <= _FRAC_LIMIT:
            y = _T(b.op("Cast", [y.name], "to_f32", to=TensorProto.FLOAT), False, y.info)
        y = _rename_last(b, y, node.name)
        b.value_info[y.name] = helper.make_tensor_value_info(y.name, _elem(y.double), ["N"] + list(node.out_shape))
        layers.append({"node": node.name, "op": node.op, "dtype": "float64" if y.double else "float32",
                       "frac": y.info.frac, "bound_bits": int(y.info.bound).bit_length(),
                       "float64_compute": b.used_double})
        env[node.name] = y
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N"] + list(first.in_shape))
    out = b.value_info[y.name]
    graph = helper.make_graph(b.nodes, "qsp", [inp], [out], initializer=b.inits,
                              value_info=[v for k, v in b.value_info.items() if k != y.name])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)] + list(opsets),
                              producer_name="qsp", ir_version=IR_VERSION)
    helper.set_model_props(model, {"qsp.nodes": json.dumps([s.node.name for s in steps]),
                                   "qsp.layers": json.dumps(layers), "qsp.opset": str(OPSET), "qsp.format": fmt})
    onnx.checker.check_model(model, full_check=full_check)
    return model


def layer_report(model: onnx.ModelProto) -> list[dict]:
    """Per node: output dtype, fraction bits, code bits, whether float64 was needed."""
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get("qsp.layers", "[]"))


def write_onnx(bundle: Bundle, path=None) -> Path:
    """Build and save the model (default ``bundle.path / "model.onnx"``)."""
    if path is None:
        if bundle.path is None:
            raise QspError("write_onnx: the bundle has not been written; give a path")
        path = Path(bundle.path) / "model.onnx"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_onnx(bundle), str(path))
    return path


def run_onnx(model_or_path, x, trace: bool = False, optimize: bool = True):
    """Run the model with onnxruntime (CPU) on ``x`` (batch first; float32-representable).

    Returns the float64 output, or with ``trace=True`` ``{node_name: float64 output}`` of
    every bundle node in graph order (their tensors are added as graph outputs).
    ``optimize=False`` turns off onnxruntime's graph optimizations."""
    import onnxruntime as ort

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    x = np.asarray(x)
    x32 = x.astype(np.float32)
    if not np.array_equal(x32.astype(np.float64), x.astype(np.float64)):
        raise QspError("run_onnx: the input holds values float32 cannot represent; the ONNX model's input is "
                       "float32 (convert the data to float32 first)")
    names = [model.graph.output[0].name]
    if trace:
        props = {p.key: p.value for p in model.metadata_props}
        if "qsp.nodes" not in props:
            raise QspError("run_onnx(trace=True): the model has no qsp.nodes metadata (not built by qsp)")
        names = json.loads(props["qsp.nodes"])
        model = onnx.ModelProto.FromString(model.SerializeToString())
        vi = {v.name: v for v in model.graph.value_info}
        have = {o.name for o in model.graph.output}
        for n in names:
            if n not in have:
                if n not in vi:
                    raise QspError(f"run_onnx(trace=True): no tensor named {n!r} in the model")
                model.graph.output.append(vi[n])
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    res = sess.run(names, {model.graph.input[0].name: x32})
    res = [np.asarray(r, dtype=np.float64) for r in res]
    return dict(zip(names, res)) if trace else res[0]
