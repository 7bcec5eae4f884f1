"""DJPQ model -> bundle: exporters for :class:`DJPQLayer` and :class:`LearnedQuantizer`
(registered with the bundle exporter's registry), the DJPQ report and
:func:`export_djpq`, which removes the pruned channels from the graph."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..bundle import Conv1dNode, Conv2dNode, LinearNode, ModelRef, QuantNode, TaskInfo, WeightFormat
from ..bundle.export import exporter, make_bundle
from ..bundle.io import Bundle
from ..errors import BundleError
from .bops import summary
from .convert import DJPQConfig, layer_chain
from .layers import DJPQLayer
from .quant import LearnedQuantizer
from .transforms import RemovePrunedChannels


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


@exporter(DJPQLayer)
def _djpq_layer(ctx, path, m: DJPQLayer, in_shape, out_shape):
    w, b, bfmt = m.effective()
    fmt = m.wq.format()
    w = w.detach().double().cpu().numpy()
    layer = m.layer
    common = dict(in_shape=in_shape, out_shape=out_shape, source=path,
                  weight=WeightFormat(fmt.bits, fmt.frac, True, fmt.rounding),
                  weight_sparsity=float(np.mean(w == 0)), nonzeros=int(np.count_nonzero(w)),
                  kept_outputs=m.kept() if m.gate is not None else None)
    if isinstance(layer, nn.Linear):
        node = LinearNode(name=ctx.name("dense"), in_features=layer.in_features,
                          out_features=layer.out_features, **common)
    else:
        if any(d != 1 for d in layer.dilation) or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise BundleError(f"layer {path!r} ({type(layer).__name__}): dilation, string padding and non-zero "
                              "padding modes are not supported by the bundle")
    if isinstance(layer, nn.Conv1d):
        node = Conv1dNode(name=ctx.name("conv"), in_channels=layer.in_channels, out_channels=layer.out_channels,
                          kernel_size=list(layer.kernel_size), stride=list(layer.stride),
                          padding=list(layer.padding), groups=1, **common)
    elif isinstance(layer, nn.Conv2d):
        node = Conv2dNode(name=ctx.name("conv"), in_channels=layer.in_channels, out_channels=layer.out_channels,
                          kernel_size=_pair(layer.kernel_size), stride=_pair(layer.stride),
                          padding=_pair(layer.padding), groups=int(layer.groups), **common)
    if m.bn is not None:
        node.source += f" (+ folded {type(m.bn).__name__})"
    ctx.weights[f"{node.name}.weight"] = w
    plain = path[4:] if path.startswith("net.") else path
    ctx.state[f"{plain}.weight"] = w.astype(np.float32)
    if b is not None:
        node.bias = bfmt
        bb = b.detach().double().cpu().numpy()
        ctx.weights[f"{node.name}.bias"] = bb
        ctx.state[f"{plain}.bias"] = bb.astype(np.float32)
    return node


@exporter(LearnedQuantizer)
def _learned_quant(ctx, path, q: LearnedQuantizer, in_shape, out_shape):
    if not bool(q.initialized) and not ctx.dry:
        raise BundleError(f"quantizer {path!r} never saw data: train the model at least one step before export")
    name = "input_quant" if path in ("input_quant", "") else ctx.name("quant")
    if ctx.dry and not bool(q.initialized):
        from ..fixedpoint import FixedFormat
        return QuantNode(name=name, in_shape=in_shape, out_shape=out_shape, source=path,
                         format=FixedFormat(8, 0, True))
    return QuantNode(name=name, in_shape=in_shape, out_shape=out_shape, source=path, format=q.format())


def djpq_report(model: nn.Module, bundle: Bundle | None = None, metrics: dict | None = None) -> dict:
    """Per-layer learned bits and kept channels, BOPs before (FP32 dense) and after."""
    s = summary(model)
    by_source = {}
    if bundle is not None:
        by_source = {n.source.split(" (+ folded")[0]: n.name for n in bundle.graph}
    layers = []
    for e, row in zip(layer_chain(model), s["layers"]):
        aq = e.act_quant
        layers.append({
            "layer": e.name, "node": by_source.get(e.name, ""),
            "type": type(e.layer.layer).__name__, "groups": e.layer.groups,
            "gated": e.layer.gate is not None, "bn_folded": e.layer.bn is not None,
            "w_bits": e.layer.wq.bits(), "w_frac": e.layer.wq.frac(),
            "a_bits": aq.bits() if aq is not None else 32,
            "a_frac": aq.frac() if aq is not None else None,
            "out_channels": e.layer.out_channels, "kept": len(e.layer.kept()),
            "kept_indices": e.layer.kept(),
            "macs": row["macs"], "bops": row["bops"],
        })
    return {"layers": layers, "bops": s["bops"], "bops_fp32": s["bops_fp32"], "bops_ratio": s["bops_ratio"],
            "reduction": s["reduction"], "metrics": dict(metrics or {})}


def format_report(rep: dict) -> str:
    """A plain-text table of :func:`djpq_report`."""
    wl = max([12] + [len(str(r["layer"])) + 2 for r in rep["layers"]])
    wn = max([10] + [len(str(r["node"])) + 2 for r in rep["layers"]])
    head = f"{'layer':<{wl}}{'node':<{wn}}{'w bits':>7}{'a bits':>7}{'kept':>11}{'MACs':>11}{'BOPs':>14}"
    lines = [head, "-" * len(head)]
    for r in rep["layers"]:
        kept = f"{r['kept']}/{r['out_channels']}" + ("" if r.get("gated", True) else " -")
        lines.append(f"{r['layer']:<{wl}}{r['node']:<{wn}}{r['w_bits']:>7}{r['a_bits']:>7}"
                     f"{kept:>11}{r['macs']:>11,}{r['bops']:>14,.0f}")
    red = rep["reduction"]
    lines.append(f"BOPs {rep['bops']:,.0f} vs FP32 dense {rep['bops_fp32']:,}: ratio {rep['bops_ratio']:.5f} "
                 f"({red:.1f}x reduction)" if math.isfinite(red) else "BOPs 0")
    for k, v in rep.get("metrics", {}).items():
        if isinstance(v, (int, float)):
            lines.append(f"{k}: {v:.4f}")
    return "\n".join(lines)


@torch.no_grad()
def _accuracy(model: nn.Module, x, y, batch: int = 1024) -> float:
    """Test accuracy of the model in evaluation mode (exactly the bundle's computation)."""
    was = model.training
    model.eval()
    try:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.as_tensor(np.asarray(x, np.float32))
        pred = torch.cat([model(x[i:i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch)])
        return float((pred.numpy() == np.asarray(y)).mean())
    finally:
        model.train(was)


def export_djpq(model: nn.Module, task: TaskInfo, model_ref: ModelRef, test_x=None, test_y=None,
                cfg: DJPQConfig | None = None, metrics: dict | None = None, extra: dict | None = None,
                remove_channels: bool = True) -> Bundle:
    """Build (not write) a validated DJPQ bundle: per-layer learned formats, the report in
    ``qspec.extra["djpq"]``, pruned channels physically removed."""
    extra = dict(extra or {})
    plan = (cfg or DJPQConfig()).to_dict()
    b = make_bundle(model, task, model_ref, test_x, test_y, plan=plan, metrics=metrics, method="djpq",
                    extra=extra)
    metrics = dict(metrics or {})
    if test_x is not None and test_y is not None and task.kind == "classification" and "accuracy" not in metrics:
        metrics["accuracy"] = _accuracy(model, test_x, test_y)
    b.qspec.extra["djpq"] = djpq_report(model, b, metrics)
    if remove_channels:
        b = RemovePrunedChannels().apply(b)
        # every gated layer's pruned channels are gone (the graph walk's links are the bundle's)
        left = [n.source for n in b.graph if getattr(n, "kept_outputs", None) is not None
                and len(n.kept_outputs) < n.out_shape[0]]
        if left:
            b.qspec.extra["djpq"]["not_removed"] = left
    return b
