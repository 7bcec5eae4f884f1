"""Deploy model + precision plan -> hls4ml project (config, convert, write, compile).

Strategy per Dense/Conv layer, by ``--strategy`` or automatically (``auto``), first by the
fixed rule :func:`qsp.hardware.rule_strategies` (shared with the estimator, whose default
plan it is; :func:`rule_strategies` here applies it to the bundle with the compile options):
depthwise / grouped conv Latency; ``distributed_arithmetic`` when ``da4ml`` is importable;
a Dense layer with at least ``qsp.hardware.SPARSE_RU`` of its weights pruned, in io_parallel and not on a
board whose VivadoAccelerator project is written, ``resource_unrolled``; ``Resource`` when
the layer's multipliers exceed the board's DSPs; else ``Latency``. Reuse factors always come
from :func:`qsp.hardware.smallest_valid_reuse` (the values hls4ml accepts).

Then, with a board, by its budget (:func:`plan_strategies`): the estimator
(:func:`qsp.estimate.fit_plan`) checks the rule's plan on the graph as built; if it does not
fit and the estimator has a plan that does, that plan is compiled; if none fits, the rule's
plan is compiled with a warning.

Import order: compile imports only from the shared base (:mod:`qsp.fixedpoint`,
:mod:`qsp.bundle`, :mod:`qsp.ops`, :mod:`qsp.hardware`, :mod:`qsp.boards`), never from a
later stage. The board check needs the estimator's resource model (a later stage), so it is
passed in: :attr:`CompileOptions.fit` is a :data:`qsp.hardware.BoardCheck` (qsp-compile's
command line, the composition of the stages, passes :func:`qsp.estimate.fit_plan`); with
none, the rule's plan is compiled unchecked. The estimator imports nothing of compile.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import hardware
from ..errors import ConfigError, QspError, ToolError
from ..hardware import SPARSE_RU, LayerStrategy, da4ml_available  # noqa: F401 - re-exported
from .precision import PrecisionPlan

STRATEGIES = ("auto",) + hardware.STRATEGIES
BACKENDS = ("Vitis", "Vivado")
IO_TYPES = ("io_parallel", "io_stream")
INPUT_NAME = "input_1"


@dataclass
class CompileOptions:
    backend: str = "Vitis"
    io_type: str = "io_parallel"
    strategy: str = "auto"
    part: str | None = None
    clock_period_ns: float | None = None
    dsp_budget: int | None = None  # the board's DSP count (auto strategy); board.dsp when a board is given
    #: the target board (a qsp.boards.Board or its name): --strategy auto then picks a plan
    #: the estimator says fits it (see plan_strategies)
    board: object = None
    project_name: str = "myproject"
    trace: bool = True  # compile per-layer trace hooks (for the mismatch report)
    #: build and run the standalone g++ testbench as the third verification path
    testbench: bool = True
    #: g++ -O level of the C simulation builds (results do not depend on it; see csim.py)
    cxx_opt_level: int = 1
    #: the board check of ``--strategy auto`` (a :data:`qsp.hardware.BoardCheck`, e.g.
    #: :func:`qsp.estimate.fit_plan`, given by the caller that composes the stages); None:
    #: the rule's plan is compiled without a check against the board's budget
    fit: object = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r}: choose one of {list(BACKENDS)}")
        if self.io_type not in IO_TYPES:
            raise ConfigError(f"--io-type {self.io_type!r}: choose one of {list(IO_TYPES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r}: choose one of {list(STRATEGIES)}")
        if isinstance(self.board, str):
            from ..boards import get_board

            self.board = get_board(self.board)
        if self.board is not None and self.dsp_budget is None:
            self.dsp_budget = self.board.dsp
        why = hardware.unbuildable_reason(self.strategy, self.board)
        if why:  # refused up front, before hls4ml is called (tests/test_board_matrix.py)
            raise ConfigError(why)
        if self.cxx_opt_level not in (0, 1, 2, 3):
            raise ConfigError(f"C++ optimisation level {self.cxx_opt_level!r}: choose one of 0, 1, 2, 3")


    @property
    def accelerator(self) -> bool:
        """Whether the board's VivadoAccelerator project is written too (its backend
        cannot build resource_unrolled in hls4ml 1.3.0)."""
        return hardware.accelerator(self.board)


def _valid_reuse(n_in: int, n_out: int, start: int, strategy: str, op: str, io_type: str) -> int:
    """Smallest reuse factor >= start that hls4ml accepts for this kernel and strategy
    (:func:`qsp.hardware.smallest_valid_reuse`)."""
    return hardware.smallest_valid_reuse(n_in, n_out, max(1, start), strategy, op, io_type)


def rule_strategies(bundle, plan: PrecisionPlan, opts: CompileOptions) -> dict[str, LayerStrategy]:
    """The fixed per-layer rule (``--strategy auto``, before the board check) or the forced
    ``--strategy``: :func:`qsp.hardware.rule_strategies` on ``plan``'s Dense/Conv layers of
    ``bundle`` with ``opts``' board, io type, strategy and DSP budget."""
    facts = hardware.layer_facts(bundle, [lp.name for lp in plan.layers])
    return hardware.rule_strategies(facts, opts.board, opts.io_type, opts.strategy, opts.dsp_budget)


@dataclass
class StrategyPlan:
    """The per-layer strategies qsp-compile builds, and what the estimator says of them."""

    layers: dict[str, LayerStrategy]
    source: str  # "rule" | "estimator" | "--strategy"
    board: str | None = None
    verdict: str | None = None  # the estimator's verdict for ``layers`` on ``board``
    binding: str | None = None
    utilization: float | None = None  # of the binding resource, for ``layers``
    note: str = ""  # why this plan (one line)
    warning: str | None = None  # set when no plan the estimator knows fits the board

    def lines(self) -> list[str]:
        head = f"strategy ({self.source}"
        head += f", {self.board}: {self.verdict}, binding {self.binding} {self.utilization:.1%})" if self.board else ")"
        out = [head + (f": {self.note}" if self.note else "")]
        for name, s in self.layers.items():
            out.append(f"  {name:<10} {s.strategy:<22} ReuseFactor {s.reuse_factor:<5} {s.why}")
        return out


def buildable_strategies(opts: CompileOptions | None = None) -> tuple[str, ...]:
    """The strategies qsp-compile can build here (distributed_arithmetic only with da4ml;
    no resource_unrolled where the board's VivadoAccelerator project is written):
    :func:`qsp.hardware.buildable_strategies`."""
    return hardware.buildable_strategies(opts.board if opts is not None else None)


def _usage(be, plan) -> tuple[str, float]:
    u = plan.utilization(be.board)
    k = max(u, key=u.get)
    return k, u[k]


def plan_strategies(bundle, plan: PrecisionPlan, opts: CompileOptions) -> StrategyPlan:
    """Strategies for ``bundle`` (the graph as it will be built, after qsp's transforms).

    ``--strategy auto`` with a board: the fixed rule's plan is checked with ``opts.fit``
    (the estimator's :func:`qsp.estimate.fit_plan`, passed in by the caller); when it does not fit the board and the estimator has a
    plan that does ("fits with another strategy"), that plan (per-layer strategy and reuse
    factor, valid for hls4ml) is taken instead; when nothing fits, the rule's plan is kept
    and ``warning`` names the binding resource and the board. The check models the
    IOType being compiled (``opts.io_type``, passed to the board check as ``io_type``):
    hls4ml's io_parallel or io_stream design."""
    rule = rule_strategies(bundle, plan, opts)
    if opts.strategy != "auto":
        return StrategyPlan(rule, "--strategy")
    if opts.board is None or not rule:
        return StrategyPlan(rule, "rule")
    if opts.fit is None:
        return StrategyPlan(rule, "rule", note="not checked against the board (no board check given)")
    be = opts.fit(bundle, opts.board, rule, available=buildable_strategies(opts), io_type=opts.io_type)
    name = be.board.name
    k, u = _usage(be, be.plan)
    if be.verdict == "fits":
        return StrategyPlan(rule, "rule", name, "fits", k, u, "the rule's plan fits the board")
    if be.verdict == "fits with another strategy":
        alt = be.alternative
        ka, ua = _usage(be, alt)
        why = f"rule's plan needs {k} {u:.0%}"
        layers = {n: LayerStrategy(s.strategy, s.reuse_factor, f"{why}: estimator's '{alt.label}'")
                  for n, s in alt.strategies.items()}
        return StrategyPlan(layers, "estimator", name, "fits", ka, ua,
                            f"the rule's plan needs {k} {u:.1%} of {name}; "
                            f"the estimator's plan '{alt.label}' fits")
    least = be.alternative or be.plan
    kl, ul = _usage(be, least)
    warn = (f"no strategy plan the estimator knows fits {name}: the rule's plan needs {k} {u:.1%}, "
            f"the least bad ('{least.label}') {kl} {ul:.1%}; compiling the rule's plan anyway "
            "(C simulation is still valid)")
    return StrategyPlan(rule, "rule", name, "does not fit", k, u, "", warn)


def choose_strategies(bundle, plan: PrecisionPlan, opts: CompileOptions) -> dict[str, LayerStrategy]:
    """Per-layer strategies (see :func:`plan_strategies`)."""
    return plan_strategies(bundle, plan, opts).layers


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
    be = kw["backend"]
    if be == "VivadoAccelerator":
        _check_accelerator_config(cfg, board)
    try:
        hm = hls4ml.converters.convert_from_pytorch_model(model, **kw)
        hm.write()
    except QspError:
        raise
    except Exception as e:  # hls4ml raises bare Exceptions; never show its traceback as qsp's answer
        strategies = sorted({str(v.get("Strategy", "Latency")) for v in cfg.get("LayerName", {}).values()
                             if isinstance(v, dict) and "Strategy" in v})
        raise ToolError(f"hls4ml 1.3.0's {be} backend could not write the project in {out_dir}"
                        + (f" for board {board!r}" if board else "")
                        + f" ({opts.io_type}, strategies {strategies}): {type(e).__name__}: {e}") from e
    return hm


def _check_accelerator_config(cfg: dict, board: str | None) -> None:
    """Refuse, before hls4ml is called, a config that hls4ml 1.3.0's VivadoAccelerator
    backend cannot build (resource_unrolled layers: only reachable through the Python API
    with an ``accelerator_board`` but no ``CompileOptions.board``; qsp-compile's options and
    rule never produce it)."""
    bad = sorted(k for k, v in cfg.get("LayerName", {}).items()
                 if isinstance(v, dict) and str(v.get("Strategy", "")).lower() in ("resource_unrolled", "unrolled"))
    if bad:
        raise ConfigError(f"layers {bad} use resource_unrolled, which the VivadoAccelerator project for board "
                          f"{board!r} cannot build: hls4ml 1.3.0's VivadoAccelerator backend rejects it "
                          "('Unexpected backend VivadoAccelerator in GenerateUnrolledDenseResource'); pass the board "
                          "as CompileOptions(board=...) so that the strategy rule avoids it, or use Resource")


def clean_dir(d: Path) -> Path:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
