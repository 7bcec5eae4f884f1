"""Hand-built bundles (graphs constructed directly with the schema classes) for the
emulation and ONNX tests."""
from __future__ import annotations

import numpy as np

from qsp.bundle import (AvgPool2dNode, Bundle, Conv2dNode, FlattenNode, LinearNode, ModelRef, QSpec, QuantNode,
                        TaskInfo, WeightFormat)
from qsp.fixedpoint import FixedFormat


def make(nodes, weights=None, masks=None) -> Bundle:
    """A validated in-memory bundle from nodes (nonzeros filled in from the weights)."""
    weights = {k: np.asarray(v, np.float64) for k, v in (weights or {}).items()}
    for n in nodes:
        if isinstance(n, (LinearNode, Conv2dNode)):
            n.nonzeros = int(np.count_nonzero(weights[f"{n.name}.weight"]))
    task = TaskInfo("hand", "regression", "mse", list(nodes[0].in_shape), list(nodes[-1].out_shape))
    spec = QSpec(task=task, model=ModelRef("tests.graphs:none"), graph=nodes)
    return Bundle(spec, weights, dict(masks or {})).validate()


def quant(name, shape, bits, frac, signed=True, rounding="convergent"):
    return QuantNode(name=name, in_shape=list(shape), out_shape=list(shape),
                     format=FixedFormat(bits, frac, signed, rounding))


def linear(name, k, o, wbits, wfrac, bbits=None, bfrac=None):
    return LinearNode(name=name, in_shape=[k], out_shape=[o], in_features=k, out_features=o,
                      weight=WeightFormat(wbits, wfrac),
                      bias=None if bbits is None else FixedFormat(bbits, bfrac))


def conv(name, in_shape, out_ch, k, wbits, wfrac, stride=1, padding=0, bbits=None, bfrac=None):
    c, h, w = in_shape
    oh = (h + 2 * padding - k) // stride + 1
    ow = (w + 2 * padding - k) // stride + 1
    return Conv2dNode(name=name, in_shape=list(in_shape), out_shape=[out_ch, oh, ow], in_channels=c,
                      out_channels=out_ch, kernel_size=[k, k], stride=[stride, stride],
                      padding=[padding, padding], weight=WeightFormat(wbits, wfrac),
                      bias=None if bbits is None else FixedFormat(bbits, bfrac))


def avgpool(name, in_shape, k, stride=None):
    c, h, w = in_shape
    s = stride or k
    return AvgPool2dNode(name=name, in_shape=list(in_shape), out_shape=[c, (h - k) // s + 1, (w - k) // s + 1],
                         kernel_size=[k, k], stride=[s, s])


def random_codes(rng, shape, bits, signed=True):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return rng.integers(lo, hi + 1, size=shape)


def wide_bundle(seed=0, bits=16):
    """16-bit activations and weights with a large fan-in: sums far past 2**24 (the
    float64 path), linear and conv."""
    rng = np.random.default_rng(seed)
    c, h = 32, 6
    nodes = [quant("input_quant", [c, h, h], bits, 8),
             conv("conv1", [c, h, h], 8, 3, bits, 12, padding=1, bbits=24, bfrac=20),
             quant("quant1", [8, h, h], bits, 2),
             ]
    nodes.append(FlattenNode(name="flatten1", in_shape=[8, h, h], out_shape=[8 * h * h]))
    nodes += [linear("dense1", 8 * h * h, 10, bits, 13, bbits=24, bfrac=21)]
    w = {"conv1.weight": random_codes(rng, (8, c, 3, 3), bits) / 2.0 ** 12,
         "conv1.bias": random_codes(rng, (8,), 24) / 2.0 ** 20,
         "dense1.weight": random_codes(rng, (10, 8 * h * h), bits) / 2.0 ** 13,
         "dense1.bias": random_codes(rng, (10,), 24) / 2.0 ** 21}
    x = (random_codes(rng, (16, c, h, h), bits) / 2.0 ** 8).astype(np.float32)
    return make(nodes, w), x
