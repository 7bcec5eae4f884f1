"""Trained (converted) PyTorch model -> bundle graph.

One small handler per module type, registered with :func:`exporter` (a new layer type is
one function). The model must be sequential: nested ``nn.Sequential`` containers are
walked in order; each leaf becomes zero or one node.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import BundleError, UnsupportedLayerError
from ..nn import ActivationPruner, QLayer, Quantizer
from ..registry import Registry
from .io import Bundle
from .schema import (AvgPool2dNode, Conv2dNode, FlattenNode, LinearNode, MaskNode,
                     MaxPool2dNode, ModelRef, PixelShuffleNode, QSpec, QuantNode, ReluNode,
                     TaskInfo, WeightFormat)

_HANDLERS = Registry("bundle exporter")
#: modules that are the identity at inference
SKIP = (nn.Dropout, nn.Dropout2d, nn.Identity)


def exporter(*types):
    """Register ``fn(ctx, name, module, in_shape, out_shape) -> Node | None``."""
    return _HANDLERS.register(*types)


def _handler(mod):
    return _HANDLERS.for_type(mod)


class _Ctx:
    def __init__(self):
        self.counts: dict[str, int] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}

    def name(self, base):
        self.counts[base] = self.counts.get(base, 0) + 1
        return f"{base}{self.counts[base]}"


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _weight_format(q: QLayer, path: str) -> WeightFormat:
    wq = q.quantizer
    if wq is None:
        raise BundleError(f"layer {path!r} has no weight quantizer: every weight layer must be quantized for hardware")
    if not wq.is_on:
        raise BundleError(f"the weight quantizer of {path!r} never turned on (its delay {wq.delay} was not reached "
                          f"in {wq.t} steps): train longer or lower the delay")
    fr = [f.frac for f in wq.formats()]
    return WeightFormat(wq.bits, fr if wq.channels else fr[0], wq.signed, wq.rounding)


def _export_weight_layer(ctx, path, q: QLayer, node_cls, name, in_shape, out_shape, **attrs):
    w, b = q.effective()
    w = w.detach().double().cpu().numpy()
    wf = _weight_format(q, path)
    node = node_cls(name=name, in_shape=in_shape, out_shape=out_shape, source=path, weight=wf,
                    weight_sparsity=float(np.mean(w == 0)), nonzeros=int(np.count_nonzero(w)), **attrs)
    ctx.weights[f"{name}.weight"] = w
    plain = path[4:] if path.startswith("net.") else path
    ctx.state[f"{plain}.weight"] = w.astype(np.float32)
    if b is not None:
        if q.bias_quant is None or not q.bias_quant.is_on:
            raise BundleError(f"the bias of {path!r} is not quantized")
        node.bias = q.bias_quant.formats()[0]
        bb = b.detach().double().cpu().numpy()
        ctx.weights[f"{name}.bias"] = bb
        ctx.state[f"{plain}.bias"] = bb.astype(np.float32)
    return node


@exporter(QLayer)
def _qlayer(ctx, path, q, in_shape, out_shape):
    layer = q.layer
    if isinstance(layer, nn.Linear):
        return _export_weight_layer(ctx, path, q, LinearNode, ctx.name("dense"), in_shape, out_shape,
                                    in_features=layer.in_features, out_features=layer.out_features)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or _pair(layer.dilation) != [1, 1]:
            raise UnsupportedLayerError(f"layer {path!r} (Conv2d): groups != 1 or dilation != 1 is not supported")
        if isinstance(layer.padding, str):
            raise UnsupportedLayerError(f"layer {path!r} (Conv2d): padding={layer.padding!r}; use integer padding")
        if layer.padding_mode != "zeros":
            raise UnsupportedLayerError(f"layer {path!r} (Conv2d): padding_mode={layer.padding_mode!r}")
        return _export_weight_layer(ctx, path, q, Conv2dNode, ctx.name("conv"), in_shape, out_shape,
                                    in_channels=layer.in_channels, out_channels=layer.out_channels,
                                    kernel_size=_pair(layer.kernel_size), stride=_pair(layer.stride),
                                    padding=_pair(layer.padding))
    raise UnsupportedLayerError(f"layer {path!r}: {type(layer).__name__} is not supported by the bundle export "
                                "(supported: Linear, Conv2d)")


@exporter(Quantizer)
def _quant(ctx, path, q, in_shape, out_shape):
    if not q.is_on:
        raise BundleError(f"quantizer {path!r} never turned on (delay {q.delay}, {q.t} steps seen)")
    if q.channels:
        raise UnsupportedLayerError(f"activation quantizer {path!r} is per-channel; activations must be per-tensor")
    name = "input_quant" if path in ("input_quant", "") else ctx.name("quant")
    return QuantNode(name=name, in_shape=in_shape, out_shape=out_shape, source=path, format=q.formats()[0])


@exporter(ActivationPruner)
def _mask(ctx, path, p, in_shape, out_shape):
    if p.mask.numel() == 0:
        return None  # never pruned: the identity
    name = ctx.name("mask")
    m = p.mask_for(in_shape).detach().cpu().numpy().astype(np.float32)
    ctx.masks[f"{name}.mask"] = m
    return MaskNode(name=name, in_shape=in_shape, out_shape=out_shape, source=path,
                    sparsity=float(np.mean(m == 0)))


@exporter(nn.ReLU)
def _relu(ctx, path, m, in_shape, out_shape):
    return ReluNode(name=ctx.name("relu"), in_shape=in_shape, out_shape=out_shape, source=path)


@exporter(nn.MaxPool2d, nn.AvgPool2d)
def _pool(ctx, path, m, in_shape, out_shape):
    if _pair(m.padding) != [0, 0] or getattr(m, "ceil_mode", False):
        raise UnsupportedLayerError(f"layer {path!r} ({type(m).__name__}): padding / ceil_mode not supported")
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation) != [1, 1]:
            raise UnsupportedLayerError(f"layer {path!r} (MaxPool2d): dilation not supported")
        return MaxPool2dNode(name=ctx.name("pool"), in_shape=in_shape, out_shape=out_shape, source=path,
                             kernel_size=k, stride=s)
    return AvgPool2dNode(name=ctx.name("avgpool"), in_shape=in_shape, out_shape=out_shape, source=path,
                         kernel_size=k, stride=s)


@exporter(nn.Flatten)
def _flatten(ctx, path, m, in_shape, out_shape):
    if m.start_dim != 1 or m.end_dim != -1:
        raise UnsupportedLayerError(f"layer {path!r} (Flatten): only start_dim=1, end_dim=-1")
    return FlattenNode(name=ctx.name("flatten"), in_shape=in_shape, out_shape=out_shape, source=path)


@exporter(nn.PixelShuffle)
def _shuffle(ctx, path, m, in_shape, out_shape):
    return PixelShuffleNode(name=ctx.name("pixel_shuffle"), in_shape=in_shape, out_shape=out_shape,
                            source=path, factor=int(m.upscale_factor))


def sequential_leaves(model: nn.Module, prefix: str = ""):
    """(path, module) of the leaves of nested Sequentials, in execution order."""
    if isinstance(model, nn.Sequential):
        for key, child in model.named_children():
            yield from sequential_leaves(child, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
        return
    if _handler(model) is not None or isinstance(model, SKIP):
        yield prefix, model
        return
    if isinstance(model, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise BundleError(f"layer {prefix!r} ({type(model).__name__}) was not quantized: wrap it with "
                          "qsp.quantize or include it in qsp.convert")
    raise UnsupportedLayerError(
        f"layer {prefix!r} of type {type(model).__name__} is not supported by the bundle export "
        f"(supported: {sorted(t.__name__ for t in _HANDLERS)} in nn.Sequential containers)")


@torch.no_grad()
def export_graph(model: nn.Module, input_shape):
    """Walk ``model`` (sequential) on one zero input of ``input_shape`` (no batch) and return
    (nodes, weights, masks, plain_state_dict)."""
    was = model.training
    model.eval()
    try:
        leaves = list(sequential_leaves(model))
        ctx = _Ctx()
        nodes = []
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.zeros((1,) + tuple(input_shape), device=dev)
        for path, mod in leaves:
            y = mod(x)
            if not isinstance(mod, SKIP):
                node = _handler(mod)(ctx, path, mod, list(x.shape[1:]), list(y.shape[1:]))
                if node is not None:
                    nodes.append(node)
            x = y
        return nodes, ctx.weights, ctx.masks, ctx.state
    finally:
        model.train(was)


def make_bundle(model: nn.Module, task: TaskInfo, model_ref: ModelRef, test_x=None, test_y=None,
                plan: dict | None = None, metrics: dict | None = None, method: str = "qsparse",
                extra: dict | None = None) -> Bundle:
    """Build (not write) a validated bundle from a trained, converted model."""
    nodes, weights, masks, state = export_graph(model, task.input_shape)
    if not nodes or not isinstance(nodes[0], QuantNode):
        raise BundleError("the model's first operation must quantize the input (qsp.convert(input_bits=...))")
    spec = QSpec(task=task, model=model_ref, graph=nodes, method=method, plan=plan or {},
                 metrics=metrics or {}, extra=extra or {}, qsp_version=__version__)
    b = Bundle(spec, weights, masks, state,
               None if test_x is None else np.asarray(test_x, np.float32),
               None if test_y is None else np.asarray(test_y))
    return b.validate()
