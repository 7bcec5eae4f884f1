"""A QONNX MLP built by hand the way Brevitas exports one (Quant nodes on the input, on
each weight and on the activations; power-of-two scales), for the QONNX import tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "qonnx.custom_op.general"


def brevitas_mlp(seed: int = 0, in_shape=(1, 4, 4), hidden: int = 12, out: int = 5, act_mode: str = "ROUND",
                 narrow_act: int = 0) -> onnx.ModelProto:
    """input [N, *in_shape] -> Quant(int8, 2^-5) -> Flatten -> MatMul(Quant(W1: int6, 2^-5)) + b1 (float,
    on a grid) -> Relu -> Quant(uint6, 2^-3, ``act_mode``) -> Gemm(transB=1, Quant(W2: int5, per-row
    scales 2^-4 / 2^-5), Quant(b2: int10, 2^-8))."""
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(in_shape))
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def quant(name, x, scale, bits, signed, mode="ROUND", narrow=0):
        nodes.append(helper.make_node("Quant", [x, const(name + "_scale", scale), const(name + "_zeropt", 0.0),
                                                const(name + "_bitwidth", float(bits))], [name + "_out"], name=name,
                                      domain=DOMAIN, signed=signed, narrow=narrow, rounding_mode=mode))
        return name + "_out"

    w1 = rng.normal(0, 0.4, (n_in, hidden)).astype(np.float32)  # MatMul layout [in, out], float: Quant rounds it
    w1[rng.random(w1.shape) < 0.3] = 0
    b1 = (rng.integers(-64, 64, hidden) / 64.0).astype(np.float32)
    w2 = rng.normal(0, 0.3, (out, hidden)).astype(np.float32)
    s2 = np.where(np.arange(out) % 2 == 0, 2.0 ** -4, 2.0 ** -5).reshape(out, 1).astype(np.float32)
    b2 = rng.normal(0, 0.5, out).astype(np.float32)

    x = quant("QuantIdentity_0", "global_in", 2.0 ** -5, 8, 1)
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="Flatten_0", axis=1))
    wq = quant("QuantLinear_0_wq", const("fc1_weight", w1), 2.0 ** -5, 6, 1)
    nodes.append(helper.make_node("MatMul", ["flat", wq], ["mm1"], name="MatMul_0"))
    nodes.append(helper.make_node("Add", ["mm1", const("fc1_bias", b1)], ["fc1"], name="Add_0"))
    nodes.append(helper.make_node("Relu", ["fc1"], ["relu1"], name="Relu_0"))
    a1 = quant("QuantReLU_0", "relu1", 2.0 ** -3, 6, 0, act_mode, narrow_act)
    wq2 = quant("QuantLinear_1_wq", const("fc2_weight", w2), s2, 5, 1)
    bq2 = quant("QuantLinear_1_bq", const("fc2_bias", b2), 2.0 ** -8, 10, 1)
    nodes.append(helper.make_node("Gemm", [a1, wq2, bq2], ["global_out"], name="Gemm_0", transB=1))
    graph = helper.make_graph(nodes, "brevitas_mlp",
                              [helper.make_tensor_value_info("global_in", TensorProto.FLOAT, [1] + list(in_shape))],
                              [helper.make_tensor_value_info("global_out", TensorProto.FLOAT, [1, out])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(DOMAIN, 1)],
                             producer_name="brevitas-like")
