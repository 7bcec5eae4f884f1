"""Hand-built graph bundles (schema 2: nodes name their inputs) with every multi-input and
new op: residual add, channel concat, depthwise and grouped conv, clip (ReLU6), a
standalone scale_shift (BatchNorm), global average pooling. Small enough for csim."""
from __future__ import annotations

import numpy as np

from qsp.bundle import (AddNode, ClipNode, ConcatNode, FlattenNode, ReluNode, ScaleShiftNode)
from qsp.fixedpoint import FixedFormat

from .graphs import avgpool, conv, linear, make, quant, random_codes


def _w(rng, shape, bits, frac, sparsity=0.3):
    w = random_codes(rng, shape, bits) / 2.0 ** frac
    w[rng.random(shape) < sparsity] = 0
    return w


def dag_bundle(seed=0, c=4, h=6, act_bits=6, w_bits=6):
    """input(3,h,h) -> q -> conv1 -> relu -> q1 ->(a) conv2 -> q2 -> add(a, q2) -> relu -> q3
    -> dwconv(groups=c) -> q4 -> gconv(groups=2) -> q5 -> concat(q3, q5) -> clip(0, 6) -> ss
    (scale_shift) -> q6 -> global avgpool -> q7 -> flatten -> dense.

    Returns (bundle, x) with x on no particular grid (the input quantizer rounds it)."""
    rng = np.random.default_rng(seed)
    A = lambda name, shape, signed=False: quant(name, shape, act_bits, act_bits - 3, signed)  # noqa: E731
    s = [c, h, h]
    n = []
    n.append(quant("input_quant", [3, h, h], 8, 6, True))
    n.append(conv("conv1", [3, h, h], c, 3, w_bits, w_bits - 1, padding=1, bbits=12, bfrac=8))
    n.append(ReluNode(name="relu1", in_shape=s, out_shape=s))
    n.append(A("quant1", s))
    n.append(conv("conv2", s, c, 3, w_bits, w_bits - 1, padding=1))
    n.append(A("quant2", s, True))
    n.append(AddNode(name="add1", in_shape=s, out_shape=s, inputs=["quant1", "quant2"]))
    n.append(ReluNode(name="relu2", in_shape=s, out_shape=s))
    n.append(A("quant3", s))
    dw = conv("dwconv", s, c, 3, w_bits, w_bits - 1, padding=1, bbits=12, bfrac=8)
    dw.groups = c
    n.append(dw)
    n.append(A("quant4", s, True))
    gc = conv("gconv", s, c, 1, w_bits, w_bits - 1)
    gc.groups = 2
    n.append(gc)
    n.append(A("quant5", s, True))
    s2 = [2 * c, h, h]
    n.append(ConcatNode(name="concat1", in_shape=s, out_shape=s2, inputs=["quant3", "quant5"]))
    n.append(ClipNode(name="clip1", in_shape=s2, out_shape=s2, lo=0.0, hi=6.0))
    n.append(ScaleShiftNode(name="ss1", in_shape=s2, out_shape=s2, channels=2 * c,
                            weight=FixedFormat(8, 6, True), bias=FixedFormat(8, 5, True)))
    n.append(A("quant6", s2, True))
    n.append(avgpool("gap", s2, h))
    n.append(A("quant7", [2 * c, 1, 1], True))
    n.append(FlattenNode(name="flatten1", in_shape=[2 * c, 1, 1], out_shape=[2 * c]))
    n.append(linear("dense1", 2 * c, 5, w_bits, w_bits - 1, bbits=12, bfrac=8))
    w = {"conv1.weight": _w(rng, (c, 3, 3, 3), w_bits, w_bits - 1),
         "conv1.bias": random_codes(rng, (c,), 12) / 2.0 ** 8,
         "conv2.weight": _w(rng, (c, c, 3, 3), w_bits, w_bits - 1),
         "dwconv.weight": _w(rng, (c, 1, 3, 3), w_bits, w_bits - 1),
         "dwconv.bias": random_codes(rng, (c,), 12) / 2.0 ** 8,
         "gconv.weight": _w(rng, (c, c // 2, 1, 1), w_bits, w_bits - 1),
         "ss1.weight": random_codes(rng, (2 * c,), 8) / 2.0 ** 6,
         "ss1.bias": random_codes(rng, (2 * c,), 8) / 2.0 ** 5,
         "dense1.weight": _w(rng, (5, 2 * c), w_bits, w_bits - 1),
         "dense1.bias": random_codes(rng, (5,), 12) / 2.0 ** 8}
    x = rng.uniform(-2, 2, size=(24, 3, h, h)).astype(np.float32)
    return make(n, w), x
