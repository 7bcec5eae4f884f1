"""``qsp.convert``: insert quantizers and pruners around every Linear/Conv and every
activation of an existing model, following a typed :class:`Plan`."""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Sequence

from torch import fx, nn

from .. import fixedpoint as fp
from .capture import (BN_TYPES, capture, drop_node, graph_changed, join_nodes, modules_in_order, put_module,
                      weight_bn_pairs)
from .layers import QLayer, QScaleShift, prune, quantize
from .ops import ActivationPruner, Quantizer
from .state import check_nonneg_int, check_quantiles, check_sparsity

ORDERS = ("prune-then-quantize", "quantize-then-prune")
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: activation module -> output is non-negative (unsigned quantizer)
ACTIVATIONS = {nn.ReLU: True, nn.ReLU6: True, nn.LeakyReLU: False, nn.Hardtanh: False}


@dataclass(frozen=True)
class Schedule:
    """Concrete step numbers of a plan (all in training steps)."""

    prune_start: int
    prune_interval: int
    prune_repetition: int
    quant_delay: int
    window: int

    @property
    def prune_end(self) -> int:
        return self.prune_start + self.prune_interval * self.prune_repetition


#: the Plan fields a per-layer override (:class:`LayerOverride`) may set
LAYER_KEYS = ("weight_bits", "act_bits", "bias_bits", "weight_sparsity", "act_sparsity", "rounding", "per_channel")


@dataclass(frozen=True)
class LayerOverride:
    """Plan settings for the layers whose module path matches ``match`` (an fnmatch
    pattern over the paths qsp.convert wraps: weight layers such as ``features.0``,
    activations such as ``features.1``, join quantizers such as ``add_quant``). Fields left
    ``None`` keep the plan's value. In ``Plan.layers`` the first override whose pattern
    matches a layer is the one that applies to it (no merging)."""

    match: str
    weight_bits: int | None = None
    act_bits: int | None = None
    bias_bits: int | None = None
    weight_sparsity: float | None = None
    act_sparsity: float | None = None
    rounding: str | None = None
    per_channel: bool | None = None

    def __post_init__(self):
        if not isinstance(self.match, str) or not self.match.strip():
            raise ValueError(f"layers: match {self.match!r} must be a non-empty layer-name pattern")
        w = f"layers[{self.match!r}]"
        for k in ("weight_bits", "act_bits", "bias_bits"):
            if getattr(self, k) is not None:
                fp.check_bits(getattr(self, k), f"{w}.{k}", 1, 24)
        for k in ("weight_sparsity", "act_sparsity"):
            if getattr(self, k) is not None:
                check_sparsity(getattr(self, k), f"{w}.{k}")
        if self.rounding is not None:
            try:
                fp.check_rounding(self.rounding)
            except ValueError as e:
                raise ValueError(f"{w}.rounding: {e}") from None
        if self.per_channel is not None and not isinstance(self.per_channel, bool):
            raise ValueError(f"{w}.per_channel: {self.per_channel!r} must be true or false")
        if not self.settings():
            raise ValueError(f"{w}: sets nothing; give at least one of {', '.join(LAYER_KEYS)}")

    def settings(self) -> dict:
        """The keys this override sets."""
        return {k: getattr(self, k) for k in LAYER_KEYS if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d) -> "LayerOverride":
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict) or "match" not in d:
            raise ValueError(f"layers: each entry must be a mapping with 'match' and settings, not {d!r}")
        bad = [k for k in d if k != "match" and k not in LAYER_KEYS]
        if bad:
            raise ValueError(f"layers[{d['match']!r}]: unknown key {bad[0]!r} (keys: match, {', '.join(LAYER_KEYS)})")
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """What to quantize and prune, and when. Step fields left ``None`` are derived from
    ``total_steps`` and ``order``:

    * prune-then-quantize: pruning from 5 % of training over 40 % of it, then the
      quantization delay ends 5 % later (the paper's P->Q);
    * quantize-then-prune: quantization on at 5 %, pruning from 10 % over 40 % (Q->P).

    The last part of training fine-tunes with both on.
    """

    weight_bits: int = 8
    act_bits: int = 8
    bias_bits: int | None = None
    input_bits: int | None = 8
    input_signed: bool = False
    weight_sparsity: float = 0.5
    act_sparsity: float = 0.5
    order: str = "prune-then-quantize"
    total_steps: int = 1000
    prune_start: int | None = None
    prune_interval: int | None = None
    prune_repetition: int | None = None
    quant_delay: int | None = None
    window: int | None = None
    quantiles: tuple[float, float] | None = None
    rounding: str = fp.DEFAULT_ROUNDING
    per_channel: bool = False
    dense: tuple[str, ...] = ("first", "last")
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    quantize_activations: bool = True
    #: per-layer overrides (:class:`LayerOverride` or mappings), first match wins
    layers: tuple[LayerOverride, ...] = ()

    def __post_init__(self):
        fp.check_bits(self.weight_bits, "weight_bits", 1, 24)
        fp.check_bits(self.act_bits, "act_bits", 1, 24)
        if self.bias_bits is not None:
            fp.check_bits(self.bias_bits, "bias_bits", 1, 24)
        if self.input_bits is not None:
            fp.check_bits(self.input_bits, "input_bits", 1, 24)
        check_sparsity(self.weight_sparsity, "weight_sparsity")
        check_sparsity(self.act_sparsity, "act_sparsity")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r} is not one of {ORDERS}")
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps!r} must be an integer >= 1")
        fp.check_rounding(self.rounding)
        object.__setattr__(self, "layers", tuple(LayerOverride.from_dict(d) for d in (self.layers or ())))
        for k, low in (("prune_start", 0), ("quant_delay", 0), ("prune_interval", 1), ("prune_repetition", 1),
                       ("window", 1)):
            if getattr(self, k) is not None:
                check_nonneg_int(getattr(self, k), k, low)
        if self.quantiles is not None:
            check_quantiles(self.quantiles)

    def schedule(self) -> Schedule:
        T = self.total_steps
        span = max(1, round(0.4 * T))
        rep = self.prune_repetition or max(1, min(8, span))
        interval = self.prune_interval or max(1, span // rep)
        gap = max(1, round(0.05 * T))
        if self.order == "prune-then-quantize":
            start = gap if self.prune_start is None else self.prune_start
            delay = start + rep * interval + gap if self.quant_delay is None else self.quant_delay
        else:
            delay = gap if self.quant_delay is None else self.quant_delay
            start = delay + gap if self.prune_start is None else self.prune_start
        window = self.window or max(1, min(interval, 50, max(1, round(0.02 * T))))
        return Schedule(start, interval, rep, delay, window)

    def with_(self, **kw) -> "Plan":
        return replace(self, **kw)

    def override_for(self, name: str) -> LayerOverride | None:
        """The first override whose pattern matches module path ``name``, or None."""
        return next((o for o in self.layers if fnmatch.fnmatchcase(name, o.match)), None)

    def for_layer(self, name: str) -> "Plan":
        """This plan with ``name``'s override applied (the plan itself when none matches)."""
        o = self.override_for(name)
        return replace(self, **o.settings(), layers=()) if o is not None else self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _dense_layers(plan: Plan, weight_names: Sequence[str]) -> set[str]:
    """The weight layers ``plan.dense`` keeps unpruned ("first"/"last" in execution order,
    other entries fnmatch patterns); a per-layer override that sets ``weight_sparsity``
    wins over it (see :func:`convert`)."""
    dense = set()
    for d in plan.dense:
        if d == "first" and weight_names:
            dense.add(weight_names[0])
        elif d == "last" and weight_names:
            dense.add(weight_names[-1])
        else:
            dense.update(n for n in weight_names if fnmatch.fnmatchcase(n, d))
    return dense


def _graph_parts(model: nn.Module):
    """The captured graph module, its weight layers and activation modules in execution
    order ((target, module) pairs)."""
    gm = capture(model)
    weights, acts = [], []
    for node, mod in modules_in_order(gm):
        if isinstance(mod, WEIGHT_LAYERS):
            weights.append((node.target, mod))
        elif type(mod) in ACTIVATIONS:
            acts.append((node.target, mod))
    return gm, weights, acts


def _is_activation(m: nn.Module) -> bool:
    """An activation module, or one already wrapped as ``Sequential(act, ...)``."""
    if isinstance(m, nn.Sequential) and "act" in m._modules:
        m = m.act
    return type(m) in ACTIVATIONS


def _read_by_activation_alone(gm: fx.GraphModule, node: fx.Node) -> bool:
    users = list(node.users)
    return len(users) == 1 and users[0].op == "call_module" and _is_activation(gm.get_submodule(users[0].target))


def convert(model: nn.Module, plan: Plan | None = None, **overrides) -> nn.Module:
    """Wrap every Linear/Conv (weights) and every activation of ``model`` with qsp operators
    according to ``plan`` (keyword overrides allowed, e.g. ``weight_bits=4``).

    The model is captured with torch.fx (:mod:`qsp.nn.capture`): any traceable ``forward``
    works, and functional activations (``F.relu``, ``torch.relu``, ...) get exactly what
    module activations get. A BatchNorm right after a Linear/Conv is folded into it
    (:class:`QLayer` with ``bn``: fold-aware training). An add or concatenation whose value
    is not read by an activation alone gets a signed activation quantizer (and pruner) of
    its own.

    Layers named in ``plan.dense`` (``"first"``/``"last"`` mean the first/last weight
    layer in execution order; other entries are fnmatch patterns on module paths) keep all
    their weights (they are still quantized). ``plan.layers`` overrides bits, sparsity,
    rounding and per-channel per module path (first matching pattern wins; a pattern that
    matches no layer is a ConfigError); an override that sets ``weight_sparsity`` (or
    ``act_sparsity``) wins over ``dense`` for its layers. ``include``/``exclude`` restrict which layers
    are touched at all. Returns ``Sequential(input_quant, net)`` when ``plan.input_bits`` is
    set, where ``net`` is the captured graph module (it shares the model's parameters).
    """
    plan = (plan or Plan()).with_(**overrides) if overrides else (plan or Plan())
    sch = plan.schedule()
    gm, weights, acts = _graph_parts(model)
    # the user's module is used (changed in place) when the captured graph calls exactly its
    # modules; otherwise (functional activations, joins to quantize) the graph module is
    changed = graph_changed(gm, model)
    weight_names = [n for n, _ in weights]
    dense = _dense_layers(plan, weight_names)

    def selected(name):
        if plan.include is not None and not _matches(name, plan.include):
            return False
        return not _matches(name, plan.exclude)

    act_names = [n for n, _ in acts] if plan.quantize_activations else []
    join_names = ([f"{n.name}_quant" for n in join_nodes(gm, lambda n: _read_by_activation_alone(gm, n))]
                  if plan.quantize_activations else [])
    check_overrides(plan, weight_names + act_names + join_names)
    qkw = dict(delay=sch.quant_delay, window=min(sch.window, max(1, sch.quant_delay)) if sch.quant_delay else 1,
               rounding=plan.rounding, quantiles=plan.quantiles)
    pkw = dict(start=sch.prune_start, interval=sch.prune_interval, repetition=sch.prune_repetition)
    p_first = plan.order == "prune-then-quantize"
    bn_of = weight_bn_pairs(gm)
    dense_acts = [d for d in plan.dense if d not in ("first", "last")]

    def act_ops(name, signed):
        lp, o = plan.for_layer(name), plan.override_for(name)
        ops = []
        keep = _matches(name, dense_acts) and (o is None or o.act_sparsity is None)  # an override's sparsity wins
        if lp.act_sparsity > 0 and not keep:
            ops.append(("prune", prune(sparsity=lp.act_sparsity, window=sch.window, **pkw)))
        ops.append(("quant", quantize(bits=lp.act_bits, signed=signed, **dict(qkw, rounding=lp.rounding))))
        return ops if p_first else ops[::-1]

    for name, mod in weights:
        if not selected(name):
            continue
        bn = gm.get_submodule(bn_of[name]) if name in bn_of else None
        q = QLayer(mod, bn=bn)
        lp, o = plan.for_layer(name), plan.override_for(name)
        keep = name in dense and (o is None or o.weight_sparsity is None)  # an override's sparsity wins
        do_prune = lp.weight_sparsity > 0 and not keep
        steps = []
        if do_prune:
            steps.append(lambda q, lp=lp: q.add_prune(sparsity=lp.weight_sparsity, **pkw))
        steps.append(lambda q, lp=lp: q.add_quantize(lp.weight_bits, bias_bits=lp.bias_bits, per_channel=lp.per_channel,
                                                     signed=True, **dict(qkw, rounding=lp.rounding)))
        for s in (steps if p_first else steps[::-1]):
            s(q)
        put_module(gm, name, q, model)
        if bn is not None:
            drop_node(gm, bn_of[name])
            put_module(gm, bn_of[name], None, model)
    for node in list(gm.graph.nodes):  # a BatchNorm left (no weight layer before it): trained as scale_shift
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), BN_TYPES) and selected(node.target):
            bn = gm.get_submodule(node.target)
            if bn.track_running_stats:
                put_module(gm, node.target, QScaleShift(bn, delay=sch.quant_delay or 0), model)
    if plan.quantize_activations:
        for name, mod in acts:
            if isinstance(mod, nn.LeakyReLU):  # train with the slope the hardware uses
                mod.negative_slope = fp.leaky_slope(float(mod.negative_slope))[0]
            if selected(name):
                put_module(gm, name, nn.Sequential(OrderedDict([("act", mod)] + act_ops(name, not ACTIVATIONS[type(mod)]))),
                     model)
        joins = join_nodes(gm, lambda n: _read_by_activation_alone(gm, n))
        changed |= bool(joins)
        for node in joins:
            name = f"{node.name}_quant"
            if not selected(name):
                continue
            gm.add_submodule(name, nn.Sequential(OrderedDict(act_ops(name, True))))
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        gm.graph.lint()
        gm.recompile()
    net = gm if changed else model
    if plan.input_bits is None:
        return net
    inq = quantize(bits=plan.input_bits, signed=plan.input_signed, **qkw)
    return nn.Sequential(OrderedDict([("input_quant", inq), ("net", net)]))






def check_overrides(plan: Plan, names: Sequence[str]) -> None:
    """Every per-layer override's pattern matches one of ``names`` (the module paths
    convert wraps), else a ConfigError naming the pattern and the paths."""
    from ..errors import ConfigError

    for o in plan.layers:
        if not any(fnmatch.fnmatchcase(n, o.match) for n in names):
            raise ConfigError(f"layers: pattern {o.match!r} matches no layer of the model (its layers: "
                              f"{', '.join(names)})")


def layer_settings(model: nn.Module, plan: Plan) -> list[dict]:
    """What :func:`convert` gives each layer of ``model`` (before conversion): one row per
    weight layer and activation (module path, kind, bits, sparsity, rounding, per-channel, and
    the override pattern that applied, or None), with the ``dense`` rule and the overrides
    resolved as convert resolves them. For the run's config.yaml and the train report."""
    gm, weights, acts = _graph_parts(model)
    wn = [n for n, _ in weights]
    dense = _dense_layers(plan, wn)
    dense_acts = [d for d in plan.dense if d not in ("first", "last")]
    rows = []
    for name in wn:
        lp, o = plan.for_layer(name), plan.override_for(name)
        keep = name in dense and (o is None or o.weight_sparsity is None)
        rows.append({"layer": name, "kind": "weights", "bits": lp.weight_bits,
                     "sparsity": 0.0 if keep else lp.weight_sparsity, "rounding": lp.rounding,
                     "per_channel": lp.per_channel, "override": o.match if o else None})
    for name in ([n for n, _ in acts] if plan.quantize_activations else []):
        lp, o = plan.for_layer(name), plan.override_for(name)
        keep = _matches(name, dense_acts) and (o is None or o.act_sparsity is None)
        rows.append({"layer": name, "kind": "activation", "bits": lp.act_bits,
                     "sparsity": 0.0 if keep else lp.act_sparsity, "rounding": lp.rounding,
                     "per_channel": None, "override": o.match if o else None})
    return rows


def qsp_modules(model: nn.Module):
    """(name, module) of every qsp operator in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, (QLayer, Quantizer, ActivationPruner)):
            yield name, m
