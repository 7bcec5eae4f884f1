"""``qsp_hls_config.yaml``: the hls4ml configuration qsp-compile writes, and reads back.

qsp-compile writes ``OUT/qsp_hls_config.yaml`` (its name keeps it apart from hls4ml's own
``hls4ml_prj/hls4ml_config.yml``, which hls4ml writes into every project): hls4ml's keys
(``Backend``, ``IOType``, ``Part``, ``ClockPeriod``, ``InputShape``, ``HLSConfig`` with
``Model`` and per-layer ``LayerName`` entries named as qsp names the bundle's nodes), plus a
``qsp`` section (board, bundle). A user edits it the way hls4ml users do (a layer's
``ReuseFactor`` or ``Strategy``, ``IOType``, a ``Precision``) and rebuilds with
``qsp-compile BUNDLE --hls-config FILE``: the edited design is built and verified three ways
like any other; the bundle stays the reference, so a precision that changes a value fails
naming the first diverging layer and the first differing output.

:func:`read` checks the file before hls4ml sees it, naming the key: unknown keys or layer
names, values of the wrong type, precisions hls4ml cannot parse, strategies that cannot be
built here or on that layer, reuse factors hls4ml would silently replace, and edits to what
qsp's layout depends on (``InputShape``, ``ChannelsLastConversion``, ``TransposeOutputs``).
Keys and layers left out of the file keep qsp's derived values.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .. import hardware
from ..errors import ConfigError
from ..hardware import LayerStrategy
from .hls4ml_project import BACKENDS, IO_TYPES, CompileOptions, StrategyPlan

FILE_NAME = "qsp_hls_config.yaml"
TOP_KEYS = ("Backend", "IOType", "Part", "ClockPeriod", "InputShape", "HLSConfig", "qsp")
#: Model keys qsp's layout depends on: an edit is refused
FIXED_MODEL_KEYS = ("ChannelsLastConversion", "TransposeOutputs")


def header(bundle_path) -> str:
    return ("# qsp_hls_config.yaml, written by qsp-compile (not hls4ml's own hls4ml_prj/hls4ml_config.yml).\n"
            "# Edit ReuseFactor, Strategy, IOType, a Precision ..., then rebuild and verify with\n"
            f"#   qsp-compile {bundle_path or 'BUNDLE'} --hls-config THIS_FILE --out NEW_DIR\n")


def document(cfg: dict, opts: CompileOptions, input_shape, bundle_path=None) -> dict:
    """The file's content: hls4ml's keys and the ``qsp`` section."""
    d = {"Backend": opts.backend, "IOType": opts.io_type, "Part": opts.part, "ClockPeriod": opts.clock_period_ns,
         "InputShape": list(input_shape),
         "HLSConfig": {k: v for k, v in cfg.items() if k not in ("PytorchModel", "InputShape")}}
    d["qsp"] = {"board": getattr(opts.board, "name", None), "bundle": str(bundle_path) if bundle_path else None}
    return d


def write(path: Path, cfg: dict, opts: CompileOptions, input_shape, bundle_path=None) -> Path:
    path = Path(path)
    path.write_text(header(bundle_path) + yaml.safe_dump(document(cfg, opts, input_shape, bundle_path),
                                                         sort_keys=False))
    return path


def load(path) -> dict:
    """The file as a mapping (ConfigError for a missing file, bad YAML or a bad top level)."""
    from ..paths import read_yaml

    d = read_yaml(path, "--hls-config")
    if not isinstance(d, dict):
        raise ConfigError(f"--hls-config {path}: the top level must be a mapping (as qsp-compile wrote it)")
    bad = [k for k in d if k not in TOP_KEYS]
    if bad:
        raise ConfigError(f"--hls-config {path}: unknown key {bad[0]!r} (known: {', '.join(TOP_KEYS)})")
    return d


def options(d: dict, opts: CompileOptions, where: str = "--hls-config") -> CompileOptions:
    """``opts`` with the file's Backend, IOType, Part and ClockPeriod."""
    kw = {}
    if "Backend" in d:
        if d["Backend"] not in BACKENDS:
            raise ConfigError(f"{where}: Backend {d['Backend']!r}: choose one of {list(BACKENDS)}")
        kw["backend"] = d["Backend"]
    if "IOType" in d:
        if d["IOType"] not in IO_TYPES:
            raise ConfigError(f"{where}: IOType {d['IOType']!r}: choose one of {list(IO_TYPES)}")
        kw["io_type"] = d["IOType"]
    if d.get("Part") is not None:
        if not isinstance(d["Part"], str) or not d["Part"].strip():
            raise ConfigError(f"{where}: Part {d['Part']!r} is not an FPGA part name")
        kw["part"] = d["Part"]
    if d.get("ClockPeriod") is not None:
        c = d["ClockPeriod"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0:
            raise ConfigError(f"{where}: ClockPeriod {c!r} must be a number of ns > 0")
        kw["clock_period_ns"] = float(c)
    return replace(opts, **kw) if kw else opts


@dataclass
class Edited:
    """The configuration to build: qsp's derived one with the file's values."""

    cfg: dict
    opts: CompileOptions
    strategy_plan: StrategyPlan
    changes: list[str] = field(default_factory=list)  # "dense2.ReuseFactor: 1 -> 4"


def _precision(value, key: str) -> str:
    from hls4ml.backends.fpga.fpga_backend import FPGABackend

    if not isinstance(value, str):
        raise ConfigError(f"{key}: {value!r} is not a precision string such as ap_fixed<16,6>")
    try:
        t = FPGABackend.convert_precision_string(value)
    except Exception:  # hls4ml raises ValueError / IndexError for what it cannot parse
        t = None
    if t is None or not getattr(t, "width", 0) or t.width < 1:
        raise ConfigError(f"{key}: {value!r} is not a precision hls4ml can parse "
                          "(e.g. ap_fixed<16,6>, ap_ufixed<8,0,AP_RND_CONV,AP_SAT>)")
    return value


def _int(value, key: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: {value!r} must be an integer >= {low}")
    return value


def _bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} must be true or false")
    return value


def _strategy(value, key: str) -> str:
    canon = {s.lower(): s for s in hardware.STRATEGIES}
    if not isinstance(value, str) or value.lower() not in canon:
        raise ConfigError(f"{key}: {value!r} is not one of {list(hardware.STRATEGIES)}")
    return canon[value.lower()]


def _merge_precision(base: dict, new, key: str, short: str, changes: list) -> None:
    if not isinstance(new, dict):
        raise ConfigError(f"{key}: must be a mapping of precision names to types (as written)")
    for k, v in new.items():
        if k not in base:
            raise ConfigError(f"{key}.{k}: not a precision of this layer (its precisions: {', '.join(base)})")
        _precision(v, f"{key}.{k}")
        if v != base[k]:
            changes.append(f"{short}.{k}: {base[k]} -> {v}")
        base[k] = v


def apply(d: dict, derived: dict, bundle, plan, opts: CompileOptions, where: str = "--hls-config") -> Edited:
    """Check the file ``d`` (from :func:`load`) against qsp's derived config ``derived`` for
    ``bundle`` (the graph as built) and ``plan``, and return the config to build; a
    ConfigError names ``where`` and the key."""
    opts = options(d, opts, where)
    try:
        return _apply(d, derived, bundle, plan, opts, where)
    except ConfigError as e:
        if str(e).startswith(where):
            raise
        raise ConfigError(f"{where}: {e}") from None


def _apply(d: dict, derived: dict, bundle, plan, opts: CompileOptions, where: str) -> Edited:
    changes: list[str] = []
    if "InputShape" in d and list(d["InputShape"] or []) != list(plan.input_shape):
        raise ConfigError(f"{where}: InputShape {d['InputShape']!r} is not this bundle's input shape "
                          f"{list(plan.input_shape)} (a config written for another bundle?)")
    cfg = copy.deepcopy(derived)
    hc = d.get("HLSConfig") or {}
    if not isinstance(hc, dict):
        raise ConfigError(f"{where}: HLSConfig must be a mapping")
    for k in hc:
        if k not in ("Model", "LayerName"):
            raise ConfigError(f"{where}: unknown key HLSConfig.{k} (known: Model, LayerName)")
    for k, v in (hc.get("Model") or {}).items():
        key = f"HLSConfig.Model.{k}"
        if k not in cfg["Model"]:
            raise ConfigError(f"{where}: unknown key {key} (known: {', '.join(cfg['Model'])})")
        if k in FIXED_MODEL_KEYS:
            if v != cfg["Model"][k]:
                raise ConfigError(f"{where}: {key} must stay {cfg['Model'][k]!r}: qsp's emulation and test data "
                                  "use that layout")
            continue
        if k == "Precision":
            _merge_precision(cfg["Model"]["Precision"], v, key, "Model.Precision", changes)
            continue
        v = {"ReuseFactor": _int, "BramFactor": _int, "Strategy": _strategy, "TraceOutput": _bool}.get(
            k, lambda v, key: v)(v, key)
        if v != cfg["Model"][k]:
            changes.append(f"Model.{k}: {cfg['Model'][k]} -> {v}")
        cfg["Model"][k] = v

    facts = {f.name: f for f in hardware.layer_facts(bundle, list(cfg["LayerName"]))}
    layers = hc.get("LayerName") or {}
    if not isinstance(layers, dict):
        raise ConfigError(f"{where}: HLSConfig.LayerName must be a mapping of layer names to settings")
    for name, entry in layers.items():
        if name not in cfg["LayerName"]:
            raise ConfigError(f"{where}: HLSConfig.LayerName.{name}: no layer of that name in this bundle's "
                              f"design (layers: {', '.join(cfg['LayerName'])})")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: HLSConfig.LayerName.{name} must be a mapping of settings")
        base = cfg["LayerName"][name]
        for k, v in entry.items():
            key = f"HLSConfig.LayerName.{name}.{k}"
            if k not in base:
                raise ConfigError(f"{where}: unknown key {key}: layer {name!r} has {', '.join(base)}")
            if k == "Precision":
                _merge_precision(base["Precision"], v, key, f"{name}.Precision", changes)
                continue
            v = {"ReuseFactor": _int, "TableSize": _int, "Strategy": _strategy, "Trace": _bool}.get(
                k, lambda v, key: v)(v, key)
            if v != base[k]:
                changes.append(f"{name}.{k}: {base[k]} -> {v}")
            base[k] = v

    # strategies and reuse factors: buildable, valid for hls4ml on that layer (no silent change)
    out: dict[str, LayerStrategy] = {}
    for name, f in facts.items():
        e = cfg["LayerName"][name]
        if "Strategy" not in e:
            continue
        s, rf = e["Strategy"], int(e.get("ReuseFactor", 1))
        key = f"HLSConfig.LayerName.{name}"
        if f.latency_only and (s != "Latency" or rf != 1):
            raise ConfigError(f"{where}: {key}: only Strategy Latency, ReuseFactor 1 can be built ({f.latency_only})")
        why = hardware.unbuildable_reason(s, opts.board)
        if why:
            raise ConfigError(f"{where}: {key}.Strategy: {why.replace('--strategy ', '')}")
        if s == "resource_unrolled" and not hardware.unrolled_op(f.op):
            raise ConfigError(f"{where}: {key}.Strategy: resource_unrolled is Dense-only in hls4ml ({name} is {f.op})")
        valid = hardware.valid_reuse_factors(f.n_in, f.n_out, s, f.op, opts.io_type)
        if s in ("Resource", "resource_unrolled") and rf < 2:
            raise ConfigError(f"{where}: {key}.ReuseFactor: {s} needs a reuse factor >= 2 "
                              f"(valid here: {', '.join(map(str, [r for r in valid if r >= 2][:12]))})")
        if rf not in valid:
            near = sorted(valid, key=lambda r: abs(r - rf))[:6]
            raise ConfigError(f"{where}: {key}.ReuseFactor: {rf} is not one hls4ml accepts for this "
                              f"{f.n_in} x {f.n_out} {f.op} with {s} in {opts.io_type} (nearest valid: "
                              f"{', '.join(map(str, sorted(near)))}); hls4ml would silently use another")
        edited = any(c.startswith(f"{name}.Strategy") or c.startswith(f"{name}.ReuseFactor") for c in changes)
        out[name] = LayerStrategy(s, rf, f"edited in {where}" if edited else f"as in {where}")
    splan = StrategyPlan(out, "--hls-config", note="per-layer Strategy and ReuseFactor from the file")
    return Edited(cfg, opts, splan, changes)
