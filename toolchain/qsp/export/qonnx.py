"""A bundle's quantized graph as a QONNX model: ``Quant`` nodes instead of
QuantizeLinear/DequantizeLinear, for the tools that read QONNX (hls4ml's ONNX frontend,
FINN, qonnx's ``inference_cost``).

The model is the QDQ export of :mod:`qsp.export.onnx` (the same walk, the same float32 /
float64 bookkeeping, every tensor named after its bundle node) with two differences:

Quantization points
    one ``Quant`` node (domain ``qonnx.custom_op.general``): scale ``2**-frac``, zero point
    0, bit width N, ``signed`` from the format, ``narrow`` 0, ``rounding_mode`` from
    :data:`QONNX_ROUNDING`. QONNX clamps before it rounds; with integer clamp bounds and a
    monotone rounding that keeps integers that is the same number as qsp's
    ``clamp(R(x * 2**d))``.
Constants (weights, biases, scale_shift's scale and shift)
    float initializers holding the exact on-grid values, each read through a ``Quant`` node
    with its own format (per-channel weight formats: a per-channel scale), the way Brevitas
    exports them. On the grid, the ``Quant`` is the identity.

Rounding modes (qsp name -> QONNX ``rounding_mode``):

==========  ==================  =============================================================
qsp         QONNX               note
==========  ==================  =============================================================
convergent  ``ROUND``           half to even (np.round); hls4ml reads it (AP_RND_CONV)
floor       ``FLOOR``           hls4ml reads it (AP_TRN)
zero        ``DOWN``            np.fix; qonnx executes it, hls4ml's frontend refuses it
nearest     ``HALF_UP``         only where the value being rounded cannot be negative (an
                                unsigned format, or a ReLU'd input): QONNX's ``HALF_UP`` rounds
                                half *away from zero*, qsp's ``nearest`` half towards +inf;
                                elsewhere the export is refused (keep the QDQ ``model.onnx``)
==========  ==================  =============================================================

A 1-bit signed format (codes -1, 0) is refused too: QONNX's 1-bit signed ``Quant`` is
bipolar (+-1). Everything else (average pooling's exact window division, float64 paths of
wide layers, leaky ReLU, masks as ``Mul`` by the 0/1 mask) is the QDQ export's standard
ONNX nodes, which qonnx's executor runs with onnxruntime.

:func:`run_qonnx` runs a model with qonnx's own executor (``qonnx`` is an optional
dependency: ``pip install 'qsp[qonnx]'``; building the model needs only ``onnx``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..bundle import Bundle
from ..errors import QspError
from ..fixedpoint import FixedFormat
from ..verify.emulate import Step
from .onnx import _HANDLERS, _T, _Builder, _check_frac, _elem, build_graph_model

QONNX_DOMAIN = "qonnx.custom_op.general"
#: qsp rounding -> QONNX Quant ``rounding_mode`` (``nearest``: see :func:`qonnx_rounding`)
QONNX_ROUNDING = {"convergent": "ROUND", "floor": "FLOOR", "zero": "DOWN", "nearest": "HALF_UP"}
#: the Quant rounding modes hls4ml 1.3.0's ONNX frontend converts
HLS4ML_ROUNDING = ("ROUND", "FLOOR")
QONNX_FILE = "model.qonnx.onnx"


def qonnx_rounding(fmt: FixedFormat, input_signed: bool, where: str) -> str:
    """The QONNX ``rounding_mode`` that rounds exactly like ``fmt`` on an input that may be
    negative (``input_signed``), or a :class:`QspError` naming ``where``."""
    if fmt.bits == 1 and fmt.signed:
        raise QspError(f"{where}: a 1-bit signed format (codes -1, 0) has no QONNX form (QONNX's 1-bit signed Quant "
                       "is bipolar +-1); use the QDQ export model.onnx")
    if fmt.rounding == "nearest" and fmt.signed and input_signed:
        raise QspError(f"{where}: rounding 'nearest' (half towards +inf, AP_RND) on a value that can be negative has "
                       "no QONNX rounding mode (QONNX's HALF_UP rounds half away from zero); use the QDQ export "
                       "model.onnx, or train with rounding convergent or floor")
    return QONNX_ROUNDING[fmt.rounding]


class _QBuilder(_Builder):
    """The QDQ builder with Quant nodes for constants."""

    def quant(self, x: str, scale, bits: int, signed: bool, mode: str, double: bool, shape, what: str) -> str:
        sc = self.const(np.asarray(scale, np.float64 if double else np.float32), what + "_scale")
        zp = self.const(np.zeros((), np.float64 if double else np.float32), what + "_zeropt")
        bw = self.const(np.array(float(bits), np.float32), what + "_bitwidth")
        out = self.op("Quant", [x, sc, zp, bw], what, domain=QONNX_DOMAIN, signed=int(signed), narrow=0,
                      rounding_mode=mode)
        self.value_info[out] = helper.make_tensor_value_info(out, _elem(double), list(shape))
        return out

    def dequant(self, codes: np.ndarray, fracs, bits: int, signed: bool, double: bool, what: str) -> str:
        """An exact constant: float initializer (float64 above 24 bits) read through a Quant
        node with its format, in the compute dtype (``double``)."""
        self.used_double |= double
        if bits == 1 and signed:
            raise QspError(f"node {self.prefix!r}: {what} has a 1-bit signed format (codes -1, 0), which QONNX's "
                           "Quant cannot express (bipolar +-1)")
        store = double or bits > 24  # float32 holds codes of up to 24 bits exactly
        shape = (-1,) + (1,) * (codes.ndim - 1) if np.ndim(fracs) == 1 else ()
        fr = np.asarray(fracs).reshape(shape)
        vals = np.ldexp(codes.astype(np.float64), -fr).astype(np.float64 if store else np.float32)
        name = self.quant(self.const(vals, what + "_float"), np.ldexp(np.ones(np.shape(fr)), -fr), bits, signed,
                          "ROUND", store, codes.shape, what)
        return self.op("Cast", [name], what + "_f32", to=TensorProto.FLOAT) if store and not double else name

def _quant(b: _QBuilder, st: Step, x: _T, bundle: Bundle) -> _T:
    fmt = st.params["format"]
    _check_frac(st, fmt.frac)
    in_signed = x.info is None or x.info.signed
    mode = qonnx_rounding(fmt, in_signed, f"node {st.node.name!r} (quantize)")
    y = b.quant(x.name, fmt.step, fmt.bits, fmt.signed, mode, x.double, ["N"] + list(st.node.out_shape), "quant")
    return _T(y, x.double, st.out_info)


QONNX_HANDLERS = {**_HANDLERS, "quantize": _quant}


def build_qonnx(bundle: Bundle) -> onnx.ModelProto:
    """The bundle's graph as a QONNX model (input ``input``, float32, batch first; every
    node's output tensor named after the node), checked with ``onnx.checker``."""
    return build_graph_model(bundle, _QBuilder(), QONNX_HANDLERS,
                             opsets=[helper.make_opsetid(QONNX_DOMAIN, 1)], full_check=False, fmt="qonnx")


def write_qonnx(bundle: Bundle, path=None) -> Path:
    """Build and save the QONNX model (default ``bundle.path / "model.qonnx.onnx"``)."""
    if path is None:
        if bundle.path is None:
            raise QspError("write_qonnx: the bundle has not been written; give a path")
        path = Path(bundle.path) / QONNX_FILE
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_qonnx(bundle), str(path))
    return path


def _need_qonnx():
    try:
        import qonnx  # noqa: F401
    except ImportError:
        raise QspError("this needs the qonnx package: pip install qonnx (or pip install 'qsp[qonnx]')") from None


def qonnx_wrapper(model_or_path, cleanup: bool = True, batch: int = 1):
    """A qonnx ``ModelWrapper`` of the model with the symbolic batch dimension fixed to
    ``batch`` (qonnx's executor needs static shapes), after qonnx's ``cleanup_model``
    (shape inference, constant folding, unique names) or only ``InferShapes``."""
    _need_qonnx()
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    m = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_value = batch
    w = ModelWrapper(m)
    if cleanup:
        from qonnx.util.cleanup import cleanup_model

        return cleanup_model(w)
    return w.transform(InferShapes())


def run_qonnx(model_or_path, x, cleanup: bool = True) -> np.ndarray:
    """The model's output on ``x`` (batch first) by qonnx's executor
    (``qonnx.core.onnx_exec.execute_onnx``), as float64."""
    x32 = np.asarray(x, np.float32)
    if not np.array_equal(x32.astype(np.float64), np.asarray(x, np.float64)):
        raise QspError("run_qonnx: the input holds values float32 cannot represent (the model's input is float32)")
    w = qonnx_wrapper(model_or_path, cleanup, batch=len(x32))
    from qonnx.core.onnx_exec import execute_onnx

    inp, out = w.graph.input[0].name, w.graph.output[0].name
    fixed = w.get_tensor_shape(inp)[0]
    if fixed == len(x32):
        return np.asarray(execute_onnx(w, {inp: x32})[out], np.float64)
    # a model exported with a static batch (Brevitas: 1): one input at a time
    return np.concatenate([np.asarray(execute_onnx(w, {inp: x32[i:i + fixed]})[out], np.float64)
                           for i in range(0, len(x32), fixed)])


def input_format(model: onnx.ModelProto) -> FixedFormat:
    """The format of the ``Quant`` node reading the model input (qsp's input quantizer)."""
    from ..bundle.qonnx import FROM_QONNX_ROUNDING

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = model.graph.input[0].name
    for n in model.graph.node:
        if n.op_type == "Quant" and n.input[0] == x:
            a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
            mode = a.get("rounding_mode", b"ROUND")
            mode = (mode.decode() if isinstance(mode, bytes) else mode).upper()
            frac = int(round(-np.log2(float(inits[n.input[1]]))))
            rounding = "nearest" if mode == "HALF_UP" else FROM_QONNX_ROUNDING.get(mode)
            if rounding is None:
                raise QspError(f"input Quant {n.name!r}: rounding_mode {mode} has no ap_fixed form")
            return FixedFormat(int(inits[n.input[3]]), frac, bool(a.get("signed", 1)), rounding)
    raise QspError("the model input is not read by a Quant node")


def convert_with_hls4ml(model_or_path, output_dir, backend: str = "Vitis", io_type: str = "io_parallel", **kw):
    """hls4ml's ONNX frontend on a QONNX model: qonnx's preprocessing (cleanup, channels
    last, Gemm -> MatMul) then ``hls4ml.converters.convert_from_onnx_model`` with a
    per-layer configuration whose input type is the input ``Quant``'s format (hls4ml's
    default ``fixed<16,6>`` input would truncate the input before the Quant rounds it).
    Returns the (unbuilt) hls4ml model."""
    import hls4ml
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    m = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    fmt = input_format(m)
    w = qonnx_wrapper(m, cleanup=True, batch=1)
    w = cleanup_model(w.transform(ConvertToChannelsLastAndClean()).transform(GemmToMatMul()))
    cfg = hls4ml.utils.config.config_from_onnx_model(w, granularity="name", backend=backend,
                                                     default_precision="fixed<16,6>")
    cfg["LayerName"][w.graph.input[0].name]["Precision"]["result"] = fmt.ap_type()
    return hls4ml.converters.convert_from_onnx_model(w, output_dir=str(output_dir), io_type=io_type, backend=backend,
                                                     hls_config=cfg, **kw)
