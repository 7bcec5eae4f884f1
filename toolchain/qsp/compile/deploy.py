"""Bundle graph -> plain PyTorch module (the "deploy model") for hls4ml's PyTorch frontend:
one handler per node type; an ``fx.GraphModule`` whose every layer is a module called with
the deploy layers it reads (adds and concatenations are qsp's ``QspAdd``/``QspConcat``
modules, which hls4ml parses into its own Merge/Concatenate layers, so that every hls4ml
layer is named after its bundle node). Module names are the node names, so hls4ml's
layer names are the bundle's. Weights come from weights.npz (already on their grids;
float32 holds them exactly up to 24 bits). Quantize nodes become no module at all (their
formats live in the hls4ml precision config, see :mod:`qsp.compile.precision`), except a
standalone one, which becomes a ``QspRequant``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedLayerError
from ..ops.pool import is_global
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


def _loaded(m: nn.Module, bundle, n) -> nn.Module:
    """``m`` (built with ``bias=`` whether the node has one) holding the node's weights."""
    m.weight = _param(bundle.weight(n.name))
    if m.bias is not None:
        m.bias = _param(bundle.bias(n.name))
    return m


@builds("linear")
def _linear(bundle, n):
    return _loaded(nn.Linear(n.in_features, n.out_features, bias=bundle.bias(n.name) is not None), bundle, n)


@builds("conv2d")
def _conv(bundle, n):
    if n.groups > 1:
        from .extension import QspDepthwiseConv2d, QspGroupedConv2d

        w, b = bundle.weight(n.name), bundle.bias(n.name)
        _param(w)  # the float32 check
        if n.depthwise and n.in_channels == n.out_channels:
            return QspDepthwiseConv2d(w, b, tuple(n.stride), tuple(n.padding))
        return QspGroupedConv2d(w, b, tuple(n.stride), tuple(n.padding), groups=n.groups)
    return _loaded(nn.Conv2d(n.in_channels, n.out_channels, tuple(n.kernel_size), tuple(n.stride), tuple(n.padding),
                             bias=bundle.bias(n.name) is not None), bundle, n)


@builds("conv1d")
def _conv1d(bundle, n):
    """hls4ml's Conv1D (its PyTorch frontend parses nn.Conv1d; groups 1 only)."""
    return _loaded(nn.Conv1d(n.in_channels, n.out_channels, int(n.kernel_size[0]), int(n.stride[0]),
                             int(n.padding[0]), bias=bundle.bias(n.name) is not None), bundle, n)


@builds("maxpool1d")
def _maxpool1d(bundle, n):
    return nn.MaxPool1d(int(n.kernel_size[0]), int(n.stride[0]))


@builds("avgpool1d")
def _avgpool1d(bundle, n):
    if is_global(n):  # hls4ml's global_pooling1d_cl (qsp.ops.pool.is_global)
        from .extension import QspGlobalAvgPool1d
        return QspGlobalAvgPool1d()
    return nn.AvgPool1d(int(n.kernel_size[0]), int(n.stride[0]))


@builds("relu")
def _relu(bundle, n):
    return nn.ReLU()


@builds("maxpool2d")
def _maxpool(bundle, n):
    return nn.MaxPool2d(tuple(n.kernel_size), tuple(n.stride))


@builds("avgpool2d")
def _avgpool(bundle, n):
    if is_global(n):  # hls4ml's global_pooling2d_cl (qsp.ops.pool.is_global)
        from .extension import QspGlobalAvgPool2d
        return QspGlobalAvgPool2d()
    return nn.AvgPool2d(tuple(n.kernel_size), tuple(n.stride))


@builds("flatten")
def _flatten(bundle, n):
    return nn.Flatten()


@builds("leaky_relu")
def _leaky(bundle, n):
    return nn.LeakyReLU(float(n.slope))


@builds("add", "concat")
def _join(bundle, n):
    """hls4ml's Merge / Concatenate take two inputs; a join of more is refused here."""
    from .extension import QspAdd, QspConcat
    if len(n.inputs) != 2:
        raise UnsupportedLayerError(f"node {n.name!r} ({n.op}): hls4ml joins two tensors at a time, this one has "
                                    f"{len(n.inputs)} inputs")
    return QspAdd() if n.op == "add" else QspConcat()


@builds("clip")
def _clip(bundle, n):
    from .extension import QspClip
    return QspClip(n.lo, n.hi)


@builds("scale_shift")
def _scale_shift(bundle, n):
    from .extension import QspScaleShift
    return QspScaleShift(bundle.weight(n.name), bundle.bias(n.name))


@builds("mask")
def _mask(bundle, n):
    from .extension import QspMask
    return QspMask(bundle.mask(n.name))


@builds("pixel_shuffle")
def _shuffle(bundle, n):
    from .extension import QspDepthToSpace
    return QspDepthToSpace(n.factor)


def build_deploy_model(bundle, plan: PrecisionPlan) -> nn.Module:
    """The deploy model of ``bundle``: an ``fx.GraphModule`` whose modules are exactly
    ``plan.layers`` (named after them), each called on the layers in ``lp.inputs``."""
    from torch import fx

    from .extension import QspRequant

    nodes = {n.name: n for n in bundle.graph}
    root = nn.Module()
    g = fx.Graph()
    env = {"input": g.placeholder("x")}
    for lp in plan.layers:
        if lp.op == "requant":
            mod = QspRequant()
        else:
            n = nodes[lp.name]
            b = _BUILDERS.get(n.op)
            if b is None:
                raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no deploy handler "
                                            f"(supported: {sorted(_BUILDERS)})")
            mod = b(bundle, n)
        root.add_module(lp.name, mod)
        env[lp.name] = g.call_module(lp.name, tuple(env[i] for i in lp.inputs))
    g.output(env[plan.output or plan.layers[-1].name])
    for node in g.nodes:  # hls4ml names each layer after its fx node: it must be the bundle's name
        if node.op == "call_module" and node.name != node.target:
            raise UnsupportedLayerError(
                f"node {node.target!r}: hls4ml's PyTorch frontend would call this layer {node.name!r} (torch.fx "
                f"renames Python keywords, builtins and clashing names), so qsp's precision settings for "
                f"{node.target!r} would not reach it; rename the node in the bundle")
    return fx.GraphModule(root, g, "DeployModel").eval()
