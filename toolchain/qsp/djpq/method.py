"""``qsp-train --method djpq``: DJPQ as a training method of :mod:`qsp.train.methods`.

Settings come from the train config: ``weight_bits`` (initial bits of every quantizer),
``input_bits`` (initial input bits), ``bias_bits`` (default 16) and ``rounding``; the DJPQ
keys (``lambda_bops``, ``bops_target``, ``pow2``, ``kl_weight``, ... of
:class:`~qsp.djpq.DJPQConfig`) from the config's ``djpq`` mapping when it has one
(``--djpq '{bops_target: 0.02, pow2: true}'``).

The trainer gives every parameter one learning rate; quantizer ranges/steps and gate
parameters are stored scaled (:func:`~qsp.djpq.convert.set_lr_scales`) so that, with Adam,
they move at ``quant_lr`` / ``gate_lr`` while the weights move at the trainer's ``lr``.
"""
from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError
from ..train.methods import TrainingMethod, register_method
from .bops import DJPQObjective, model_bops, fp32_bops
from .convert import DJPQConfig, convert, layer_chain, set_lr_scales
from .export import export_djpq, format_report


def config_from_train(cfg) -> DJPQConfig:
    base = {"init_bits": int(getattr(cfg, "weight_bits", 8) or 8),
            "input_bits": int(getattr(cfg, "input_bits", None) or 8),
            "bias_bits": int(getattr(cfg, "bias_bits", None) or 16),
            "rounding": getattr(cfg, "rounding", "convergent")}
    user = getattr(cfg, "djpq", None) or {}
    if isinstance(user, DJPQConfig):
        user = user.to_dict()
    if not isinstance(user, dict):
        raise ConfigError(f"djpq: must be a mapping of DJPQ settings, got {type(user).__name__}")
    return DJPQConfig().with_(**{**base, **user})


@register_method("djpq")
class DJPQMethod(TrainingMethod):
    """Differentiable joint pruning and mixed-precision quantization (Wang et al., ECCV
    2020): VIB channel gates + learned per-layer bitwidths, BOPs-regularised."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.dcfg = config_from_train(cfg)
        self.objective = DJPQObjective(self.dcfg)

    #: first step of the fine-tuning phase (``finetune``), None without one
    freeze_step: int | None = None
    frozen = False

    def prepare(self, model: nn.Module, cfg, total_steps: int) -> nn.Module:
        if self.dcfg.finetune > 0:
            self.freeze_step = int(round(total_steps * (1 - self.dcfg.finetune)))
            if self.freeze_step < 1:
                raise ConfigError(f"djpq.finetune={self.dcfg.finetune}: the run's {total_steps} steps leave no step "
                                  "to learn bits and gates before the fine-tuning phase")
        # a standalone BatchNorm learns with batch statistics until the fine-tuning phase (or half
        # of the run), then trains as the scale_shift node it is exported as
        bn_delay = self.freeze_step if self.freeze_step is not None else total_steps // 2
        m = convert(model, None, self.dcfg, bn_delay=bn_delay)
        lr = float(getattr(cfg, "lr", None) or 1e-3)
        opt = getattr(cfg, "optimizer", "adam")
        # Adam's step is ~lr for any gradient scale; SGD's scales with the square
        q, g = self.dcfg.quant_lr / lr, self.dcfg.gate_lr / lr
        if opt == "sgd":
            q, g = math.sqrt(q), math.sqrt(g)
        set_lr_scales(m, max(q, 1e-6), max(g, 1e-6))
        return m

    def before_step(self, model, step):
        if self.freeze_step is not None and step >= self.freeze_step and not self.frozen:
            freeze(_unwrap(model))
            self.frozen = True

    def extra_loss(self, model, step):
        if self.frozen:  # bits and gates are fixed: the regulariser has nothing left to move
            return None
        return self.objective(_unwrap(model))

    def status(self, model) -> dict:
        m = _unwrap(model)
        chain = layer_chain(m)
        if not chain or int(chain[0].layer.macs) == 0:
            return {}
        total, _ = model_bops(m, hard=True)
        gated = [e.layer for e in chain if e.layer.gate is not None]
        n = sum(L.out_channels for L in gated)
        kept = sum(len(L.kept()) for L in gated)
        return {"bops_ratio": float(total) / fp32_bops(m), "channel_sparsity": 1 - kept / n if n else 0.0,
                "lambda_bops": self.objective.controller.lam, "quant_on": True}

    def plan_dict(self) -> dict:
        return self.dcfg.to_dict()

    def export(self, model, *, task, model_ref, test_x, test_y, metrics, extra):
        b = export_djpq(_unwrap(model), task, model_ref, test_x, test_y, self.dcfg, metrics, extra)
        print(format_report(b.qspec.extra["djpq"]))
        return b


def freeze(model: nn.Module) -> None:
    """Start DJPQ's fine-tuning phase (``finetune``): every weight layer's gate, bitwidth and
    folded BatchNorm statistics, and every activation quantizer's format, stop changing; the
    training forward is then the deployed network and only the weights (and BatchNorm's
    gamma and beta) learn. The BOPs of the model are final from here on."""
    from .layers import DJPQLayer
    from .quant import LearnedQuantizer

    for m in model.modules():
        if isinstance(m, (DJPQLayer, LearnedQuantizer)):
            m.freeze()


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel
