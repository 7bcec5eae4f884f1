"""``--order auto``: train both orders briefly, keep the one with the higher performance density.

The qsparse paper found that the order in which pruning and quantization enter training
matters, and that the better order depends on the task (prune-then-quantize for
classification, quantize-then-prune for super resolution and GANs). ``order: auto``
decides per run instead of asking the user:

1. **Trials.** For each order (prune-then-quantize first, then quantize-then-prune) a
   short training from scratch with the run's seed: ``order_trial_epochs`` epochs, or
   ``order_trial_fraction`` of ``epochs`` (rounded, at least 1, at most ``epochs``). The
   schedule of a trial is the run's schedule compressed to the trial's steps (derived
   steps follow from the trial's length; explicitly set ``prune_start``,
   ``prune_interval``, ``quant_delay`` and ``window`` are scaled by trial steps / run
   steps; ``prune_repetition`` is a count and stays). Trials write no checkpoints and
   ignore ``max_steps``.
2. **Measure.** Each trained trial model is evaluated on the *validation* split (never the
   test split) and exported in memory to get its footprint (:func:`qsp.bundle.footprint`:
   weight bits x nonzero weights + activation bits x unmasked elements for one input).
   Performance density PD = validation metric / footprint in Mb.
3. **Select** (:func:`select_order`, a pure function): the higher PD wins. PDs within a
   relative ``1e-9`` of each other are a tie, broken by the higher validation metric, then
   by the preference order :data:`TIE_PREFERENCE` (prune-then-quantize: qsp's default order
   and the paper's choice for classification). A NaN PD loses to any number.
4. **Final run.** The winner is trained for the full ``epochs`` from scratch with the same
   seed, i.e. exactly the run ``--order <winner>`` would give (the trial weights are
   discarded: a trial's compressed schedule is not a prefix of the full schedule).

Both trials, their metrics, footprints and PDs, the rule that decided and the chosen order
are logged, written to ``OUT/order_auto.json`` and recorded in the bundle as
``qspec.extra["order_auto"]``; the bundle's plan (and ``config.yaml``) carry the winner.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..bundle import ModelRef, TaskInfo
from ..bundle.footprint import footprint
from ..errors import ConfigError
from . import distributed as dd

#: methods whose training depends on ``order`` (the ones ``auto`` can choose for)
ORDER_METHODS = ("qsparse",)
#: on a tie in PD and metric, the first of these present wins
TIE_PREFERENCE = ("prune-then-quantize", "quantize-then-prune")
#: relative tolerance under which two PDs (or two metrics) count as equal
TIE_RTOL = 1e-9
#: schedule keys given in steps: scaled to a trial's length when set explicitly
STEP_KEYS = ("prune_start", "prune_interval", "quant_delay", "window")
SHORT = {"prune-then-quantize": "P->Q", "quantize-then-prune": "Q->P"}
RECORD = "order_auto.json"


# ====================================================================== results and the choice
@dataclass(frozen=True)
class TrialResult:
    """One trial: ``metric`` on the validation split, ``megabits`` of weights + activations."""

    order: str
    metric: float
    megabits: float
    metric_name: str = "metric"
    epochs: int = 0
    steps: int = 0
    weight_bits: int = 0
    activation_bits: int = 0
    seconds: float = 0.0

    @property
    def performance_density(self) -> float:
        if not self.megabits > 0 or math.isnan(self.metric):
            return float("nan")
        return float(self.metric) / float(self.megabits)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["performance_density"] = self.performance_density
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrialResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class OrderChoice:
    """The selected order, the rule that decided (``performance_density``, ``metric`` or
    ``preference``) and a sentence saying why."""

    order: str
    rule: str
    reason: str
    trials: tuple[TrialResult, ...] = field(default_factory=tuple)

    def trial(self, order: str) -> TrialResult:
        return next(t for t in self.trials if t.order == order)

    def to_dict(self) -> dict:
        return {"chosen": self.order, "rule": self.rule, "reason": self.reason, "split": "validation",
                "criterion": "performance density = validation metric / (weight + activation footprint, Mb)",
                "tie_break": f"PDs within {TIE_RTOL:g} relative: higher validation metric, then "
                             + " over ".join(TIE_PREFERENCE),
                "trials": [t.to_dict() for t in self.trials]}

    @classmethod
    def from_dict(cls, d: dict) -> "OrderChoice":
        return cls(d["chosen"], d["rule"], d["reason"], tuple(TrialResult.from_dict(t) for t in d["trials"]))

    def lines(self) -> list[str]:
        """The log lines: one per trial, then the verdict."""
        out = []
        for t in self.trials:
            out.append(f"order auto: trial {t.order:<19} ({SHORT.get(t.order, t.order)}): val {t.metric_name} "
                       f"{t.metric:.4f}, footprint {t.megabits:.6f} Mb, PD {t.performance_density:.4f} "
                       f"{t.metric_name}/Mb ({t.epochs} epoch{'s' if t.epochs != 1 else ''}, {t.steps} steps, {t.seconds:.1f} s)")
        out.append(f"order auto: chose {self.order} by {self.rule.replace('_', ' ')}: {self.reason}")
        return out


def _close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def _best(trials: Sequence[TrialResult], key: Callable[[TrialResult], float], rtol: float) -> list[TrialResult]:
    """The trials whose key equals the largest (within rtol); NaN keys lose to numbers."""
    vals = [key(t) for t in trials]
    finite = [v for v in vals if not math.isnan(v)]
    if not finite:
        return list(trials)
    top = max(finite)
    return [t for t, v in zip(trials, vals) if not math.isnan(v) and _close(v, top, rtol)]


def select_order(trials: Sequence[TrialResult], rtol: float = TIE_RTOL,
                 preference: Sequence[str] = TIE_PREFERENCE) -> OrderChoice:
    """Pick the order of the higher performance density; ties (within ``rtol``) go to the
    higher metric, then to the first order in ``preference``. Pure: same trials, same choice."""
    trials = tuple(trials)
    if not trials:
        raise ValueError("select_order: no trial results")
    orders = [t.order for t in trials]
    if len(set(orders)) != len(orders):
        raise ValueError(f"select_order: duplicate orders in {orders}")
    unknown = [o for o in orders if o not in preference]
    if unknown:
        raise ValueError(f"select_order: unknown order(s) {unknown}; expected {tuple(preference)}")
    by_pd = _best(trials, lambda t: t.performance_density, rtol)

    def fmt(t):
        return f"{t.order} PD {t.performance_density:.4f}"

    others = [t for t in trials if t not in by_pd]
    if len(by_pd) == 1:
        w = by_pd[0]
        rest = ", ".join(f"{fmt(t)}" for t in others)
        rel = [(w.performance_density / t.performance_density - 1.0) * 100 for t in others
               if t.performance_density > 0 and not math.isnan(t.performance_density)]
        gain = f" (+{min(rel):.2f} %)" if rel else ""
        return OrderChoice(w.order, "performance_density",
                           f"{fmt(w)} {w.metric_name}/Mb > {rest}{gain} on the validation split", trials)
    tied = " = ".join(fmt(t) for t in by_pd)
    by_metric = _best(by_pd, lambda t: t.metric, rtol)
    if len(by_metric) == 1:
        w = by_metric[0]
        rest = ", ".join(f"{t.order} {t.metric:.4f}" for t in by_pd if t is not w)
        return OrderChoice(w.order, "metric", f"PD tie ({tied}); higher validation {w.metric_name}: "
                                              f"{w.order} {w.metric:.4f} > {rest}", trials)
    w = min(by_metric, key=lambda t: list(preference).index(t.order))
    return OrderChoice(w.order, "preference", f"PD tie ({tied}) and equal validation {w.metric_name} "
                                              f"({w.metric:.4f}); {w.order} is preferred on a tie", trials)


# ====================================================================== configuration
def check_config(cfg) -> None:
    """Checks of the order-auto keys (called by TrainConfig.validate)."""
    if not 0.0 < cfg.order_trial_fraction <= 1.0:
        raise ConfigError(f"order_trial_fraction: {cfg.order_trial_fraction!r} must be in (0, 1]")
    if cfg.order_trial_epochs is not None and cfg.order_trial_epochs < 1:
        raise ConfigError(f"order_trial_epochs: {cfg.order_trial_epochs!r} must be >= 1")
    if cfg.order != "auto":
        return
    if cfg.method not in ORDER_METHODS:
        raise ConfigError(f"order: auto chooses between the orders of {', '.join(ORDER_METHODS)}; method "
                          f"{cfg.method!r} does not use an order (use --order prune-then-quantize)")
    if not cfg.val_fraction > 0:
        raise ConfigError("val_fraction: order auto compares the trials on the validation split; "
                          "val_fraction must be > 0")


def trial_epochs(cfg) -> int:
    """Epochs of each trial: order_trial_epochs, or order_trial_fraction x epochs (>= 1, <= epochs)."""
    n = cfg.order_trial_epochs if cfg.order_trial_epochs is not None else round(cfg.order_trial_fraction * cfg.epochs)
    return max(1, min(int(cfg.epochs), int(n)))


def trial_config(cfg, order: str, epochs: int):
    """The configuration of one trial: ``order``, ``epochs``, no checkpoints, no max_steps,
    explicit step keys scaled to the trial's length."""
    f = epochs / cfg.epochs
    scaled = {k: (0 if v == 0 else max(1, round(v * f))) for k in STEP_KEYS
              if (v := getattr(cfg, k)) is not None}
    return dataclasses.replace(cfg, order=order, epochs=epochs, max_steps=None, checkpoint_every=0, resume=False,
                               float_baseline=False, **scaled)


# ====================================================================== trials
def run_trial(cfg, order: str, epochs: int, spec, data, factory: str, kwargs: dict) -> TrialResult:
    """Train ``order`` for ``epochs`` (from scratch, seed ``cfg.seed``); validation metric
    and footprint of the trained model."""
    from .loop import Trainer
    from .methods import get_method

    tcfg = trial_config(cfg, order, epochs)
    method = get_method(tcfg.method, tcfg)
    tr = Trainer(tcfg, spec, data, method, factory, kwargs, run_dir=None, tag=f"trial {SHORT[order]}")
    try:
        tr.build()
    except ConfigError as e:  # the schedule does not fit the trial
        raise ConfigError(f"order_trial_epochs: the {order} trial ({epochs} epoch(s), {tr.total_steps} steps) is too "
                          f"short for its schedule; give the trials more epochs (order_trial_epochs / "
                          f"order_trial_fraction) or train longer. ({e})") from None
    res = tr.fit()
    val = tr.evaluate(data.x_val, data.y_val, data.val_groups)
    fp = footprint(export_in_memory(tr, res.model, method, spec, data, factory, kwargs))
    return TrialResult(order, float(val), fp.megabits, spec.metric, epochs, res.steps, fp.weight_bits,
                       fp.activation_bits, round(res.seconds, 2))


def export_in_memory(trainer, model, method, spec, data, factory, kwargs):
    """The trained model as a (not written) bundle, for its footprint; no test data in it."""
    with torch.no_grad():
        model.eval()
        out_shape = list(model(torch.from_numpy(data.x_val[:1]).to(trainer.device)).shape[1:])
    info = TaskInfo(spec.name, spec.kind, spec.metric, data.input_shape, out_shape,
                    data.info.get("num_classes") if spec.kind == "classification" else None)
    return method.export(model, task=info, model_ref=ModelRef(factory, kwargs), test_x=None, test_y=None,
                         metrics={}, extra={})


def auto_order(cfg, spec, data, out: Path, echo=print):
    """Run both trials, select, log and record. Returns (the configuration with
    ``order`` = the winner, the :class:`OrderChoice`)."""
    from .models import resolve_model

    check_config(cfg)
    if len(data.x_val) == 0:
        raise ConfigError("val_fraction: order auto needs a validation split, and this one is empty")
    factory, kwargs = resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info)
    n = trial_epochs(cfg)
    echo(f"order auto: one trial per order, {n} of {cfg.epochs} epochs each from scratch (seed {cfg.seed}); "
         f"the higher performance density ({spec.metric} on {len(data.x_val)} validation samples / footprint Mb) "
         f"wins, then the winner trains for all {cfg.epochs} epochs")
    trials = []
    for order in TIE_PREFERENCE:
        t0 = time.perf_counter()
        t = run_trial(cfg, order, n, spec, data, factory, kwargs)
        trials.append(dataclasses.replace(t, seconds=round(time.perf_counter() - t0, 2)))
        echo(OrderChoice(order, "", "", (trials[-1],)).lines()[0])
    choice = select_order(trials)
    record = dict(choice.to_dict(), trial_epochs=n, epochs=cfg.epochs, seed=cfg.seed,
                  final="the chosen order retrained for all epochs from scratch with the same seed")
    record = dd.broadcast_object(record)  # torchrun: every rank follows rank 0's choice
    choice = OrderChoice.from_dict(record)
    echo(choice.lines()[-1])
    if dd.is_main():
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / RECORD).write_text(json.dumps(record, indent=1))
    echo(f"order auto: training {choice.order} for {cfg.epochs} epochs")
    return dataclasses.replace(cfg, order=choice.order), record


def recorded_choice(out: Path) -> dict | None:
    """The record an earlier ``order: auto`` run left in ``out`` (for --resume)."""
    p = Path(out) / RECORD
    return json.loads(p.read_text()) if p.is_file() else None


def summary(record: dict) -> str:
    """The end-of-run lines naming both trials, their PDs and the choice."""
    return "\n".join(OrderChoice.from_dict(record).lines())
