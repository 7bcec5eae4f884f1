"""``qsp.djpq.convert``: turn a plain sequential model into a DJPQ model.

* the input gets a learned quantizer (``input_quant``);
* every Linear/Conv2d becomes a :class:`DJPQLayer` (learned weight bits; a VIB gate on its
  outputs, except the last weight layer, whose outputs are the task's outputs);
* every ReLU becomes ``Sequential(act=ReLU, quant=LearnedQuantizer(unsigned))``.

The layout matches :func:`qsp.convert`'s (``Sequential(input_quant, net)``) so the bundle
exporter walks it unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from .. import fixedpoint as fp
from ..errors import ConfigError
from .layers import DJPQLayer
from .quant import LearnedQuantizer

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


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


def _leaves(model: nn.Module, prefix=""):
    for key, child in model.named_children():
        name = f"{prefix}{key}"
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, name + ".")
        else:
            yield name, child, model, key


def convert(model: nn.Module, input_shape=None, cfg: DJPQConfig | None = None, **overrides) -> nn.Sequential:
    """Wrap ``model`` (a sequential model, modified in place) for DJPQ training. With
    ``input_shape`` (no batch dim) each weight layer's dense MACs are recorded now,
    otherwise on the first forward pass."""
    cfg = cfg or DJPQConfig()
    if overrides:
        cfg = cfg.with_(**overrides)
    leaves = list(_leaves(model))
    weight = [n for n, m, _, _ in leaves if isinstance(m, WEIGHT_LAYERS)]
    if not weight:
        raise ConfigError("djpq: the model has no Linear/Conv2d layer to quantize")
    for name, mod, parent, key in leaves:
        if isinstance(mod, WEIGHT_LAYERS):
            setattr(parent, key, DJPQLayer(mod, gate=name != weight[-1], bias_bits=cfg.bias_bits,
                                           gate_kw=cfg.gate_kw(), quant_kw=cfg.quant_kw(), name=name))
        elif isinstance(mod, nn.ReLU):
            aq = LearnedQuantizer(False, init_quantile=cfg.act_init_quantile, **cfg.quant_kw())
            setattr(parent, key, nn.Sequential(OrderedDict([("act", mod), ("quant", aq)])))
    inq = LearnedQuantizer(cfg.input_signed, **cfg.quant_kw(cfg.input_bits))
    out = nn.Sequential(OrderedDict([("input_quant", inq), ("net", model)]))
    # the BOPs controller's lambda, saved with the model (0: not set yet)
    out.register_buffer("djpq_lambda", torch.zeros((), dtype=torch.float64))
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
    """A weight layer with the activation quantizer that feeds it and the gated layer
    whose outputs are its inputs (None: the model input)."""

    name: str
    layer: DJPQLayer
    act_quant: LearnedQuantizer | None
    prev: DJPQLayer | None


def layer_chain(model: nn.Module) -> list[ChainEntry]:
    """The weight layers in execution order (module registration order of the
    sequential model)."""
    chain = []
    aq = prev = None
    for name, m in model.named_modules():
        if isinstance(m, DJPQLayer):
            chain.append(ChainEntry(name, m, aq, prev))
            prev = m
        elif isinstance(m, LearnedQuantizer) and not name.endswith(".wq") and name != "wq":
            aq = m
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

