"""Deploy model + precision plan -> hls4ml project (config, convert, write, compile).

Strategy per Dense/Conv layer, by ``--strategy`` or automatically (``auto``):

* ``distributed_arithmetic`` when ``da4ml`` is importable (weights become a shift-add graph;
  a pruned weight costs nothing; bit-exact);
* otherwise a Dense layer with at least ``SPARSE_RU`` of its weights pruned, in io_parallel,
  gets ``resource_unrolled`` (one multiplier per nonzero weight only; needs ReuseFactor > 1,
  so the smallest valid reuse factor >= 2 is taken);
* every other layer: ``Latency`` (fully parallel), or ``Resource`` with the smallest valid
  reuse factor that brings the layer's multipliers under the board's DSP count when the
  board is known and the layer alone would exceed it.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .precision import PrecisionPlan

STRATEGIES = ("auto", "Latency", "Resource", "resource_unrolled", "distributed_arithmetic")
BACKENDS = ("Vitis", "Vivado")
IO_TYPES = ("io_parallel", "io_stream")
#: weight sparsity from which a Dense layer is given resource_unrolled (auto)
SPARSE_RU = 0.5
INPUT_NAME = "input_1"


def da4ml_available() -> bool:
    return importlib.util.find_spec("da4ml") is not None


@dataclass
class CompileOptions:
    backend: str = "Vitis"
    io_type: str = "io_parallel"
    strategy: str = "auto"
    part: str | None = None
    clock_period_ns: float | None = None
    dsp_budget: int | None = None  # the board's DSP count (auto strategy)
    project_name: str = "myproject"
    trace: bool = True  # compile per-layer trace hooks (for the mismatch report)
    #: build and run the standalone g++ testbench as the third verification path
    testbench: bool = True
    #: g++ -O level of the C simulation builds (results do not depend on it; see csim.py)
    cxx_opt_level: int = 1

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r}: choose one of {list(BACKENDS)}")
        if self.io_type not in IO_TYPES:
            raise ConfigError(f"--io-type {self.io_type!r}: choose one of {list(IO_TYPES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r}: choose one of {list(STRATEGIES)}")
        if self.strategy == "distributed_arithmetic" and not da4ml_available():
            raise ConfigError("--strategy distributed_arithmetic needs da4ml: pip install 'hls4ml[da]==1.3.0'")
        if self.cxx_opt_level not in (0, 1, 2, 3):
            raise ConfigError(f"C++ optimisation level {self.cxx_opt_level!r}: choose one of 0, 1, 2, 3")


@dataclass
class LayerStrategy:
    strategy: str
    reuse_factor: int = 1
    why: str = ""


def _valid_reuse(n_in: int, n_out: int, start: int) -> int:
    """Smallest reuse factor >= start that hls4ml accepts for an n_in x n_out Dense
    (it must divide n_in*n_out and satisfy hls4ml's in/out divisibility rule)."""
    total = n_in * n_out
    for rf in range(max(1, start), total + 1):
        if total % rf:
            continue
        if rf <= n_in and n_in % rf == 0 or rf >= n_in and rf % n_in == 0:
            return rf
    return total


def choose_strategies(bundle, plan: PrecisionPlan, opts: CompileOptions) -> dict[str, LayerStrategy]:
    nodes = {n.name: n for n in bundle.graph}
    out: dict[str, LayerStrategy] = {}
    for lp in plan.layers:
        if lp.op not in ("linear", "conv2d"):
            continue
        n = nodes[lp.name]
        w = bundle.weight(n.name)
        if lp.op == "linear":
            n_in, n_out = n.in_features, n.out_features
            mults = int(np.count_nonzero(w))
        else:
            n_in, n_out = int(np.prod(w.shape[1:])), n.out_channels
            mults = int(np.count_nonzero(w))
        sparsity = 1.0 - np.count_nonzero(w) / max(w.size, 1)
        s = opts.strategy
        if s == "auto":
            if da4ml_available():
                out[lp.name] = LayerStrategy("distributed_arithmetic", 1, "da4ml available: shift-add, zeros free")
            elif lp.op == "linear" and opts.io_type == "io_parallel" and sparsity >= SPARSE_RU:
                out[lp.name] = LayerStrategy("resource_unrolled", _valid_reuse(n_in, n_out, 2),
                                             f"{sparsity:.0%} pruned: multipliers only for nonzero weights")
            elif opts.dsp_budget is not None and mults > opts.dsp_budget:
                rf = _valid_reuse(n_in, n_out, -(-mults // opts.dsp_budget))
                out[lp.name] = LayerStrategy("Resource", rf, f"{mults} multipliers > {opts.dsp_budget} DSPs")
            else:
                out[lp.name] = LayerStrategy("Latency", 1, "fits: fully parallel")
        elif s == "resource_unrolled":
            if lp.op != "linear":
                out[lp.name] = LayerStrategy("Latency", 1, "resource_unrolled is Dense-only in hls4ml")
            else:
                out[lp.name] = LayerStrategy(s, _valid_reuse(n_in, n_out, 2), "--strategy")
        elif s == "Resource":
            out[lp.name] = LayerStrategy(s, _valid_reuse(n_in, n_out, 2), "--strategy")
        else:
            out[lp.name] = LayerStrategy(s, 1, "--strategy")
    return out


def hls_config(model, bundle, plan: PrecisionPlan, opts: CompileOptions, strategies=None) -> dict:
    """hls4ml's config dict (granularity 'name') with qsp's derived precisions."""
    import hls4ml

    from . import extension

    extension.register()
    shape = tuple(plan.input_shape)
    cfg = hls4ml.utils.config_from_pytorch_model(model, shape, granularity="name", backend=opts.backend,
                                                 default_precision="ap_fixed<16,6>",
                                                 channels_last_conversion="full", transpose_outputs=False)
    strategies = strategies if strategies is not None else choose_strategies(bundle, plan, opts)
    layers = cfg["LayerName"]
    inp_name = next(k for k in layers if k not in plan.by_name())
    layers[inp_name]["Precision"] = {"result": plan.input.result_type()}
    layers[inp_name]["Trace"] = opts.trace
    for lp in plan.layers:
        entry = layers.setdefault(lp.name, {})
        prec = {k: v for k, v in entry.get("Precision", {}).items() if k not in ("result", "weight", "bias", "accum")}
        prec.update(lp.hls_precision())
        entry["Precision"] = prec
        entry["Trace"] = opts.trace
        st = strategies.get(lp.name)
        if st is not None:
            entry["Strategy"] = st.strategy
            entry["ReuseFactor"] = st.reuse_factor
    cfg["Model"]["Strategy"] = "Latency"
    cfg["Model"]["ReuseFactor"] = 1
    cfg.pop("PytorchModel", None)
    return cfg


def yaml_config(cfg: dict, opts: CompileOptions, input_shape) -> dict:
    """The part of the config an hls4ml user reuses (as written to hls4ml_config.yaml)."""
    return {"Backend": opts.backend, "IOType": opts.io_type, "Part": opts.part,
            "ClockPeriod": opts.clock_period_ns, "InputShape": list(input_shape),
            "HLSConfig": {k: v for k, v in cfg.items() if k not in ("PytorchModel", "InputShape")}}


def convert(model, bundle, cfg: dict, opts: CompileOptions, out_dir: Path, backend: str | None = None,
            tb_input: Path | None = None, tb_output: Path | None = None, board: str | None = None):
    """Convert with hls4ml's PyTorch frontend and write the project (no C++ build)."""
    import hls4ml

    from . import extension

    extension.register()
    kw = dict(hls_config=cfg, output_dir=str(out_dir), backend=backend or opts.backend, io_type=opts.io_type,
              project_name=opts.project_name)
    if opts.part:
        kw["part"] = opts.part
    if opts.clock_period_ns:
        kw["clock_period"] = opts.clock_period_ns
    if tb_input is not None:
        kw["input_data_tb"] = str(tb_input)
        kw["output_data_tb"] = str(tb_output)
    if board is not None:
        kw["board"] = board
    hm = hls4ml.converters.convert_from_pytorch_model(model, **kw)
    hm.write()
    return hm


def clean_dir(d: Path) -> Path:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
