"""Training methods: how a plain model becomes a quantized/pruned one, what it adds to the
loss, and how it is exported. ``--method NAME`` picks one from :data:`METHODS`.

A method is a :class:`TrainingMethod` subclass registered with :func:`register_method`::

    @register_method("mine")
    class Mine(TrainingMethod):
        def prepare(self, model, cfg, total_steps): ...
        def extra_loss(self, model, step): ...      # optional regulariser (tensor or None)
        def export(self, model, **kw): ...          # -> qsp.bundle.Bundle

The trainer calls ``prepare`` once on the freshly built model (before the optimizer is
made and before a checkpoint is loaded into it), ``before_step``, ``extra_loss`` and
``on_step_end`` every step, ``status`` for the progress bar and log, and ``export`` at the end.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError

METHODS: dict[str, type["TrainingMethod"]] = {}


def register_method(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def find_method(name: str) -> type["TrainingMethod"] | None:
    """The registered method ``name``; a method that lives in its own subpackage
    (``qsp.<name>``, e.g. ``qsp.djpq``) registers itself when that package is imported."""
    if name not in METHODS and isinstance(name, str) and name.isidentifier():
        try:
            importlib.import_module(f"qsp.{name}")
        except ImportError:
            pass
    return METHODS.get(name)


def get_method(name: str, cfg) -> "TrainingMethod":
    if find_method(name) is None:
        raise ConfigError(f"method: {name!r} is not one of {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg)


class TrainingMethod:
    """Base class: a float model trained as is (also the float baseline)."""

    name: ClassVar[str] = "float"
    #: False for the float baseline: nothing to export
    exports: ClassVar[bool] = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.plan = None
        #: per layer, what the plan gives it (qsp.nn.layer_settings), set by prepare
        self.layer_table: list[dict] = []

    def prepare(self, model: nn.Module, cfg, total_steps: int) -> nn.Module:
        return model

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        return None

    def check(self, model: nn.Module, input_shape) -> dict[str, int]:
        """Before training: the prepared model exports (every op supported, shapes fit);
        returns the count of each bundle op it will have. Raises naming the module or the
        source line of the first unsupported op."""
        if not self.exports:
            return {}
        from ..bundle.export import check_model

        ops: dict[str, int] = {}
        for n in check_model(model, input_shape):
            ops[n.op] = ops.get(n.op, 0) + 1
        return ops

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before the forward pass of training step ``step`` (also the first step
        after a resume), e.g. to switch to a later phase of the method."""

    def on_step_end(self, model: nn.Module, step: int) -> None:
        pass

    def status(self, model: nn.Module) -> dict:
        """Numbers for the progress bar and the log (plain floats/bools)."""
        return {}

    def plan_dict(self) -> dict:
        return {}

    def export(self, model: nn.Module, *, task, model_ref, test_x, test_y, metrics: dict, extra: dict):
        raise NotImplementedError(f"method {self.name!r} cannot export a bundle")


class FloatMethod(TrainingMethod):
    """The float model, unchanged (the baseline); not selectable with --method."""

    exports = False


@register_method("qsparse")
class QSparse(TrainingMethod):
    """Joint quantization and pruning of weights and activations (Zhang et al., the qsparse
    paper): :func:`qsp.convert` with the config's plan; Zhu-Gupta weight pruning, sliding
    window activation masks, delayed fraction-bit search; prune-then-quantize or
    quantize-then-prune."""

    def prepare(self, model, cfg, total_steps):
        from ..nn import convert

        from ..nn import layer_settings

        self.plan = cfg.plan(total_steps)
        check_schedule(self.plan)
        self.layer_table = layer_settings(model, self.plan)
        return convert(model, self.plan)

    def status(self, model):
        return qsparse_status(model)

    def plan_dict(self) -> dict:
        if self.plan is None:
            return {}
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.plan).items()}
        d["schedule"] = asdict(self.plan.schedule())
        return d

    def export(self, model, *, task, model_ref, test_x, test_y, metrics, extra):
        from ..bundle.export import make_bundle

        return make_bundle(model, task, model_ref, test_x, test_y, plan=self.plan_dict(), metrics=metrics,
                           method=self.name, extra=extra)


def check_schedule(plan) -> None:
    """The schedule must finish inside the run, or the bundle would not reach the configured
    sparsities (or could not be exported at all)."""
    sch, T = plan.schedule(), plan.total_steps
    if sch.quant_delay >= T:
        raise ConfigError(f"quant_delay: quantization would turn on at step {sch.quant_delay} but the run has only "
                          f"{T} steps; train longer (epochs) or set quant_delay / prune_* lower")
    if (plan.weight_sparsity > 0 or plan.act_sparsity > 0) and sch.prune_end > T:
        raise ConfigError(f"prune_interval: pruning would end at step {sch.prune_end} (start {sch.prune_start} + "
                          f"{sch.prune_repetition} x {sch.prune_interval}) but the run has only {T} steps")


@torch.no_grad()
def qsparse_status(model: nn.Module) -> dict:
    """Current weight sparsity (pruned layers' masks), activation sparsity (masks learned so
    far) and whether quantization is on (every quantizer past its delay)."""
    from ..nn import ActivationPruner, Quantizer, WeightPruner

    wz = wn = az = an = 0
    q_on, q_all = 0, 0
    for m in model.modules():
        if isinstance(m, WeightPruner):
            wz += int((m.mask == 0).sum())
            wn += m.mask.numel()
        elif isinstance(m, ActivationPruner) and m.mask.numel():
            az += int((m.mask == 0).sum())
            an += m.mask.numel()
        elif isinstance(m, Quantizer):
            q_all += 1
            q_on += int(m.is_on)
    return {"weight_sparsity": wz / wn if wn else 0.0, "act_sparsity": az / an if an else 0.0,
            "quant_on": bool(q_all) and q_on == q_all}


# methods that live in their own packages register themselves on import
from ..djpq import method as _djpq_method  # noqa: E402,F401
