"""``qsp.djpq.convert``: turn any traceable model into a DJPQ model.

The model is captured with torch.fx like :func:`qsp.convert` (:mod:`qsp.nn.capture`:
functional activations become modules, inference identities are dropped), then

* the input gets a learned quantizer (``input_quant``);
* every Linear/Conv2d (depthwise and grouped convs included) becomes a :class:`DJPQLayer`
  (learned weight bits); a BatchNorm that reads only its output is folded into it
  (fold-aware training, see :mod:`qsp.djpq.layers`); a BatchNorm with no weight layer before
  it becomes a :class:`qsp.nn.QScaleShift` (batch statistics for ``bn_delay`` steps, then the
  16-bit ``scale_shift`` node the bundle holds), as :func:`qsp.convert` does;
* every ReLU/ReLU6/Hardtanh/LeakyReLU becomes ``Sequential(act, quant=LearnedQuantizer)``
  (unsigned after ReLU/ReLU6);
* an add, a concatenation or an average pooling whose value is not read by an activation
  alone gets a LearnedQuantizer of its own, and so does any other value a weight layer
  would read unquantized (e.g. MobileNetV2's linear bottleneck feeding the next block);
  it is unsigned when the value is provably non-negative, signed otherwise;
* VIB gates go on the layers the graph allows (:mod:`qsp.djpq.graph`: a single-reader
  per-channel path to exactly one ungrouped weight layer).

Returns ``Sequential(input_quant, net)`` where ``net`` is the user's module changed in place
when the captured graph calls exactly its modules, else the captured ``fx.GraphModule``
(which shares the user's parameters), as :func:`qsp.convert` does.
"""
from __future__ import annotations

import copy
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import fx, nn

from .. import fixedpoint as fp
from ..errors import ConfigError, UnsupportedLayerError
from ..nn.capture import (ADD_FUNCS, CAT_FUNCS, capture, drop_node, fresh_name, graph_changed, join_nodes,
                          modules_in_order, put_module, weight_bn_pairs)
from .graph import analyze, is_max_pool, is_quantizer, module_of, tensor_users, unit_kind
from ..nn.layers import QScaleShift
from .layers import BN_TYPES, DJPQLayer
from .quant import LearnedQuantizer

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class DJPQConfig:
    """Everything DJPQ learns with. ``bops_target`` (a ratio to the FP32 dense model, e.g.
    0.02 for 50x) switches the BOPs weight ``lambda_bops`` to a controller that drives the
    model's BOPs ratio to the target; otherwise ``lambda_bops`` is fixed."""

    lambda_bops: float = 1.0
    bops_target: float | None = None
    controller_gain: float = 0.05
    kl_weight: float = 1e-3
    gate_threshold: float = 1.0
    gate_init_logvar: float = -4.0
    gate_temperature: float = 1.0
    init_bits: int = 8
    input_bits: int = 8
    min_bits: int = 2
    max_bits: int = 16
    pow2: bool = False
    bias_bits: int = 16
    input_signed: bool | None = None
    rounding: str = fp.DEFAULT_ROUNDING
    act_init_quantile: float = 0.999
    quant_lr: float = 2e-2
    gate_lr: float = 5e-2
    finetune: float = 0.0

    def __post_init__(self):
        def bad(key, why):
            raise ConfigError(f"djpq.{key}={getattr(self, key)!r}: {why}")
        if self.lambda_bops < 0:
            bad("lambda_bops", "must be >= 0")
        if self.bops_target is not None and not 0 < self.bops_target <= 1:
            bad("bops_target", "must be a ratio to the FP32 dense BOPs in (0, 1], e.g. 0.02 for 50x")
        for k in ("kl_weight", "controller_gain", "quant_lr", "gate_lr"):
            if getattr(self, k) < 0:
                bad(k, "must be >= 0")
        for k in ("gate_threshold", "gate_temperature"):
            if getattr(self, k) <= 0:
                bad(k, "must be > 0")
        for k in ("init_bits", "input_bits", "min_bits", "max_bits", "bias_bits"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 24:
                bad(k, "must be an integer in [1, 24]")
        if self.min_bits > self.max_bits:
            bad("min_bits", f"must be <= max_bits ({self.max_bits})")
        if self.rounding not in fp.ROUNDING_MODES:
            bad("rounding", f"allowed: {sorted(fp.ROUNDING_MODES)}")
        if not 0 < self.act_init_quantile <= 1:
            bad("act_init_quantile", "must be in (0, 1]")
        if isinstance(self.finetune, bool) or not isinstance(self.finetune, (int, float)) or \
                not 0 <= self.finetune < 1:
            bad("finetune", "must be a fraction of the run in [0, 1) (e.g. 0.25: the last quarter of the steps)")

    def with_(self, **kw) -> "DJPQConfig":
        unknown = set(kw) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"djpq: unknown keys {sorted(unknown)}; known: {sorted(f.name for f in fields(self))}")
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    def quant_kw(self, init_bits=None) -> dict:
        return dict(init_bits=init_bits or self.init_bits, min_bits=self.min_bits, max_bits=self.max_bits,
                    pow2=self.pow2, rounding=self.rounding)

    def gate_kw(self) -> dict:
        return dict(threshold=self.gate_threshold, init_logvar=self.gate_init_logvar,
                    temperature=self.gate_temperature)


#: activation module -> its output is never negative (unsigned quantizer)
def _act_unsigned(m: nn.Module) -> bool | None:
    """True/False for an activation DJPQ quantizes (unsigned output or not), None otherwise."""
    if type(m) in (nn.ReLU, nn.ReLU6):
        return True
    if type(m) is nn.Hardtanh:
        return float(m.min_val) >= 0
    if type(m) is nn.LeakyReLU:
        return False
    return None








def _nonneg(gm: nn.Module, node) -> bool:
    """The value of ``node`` is provably never negative (an unsigned quantizer suffices)."""
    if not isinstance(node, fx.Node):
        return False
    m = module_of(gm, node)
    if isinstance(m, nn.Sequential) and "act" in m._modules:
        return bool(_act_unsigned(m.act))
    if isinstance(m, LearnedQuantizer):
        return int(m._signed) == 0
    if m is not None and _act_unsigned(m):
        return True
    if node.op in ("call_function", "call_method"):
        t = node.target
        if t in ADD_FUNCS or t in CAT_FUNCS:
            ins = node.args[0] if t in CAT_FUNCS else node.args[:2]
            return all(_nonneg(gm, a) for a in ins) and bool(ins)
    if unit_kind(gm, node) is not None and node.args:
        return _nonneg(gm, node.args[0])
    return False


def _read_by_activation_alone(gm, node) -> bool:
    users = tensor_users(node)
    if len(users) != 1 or users[0].op != "call_module":
        return False
    m = gm.get_submodule(users[0].target)
    return isinstance(m, nn.Sequential) and "act" in m._modules or _act_unsigned(m) is not None


def _unquantized_inputs(gm: fx.GraphModule) -> list:
    """Values a weight layer reads (through flatten, max pooling, identities) that no
    quantizer produced and that are not the graph input: they get a quantizer, so every
    weight layer multiplies fixed-point activations of learned width."""
    out = []
    for node in gm.graph.nodes:
        if not isinstance(module_of(gm, node), DJPQLayer):
            continue
        a = node.args[0]
        while isinstance(a, fx.Node) and a.op != "placeholder":
            m = module_of(gm, a)
            if m is not None and is_quantizer(m):
                break
            if unit_kind(gm, a) in ("same", "flatten") or is_max_pool(m, a):
                a = a.args[0]
                continue
            if a not in out:
                out.append(a)
            break
    return out


def _insert_quant(gm: fx.GraphModule, node, cfg: "DJPQConfig") -> None:
    name = fresh_name(gm, f"{node.name}_quant")
    q = LearnedQuantizer(not _nonneg(gm, node), init_quantile=cfg.act_init_quantile, **cfg.quant_kw())
    gm.add_submodule(name, q)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)


def convert(model: nn.Module, input_shape=None, cfg: DJPQConfig | None = None, *, bn_delay: int = 0,
            **overrides) -> nn.Sequential:
    """Wrap ``model`` for DJPQ training (see the module doc). With ``input_shape`` (no batch
    dim) each weight layer's dense MACs are recorded now, otherwise on the first forward
    pass."""
    cfg = cfg or DJPQConfig()
    if overrides:
        cfg = cfg.with_(**overrides)
    gm = capture(model)
    changed = graph_changed(gm, model)
    calls = list(modules_in_order(gm))
    uses = Counter(n.target for n, _ in calls)
    weights = [(n.target, m) for n, m in calls if isinstance(m, WEIGHT_LAYERS)]
    if not weights:
        raise ConfigError("djpq: the model has no Linear/Conv1d/Conv2d layer to quantize")
    for name, _ in weights:
        if uses[name] > 1:
            raise UnsupportedLayerError(f"layer {name!r} is called {uses[name]} times: DJPQ needs one call per "
                                        "weight layer (shared weights are not supported)")
    bn_of = weight_bn_pairs(gm)
    for name, mod in weights:
        bn = gm.get_submodule(bn_of[name]) if name in bn_of else None
        put_module(gm, name, DJPQLayer(mod, gate=False, bias_bits=cfg.bias_bits, gate_kw=cfg.gate_kw(),
                                 quant_kw=cfg.quant_kw(), name=name, bn=bn), model)
        if bn is not None:
            drop_node(gm, bn_of[name])
            put_module(gm, bn_of[name], None, model)
    for node, mod in calls:  # a BatchNorm left (no weight layer before it): trained as scale_shift
        if isinstance(mod, BN_TYPES) and mod.track_running_stats and uses[node.target] == 1 \
                and node.target not in bn_of.values():
            put_module(gm, node.target, QScaleShift(mod, delay=bn_delay), model)
    seen = set()
    for node, mod in calls:
        unsigned = _act_unsigned(mod)
        if unsigned is None:
            continue
        q = LearnedQuantizer(not unsigned, init_quantile=cfg.act_init_quantile, **cfg.quant_kw())
        if node.target not in seen and uses[node.target] == 1:
            put_module(gm, node.target, nn.Sequential(OrderedDict([("act", mod), ("quant", q)])), model)
        else:  # an activation module called more than once: each call gets its own quantizer
            name = fresh_name(gm, f"{node.name}_act")
            gm.add_submodule(name, nn.Sequential(OrderedDict([("act", copy.deepcopy(mod)), ("quant", q)])))
            node.target = name
            changed = True
        seen.add(node.target)
    joins = join_nodes(gm, lambda n: _read_by_activation_alone(gm, n))
    for node in joins:
        _insert_quant(gm, node, cfg)
    raw = _unquantized_inputs(gm)
    for node in raw:
        _insert_quant(gm, node, cfg)
    changed |= bool(joins) or bool(raw)
    gm.graph.lint()
    gm.recompile()
    net = gm if changed else model
    inq = LearnedQuantizer(cfg.input_signed, **cfg.quant_kw(cfg.input_bits))
    out = nn.Sequential(OrderedDict([("input_quant", inq), ("net", net)]))
    # the BOPs controller's lambda, saved with the model (0: not set yet)
    out.register_buffer("djpq_lambda", torch.zeros((), dtype=torch.float64))
    links = analyze(out)
    for r in links:
        L = out.get_submodule(r.name)
        L.set_gated(r.consumer is not None and L.groups == 1)
    out._djpq_links = links
    if input_shape is not None:
        record_macs(out, input_shape)
    return out


@torch.no_grad()
def record_macs(model: nn.Module, input_shape) -> None:
    """Record each DJPQLayer's dense MACs for one input of ``input_shape`` (an evaluation
    forward pass on zeros; a training forward records them too)."""
    was = model.training
    model.eval()
    try:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        model(torch.zeros((1,) + tuple(input_shape), device=dev))
    finally:
        model.train(was)


@dataclass
class ChainEntry:
    """A weight layer with the activation quantizer that feeds it (None: unquantized) and
    the gated layer whose outputs alone are its inputs (None: the graph input, an ungated
    layer, or a join)."""

    name: str
    layer: DJPQLayer
    act_quant: LearnedQuantizer | None
    prev: DJPQLayer | None


def layer_chain(model: nn.Module) -> list[ChainEntry]:
    """The weight layers in execution order, from a walk of the traced graph
    (:func:`qsp.djpq.graph.analyze`; cached on the model :func:`convert` returns)."""
    links = getattr(model, "_djpq_links", None)
    if links is None:
        links = analyze(model)
        try:
            model._djpq_links = links
        except AttributeError:  # pragma: no cover
            pass
    chain = []
    for r in links:
        L = model.get_submodule(r.name)
        aq = model.get_submodule(r.act_quant) if r.act_quant else None
        prev = model.get_submodule(r.producer) if r.producer else None
        chain.append(ChainEntry(r.name, L, aq, prev if prev is not None and prev.gate is not None else None))
    return chain


def param_groups(model: nn.Module, lr: float, cfg: DJPQConfig) -> list[dict]:
    """Optimizer groups: network weights at ``lr``, quantizer ranges/steps at
    ``cfg.quant_lr``, gate means/log-variances at ``cfg.gate_lr`` (no weight decay for
    either: it would bias the learned bits and gates)."""
    qp, gp, wp = [], [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("raw_log_d", "raw_log_qmax"):
            qp.append(p)
        elif leaf in ("raw_mu", "raw_logvar"):
            gp.append(p)
        else:
            wp.append(p)
    groups = [{"params": wp, "lr": lr}]
    if qp:
        groups.append({"params": qp, "lr": cfg.quant_lr, "weight_decay": 0.0})
    if gp:
        groups.append({"params": gp, "lr": cfg.gate_lr, "weight_decay": 0.0})
    return groups


def set_lr_scales(model: nn.Module, quant: float, gate: float) -> None:
    """Make quantizer and gate parameters move ``quant`` / ``gate`` times faster than the
    optimizer's learning rate (Adam), for trainers with a single parameter group."""
    from .gates import VIBGate

    for m in model.modules():
        if isinstance(m, LearnedQuantizer):
            m.set_param_scale(quant)
        elif isinstance(m, VIBGate):
            m.set_param_scale(gate)


def gated_channels(model) -> int:
    return sum(e.layer.gate.channels for e in layer_chain(model) if e.layer.gate is not None)

