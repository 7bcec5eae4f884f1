"""``TrainConfig``: every key of a ``qsp-train`` run, typed and documented.

A run is configured by a YAML file (``--config run.yaml``) whose keys are the field names
below, and by command line flags (``--weight-bits 4`` sets ``weight_bits``) that override
it. Unknown keys and bad values raise :class:`~qsp.errors.ConfigError` naming the key.
Keys left ``None`` take the task's defaults (see :mod:`qsp.train.data`); the resolved
configuration is written next to the run as ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from ..errors import ConfigError
from ..nn import ORDERS, Plan

#: orders accepted in the config; "auto" tries both (qsp.train.order)
CONFIG_ORDERS = ORDERS + ("auto",)
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("cpu", "cuda")
#: plan keys of TrainConfig that map one to one onto qsp.nn.Plan fields
PLAN_KEYS = ("weight_bits", "act_bits", "bias_bits", "input_bits", "weight_sparsity", "act_sparsity",
             "order", "prune_start", "prune_interval", "prune_repetition", "quant_delay", "window",
             "quantiles", "rounding", "per_channel", "dense")


def _f(default, help, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """One ``qsp-train`` run. Field docs are in ``metadata['help']`` (shown by --help)."""

    # ---------------------------------------------------------------- what
    task: str = _f("digits", "dataset/task: digits, digits-rows, fashion-mnist, super-resolution, or custom "
                   "(your own .npz or IDX files via data_dir)")
    model: str | None = _f(None, "model: mlp, lenet, espcn, resnet8, mobilenet_v2_tiny, ds_cnn, kws_cnn1d, or "
                           "package.module:factory (default: mlp for digits/custom, kws_cnn1d for digits-rows, "
                           "lenet for fashion-mnist, espcn for super-resolution)")
    model_kwargs: dict = _f({}, "keyword arguments for the model factory (YAML mapping; on the command "
                            "line a YAML/JSON string such as '{hidden: [32, 16]}')")
    method: str = _f("qsparse", "training method: qsparse (joint pruning + quantization, the paper) or any "
                     "method registered in qsp.train.methods (djpq)")
    data_dir: str | None = _f(None, "where the data lives: a directory of IDX files (fashion-mnist, custom) or a "
                              ".npz with x_train, y_train, x_test, y_test (custom)")
    # ---------------------------------------------------------------- how long / how
    epochs: int | None = _f(None, "training epochs (default: digits 60, fashion-mnist 10, super-resolution 30, custom 20)")
    batch_size: int | None = _f(None, "mini-batch size (default: task dependent, 32-128)")
    lr: float | None = _f(None, "learning rate (default: task dependent)")
    lr_schedule: str = _f("cosine", "learning-rate schedule over all steps: constant or cosine")
    optimizer: str = _f("adam", "optimizer: adam, adamw or sgd (momentum 0.9)")
    weight_decay: float = _f(0.0, "weight decay")
    device: str = _f("cpu", "cpu or cuda")
    threads: int | None = _f(None, "CPU threads torch may use (default: 1 for digits and custom, whose tiny models run "
                             "fastest single-threaded; torch's default otherwise)")
    seed: int = _f(0, "random seed (model init, data split, shuffling): same seed, same result")
    train_limit: int | None = _f(None, "use only the first N training samples (quick trials)")
    test_limit: int | None = _f(None, "use only the first N validation and test samples (quick trials; the "
                                "reported metrics are then on that subset)")
    val_fraction: float = _f(0.1, "fraction of the training set held out for per-epoch validation")
    # ---------------------------------------------------------------- quantization / pruning plan
    weight_bits: int = _f(8, "bits of every weight")
    act_bits: int = _f(8, "bits of every activation (after each ReLU)")
    bias_bits: int | None = _f(None, "bits of biases (default: 2 x weight_bits, at most 24)")
    input_bits: int | None = _f(8, "bits of the input quantizer (null: do not quantize the input; the "
                                "bundle export needs it)")
    weight_sparsity: float = _f(0.5, "fraction of weights pruned in every pruned layer, in [0, 1)")
    act_sparsity: float = _f(0.5, "fraction of activation elements masked after every activation, in [0, 1)")
    order: str = _f("prune-then-quantize", "prune-then-quantize, quantize-then-prune, or auto (a short trial of "
                    "each, the higher performance density on the validation split wins; see docs/ordering.md)")
    order_trial_fraction: float = _f(0.3, "order auto: each trial trains this fraction of epochs (rounded, >= 1)")
    order_trial_epochs: int | None = _f(None, "order auto: epochs of each trial (overrides order_trial_fraction)")
    prune_start: int | None = _f(None, "step at which pruning starts (default: from order and total steps)")
    prune_interval: int | None = _f(None, "steps between pruning updates (default: derived)")
    prune_repetition: int | None = _f(None, "number of pruning updates (default: derived, at most 8)")
    quant_delay: int | None = _f(None, "step at which quantization turns on (default: derived from order)")
    window: int | None = _f(None, "steps of statistics before each quantizer/activation-mask decision (default: derived)")
    quantiles: list | None = _f(None, "saturation: clip to these [low, high] quantiles in the fraction-bit search "
                                "(null: no clipping)")
    rounding: str = _f("convergent", "rounding mode: convergent, nearest, floor or zero")
    per_channel: bool = _f(False, "one fraction-bit count per output channel of each weight")
    dense: list = _f(["first", "last"], "weight layers left unpruned (still quantized): first, last, or "
                     "fnmatch patterns of layer names")
    layers: list = _f([], "per-layer overrides, first match wins: a list of mappings, each 'match' (an fnmatch "
                      "pattern over module paths, e.g. 'features.0*') and any of weight_bits, act_bits, bias_bits, "
                      "weight_sparsity, act_sparsity, rounding, per_channel (YAML; on the command line e.g. "
                      "'[{match: \"3\", weight_bits: 4}]'); see docs/train.md")
    djpq: dict = _f({}, "settings of --method djpq (qsp.djpq.DJPQConfig keys, e.g. '{bops_target: 0.02, "
                    "pow2: true}' or '{lambda_bops: 2.0}'); other methods ignore it")
    init: str | None = _f(None, "start from trained float weights: 'float' trains the float model first "
                          "(init_epochs) and quantizes/prunes from it; or the path of a state_dict (.pt) of the "
                          "model; null: from the seeded random initialisation")
    init_epochs: int | None = _f(None, "epochs of the float model trained by init: float (default: epochs)")
    distill: float = _f(0.0, "knowledge distillation from the init model (needs init; classification tasks): "
                        "loss = (1 - distill) * task loss + distill * T^2 * KL(teacher || student) at temperature "
                        "T = distill_temperature; 0: off")
    distill_temperature: float = _f(4.0, "softmax temperature of the distillation loss (distill)")
    # ---------------------------------------------------------------- output
    out: str | None = _f(None, "run directory (default: runs/<task>-<timestamp>, with runs/latest pointing at it)")
    resume: bool = _f(False, "continue the run in `out` (default: runs/latest) from its last checkpoint")
    checkpoint_every: int = _f(200, "write a checkpoint every N steps (0: only at epoch ends)")
    float_baseline: bool | None = _f(None, "also train the float model for the same epochs to report the baseline "
                                     "(default: true for digits, false otherwise)")
    float_metric: float | None = _f(None, "the float baseline metric if known (skips training it)")
    max_test: int = _f(2000, "test inputs saved in the bundle's test_data.npz (digits: all of them)")
    max_steps: int | None = _f(None, "stop after this many steps in total (the run stays resumable; for tests and "
                               "interrupted runs)")
    progress: bool = _f(True, "show tqdm progress bars")

    # ================================================================== construction
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def help_of(cls, key: str) -> str:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}[key]

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of keys to values")
        known = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            key = str(k).replace("-", "_")
            if key not in known:
                close = [n for n in known if n.startswith(key[:4])] if len(key) >= 4 else []
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"{where}: unknown key {k!r}{hint}; see qsp-train --help for the keys")
            kw[key] = coerce(key, known[key].type, v)
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        return cls.from_dict(load_yaml(path), where=str(path))

    def with_(self, **kw) -> "TrainConfig":
        d = self.to_dict()
        d.update(kw)
        return TrainConfig.from_dict(d)

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ================================================================== checks
    def validate(self) -> "TrainConfig":
        from .data import TASKS
        from .methods import METHODS, find_method

        _choice("task", self.task, tuple(TASKS))
        if find_method(self.method) is None:
            raise ConfigError(f"method: {self.method!r} is not one of {', '.join(sorted(METHODS))}"
                              + (" (djpq is not available in this qsp yet)" if self.method == "djpq" else ""))
        _choice("device", self.device, DEVICES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("order", self.order, CONFIG_ORDERS)
        from .order import check_config

        check_config(self)
        if self.init is not None and self.init != "float":
            from ..paths import input_file

            input_file(self.init, "init ('float' or the path of a state_dict .pt)")  # a FIFO would hang torch.load
        if self.init_epochs is not None and self.init != "float":
            raise ConfigError("init_epochs: only used with init: float")
        if not (isinstance(self.distill, float) and 0.0 <= self.distill <= 1.0):
            raise ConfigError(f"distill: {self.distill!r} must be a weight in [0, 1] (0: no distillation)")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ConfigError(f"distill_temperature: {self.distill_temperature!r} must be > 0")
        if self.distill > 0:
            if self.init is None:
                raise ConfigError("distill: the teacher is the init model; set init (float, or a state_dict .pt)")
            if TASKS[self.task].loss != "cross_entropy":
                raise ConfigError(f"distill: task {self.task!r} is not a classification task (its loss is "
                                  f"{TASKS[self.task].loss}); distillation matches class probabilities")
        for k in ("epochs", "batch_size", "max_steps", "train_limit", "test_limit", "threads", "init_epochs"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"{k}: {v!r} must be >= 1")
        for k in ("checkpoint_every", "max_test"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k}: {getattr(self, k)!r} must be >= 0")
        for k in ("lr", "weight_decay", "float_metric"):  # nan/inf are never meant
            if getattr(self, k) is not None and not math.isfinite(getattr(self, k)):
                raise ConfigError(f"{k}: {getattr(self, k)!r} must be a finite number")
        if not 0 <= self.seed < 2 ** 32:  # numpy's seeds
            raise ConfigError(f"seed: {self.seed!r} must be an integer in [0, 2**32)")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr: {self.lr!r} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: {self.weight_decay!r} must be >= 0")
        if not 0.0 <= self.val_fraction < 0.9:
            raise ConfigError(f"val_fraction: {self.val_fraction!r} must be in [0, 0.9)")
        if self.quantiles is not None and len(self.quantiles) != 2:
            raise ConfigError(f"quantiles: {self.quantiles!r} must be a pair [low, high] or null")
        if self.model is not None and ":" not in self.model:
            from .models import MODELS
            _choice("model", self.model, tuple(MODELS), extra=" or package.module:factory")
        if self.model is not None and ":" in self.model:  # checked again (and imported) before it is called
            from .models import check_factory_module
            check_factory_module(self.model)
        if self.method == "djpq":  # its settings, checked before anything runs
            from ..djpq.method import config_from_train

            config_from_train(self)
        if self.layers and self.method != "qsparse":
            raise ConfigError(f"layers: per-layer overrides are for method qsparse; {self.method} chooses each "
                              "layer's bits itself (remove 'layers' or use --method qsparse)")
        try:  # Plan checks bits, sparsities, rounding, quantiles
            (dataclasses.replace(self, order=ORDERS[0]) if self.order == "auto" else self).plan(total_steps=1)
        except ValueError as e:
            msg = str(e)
            key = next((k for k in PLAN_KEYS + ("layers",) if msg.startswith(k)), "plan")
            raise ConfigError(msg if key == "layers" else f"{key}: {msg}") from None
        return self

    # ================================================================== derived
    def plan(self, total_steps: int) -> Plan:
        kw = {k: getattr(self, k) for k in PLAN_KEYS}
        kw["quantiles"] = tuple(self.quantiles) if self.quantiles is not None else None
        kw["dense"] = tuple(self.dense)
        kw["layers"] = tuple(self.layers)
        return Plan(total_steps=int(total_steps), **kw)


# ====================================================================== helpers
def load_yaml(path) -> dict:
    from ..paths import read_yaml

    return read_yaml(path, "config") or {}


def _layer_override(v) -> dict:
    """One entry of ``layers``: a mapping with 'match'; keys and values are checked by
    qsp.nn.LayerOverride (in validate), types here."""
    from ..nn import LAYER_KEYS

    if not isinstance(v, dict) or "match" not in v:
        raise ConfigError(f"layers: each entry must be a mapping with 'match' and settings, not {v!r}")
    out = {"match": coerce("layers: match", str, v["match"])}
    types_ = {"weight_bits": int, "act_bits": int, "bias_bits": int, "weight_sparsity": float,
              "act_sparsity": float, "rounding": str, "per_channel": bool}
    for k, x in v.items():
        if k == "match":
            continue
        if k not in LAYER_KEYS:
            raise ConfigError(f"layers[{out['match']!r}]: unknown key {k!r} (keys: match, {', '.join(LAYER_KEYS)})")
        out[k] = coerce(f"layers[{out['match']!r}].{k}", types_[k], x)
    return out


def _choice(key, value, allowed, extra=""):
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}{extra}")


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _resolve_type(tp):
    """The annotation as a real type (annotations are strings under __future__)."""
    if isinstance(tp, str):
        tp = eval(tp, {"list": list, "dict": dict, "int": int, "float": float, "str": str, "bool": bool,
                       "None": None, "Any": Any})
    return tp


def coerce(key: str, tp, value):
    """Check/convert ``value`` for field ``key`` of annotation ``tp``; ConfigError names the key."""
    tp = _resolve_type(tp)
    args = typing.get_args(tp)
    optional = type(None) in args or tp is None
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed")
    base = next((a for a in args if a is not type(None)), tp) if args and isinstance(tp, types.UnionType) else tp
    base = typing.get_origin(base) or base
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: {value!r} is not a boolean (true/false)")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: {value!r} is not an integer")
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not a number") from None
    if base is str:
        if isinstance(value, (dict, list, bool)):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return str(value)
    if base is list:
        if isinstance(value, str) and key == "layers":
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: {value!r} is not a YAML/JSON list ({e})") from None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a list")
        if key == "quantiles":
            try:
                return [float(v) for v in value]
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: {value!r} must be two numbers [low, high]") from None
        if key == "layers":
            return [_layer_override(v) for v in value]
        return [str(v) if key == "dense" else v for v in value]
    if base is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: {value!r} is not a YAML/JSON mapping ({e})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} is not a mapping")
        return {str(k): v for k, v in value.items()}
    return value


def resolve(cfg: TrainConfig, task_defaults) -> TrainConfig:
    """Fill the task-dependent ``None`` keys from ``task_defaults`` (a TaskDefaults)."""
    fill = {}
    for k in ("model", "epochs", "batch_size", "lr", "float_baseline", "threads"):
        if getattr(cfg, k) is None:
            fill[k] = getattr(task_defaults, k)
    return dataclasses.replace(cfg, **fill) if fill else cfg
