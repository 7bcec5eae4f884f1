"""Trained (converted) PyTorch model -> bundle graph.

The model is traced with torch.fx (:mod:`qsp.nn.capture`) and its shapes propagated on one
zero input; every traced module call and function call becomes zero or one node that names
its inputs. One small handler per module type (:func:`exporter`) and per function
(:data:`_FUNCS`): a new layer type is one function. Anything else is reported at once,
naming the module path or the source line, with the supported ops in user terms
(:func:`check_model` runs the same walk on an untrained converted model, before training).
"""
from __future__ import annotations


import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .. import __version__
from ..errors import BundleError, UnsupportedLayerError
from ..fixedpoint import FixedFormat, leaky_slope, scale_shift
from ..nn import ActivationPruner, QLayer, QScaleShift, Quantizer
from ..nn.capture import ADD_FUNCS, CAT_FUNCS, where
from ..registry import Registry
from .io import Bundle
from .schema import (GRAPH_INPUT, AddNode, AvgPool1dNode, AvgPool2dNode, ClipNode, ConcatNode, Conv1dNode,
                     Conv2dNode, FlattenNode, LeakyReluNode, LinearNode, MaskNode, MaxPool1dNode, MaxPool2dNode,
                     ModelRef, PixelShuffleNode, QSpec, QuantNode,
                     ReluNode, ScaleShiftNode, TaskInfo, WeightFormat)

_HANDLERS = Registry("bundle exporter")
#: modules that are the identity at inference
SKIP = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
#: supported ops in user terms (for error messages)
SUPPORTED = ("Linear", "Conv2d (groups=1, depthwise, grouped)", "Conv1d (groups=1)", "BatchNorm1d/2d", "ReLU",
             "ReLU6", "Hardtanh", "LeakyReLU", "MaxPool1d/2d", "AvgPool1d/2d", "AdaptiveAvgPool1d/2d(1)", "Flatten",
             "PixelShuffle", "Dropout", "add (+, torch.add)", "torch.cat(dim=1)",
             "torch.flatten / view / reshape to (N, -1)", "mean over H and W (or over L)",
             "F.relu / F.relu6 / F.hardtanh / F.leaky_relu", "F.max_pool1d/2d / F.avg_pool1d/2d",
             "F.adaptive_avg_pool1d/2d(x, 1)")


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

        self.dry = False  # check_model: no trained formats required

    def name(self, base):
        self.counts[base] = self.counts.get(base, 0) + 1
        return f"{base}{self.counts[base]}"


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _single(v):
    return [int(v[0])] if isinstance(v, (tuple, list)) and len(v) == 1 else [int(v)] if isinstance(v, int) else list(v)


def _weight_format(q: QLayer, path: str, dry: bool = False) -> WeightFormat:
    wq = q.quantizer
    if wq is None:
        raise BundleError(f"layer {path!r} has no weight quantizer: every weight layer must be quantized for hardware")
    if dry:
        return WeightFormat(wq.bits, 0, wq.signed, wq.rounding)
    if not wq.is_on:
        raise BundleError(f"the weight quantizer of {path!r} never turned on (its delay {wq.delay} was not reached "
                          f"in {wq.t} steps): train longer or lower the delay")
    fr = [f.frac for f in wq.formats()]
    return WeightFormat(wq.bits, fr if wq.channels else fr[0], wq.signed, wq.rounding)


def _export_weight_layer(ctx, path, q: QLayer, node_cls, name, in_shape, out_shape, **attrs):
    w, b = q.effective()
    w = w.detach().double().cpu().numpy()
    wf = _weight_format(q, path, ctx.dry)
    node = node_cls(name=name, in_shape=in_shape, out_shape=out_shape, source=path, weight=wf,
                    weight_sparsity=float(np.mean(w == 0)), nonzeros=int(np.count_nonzero(w)), **attrs)
    ctx.weights[f"{name}.weight"] = w
    plain = path[4:] if path.startswith("net.") else path
    ctx.state[f"{plain}.weight"] = w.astype(np.float32)
    if q.bn is not None:
        node.source += f" (+ folded {type(q.bn).__name__})"
    if b is not None:
        if q.bias_quant is None or not (q.bias_quant.is_on or ctx.dry):
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
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        kind = type(layer).__name__
        if any(d != 1 for d in layer.dilation):
            raise UnsupportedLayerError(f"layer {path!r} ({kind}): dilation != 1 is not supported")
        if isinstance(layer.padding, str):
            raise UnsupportedLayerError(f"layer {path!r} ({kind}): padding={layer.padding!r}; use integer padding")
        if layer.padding_mode != "zeros":
            raise UnsupportedLayerError(f"layer {path!r} ({kind}): padding_mode={layer.padding_mode!r}")
    if isinstance(layer, nn.Conv1d):
        if layer.groups != 1:
            raise UnsupportedLayerError(f"layer {path!r} (Conv1d): groups={layer.groups} is not supported (hls4ml's "
                                        "Conv1D has no groups); use groups=1, or a Conv2d for a depthwise conv")
        return _export_weight_layer(ctx, path, q, Conv1dNode, ctx.name("conv"), in_shape, out_shape,
                                    in_channels=layer.in_channels, out_channels=layer.out_channels,
                                    kernel_size=list(layer.kernel_size), stride=list(layer.stride),
                                    padding=list(layer.padding), groups=1)
    if isinstance(layer, nn.Conv2d):
        return _export_weight_layer(ctx, path, q, Conv2dNode, ctx.name("conv"), in_shape, out_shape,
                                    in_channels=layer.in_channels, out_channels=layer.out_channels,
                                    kernel_size=_pair(layer.kernel_size), stride=_pair(layer.stride),
                                    padding=_pair(layer.padding), groups=int(layer.groups))
    raise UnsupportedLayerError(f"layer {path!r}: {type(layer).__name__} is not supported by the bundle export "
                                f"(supported: {', '.join(SUPPORTED)})")


@exporter(Quantizer)
def _quant(ctx, path, q, in_shape, out_shape):
    if ctx.dry:
        return QuantNode(name="input_quant" if path in ("input_quant", "") else ctx.name("quant"), in_shape=in_shape,
                         out_shape=out_shape, source=path, format=FixedFormat(q.bits, 0, q.signed, q.rounding))
    if not q.is_on:
        raise BundleError(f"quantizer {path!r} never turned on (delay {q.delay}, {q.t} steps seen)")
    if q.channels:
        raise UnsupportedLayerError(f"activation quantizer {path!r} is per-channel; activations must be per-tensor")
    name = "input_quant" if path in ("input_quant", "") else ctx.name("quant")
    return QuantNode(name=name, in_shape=in_shape, out_shape=out_shape, source=path, format=q.formats()[0])


@exporter(ActivationPruner)
def _mask(ctx, path, p, in_shape, out_shape):
    if ctx.dry:
        p.mask_for(in_shape) if p.mask.numel() else None  # the shape check (MaskShapeError)
        return None
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


@exporter(nn.ReLU6, nn.Hardtanh)
def _clip(ctx, path, m, in_shape, out_shape):
    lo, hi = (0.0, 6.0) if isinstance(m, nn.ReLU6) else (float(m.min_val), float(m.max_val))
    return ClipNode(name=ctx.name("clip"), in_shape=in_shape, out_shape=out_shape, source=path, lo=lo, hi=hi)


@exporter(nn.LeakyReLU)
def _leaky(ctx, path, m, in_shape, out_shape):
    slope, fmt = leaky_slope(float(m.negative_slope))
    if slope != float(m.negative_slope) and not ctx.dry:
        raise BundleError(f"layer {path!r} (LeakyReLU): slope {m.negative_slope} is not on its {fmt.bits}-bit grid; "
                          "convert the model with qsp.convert (it puts the slope there for training)")
    if not 0 <= slope < 1:
        raise UnsupportedLayerError(f"layer {path!r} (LeakyReLU): slope {slope} outside [0, 1) is not supported")
    return LeakyReluNode(name=ctx.name("leaky_relu"), in_shape=in_shape, out_shape=out_shape, source=path,
                         slope=slope, param=fmt)


def bn_scale_shift(m) -> tuple[FixedFormat, FixedFormat, np.ndarray, np.ndarray]:
    """A standalone BatchNorm at inference as the bundle computes it
    (:func:`qsp.fixedpoint.scale_shift`): (scale format, shift format, scale, shift)."""
    m = getattr(m, "bn", m)  # QScaleShift: its BatchNorm
    f = lambda t: None if t is None else t.detach().double().cpu().numpy()  # noqa: E731
    return scale_shift(f(m.weight) if m.affine else None, f(m.bias) if m.affine else None,
                       f(m.running_mean), f(m.running_var), m.eps)


@exporter(nn.BatchNorm1d, nn.BatchNorm2d, QScaleShift)
def _batchnorm(ctx, path, m, in_shape, out_shape):
    """A BatchNorm with no weight layer before it (trained as :class:`QScaleShift` by
    qsp.convert): :func:`bn_scale_shift`."""
    m = getattr(m, "bn", m)
    if not m.track_running_stats or m.running_var is None:
        raise UnsupportedLayerError(f"layer {path!r} ({type(m).__name__}): needs track_running_stats=True")
    sf, bf, scale, shift = bn_scale_shift(m)
    name = ctx.name("scale_shift")
    ctx.weights[f"{name}.weight"] = scale
    ctx.weights[f"{name}.bias"] = shift
    return ScaleShiftNode(name=name, in_shape=in_shape, out_shape=out_shape, source=path,
                          channels=int(m.num_features), weight=sf, bias=bf)


@exporter(nn.AdaptiveAvgPool2d)
def _adaptive(ctx, path, m, in_shape, out_shape):
    if _pair(m.output_size) != [1, 1]:
        raise UnsupportedLayerError(f"layer {path!r} (AdaptiveAvgPool2d): only output size 1 (global average "
                                    "pooling) is supported")
    return _global_pool(ctx, path, in_shape)


@exporter(nn.AdaptiveAvgPool1d)
def _adaptive1d(ctx, path, m, in_shape, out_shape):
    if _single(m.output_size) != [1]:
        raise UnsupportedLayerError(f"layer {path!r} (AdaptiveAvgPool1d): only output size 1 (global average "
                                    "pooling) is supported")
    return _global_pool(ctx, path, in_shape)


def _global_pool(ctx, path, in_shape):
    if len(in_shape) == 2:
        c, n = in_shape
        return AvgPool1dNode(name=ctx.name("avgpool"), in_shape=list(in_shape), out_shape=[c, 1], source=path,
                             kernel_size=[n], stride=[n])
    c, h, w = in_shape
    return AvgPool2dNode(name=ctx.name("avgpool"), in_shape=list(in_shape), out_shape=[c, 1, 1], source=path,
                         kernel_size=[h, w], stride=[h, w])


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


@exporter(nn.MaxPool1d, nn.AvgPool1d)
def _pool1d(ctx, path, m, in_shape, out_shape):
    if _single(m.padding) != [0] or getattr(m, "ceil_mode", False):
        raise UnsupportedLayerError(f"layer {path!r} ({type(m).__name__}): padding / ceil_mode not supported")
    k = _single(m.kernel_size)
    s = _single(m.stride if m.stride not in (None, (), []) else m.kernel_size)
    if isinstance(m, nn.MaxPool1d):
        if _single(m.dilation) != [1]:
            raise UnsupportedLayerError(f"layer {path!r} (MaxPool1d): dilation not supported")
        return MaxPool1dNode(name=ctx.name("pool"), in_shape=in_shape, out_shape=out_shape, source=path,
                             kernel_size=k, stride=s)
    return AvgPool1dNode(name=ctx.name("avgpool"), in_shape=in_shape, out_shape=out_shape, source=path,
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


# ----------------------------------------------------------------------------- functions
def _t_args(node: fx.Node) -> list[fx.Node]:
    """The tensor-valued fx nodes among a call's arguments (nested lists included)."""
    out = []

    def visit(a):
        if isinstance(a, fx.Node):
            if isinstance(a.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata):
                out.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
    visit(list(node.args) + list(node.kwargs.values()))
    return out


def _arg(node, i, key, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _fn_add(ctx, node, in_shapes, out_shape):
    if len(in_shapes) < 2 or _arg(node, 2, "alpha", 1) != 1:
        return "needs two tensors (a scalar add or alpha != 1 is not supported)"
    return AddNode(name=ctx.name("add"), in_shape=in_shapes[0], out_shape=out_shape, source=where(node))


def _fn_cat(ctx, node, in_shapes, out_shape):
    dim = _arg(node, 1, "dim", 0)
    if dim not in (1, -len(out_shape) - 1) or len(in_shapes) < 2:
        return f"concatenation along dim={dim}: only the channel axis (dim=1) is supported"
    return ConcatNode(name=ctx.name("concat"), in_shape=in_shapes[0], out_shape=out_shape, source=where(node))


def _fn_flatten(ctx, node, in_shapes, out_shape):
    if len(out_shape) != 1:
        return f"reshapes {in_shapes[0]} to {out_shape}: only flattening to (N, -1) is supported"
    if list(in_shapes[0]) == list(out_shape):
        return None  # nothing to do
    return FlattenNode(name=ctx.name("flatten"), in_shape=in_shapes[0], out_shape=out_shape, source=where(node))


def _fn_mean(ctx, node, in_shapes, out_shape):
    dims = _arg(node, 1, "dim")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    rank = len(in_shapes[0]) + 1
    if rank not in (3, 4) or sorted(d % rank for d in dims) != list(range(2, rank)):
        return (f"mean over dims {dims}: only the mean over H and W (dims 2, 3) of [N, C, H, W] or over L (dim 2) "
                "of [N, C, L] is supported")
    pool = _global_pool(ctx, where(node), in_shapes[0])
    if _arg(node, 2, "keepdim", False):
        return pool
    c = in_shapes[0][0]
    return [pool, FlattenNode(name=ctx.name("flatten"), in_shape=pool.out_shape, out_shape=[c], source=where(node))]


def _fn_adaptive(ctx, node, in_shapes, out_shape):
    if _pair(_arg(node, 1, "output_size")) != [1, 1]:
        return "only output size 1 (global average pooling) is supported"
    return _global_pool(ctx, where(node), in_shapes[0])


def _fn_adaptive1d(ctx, node, in_shapes, out_shape):
    if _single(_arg(node, 1, "output_size")) != [1]:
        return "only output size 1 (global average pooling) is supported"
    return _global_pool(ctx, where(node), in_shapes[0])


def _fn_pool(cls, base):
    one = cls in (MaxPool1dNode, AvgPool1dNode)
    tup = _single if one else _pair

    def fn(ctx, node, in_shapes, out_shape):
        k = tup(_arg(node, 1, "kernel_size"))
        st = _arg(node, 2, "stride")
        s = tup(st) if st not in (None, [], ()) else k
        if any(tup(_arg(node, 3, "padding", 0))) or _arg(node, 4 if issubclass(cls, AvgPool2dNode) else 5,
                                                         "ceil_mode", False):
            return "padding / ceil_mode are not supported"
        return cls(name=ctx.name(base), in_shape=in_shapes[0], out_shape=out_shape, source=where(node),
                   kernel_size=k, stride=s)
    return fn


_FUNCS = {}
for _k in ADD_FUNCS:
    _FUNCS[_k] = _fn_add
for _k in CAT_FUNCS:
    _FUNCS[_k] = _fn_cat
for _k in (torch.flatten, "flatten", "view", "reshape", torch.reshape):
    _FUNCS[_k] = _fn_flatten
for _k in ("mean", torch.mean):
    _FUNCS[_k] = _fn_mean
_FUNCS[F.adaptive_avg_pool2d] = _fn_adaptive
_FUNCS[F.max_pool2d] = _fn_pool(MaxPool2dNode, "pool")
_FUNCS[F.avg_pool2d] = _fn_pool(AvgPool2dNode, "avgpool")
_FUNCS[F.adaptive_avg_pool1d] = _fn_adaptive1d
_FUNCS[F.max_pool1d] = _fn_pool(MaxPool1dNode, "pool")
_FUNCS[F.avg_pool1d] = _fn_pool(AvgPool1dNode, "avgpool")
#: calls that yield no tensor (shapes) or the identity
_PASS = {"size", getattr, "dim", operator.getitem, "contiguous", F.dropout, F.dropout2d}


def _unsupported(node: fx.Node, why: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{where(node)}: not supported by qsp{': ' + why if why else ''} "
                                 f"(supported: {', '.join(SUPPORTED)})")


def _walk(model: nn.Module, input_shape, dry: bool):
    """(nodes, ctx) of the traced model (see the module doc)."""
    from ..nn.capture import trace

    gm = trace(model) if not isinstance(model, fx.GraphModule) else model
    gm.graph.lint()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    gm = fx.GraphModule(gm, gm.graph)  # ShapeProp writes meta: not on the model's own graph
    ShapeProp(gm).propagate(torch.zeros((1,) + tuple(input_shape), device=dev))
    ctx = _Ctx()
    ctx.dry = dry
    nodes, alias = [], {}

    def shape(n: fx.Node):
        return list(n.meta["tensor_meta"].shape[1:])

    def add(fxn, made, ins):
        made = [m for m in (made if isinstance(made, list) else [made]) if m is not None]
        if not made:
            alias[fxn] = alias[ins[0]]
            return
        prev = [alias[i] for i in ins]
        for m in made:
            m.inputs = prev
            nodes.append(m)
            prev = [m.name]
        alias[fxn] = prev[0]

    for fxn in gm.graph.nodes:
        if fxn.op == "placeholder":
            if alias:
                raise UnsupportedLayerError(f"the model's forward takes more than one input ({fxn.name!r}): qsp "
                                            "graphs have one input")
            alias[fxn] = GRAPH_INPUT
            continue
        if fxn.op == "output":
            outs = _t_args(fxn)
            if len(outs) != 1:
                raise UnsupportedLayerError(f"the model returns {len(outs)} tensors: qsp graphs have one output")
            if not nodes or alias[outs[0]] != nodes[-1].name:
                raise UnsupportedLayerError("the model's output is not its last computed value (qsp graphs end "
                                            "in their output)")
            continue
        if fxn.op == "get_attr":
            raise _unsupported(fxn, f"a tensor attribute {fxn.target!r} used as a value")
        tm = fxn.meta.get("tensor_meta")
        ins = _t_args(fxn)
        if not isinstance(tm, torch.fx.passes.shape_prop.TensorMetadata):
            if fxn.op == "call_module" or fxn.target not in _PASS:
                raise _unsupported(fxn, "it does not produce one tensor")
            continue  # sizes and other non-tensor values: consumed by reshapes
        out_shape = shape(fxn)
        in_shapes = [shape(i) for i in ins]
        if fxn.op == "call_module":
            mod = gm.get_submodule(fxn.target)
            if isinstance(mod, SKIP):
                add(fxn, None, ins)
                continue
            h = _handler(mod)
            if h is None:
                if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    raise BundleError(f"layer {fxn.target!r} ({type(mod).__name__}) was not quantized: wrap it "
                                      "with qsp.quantize or include it in qsp.convert")
                raise _unsupported(fxn, f"{type(mod).__name__}")
            add(fxn, h(ctx, fxn.target, mod, in_shapes[0], out_shape), ins)
            continue
        if fxn.target in _PASS:
            add(fxn, None, ins)
            continue
        fn = _FUNCS.get(fxn.target)
        if fn is None or not ins:
            raise _unsupported(fxn)
        made = fn(ctx, fxn, in_shapes, out_shape)
        if isinstance(made, str):
            raise _unsupported(fxn, made)
        add(fxn, made, ins)
    return nodes, ctx


@torch.no_grad()
def export_graph(model: nn.Module, input_shape):
    """Trace ``model`` on one zero input of ``input_shape`` (no batch) and return
    (nodes, weights, masks, plain_state_dict)."""
    was = model.training
    model.eval()
    try:
        nodes, ctx = _walk(model, input_shape, dry=False)
        return nodes, ctx.weights, ctx.masks, ctx.state
    finally:
        model.train(was)


@torch.no_grad()
def check_model(model: nn.Module, input_shape) -> list:
    """Before training: the converted model traces, every op is one qsp supports, shapes
    fit (activation masks included). Returns the bundle nodes it would export (formats
    not yet trained); raises :class:`UnsupportedLayerError` naming the module or line."""
    was = model.training
    model.eval()
    try:
        nodes, _ = _walk(model, input_shape, dry=True)
        if not nodes or not isinstance(nodes[0], QuantNode):
            raise BundleError("the model's first operation must quantize the input (qsp.convert(input_bits=...))")
        return nodes
    finally:
        model.train(was)


@torch.no_grad()
def trained_outputs(model: nn.Module, x, batch: int = 512) -> np.ndarray:
    """The trained model's own outputs on ``x`` (batch first), computed by PyTorch: a copy of
    the model in evaluation mode, in float64 on the CPU, with the effective (folded, pruned,
    quantized) weights and biases each weight layer computes with in training (its
    ``effective()``, in the model's own dtype and device). float64 makes every sum exact
    (every code stays below 2^53, which the emulator's range analysis checks), so these
    outputs equal the bundle's exact emulation bit for bit; a float32 forward can round a
    sum whose codes exceed 2^24. A standalone BatchNorm computes as the bundle does
    (:func:`bn_scale_shift`). Stored in test_data.npz as ``model_out``; verification
    checks the emulation against them, so a bundle changed after training fails."""
    import copy

    model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    ref = copy.deepcopy(model).cpu().double().eval()
    copies = dict(ref.named_modules())
    for name, m in model.named_modules():
        c = copies[name]
        if callable(getattr(m, "effective", None)) and callable(getattr(m, "_weights", None)):
            fixed = tuple(t.detach().cpu().double() if torch.is_tensor(t) else t for t in m.effective())
            c._weights = lambda fixed=fixed: fixed
        elif isinstance(m, QScaleShift) or isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.track_running_stats:
            _, _, scale, shift = bn_scale_shift(m)
            s, t = torch.from_numpy(scale), torch.from_numpy(shift)
            c.forward = lambda v, s=s, t=t: v * s.reshape((-1,) + (1,) * (v.dim() - 2)) + \
                t.reshape((-1,) + (1,) * (v.dim() - 2))
    xs = torch.from_numpy(np.asarray(x, np.float32))
    return np.concatenate([ref(xs[i:i + batch].double()).numpy() for i in range(0, len(xs), batch)]) \
        if len(xs) else np.zeros((0,), np.float64)


def make_bundle(model: nn.Module, task: TaskInfo, model_ref: ModelRef, test_x=None, test_y=None,
                plan: dict | None = None, metrics: dict | None = None, method: str = "qsparse",
                extra: dict | None = None) -> Bundle:
    """Build (not write) a validated bundle from a trained, converted model."""
    nodes, weights, masks, state = export_graph(model, task.input_shape)
    if not nodes or not isinstance(nodes[0], QuantNode):
        raise BundleError("the model's first operation must quantize the input (qsp.convert(input_bits=...))")
    spec = QSpec(task=task, model=model_ref, graph=nodes, method=method, plan=plan or {},
                 metrics=metrics or {}, extra=extra or {}, qsp_version=__version__)
    x = None if test_x is None else np.asarray(test_x, np.float32)
    out = None if x is None else trained_outputs(model, x).reshape((len(x), *task.output_shape))
    b = Bundle(spec, weights, masks, state, x, None if test_y is None else np.asarray(test_y), model_out=out)
    return b.validate()
