"""The traced graph of a DJPQ model: which weight layer feeds which, which activation
quantizer feeds each weight layer, which layers may carry channel gates.

Everything here walks a torch.fx graph (:func:`qsp.nn.capture.trace`, DJPQ layers and
quantizers kept whole), never module registration order, so it holds for any traceable
model (residual adds, concatenations, depthwise convs, functional activations).

**Link** (the torch side of :func:`qsp.bundle.graph.link_after`): from a weight layer's
output, follow the value while it has exactly one reader and that reader is a per-channel
op that keeps channel ``c`` at ``c`` and 0 at 0 (a learned quantizer, ReLU, ReLU6,
Hardtanh with ``min <= 0 <= max``, max/average pooling, dropout/identity, flatten). The
weight layer reached that way is the *consumer*; it must be a Linear or an ungrouped Conv2d
(a Conv2d after a flatten does not count). A value read twice (fan-out, a residual branch),
an add, a concatenation or a depthwise/grouped conv ends the walk: no consumer.

**Gating rule**: a weight layer carries a VIB gate only when it is an ungrouped layer with
a consumer. Its pruned channels are then removed from the compiled design together with
the consumer's matching inputs (:class:`~qsp.djpq.transforms.RemovePrunedChannels`), so
shapes stay consistent. Layers whose output feeds an add, a concatenation, a depthwise conv,
several readers, or the model output stay ungated; depthwise/grouped convs are never gated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn.capture import POOL_FUNCS, POOL_MODULES, trace

#: calls whose result is the same channels, flattened (channel-major)
FLATTEN_CALLS = {torch.flatten, "flatten", "view", "reshape", torch.reshape}
#: identities at inference
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
IDENTITY_CALLS = {"contiguous", F.dropout, F.dropout2d}
#: uses of a value that are not a tensor computation (shape queries for a reshape)
SHAPE_CALLS = {"size", "dim", getattr}


def module_of(root: nn.Module, node: fx.Node) -> nn.Module | None:
    return root.get_submodule(node.target) if node.op == "call_module" else None


def is_quantizer(m) -> bool:
    """An activation quantizer: a LearnedQuantizer, or an activation wrapped with one."""
    from .quant import LearnedQuantizer

    if isinstance(m, nn.Sequential) and "quant" in m._modules:
        m = m.quant
    return isinstance(m, LearnedQuantizer)


def tensor_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if not (u.op in ("call_method", "call_function") and u.target in SHAPE_CALLS)]


def _zero_preserving_act(m) -> bool:
    if isinstance(m, (nn.ReLU, nn.ReLU6)):
        return True
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val) <= 0.0 <= float(m.max_val)
    return False


MAX_POOL_FUNCS = (F.max_pool2d, F.max_pool1d)


def is_max_pool(m, node: fx.Node) -> bool:
    """A MaxPool1d/2d module or F.max_pool1d/2d call (the value keeps its format)."""
    return isinstance(m, (nn.MaxPool2d, nn.MaxPool1d)) or node.target in MAX_POOL_FUNCS


def unit_kind(root: nn.Module, node: fx.Node) -> str | None:
    """``"unit"`` (channel c stays channel c, 0 stays 0), ``"flatten"``, ``"same"`` (the
    identity) or None (anything else)."""
    from .quant import LearnedQuantizer

    if node.op == "call_module":
        m = module_of(root, node)
        if isinstance(m, IDENTITY_MODULES):
            return "same"
        if isinstance(m, nn.Flatten):
            return "flatten"
        if isinstance(m, (LearnedQuantizer, nn.MaxPool2d, nn.MaxPool1d) + POOL_MODULES) or _zero_preserving_act(m):
            return "unit"
        if isinstance(m, nn.Sequential) and all(_zero_preserving_act(c) or isinstance(c, LearnedQuantizer)
                                                for c in m):
            return "unit"
        return None
    if node.op in ("call_function", "call_method"):
        t = node.target
        if t in IDENTITY_CALLS:
            return "same"
        if t in FLATTEN_CALLS:
            return "flatten"
        if t in POOL_FUNCS or t in MAX_POOL_FUNCS or t in (F.avg_pool2d, F.avg_pool1d):
            return "unit"
    return None


def _single_user(node: fx.Node) -> fx.Node | None:
    us = tensor_users(node)
    return us[0] if len(us) == 1 else None


def link_consumer(root: nn.Module, node: fx.Node) -> fx.Node | None:
    """The weight layer that alone reads ``node``'s channels (see the module doc), else None."""
    from .layers import DJPQLayer

    flat = False
    k = _single_user(node)
    while k is not None:
        kind = unit_kind(root, k)
        if kind is None:
            break
        flat |= kind == "flatten"
        k = _single_user(k)
    m = module_of(root, k) if k is not None else None
    if not isinstance(m, DJPQLayer) or m.groups != 1 or k.args[0] is None:
        return None
    if flat and not isinstance(m.layer, nn.Linear):
        return None
    return k


def feeding_quantizer(root: nn.Module, node: fx.Node) -> str | None:
    """Module path of the activation quantizer whose value the weight layer ``node`` reads
    (through flatten, max pooling and identities), None when its input is not quantized."""
    a = node.args[0] if node.args else None
    while isinstance(a, fx.Node):
        m = module_of(root, a)
        if m is not None and is_quantizer(m):
            return a.target + (".quant" if isinstance(m, nn.Sequential) else "")
        kind = unit_kind(root, a)
        maxpool = is_max_pool(m, a)
        if kind in ("same", "flatten") or maxpool:
            a = a.args[0] if a.args else None
            continue
        return None
    return None


@dataclass
class LayerLinks:
    """One weight layer of the graph (module paths of the traced root)."""

    name: str
    act_quant: str | None   # the activation quantizer it reads (None: not quantized / graph input)
    consumer: str | None    # the weight layer its channels alone feed (gateable when not None)
    producer: str | None    # the weight layer whose link ends here


def analyze(model: nn.Module) -> list[LayerLinks]:
    """The DJPQ layers of ``model`` in execution order with their links."""
    from .layers import DJPQLayer

    gm = trace(model)
    rows: dict[str, LayerLinks] = {}
    for node in gm.graph.nodes:
        m = module_of(model, node)
        if not isinstance(m, DJPQLayer):
            continue
        if node.target in rows:
            from ..errors import UnsupportedLayerError
            raise UnsupportedLayerError(f"layer {node.target!r} is called more than once: DJPQ needs one call "
                                        "per weight layer (shared weights are not supported)")
        c = link_consumer(model, node)
        rows[node.target] = LayerLinks(node.target, feeding_quantizer(model, node),
                                       c.target if c is not None else None, None)
    for r in rows.values():
        if r.consumer is not None:
            rows[r.consumer].producer = r.name
    return list(rows.values())
