"""Model capture by tracing (torch.fx): any model whose ``forward`` is traceable, not only
``nn.Sequential``.

:func:`capture` traces a model into an ``fx.GraphModule`` that shares the model's
submodules (same qualified names, so state_dict keys and ``Plan`` patterns are the module
paths the user knows) and normalises it so that every later pass sees one form:

* functional activations (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.relu6``,
  ``F.hardtanh``, ``F.leaky_relu``) become activation modules (named after the traced node),
  so ``qsp.convert`` gives a functional activation exactly what a module activation gets;
* ``F.dropout`` and inference-time identities are dropped.

:func:`weight_bn_pairs` finds each BatchNorm whose only input is a Linear/Conv read by
nothing else (the pairs that fold). :data:`LEAF_TYPES` lists qsp's own modules the tracer
keeps whole.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UnsupportedLayerError

#: functional activation -> (module factory from the call's args/kwargs)
_ACT_FUNCS = {
    F.relu: lambda a, k: nn.ReLU(),
    torch.relu: lambda a, k: nn.ReLU(),
    "relu": lambda a, k: nn.ReLU(),
    "relu_": lambda a, k: nn.ReLU(),
    F.relu6: lambda a, k: nn.ReLU6(),
    F.hardtanh: lambda a, k: nn.Hardtanh(*(list(a[1:3]) or [k.get("min_val", -1.0), k.get("max_val", 1.0)])),
    F.leaky_relu: lambda a, k: nn.LeakyReLU(a[1] if len(a) > 1 else k.get("negative_slope", 0.01)),
}
_IDENTITY_FUNCS = {F.dropout, F.dropout2d, "contiguous"}
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
FOLD_INTO = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _leaf_types():
    from .layers import QLayer, QScaleShift
    from .ops import ActivationPruner, Quantizer

    types = [QLayer, QScaleShift, Quantizer, ActivationPruner]
    try:  # DJPQ's layers are leaves too (imported lazily: qsp.djpq imports qsp.nn)
        from ..djpq.layers import DJPQLayer
        from ..djpq.quant import LearnedQuantizer

        types += [DJPQLayer, LearnedQuantizer]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


class QspTracer(fx.Tracer):
    """torch.fx's tracer with qsp's operators kept as leaves and stack traces recorded (so
    an unsupported op can be reported with its source line)."""

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True
        self._leaves = _leaf_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._leaves):
            return True
        if isinstance(m, fx.GraphModule):
            return False
        return super().is_leaf_module(m, qualname)


def where(node: fx.Node) -> str:
    """A user's pointer to a traced node: its module path, or the function and the source
    line it came from."""
    if node.op == "call_module":
        return f"module {node.target!r}"
    fn = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    line = ""
    st = node.meta.get("stack_trace") or ""
    lines = [s.strip() for s in st.strip().splitlines() if s.strip().startswith("File ")
             and "/torch/" not in s and "/qsp/" not in s]  # the user's own frames
    if lines:
        line = " at " + lines[-1].replace("File ", "")
    return f"call {fn}(){line}"


def trace(model: nn.Module) -> fx.GraphModule:
    """The model as an ``fx.GraphModule`` (submodules shared, not copied)."""
    tracer = QspTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... from the user's forward
        raise UnsupportedLayerError(
            f"{type(model).__name__}.forward could not be traced by torch.fx ({type(e).__name__}: {e}); qsp "
            "needs a forward without data-dependent Python control flow (no `if x.sum() > 0`, no loops over "
            "tensor values)") from None
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def has_module(model: nn.Module, target: str) -> bool:
    try:
        model.get_submodule(target)
        return True
    except AttributeError:
        return False


def fresh_name(gm: nn.Module, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : a submodule name not yet taken."""
    name, k = base, 1
    while has_module(gm, name) or hasattr(gm, name):
        k += 1
        name = f"{base}_{k}"
    return name


def put_module(gm: fx.GraphModule, target: str, mod: nn.Module | None, model: nn.Module) -> None:
    """Put ``mod`` at ``target`` in the graph module and in the user's model (``None``: a
    folded BatchNorm: removed from the graph module, the identity in the user's model)."""
    parent, _, key = target.rpartition(".")
    for root in (gm, model):
        if mod is None and root is gm and root is not model:
            gm.delete_submodule(target)
            continue
        if has_module(root, target):
            setattr(root.get_submodule(parent) if parent else root, key, nn.Identity() if mod is None else mod)


def graph_changed(gm: fx.GraphModule, model: nn.Module) -> bool:
    """Whether the captured graph calls a module the user's model does not have (then the
    graph module, not the user's module, is what runs)."""
    return any(n.op == "call_module" and not has_module(model, n.target) for n in gm.graph.nodes)


def capture(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` and normalise its graph (see the module doc)."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    g = gm.graph
    changed = False
    for node in list(g.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        key = node.target
        if key in _ACT_FUNCS:
            mod = _ACT_FUNCS[key](node.args, node.kwargs)
            name = fresh_name(gm, node.name)
            gm.add_submodule(name, mod)
            with g.inserting_after(node):
                new = g.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            g.erase_node(node)
            changed = True
        elif key in _IDENTITY_FUNCS:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
            changed = True
    if changed:
        g.lint()
        gm.recompile()
    return gm


def modules_in_order(gm: fx.GraphModule):
    """(fx node, module) of every call_module node, in execution order."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            yield node, gm.get_submodule(node.target)


def weight_bn_pairs(gm: fx.GraphModule) -> dict[str, str]:
    """weight-layer target -> BatchNorm target for every BN that folds into the layer before
    it (the BN reads only that layer's output, and nothing else reads it)."""
    pairs = {}
    for node, mod in modules_in_order(gm):
        if not isinstance(mod, BN_TYPES) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if src.op != "call_module" or len(src.users) != 1:
            continue
        prev = gm.get_submodule(src.target)
        if isinstance(prev, FOLD_INTO) and getattr(prev, "out_channels", getattr(prev, "out_features", -1)) \
                == mod.num_features:
            pairs[src.target] = node.target
    return pairs


def drop_node(gm: fx.GraphModule, target: str) -> None:
    """Remove the call_module node of ``target`` (its users read its input instead)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == target:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


#: functions whose output is the sum / channel concatenation of their tensor inputs
ADD_FUNCS = {operator.add, torch.add, operator.iadd, "add", "add_"}
CAT_FUNCS = {torch.cat, torch.concat}
#: average pooling (its value gets a quantizer in qsp.convert)
POOL_FUNCS = {F.avg_pool2d, F.adaptive_avg_pool2d, F.avg_pool1d, F.adaptive_avg_pool1d, "mean", torch.mean}
POOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)


def join_nodes(gm: fx.GraphModule, read_alone_ok) -> list[fx.Node]:
    """add / concatenation / average-pooling nodes that need an activation quantizer of
    their own: every one except those whose value only ``read_alone_ok(node)`` says is
    read by an activation alone. The one rule for qsp.convert and qsp.djpq.convert (a
    residual stream stays narrow; a mean over a window that is not a power of two is not a
    fixed-point value until it is quantized)."""
    out = []
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method"):
            if node.target not in ADD_FUNCS and node.target not in CAT_FUNCS and node.target not in POOL_FUNCS:
                continue
        elif node.op == "call_module":
            if not isinstance(gm.get_submodule(node.target), POOL_MODULES):
                continue
        else:
            continue
        if not read_alone_ok(node):
            out.append(node)
    return out
