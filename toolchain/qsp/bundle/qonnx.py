"""A QONNX model made elsewhere (Brevitas, QKeras via qonnx, by hand) as a qsp bundle, so
qsp-estimate and qsp-compile (with its three-way bit-exact verification) take it:
``qsp-estimate model.onnx``, ``qsp-compile model.onnx`` (:meth:`qsp.bundle.Bundle.read`
calls :func:`read_qonnx` for a ``.onnx`` file). Needs only ``onnx``.

What is read (ONNX NCHW, batch first; anything else is refused naming the node):

* ``Quant`` on an activation -> a ``quantize`` node: scale a power of two (``2**-frac``),
  zero point 0, ``narrow`` 0, a constant integer bit width; ``rounding_mode`` ``ROUND``
  (convergent), ``FLOOR`` (floor), ``DOWN`` (zero), or ``HALF_UP`` on an unsigned
  ``Quant`` (nearest; on signed values QONNX rounds half away from zero, which qsp has no
  mode for). The model input must go through a ``Quant`` first.
* ``Quant`` on a constant (an initializer or ``Constant``): the constant is quantized here
  (QONNX's own semantics, any rounding mode, ``narrow`` allowed) and keeps that format:
  per tensor, or per output channel (a scale along the output axis).
* ``Gemm`` (alpha = beta = 1, no transA) and ``MatMul`` by a constant, with an optional
  ``Add`` of a constant bias right after -> ``linear``; ``Conv`` (2-D, symmetric pads, no
  dilation, any ``group``) -> ``conv2d``. A bias without a ``Quant`` is taken at the
  fewest fraction bits (at most :data:`MAX_BIAS_FRAC`) that hold it exactly.
* ``Relu``, ``MaxPool`` (no padding), ``Flatten`` (axis 1) or a ``Reshape`` to
  ``[N, -1]``, ``Add`` of two activations, ``Concat`` on channels, ``Mul`` by a constant
  0/1 mask, ``Identity``, ``Dropout``.

Refused: ``BipolarQuant`` (+-1 values; qsp's formats are two's-complement), ``Trunc`` and
average pooling (qsp's average pool keeps its own fraction bits), non-power-of-two
scales, zero points, other ops.

Test inputs: ``<model>.npz`` beside the model (arrays ``x`` and optionally ``y``, batch
first) when it exists, else :data:`N_GENERATED` inputs drawn (seed 0) uniformly over the
input ``Quant``'s range widened by a quarter on each side (so saturation is exercised).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import BundleError, UnsupportedLayerError
from ..fixedpoint import FixedFormat, int_range
from .schema import (GRAPH_INPUT, AddNode, ConcatNode, Conv2dNode, FlattenNode, LinearNode, MaskNode, MaxPool2dNode,
                     ModelRef, QSpec, QuantNode, ReluNode, TaskInfo, WeightFormat)

#: QONNX rounding_mode -> qsp rounding for activations (HALF_UP: unsigned Quant only)
FROM_QONNX_ROUNDING = {"ROUND": "convergent", "HALF_EVEN": "convergent", "FLOOR": "floor", "DOWN": "zero"}
MAX_BIAS_FRAC = 32
N_GENERATED = 256
_PASS = {"Identity", "Dropout"}


def _round(y: np.ndarray, mode: str) -> np.ndarray:
    """QONNX's rounding modes (qonnx.custom_op.general.quant.resolve_rounding_mode)."""
    m = mode.upper()
    table = {"ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor, "DOWN": np.fix,
             "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)),
             "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
             "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5)}
    if m not in table:
        raise BundleError(f"unknown QONNX rounding_mode {mode!r}")
    return table[m](y)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _name(raw: str, used: set) -> str:
    """A node name every backend keeps as it is: lower-case snake case (torch.fx, whose names
    hls4ml's PyTorch frontend takes, turns ``MatMul_0`` into ``mat_mul_0``), no Python keyword
    or builtin (fx renames ``max`` to ``max_1``), unique."""
    import builtins
    import keyword

    n = re.sub(r"[^A-Za-z0-9_]", "_", raw or "node").strip("_") or "node"
    n = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", n).lower()
    n = re.sub(r"_+", "_", n)
    if n[0].isdigit():
        n = "n_" + n
    if keyword.iskeyword(n) or hasattr(builtins, n):
        n = n + "_node"
    base, k = n, 1
    while n in used or n == GRAPH_INPUT:
        k += 1
        n = f"{base}_{k}"
    used.add(n)
    return n


def _pow2_frac(scale: np.ndarray, where: str) -> np.ndarray:
    s = np.asarray(scale, np.float64)
    if s.size == 0 or np.any(s <= 0):
        raise BundleError(f"{where}: scale must be positive")
    m, e = np.frexp(s)
    if np.any(m != 0.5):
        raise UnsupportedLayerError(f"{where}: scale {s.reshape(-1)[:4].tolist()} is not a power of two; qsp's "
                                    "fixed-point formats need scale 2**-frac (Brevitas: scaling_impl_type=PO2 / "
                                    "restrict_scaling_type=POWER_OF_TWO)")
    return (1 - e).astype(np.int64)  # scale = 2**(e-1) = 2**-frac


class _Reader:
    def __init__(self, model, where: str):
        from onnx import numpy_helper

        self.where = where
        self.g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in self.g.initializer}
        self.qconst: dict[str, tuple] = {}  # Quant'ed constants: (values, WeightFormat, channel axis)
        self.readers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        self.tensor: dict[str, tuple[str, list[int]]] = {}  # onnx tensor -> (bundle node, shape)
        self.nodes: list = []
        self.weights: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.used: set = set()
        self.skip: set = set()  # outputs of onnx nodes folded into an earlier bundle node

    def err(self, node, msg: str):
        return UnsupportedLayerError(f"{self.where}: node {node.name or node.output[0]!r} ({node.op_type}): {msg}")

    def const(self, name: str):
        return self.qconst[name][0] if name in self.qconst else self.consts.get(name)

    def skipped(self, node) -> bool:
        return bool(node.output) and node.output[0] in self.skip

    def _scalar(self, node, name: str, what: str) -> float:
        v = self.consts.get(name)
        if v is None or v.size != 1:
            raise self.err(node, f"{what} must be a constant scalar")
        return float(v.reshape(-1)[0])

    # ------------------------------------------------------------------ Quant
    def quant_params(self, node):
        a = _attrs(node)
        if len(node.input) != 4:
            raise self.err(node, "expects 4 inputs (x, scale, zeropt, bitwidth)")
        scale = self.consts.get(node.input[1])
        zp = self.consts.get(node.input[2])
        if scale is None or zp is None:
            raise self.err(node, "scale and zero point must be constants")
        if np.any(zp != 0):
            raise self.err(node, "a nonzero zero point has no qsp fixed-point form")
        bits = self._scalar(node, node.input[3], "bitwidth")
        if bits != int(bits) or not 1 <= bits <= 32:
            raise self.err(node, f"bit width {bits} must be an integer in [1, 32]")
        frac = _pow2_frac(scale, f"{self.where}: node {node.name!r} (Quant)")
        signed = bool(a.get("signed", 1))
        narrow = bool(a.get("narrow", 0))
        mode = a.get("rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        return scale, frac, int(bits), signed, narrow, mode.upper()

    def quant_const(self, node, value):
        scale, frac, bits, signed, narrow, mode = self.quant_params(node)
        if bits == 1 and signed:
            raise self.err(node, "a 1-bit signed Quant is bipolar (+-1) in QONNX; qsp has no such format")
        lo, hi = int_range(bits, signed)
        lo += 1 if narrow and signed else 0
        hi -= 1 if narrow and not signed else 0
        sc = np.broadcast_to(np.asarray(scale, np.float64), np.broadcast_shapes(np.shape(scale), value.shape))
        q = _round(np.clip(value / sc, lo, hi), mode) * sc
        fr = np.asarray(frac)
        axis = None
        if fr.size == 1:
            wf = WeightFormat(bits, int(fr.reshape(-1)[0]), signed)
        else:  # per channel: one scale per slice of one axis
            axes = [i for i, d in enumerate(np.shape(scale)) if d != 1]
            if len(axes) != 1:
                raise self.err(node, f"scale of shape {list(np.shape(scale))}: only per-tensor or one-axis scales")
            wf, axis = WeightFormat(bits, [int(f) for f in fr.reshape(-1)], signed), axes[0]
        self.qconst[node.output[0]] = (q, wf, axis)

    def quant_act(self, node, src):
        scale, frac, bits, signed, narrow, mode = self.quant_params(node)
        if frac.size != 1:
            raise self.err(node, "per-channel activation scales have no qsp form (one format per tensor)")
        if narrow:
            raise self.err(node, "narrow=1 on an activation has no qsp form (qsp saturates to the full range)")
        if bits == 1 and signed:
            raise self.err(node, "a 1-bit signed Quant is bipolar (+-1) in QONNX; qsp has no such format")
        if mode == "HALF_UP" and not signed:
            rounding = "nearest"  # equal on the values that survive the clamp at 0
        elif mode in FROM_QONNX_ROUNDING:
            rounding = FROM_QONNX_ROUNDING[mode]
        else:
            raise self.err(node, f"rounding_mode {mode} has no qsp rounding mode (supported: ROUND, FLOOR, DOWN, and "
                                 "HALF_UP on unsigned values)")
        fmt = FixedFormat(bits, int(frac.reshape(-1)[0]), signed, rounding)
        return self.add(node, QuantNode, src, list(src[1]), format=fmt)

    # ------------------------------------------------------------------ helpers
    def add(self, node, cls, src, out_shape, inputs=None, out_tensor=None, **kw):
        name = _name(node.name or node.output[0], self.used)
        ins = inputs if inputs is not None else [src[0]]
        n = cls(name=name, in_shape=list(src[1]), out_shape=list(out_shape), source=node.name, inputs=ins, **kw)
        self.nodes.append(n)
        self.tensor[out_tensor or node.output[0]] = (name, list(out_shape))
        return n

    def weight(self, node, name: str, transpose: bool = False):
        if name in self.qconst:
            w, wf, axis = self.qconst[name]
            if wf.per_channel and axis != (w.ndim - 1 if transpose else 0):
                raise self.err(node, "per-channel weight scales must run along the output channels")
        elif name in self.consts:
            raise self.err(node, "the weight is not quantized (no Quant node on it): qsp needs its fixed-point format")
        else:
            raise self.err(node, "the weight must be a constant")
        w = w.T if transpose else w
        return np.ascontiguousarray(w), WeightFormat(wf.bits, wf.frac, wf.signed)

    def bias(self, node, name: str, n_out: int):
        if name in self.qconst:
            b, wf, _ = self.qconst[name]
            if wf.per_channel:
                raise self.err(node, "a per-channel bias scale has no qsp form")
            fmt = FixedFormat(wf.bits, int(wf.frac), wf.signed)
        elif name in self.consts:
            b = self.consts[name]
            fmt = _exact_format(b)
            if fmt is None:
                raise self.err(node, f"the bias needs more than {MAX_BIAS_FRAC} fraction bits; quantize it "
                                     "(a Quant node on the bias)")
        else:
            raise self.err(node, "the bias must be a constant")
        b = np.asarray(b, np.float64).reshape(-1)
        if b.size != n_out:
            raise self.err(node, f"bias of {b.size} values for {n_out} outputs")
        return b, fmt

    def bias_add(self, node):
        """The Add of a constant right after a MatMul (read only by it): its bias input."""
        out = node.output[0]
        rd = self.readers.get(out, [])
        if len(rd) == 1 and rd[0].op_type == "Add":
            other = [i for i in rd[0].input if i != out]
            if len(other) == 1 and (other[0] in self.consts or other[0] in self.qconst):
                return rd[0], other[0]
        return None, None

    def act(self, node, i: int = 0):
        name = node.input[i]
        if name not in self.tensor:
            raise self.err(node, f"input {name!r} is not an activation of the model (constants are read only by "
                                 "Quant, MatMul/Gemm/Conv, Add (bias) and Mul (mask))")
        return self.tensor[name]


def _exact_format(b: np.ndarray) -> FixedFormat | None:
    """The signed format with the fewest fraction bits that holds ``b`` exactly."""
    b = np.asarray(b, np.float64).reshape(-1)
    for f in range(0, MAX_BIAS_FRAC + 1):
        k = b * 2.0 ** f
        if np.array_equal(k, np.round(k)):
            m = int(np.max(np.abs(k))) if k.size else 0
            return FixedFormat(max(m.bit_length() + 1, 2), f, True)
    return None


def _conv_out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def read_qonnx(path, validate: bool = True, test_data=None):
    """The QONNX model at ``path`` as an in-memory :class:`~qsp.bundle.Bundle`
    (``bundle.path`` is the model file). ``test_data``: an ``.npz`` with ``x`` (and ``y``);
    default ``<model>.npz`` if present, else generated inputs (see the module doc)."""
    import onnx

    from .io import Bundle

    path = Path(path)
    where = str(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise BundleError(f"{where}: not a readable ONNX model ({e})") from None
    g = model.graph
    r = _Reader(model, where)
    inputs = [i for i in g.input if i.name not in r.consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UnsupportedLayerError(f"{where}: qsp reads models with one input and one output "
                                    f"(found {len(inputs)} inputs, {len(g.output)} outputs)")
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) < 2 or any(d is None for d in dims[1:]):
        raise UnsupportedLayerError(f"{where}: input {inputs[0].name!r} needs a static shape after the batch "
                                    f"dimension (found {dims})")
    r.tensor[inputs[0].name] = (GRAPH_INPUT, dims[1:])
    for node in g.node:
        if r.skipped(node):
            continue
        op = node.op_type
        ins = list(node.input)
        if op == "Constant":
            from onnx import numpy_helper

            r.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"]).astype(np.float64)
            continue
        if op in ("BipolarQuant", "Trunc"):
            raise r.err(node, "not supported: " + ("bipolar (+-1) values have no qsp format" if op == "BipolarQuant"
                                                   else "qsp's average pool keeps its own fraction bits; Trunc has "
                                                        "no qsp node"))
        if op == "Quant":
            if ins[0] in r.consts or ins[0] in r.qconst:
                r.quant_const(node, r.const(ins[0]))
            else:
                if r.nodes == [] and r.act(node)[0] != GRAPH_INPUT:
                    raise r.err(node, "the model input must be quantized first")
                r.quant_act(node, r.act(node))
            continue
        if not r.nodes:
            raise r.err(node, "the model input must go through a Quant node first (qsp's input quantizer)")
        if op in _PASS:
            r.tensor[node.output[0]] = r.act(node)
            continue
        if op == "Relu":
            src = r.act(node)
            r.add(node, ReluNode, src, src[1])
        elif op in ("Gemm", "MatMul"):
            src = r.act(node)
            if len(src[1]) != 1:
                raise r.err(node, f"input of shape {src[1]}: qsp's linear layer reads a flat vector (Flatten first)")
            bias_name, out_tensor = None, node.output[0]
            if op == "Gemm":
                a = _attrs(node)
                if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                    raise r.err(node, "only Gemm with alpha = beta = 1 and no transA")
                w, wf = r.weight(node, ins[1], transpose=not a.get("transB", 0))
                bias_name = ins[2] if len(ins) > 2 and ins[2] else None
            else:
                w, wf = r.weight(node, ins[1], transpose=True)
                add, bias_name = r.bias_add(node)
                if add is not None:
                    r.skip.add(add.output[0])
                    out_tensor = add.output[0]
            if w.ndim != 2 or w.shape[1] != src[1][0]:
                raise r.err(node, f"weight of shape {list(w.shape)} does not fit input {src[1]}")
            n = r.add(node, LinearNode, src, [w.shape[0]], out_tensor=out_tensor, in_features=w.shape[1],
                      out_features=w.shape[0], weight=wf, nonzeros=int(np.count_nonzero(w)),
                      weight_sparsity=float(np.mean(w == 0)))
            r.weights[f"{n.name}.weight"] = w
            if bias_name:
                b, n.bias = r.bias(node, bias_name, w.shape[0])
                r.weights[f"{n.name}.bias"] = b
        elif op == "Conv":
            src = r.act(node)
            a = _attrs(node)
            w, wf = r.weight(node, ins[1])
            if w.ndim != 4 or len(src[1]) != 3:
                raise r.err(node, "only 2-D convolutions (NCHW)")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:] or any(d != 1 for d in a.get("dilations", [1, 1])) \
                    or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise r.err(node, f"only symmetric explicit pads and no dilation (pads {pads})")
            k = list(w.shape[2:])
            s = list(a.get("strides", [1, 1]))
            grp = int(a.get("group", 1))
            c, h, wd = src[1]
            if w.shape[1] * grp != c:
                raise r.err(node, f"weight of shape {list(w.shape)} (group {grp}) does not fit input {src[1]}")
            out = [w.shape[0], _conv_out(h, k[0], s[0], pads[0]), _conv_out(wd, k[1], s[1], pads[1])]
            n = r.add(node, Conv2dNode, src, out, in_channels=c, out_channels=w.shape[0], kernel_size=k, stride=s,
                      padding=pads[:2], weight=wf, groups=grp, nonzeros=int(np.count_nonzero(w)),
                      weight_sparsity=float(np.mean(w == 0)))
            r.weights[f"{n.name}.weight"] = w
            if len(ins) > 2 and ins[2]:
                b, n.bias = r.bias(node, ins[2], w.shape[0])
                r.weights[f"{n.name}.bias"] = b
        elif op == "MaxPool":
            src = r.act(node)
            a = _attrs(node)
            k = list(a.get("kernel_shape"))
            s = list(a.get("strides", k))
            if any(a.get("pads", [0, 0, 0, 0])) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise r.err(node, "only MaxPool without padding, ceil_mode or dilation")
            c, h, wd = src[1]
            r.add(node, MaxPool2dNode, src, [c, _conv_out(h, k[0], s[0], 0), _conv_out(wd, k[1], s[1], 0)],
                  kernel_size=k, stride=s)
        elif op in ("Flatten", "Reshape"):
            src = r.act(node)
            flat = [int(np.prod(src[1]))]
            if op == "Flatten" and _attrs(node).get("axis", 1) != 1:
                raise r.err(node, "only Flatten with axis 1")
            if op == "Reshape":
                shp = r.const(ins[1])
                if shp is None or [int(v) for v in shp.reshape(-1)[1:]] not in ([-1], flat):
                    raise r.err(node, "only a Reshape to [N, -1] (a flatten)")
            if len(src[1]) == 1:
                r.tensor[node.output[0]] = src
            else:
                r.add(node, FlattenNode, src, flat)
        elif op == "Add":
            if all(i in r.tensor for i in ins) and len(ins) == 2:
                srcs = [r.act(node, i) for i in range(2)]
                if srcs[0][1] != srcs[1][1]:
                    raise r.err(node, f"adds shapes {srcs[0][1]} and {srcs[1][1]}: shapes must be equal")
                r.add(node, AddNode, srcs[0], srcs[0][1], inputs=[s_[0] for s_ in srcs])
            else:
                raise r.err(node, "an Add of a constant is read only right after a MatMul (its bias)")
        elif op == "Concat":
            srcs = [r.act(node, i) for i in range(len(ins))]
            if _attrs(node).get("axis") != 1 or len(srcs) < 2:
                raise r.err(node, "only Concat of two or more activations on the channel axis (1)")
            out = [sum(s_[1][0] for s_ in srcs)] + list(srcs[0][1][1:])
            r.add(node, ConcatNode, srcs[0], out, inputs=[s_[0] for s_ in srcs])
        elif op == "Mul":
            act = [i for i in ins if i in r.tensor]
            cst = [i for i in ins if i not in r.tensor]
            m = r.const(cst[0]) if len(act) == 1 and len(cst) == 1 else None
            src = r.tensor.get(act[0]) if act else None
            if m is None or not np.isin(m, (0, 1)).all():
                raise r.err(node, "only a Mul by a constant 0/1 mask (activation pruning)")
            m = np.broadcast_to(m.reshape(m.shape[1:] if m.ndim == len(src[1]) + 1 else m.shape), src[1]).copy()
            n = r.add(node, MaskNode, src, src[1], sparsity=float(np.mean(m == 0)))
            r.masks[f"{n.name}.mask"] = m.astype(np.float32)
        else:
            raise r.err(node, "op not supported by qsp's QONNX reader (see docs/qonnx.md)")
    if not r.nodes:
        raise UnsupportedLayerError(f"{where}: no nodes")
    out_name = g.output[0].name
    if out_name not in r.tensor or r.tensor[out_name][0] != r.nodes[-1].name:
        raise UnsupportedLayerError(f"{where}: the model output {out_name!r} must be the last node's output")
    x, y, note = _test_data(path, test_data, r.nodes[0], dims[1:])
    task = TaskInfo(path.stem, "classification" if y is not None else "regression",
                    "accuracy" if y is not None else "none", list(dims[1:]), list(r.nodes[-1].out_shape))
    spec = QSpec(task=task, model=ModelRef("", {}), graph=r.nodes, method="imported",
                 extra={"imported_from": {"file": str(path), "format": "qonnx", "test_data": note}})
    b = Bundle(spec, r.weights, r.masks, {}, x, y, path)
    return b.validate() if validate else b


def _test_data(path: Path, test_data, first: QuantNode, shape):
    side = Path(test_data) if test_data else path.with_suffix(".npz")
    if side.exists():
        with np.load(side, allow_pickle=False) as z:
            if "x" not in z.files:
                raise BundleError(f"{side}: needs an array 'x' of test inputs (batch first)")
            x = np.asarray(z["x"], np.float32)
            y = z["y"] if "y" in z.files else None
        if list(x.shape[1:]) != list(shape):
            raise BundleError(f"{side}: inputs of shape {list(x.shape)} do not fit the model input {shape}")
        return x, y, str(side)
    if test_data:
        raise BundleError(f"test data {str(side)!r} does not exist")
    f = first.format
    span = f.max - f.min
    rng = np.random.default_rng(0)
    x = rng.uniform(f.min - span / 4, f.max + span / 4, size=(N_GENERATED,) + tuple(shape)).astype(np.float32)
    return x, None, f"{N_GENERATED} generated inputs (seed 0) over the input Quant's range +-25 %"
