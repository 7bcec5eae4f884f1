"""Bundle graph -> plain PyTorch ``nn.Sequential`` (the "deploy model") for hls4ml's
PyTorch frontend: one handler per node type. Module names are the node names, so hls4ml's
layer names are the bundle's. Weights come from weights.npz (already on their grids;
float32 holds them exactly up to 24 bits). Quantize nodes become no module at all (their
formats live in the hls4ml precision config, see :mod:`qsp.compile.precision`), except a
standalone one, which becomes a ``QspRequant``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..bundle.schema import QuantNode
from ..errors import UnsupportedLayerError
from .precision import PrecisionPlan
from ..registry import Registry

_BUILDERS = Registry("deploy-model builder")
builds = _BUILDERS.register


def _param(a) -> nn.Parameter:
    a = np.asarray(a, np.float64)
    t = torch.tensor(a, dtype=torch.float32)
    if not np.array_equal(t.double().numpy(), a):
        raise UnsupportedLayerError("a weight does not fit float32 exactly (more than 24 significant bits)")
    return nn.Parameter(t, requires_grad=False)


@builds("linear")
def _linear(bundle, n):
    m = nn.Linear(n.in_features, n.out_features, bias=bundle.bias(n.name) is not None)
    m.weight = _param(bundle.weight(n.name))
    if m.bias is not None:
        m.bias = _param(bundle.bias(n.name))
    return m


@builds("conv2d")
def _conv(bundle, n):
    m = nn.Conv2d(n.in_channels, n.out_channels, tuple(n.kernel_size), tuple(n.stride), tuple(n.padding),
                  bias=bundle.bias(n.name) is not None)
    m.weight = _param(bundle.weight(n.name))
    if m.bias is not None:
        m.bias = _param(bundle.bias(n.name))
    return m


@builds("relu")
def _relu(bundle, n):
    return nn.ReLU()


@builds("maxpool2d")
def _maxpool(bundle, n):
    return nn.MaxPool2d(tuple(n.kernel_size), tuple(n.stride))


@builds("avgpool2d")
def _avgpool(bundle, n):
    return nn.AvgPool2d(tuple(n.kernel_size), tuple(n.stride))


@builds("flatten")
def _flatten(bundle, n):
    return nn.Flatten()


@builds("mask")
def _mask(bundle, n):
    from .extension import QspMask
    return QspMask(bundle.mask(n.name))


@builds("pixel_shuffle")
def _shuffle(bundle, n):
    from .extension import QspDepthToSpace
    return QspDepthToSpace(n.factor)


def build_deploy_model(bundle, plan: PrecisionPlan) -> nn.Sequential:
    """The deploy model of ``bundle``; its modules are exactly ``plan.layers``."""
    from .extension import QspRequant

    nodes = {n.name: n for n in bundle.graph}
    mods: "OrderedDict[str, nn.Module]" = OrderedDict()
    for lp in plan.layers:
        if lp.op == "requant":
            mods[lp.name] = QspRequant()
            continue
        n = nodes[lp.name]
        if isinstance(n, QuantNode):
            continue
        b = _BUILDERS.get(n.op)
        if b is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no deploy handler "
                                        f"(supported: {sorted(_BUILDERS)})")
        mods[lp.name] = b(bundle, n)
    return nn.Sequential(mods).eval()
