"""The estimate of a bundle: per layer and total counts, storage, MACs/BOPs, resources per
strategy, latency, energy, and a fit verdict for every board.

``estimate(bundle, boards, strategies)`` is the entry point; ``summary_for_board`` is the
short text the compiler prints.

Two graphs: the paper-defined numbers (footprint, BOPs, MACs, sparsity, per-layer table,
float32 baseline) describe the bundle as trained; the board-facing ones (resources,
latency/II, fit verdicts) describe the *hardware graph*, the one qsp-compile builds: the
bundle after :func:`qsp.bundle.transforms.run` with qsp-compile's default steps (masks covering whole
features/channels folded into the weights, dead features/channels removed).
``as_trained=True`` estimates the untransformed graph instead.

Graphs are DAGs (schema 2). Per-op counting rules live in :mod:`qsp.estimate.counts` (one
handler per op), per-op resource/latency rules in :mod:`qsp.estimate.resources`; the
design's latency is the critical path of the graph (:func:`~qsp.estimate.resources.critical_path`).
Layers qsp builds only fully parallel (depthwise / grouped conv, scale_shift) get
``Latency`` with reuse factor 1 in every plan the estimator models or proposes
(:func:`~qsp.estimate.resources.buildable`).

The default plan is qsp-compile's fixed rule, :func:`qsp.hardware.rule_strategies` (one
function both stages import from the shared base). The estimator imports nothing of
:mod:`qsp.compile`: the hardware graph's transformations are :mod:`qsp.bundle.transforms`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Mapping

from ..boards import Board, all_boards, get_board
from ..bundle import transforms
from ..bundle.footprint import float_footprint, footprint
from ..bundle.schema import GRAPH_INPUT
from ..fixedpoint import ceil_log2
from ..hardware import (SPARSE_RU, STRATEGIES, STRATEGY_OPS, LayerFacts, LayerStrategy,  # noqa: F401 - SPARSE_RU re-exported
                        buildable_strategies, rule_strategies, smallest_valid_reuse, unrolled_op)
from . import energy as E
from .counts import FLOAT_BITS, GraphCounts, NodeCounts, count_graph
from .resources import Resources, buildable, critical_path, layer_resources

RESOURCE_KEYS = ("LUT", "FF", "DSP", "BRAM18")
#: the hls4ml IOTypes the estimator models (docs/estimate.md): io_parallel (default) and
#: io_stream (:mod:`qsp.estimate.stream`)
IO_TYPES = ("io_parallel", "io_stream")
#: among alternative plans that fit, prefer those that leave this much room for routing
ROUTABLE = 0.8


# ----------------------------------------------------------------------------- storage
@dataclass
class Storage:
    """Bits of a tensor stored dense and in the cheapest sparse encoding (with its overhead)."""

    dense_bits: int
    sparse_bits: int
    encoding: str  # "dense" | "bitmask" | "csr" | "static-mask"
    overhead_bits: int  # index / mask bits included in sparse_bits


def weight_storage(n: NodeCounts) -> Storage:
    w = n.weight
    dense = w.weights * w.weight_bits
    bitmask = w.weights + w.nonzeros * w.weight_bits
    rows = w.n_out
    csr_over = w.nonzeros * w.sparse_index_bits + (rows + 1) * ceil_log2(w.nonzeros + 1)
    csr = w.nonzeros * w.weight_bits + csr_over
    best = min((dense, "dense", 0), (bitmask, "bitmask", w.weights), (csr, "csr", csr_over))
    return Storage(dense, best[0], best[1], best[2])


def activation_storage(n: NodeCounts) -> Storage:
    b = n.out_format.bits
    dense = n.out_elements * b
    if n.out_nonzero == n.out_elements:
        return Storage(dense, dense, "dense", 0)
    sparse = n.out_nonzero * b + n.out_elements  # the static 0/1 mask, one bit per element
    return (Storage(dense, sparse, "static-mask", n.out_elements) if sparse < dense
            else Storage(dense, dense, "dense", 0))


# ----------------------------------------------------------------------------- per layer
@dataclass
class LayerEstimate:
    name: str
    op: str
    out_shape: list[int]
    out_bits: int
    out_elements: int
    out_nonzero: int
    quant_point: bool
    in_elements: int = 0
    params: int = 0
    weights: int = 0
    nonzeros: int = 0
    biases: int = 0
    weight_bits: int = 0
    bias_bits: int = 0
    in_bits: int = 0
    acc_bits: int = 0
    in_nonzero: int = 0
    macs_dense: int = 0
    macs: int = 0
    bops: int = 0
    bops_dense: int = 0
    bops_float: int = 0
    adds: int = 0  # elementwise additions outside MACs (add nodes)
    weight_storage: Storage | None = None
    activation_storage: Storage | None = None

    @property
    def weight_sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.weights if self.weights else 0.0

    @property
    def activation_sparsity(self) -> float:
        return 1.0 - self.out_nonzero / self.out_elements if self.out_elements else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(weight_sparsity=self.weight_sparsity, activation_sparsity=self.activation_sparsity)
        return d


def _layer(n: NodeCounts) -> LayerEstimate:
    le = LayerEstimate(n.name, n.op, n.out_shape, n.out_format.bits, n.out_elements, n.out_nonzero, n.quant_point,
                       in_elements=math.prod(n.in_shape), in_nonzero=n.in_nonzero, adds=n.adds)
    if n.quant_point:
        le.activation_storage = activation_storage(n)
    w = n.weight
    if w is not None:
        le.params, le.weights, le.nonzeros, le.biases = w.weights + w.biases, w.weights, w.nonzeros, w.biases
        le.weight_bits, le.bias_bits, le.in_bits, le.acc_bits = w.weight_bits, w.bias_bits, w.in_format.bits, w.acc_format.bits
        le.macs_dense, le.macs, le.bops, le.bops_dense, le.bops_float = w.macs_dense, w.macs, w.bops, w.bops_dense, w.bops_float
        le.weight_storage = weight_storage(n)
    return le


# ----------------------------------------------------------------------------- per board
@dataclass
class Plan:
    """Strategies for every weight layer, and the resources they give on one board."""

    label: str
    strategies: dict[str, LayerStrategy]
    layers: dict[str, Resources]
    total: Resources
    io_type: str = "io_parallel"

    def utilization(self, board: Board) -> dict[str, float]:
        u = self.total.usage()
        budget = {"LUT": board.lut, "FF": board.ff, "DSP": board.dsp, "BRAM18": board.bram18k}
        return {k: (u[k] / budget[k] if budget[k] else (math.inf if u[k] else 0.0)) for k in RESOURCE_KEYS}

    def to_dict(self, board: Board) -> dict:
        return {"label": self.label, "io_type": self.io_type,
                "strategies": {k: {"strategy": s.strategy, "reuse_factor": s.reuse_factor, "why": s.why}
                               for k, s in self.strategies.items()},
                "total": self.total.to_dict(), "utilization": self.utilization(board),
                "layers": {k: r.to_dict() for k, r in self.layers.items()}}


@dataclass
class BoardEstimate:
    board: Board
    verdict: str  # "fits" | "fits with another strategy" | "does not fit"
    binding: str  # the resource with the highest utilization in the plan shown
    plan: Plan  # the given/default plan
    alternative: Plan | None  # the plan that fits when the given one does not (or the least bad)
    energy: E.Energy
    energy_float: E.Energy
    io_type: str = "io_parallel"

    @property
    def shown(self) -> Plan:
        return self.alternative if self.alternative is not None else self.plan

    @property
    def latency_us(self) -> float:
        return self.shown.total.latency_cycles / self.board.clock_mhz

    @property
    def ii_us(self) -> float:
        return self.shown.total.ii_cycles / self.board.clock_mhz

    @property
    def fpga_energy(self) -> E.FpgaEnergy:
        """FPGA power and energy per inference of the plan shown, from the board family's
        power figures (or why there are none); beside the ASIC figure ``energy``."""
        t = self.shown.total
        return E.fpga_energy(self.board, t.usage(), t.latency_cycles, t.ii_cycles)

    def line(self) -> str:
        u = self.shown.utilization(self.board)
        alt = f" [{self.alternative.label}]" if self.alternative is not None else ""
        return (f"{self.board.name:<12} {self.verdict:<27} binding {self.binding:<6} "
                f"{100 * u[self.binding]:7.1f} %{alt}")

    def to_dict(self) -> dict:
        return {"board": self.board.name, "part": self.board.part, "clock_mhz": self.board.clock_mhz,
                "io_type": self.io_type, "verdict": self.verdict, "binding": self.binding,
                "utilization": self.shown.utilization(self.board),
                "budget": {"LUT": self.board.lut, "FF": self.board.ff, "DSP": self.board.dsp,
                           "BRAM18": self.board.bram18k},
                "latency_cycles": self.shown.total.latency_cycles, "ii_cycles": self.shown.total.ii_cycles,
                "latency_us": self.latency_us, "ii_us": self.ii_us,
                "plan": self.plan.to_dict(self.board),
                "alternative": None if self.alternative is None else self.alternative.to_dict(self.board),
                "energy_pj": self.energy.to_dict(), "energy_float32_pj": self.energy_float.to_dict(),
                "energy_label": E.ASIC_LABEL, "energy_fpga": self.fpga_energy.to_dict()}


def _as_strategy(s) -> LayerStrategy:
    if isinstance(s, LayerStrategy):
        return s
    if isinstance(s, str):
        return LayerStrategy(s, 1)
    if isinstance(s, Mapping):
        return LayerStrategy(s.get("strategy", s.get("Strategy", "Latency")),
                             int(s.get("reuse_factor", s.get("ReuseFactor", 1))), str(s.get("why", "")))
    if isinstance(s, (tuple, list)):
        return LayerStrategy(str(s[0]), int(s[1]) if len(s) > 1 else 1)
    return LayerStrategy(getattr(s, "strategy"), int(getattr(s, "reuse_factor", 1)), str(getattr(s, "why", "")))


def _fan(n: NodeCounts) -> tuple[int, int]:
    return n.weight.fan_in, n.weight.n_out


def _smallest_reuse(n: NodeCounts, at_least: int, strategy: str, io_type: str = "io_parallel") -> int:
    return smallest_valid_reuse(*_fan(n), at_least, strategy, n.op, io_type)


def check_io_type(io_type: str) -> str:
    if io_type not in IO_TYPES:
        from ..errors import ConfigError
        raise ConfigError(f"io_type {io_type!r}: the estimator models {', '.join(IO_TYPES)}")
    return io_type


def board_strategies(board: Board | None) -> tuple[str, ...]:
    """The strategies qsp-compile can build for ``board``: no resource_unrolled on a board
    with an hls4ml VivadoAccelerator target (qsp-compile writes that project too, and hls4ml
    1.3.0's VivadoAccelerator backend rejects resource_unrolled); distributed_arithmetic is
    listed (whether da4ml is installed is the caller's ``available``). See
    :func:`qsp.hardware.buildable_strategies`."""
    return buildable_strategies(board, installed=False)


def _strategy_nodes(counts: GraphCounts) -> list[NodeCounts]:
    return [n for n in counts.weight_nodes() if n.op in STRATEGY_OPS]


def layer_facts(counts: GraphCounts) -> list[LayerFacts]:
    """What the strategy rule reads of each Dense/Conv layer, from the counts."""
    return [LayerFacts(n.name, n.op, n.weight.fan_in, n.weight.n_out, n.weight.weights, n.weight.nonzeros,
                       n.weight.latency_only) for n in _strategy_nodes(counts)]


def default_strategies(counts: GraphCounts, board: Board | None, io_type: str = "io_parallel") -> dict[str, LayerStrategy]:
    """What ``qsp-compile --strategy auto`` picks by its fixed rule before its board check
    (for ``io_type``): :func:`qsp.hardware.rule_strategies`, the one rule both use. Keys: the
    layers that take a strategy (linear, conv2d; scale_shift has none and is modelled fully
    parallel)."""
    return rule_strategies(layer_facts(counts), board, io_type)


def make_plan(counts: GraphCounts, board: Board, strategies: Mapping, label: str,
              io_type: str = "io_parallel") -> Plan:
    """Resources summed over the layers; latency the critical path of the graph (longest
    path over producers, io_parallel), II the largest layer II. A strategy that cannot be
    built for a layer (non-Latency on a depthwise conv, ...) is modelled, and recorded, as
    the one that is (:func:`~qsp.estimate.resources.buildable`)."""
    strat = {k: _as_strategy(v) for k, v in strategies.items()}
    if check_io_type(io_type) == "io_stream":
        from .stream import stream_plan
        layers, total, strat = stream_plan(counts, strat, board.dsp_mult_width)
        return Plan(label, strat, layers, total, io_type)
    layers = {}
    total = Resources(latency_cycles=0, ii_cycles=1)
    for n in counts.nodes:
        st = None
        if n.weight is not None:
            st = buildable(n, strat.get(n.name))
            if n.op in STRATEGY_OPS:
                strat[n.name] = st
            else:  # no strategy in qsp-compile's config (scale_shift)
                strat.pop(n.name, None)
        r = layer_resources(n, st, board.dsp_mult_width)
        layers[n.name] = r
        total = total + r
    total.latency_cycles = critical_path(counts.nodes, {k: r.latency_cycles for k, r in layers.items()})
    return Plan(label, strat, layers, total)


def candidate_plans(counts: GraphCounts, board: Board, io_type: str = "io_parallel") -> list[tuple[str, dict]]:
    """Uniform alternatives: all Latency, all distributed arithmetic, and Resource /
    resource_unrolled (Dense; Conv falls back to Resource) at growing reuse factors. Layers
    built only with Latency (depthwise / grouped conv, scale_shift) keep Latency, R = 1, in
    every plan."""
    wn = _strategy_nodes(counts)
    fixed = {n.name: buildable(n, None) for n in wn if n.weight.latency_only}
    free = [n for n in wn if not n.weight.latency_only]
    plans = [("Latency", {n.name: fixed.get(n.name, LayerStrategy("Latency", 1)) for n in wn}),
             ("distributed_arithmetic (needs hls4ml[da])",
              {**{n.name: LayerStrategy("distributed_arithmetic", 1) for n in free}, **fixed})]
    biggest = max((n.weight.fan_in * n.weight.n_out for n in free), default=1)
    target = 2
    while free:
        for strat in ("resource_unrolled", "Resource"):
            p = dict(fixed)
            for n in free:
                s = strat if (strat == "Resource" or unrolled_op(n.op)) else "Resource"
                p[n.name] = LayerStrategy(s, _smallest_reuse(n, target, s, io_type))
            plans.append((f"{strat} reuse<={target}", p))
        if target >= biggest:
            break
        target *= 2
    return plans


def _binding(plan: Plan, board: Board) -> str:
    u = plan.utilization(board)
    return max(RESOURCE_KEYS, key=lambda k: u[k])


def _max_util(plan: Plan, board: Board) -> float:
    return max(plan.utilization(board).values())


def _energy(layers: list[LayerEstimate], board: Board) -> tuple[E.Energy, E.Energy]:
    onchip = board.onchip_bits
    w_bits = sum(le.weight_storage.sparse_bits for le in layers if le.weight_storage)
    w_dense32 = sum(le.weights * FLOAT_BITS for le in layers if le.weight_storage)
    dram = w_bits > onchip
    dram32 = w_dense32 > onchip
    compute = sum(le.macs * (E.e_mult(le.weight_bits, le.in_bits) + E.e_add(le.acc_bits))
                  + le.adds * E.e_add(le.out_bits) for le in layers)
    compute32 = sum(le.macs_dense * (E.E_FMUL_32 + E.E_FADD_32) + le.adds * E.E_FADD_32 for le in layers)
    wmem = E.memory_energy(w_bits, w_bits / 8, dram)
    wmem32 = E.memory_energy(w_dense32, w_dense32 / 8, dram32)
    points = [le for le in layers if le.activation_storage]
    biggest = max((le.out_nonzero * le.out_bits for le in points), default=0)
    biggest32 = max((le.out_elements * FLOAT_BITS for le in points), default=0)
    act = sum(E.memory_energy(2 * le.out_nonzero * le.out_bits, biggest / 8, False) for le in points)
    act32 = sum(E.memory_energy(2 * le.out_elements * FLOAT_BITS, biggest32 / 8, False) for le in points)
    return E.Energy(compute, wmem, act, dram), E.Energy(compute32, wmem32, act32, dram32)


def estimate_board(counts: GraphCounts, layers: list[LayerEstimate], board: Board, strategies=None,
                   available: Iterable[str] | None = None, io_type: str = "io_parallel") -> BoardEstimate:
    """``available``: the strategies an alternative plan may use (all when None; qsp-compile
    passes those it can build, e.g. no distributed_arithmetic without da4ml); never one
    qsp-compile cannot build for ``board`` (:func:`board_strategies`). ``io_type``: the
    hls4ml IOType modelled (io_parallel, or io_stream: :mod:`qsp.estimate.stream`)."""
    check_io_type(io_type)
    given = strategies is not None
    strat = ({k: _as_strategy(v) for k, v in strategies.items()} if given
             else default_strategies(counts, board, io_type))
    plan = make_plan(counts, board, strat, "given" if given else "default (qsp-compile auto)", io_type)
    e, e32 = _energy(layers, board)
    if _max_util(plan, board) <= 1.0:
        return BoardEstimate(board, "fits", _binding(plan, board), plan, None, e, e32, io_type)
    ok = set(board_strategies(board)) & (set(STRATEGIES) if available is None else set(available))
    alts = [make_plan(counts, board, s, label, io_type) for label, s in candidate_plans(counts, board, io_type)
            if all(_as_strategy(v).strategy in ok for v in s.values())]
    fitting = [p for p in alts if _max_util(p, board) <= 1.0]
    if fitting:
        roomy = [p for p in fitting if _max_util(p, board) <= ROUTABLE] or fitting
        best = min(roomy, key=lambda p: (p.total.ii_cycles, p.total.latency_cycles, _max_util(p, board)))
        return BoardEstimate(board, "fits with another strategy", _binding(best, board), plan, best, e, e32, io_type)
    least = min(alts + [plan], key=lambda p: _max_util(p, board))
    return BoardEstimate(board, "does not fit", _binding(least, board), plan, None if least is plan else least, e, e32,
                         io_type)


def fit_plan(graph, board, strategies: Mapping | None = None, available: Iterable[str] | None = None,
             io_type: str = "io_parallel") -> BoardEstimate:
    """The estimator's verdict for one strategy plan on one board, for ``graph`` as it will be
    built (a :class:`~qsp.bundle.Bundle`, e.g. qsp-compile's transformed graph): ``plan`` is
    ``strategies`` (the compiler's default rule when None), and when it does not fit,
    ``alternative`` is the plan the estimator proposes (verdict "fits with another
    strategy") or the least bad one ("does not fit"), using only ``available`` strategies.
    ``io_type``: the IOType being compiled (qsp-compile passes its ``--io-type``)."""
    counts = count_graph(graph)
    b = board if isinstance(board, Board) else get_board(board)
    return estimate_board(counts, [_layer(n) for n in counts.nodes], b, strategies, available, io_type)


# ----------------------------------------------------------------------------- the hardware graph
#: qsp-compile's default transformation steps: the hardware graph is built with the same ones
DEFAULT_STEPS = transforms.DEFAULT_STEPS


def _units(n) -> int:
    return int(n.out_shape[0]) if n.out_shape else 0


@dataclass
class HardwareGraph:
    """The graph the board-facing numbers describe, and how it differs from the trained one."""

    steps: tuple[str, ...]  # the transformation steps applied (() = the graph as trained)
    masks_folded: int = 0  # activation masks whose whole-unit zeros went into the weights
    masks_removed: int = 0  # of those, masks left with no zero at all (dropped from the graph)
    features_removed: int = 0  # dead Dense outputs removed
    channels_removed: int = 0  # dead conv output channels removed
    log: list[str] = field(default_factory=list)  # the transformations' own log
    failed: str = ""  # why the transformations could not be applied (then: the graph as trained)

    @classmethod
    def compare(cls, trained, hardware, steps=DEFAULT_STEPS, log=()) -> "HardwareGraph":
        """What ``hardware`` (a transformed copy of ``trained``) changed, read off the graphs."""
        hw = {n.name: n for n in hardware.graph}
        folded = removed = feats = chans = 0
        for n in trained.graph:
            h = hw.get(n.name)
            if n.op == "mask":
                zeros = int((trained.mask(n.name) == 0).sum())
                if h is None:
                    folded, removed = folded + 1, removed + 1
                elif int((hardware.mask(n.name) == 0).sum()) < zeros:
                    folded += 1
            elif n.op in STRATEGY_OPS and h is not None:
                d = _units(n) - _units(h)
                feats, chans = (feats + d, chans) if n.op == "linear" else (feats, chans + d)
        return cls(tuple(steps), folded, removed, feats, chans, list(log))

    def describe(self) -> str:
        """One line, e.g. 'hardware graph: 3 masks folded, 64 dead features removed (as qsp-compile builds it)'."""
        if not self.steps and self.failed:
            return (f"hardware graph: the bundle as trained (qsp-compile's transformations failed on this graph: "
                    f"{self.failed})")
        if not self.steps:
            return "hardware graph: the bundle as trained (untransformed; qsp-compile --no-transforms builds it)"
        parts = [f"{self.masks_folded} mask{'s' * (self.masks_folded != 1)} folded"] if self.masks_folded else []
        for k, what in ((self.features_removed, "feature"), (self.channels_removed, "channel")):
            if k:
                parts.append(f"{k} dead {what}{'s' * (k != 1)} removed")
        what = ", ".join(parts) if parts else "identical to the bundle as trained (nothing to fold or remove)"
        return f"hardware graph: {what} (as qsp-compile builds it)"

    def to_dict(self) -> dict:
        return {**asdict(self), "steps": list(self.steps), "description": self.describe()}


def hardware_graph(bundle, as_trained: bool = False, steps=DEFAULT_STEPS):
    """(graph qsp-compile builds from ``bundle``, :class:`HardwareGraph` describing it)."""
    if as_trained or not steps:
        return bundle, HardwareGraph(())
    try:
        tx, log = transforms.run(bundle, tuple(steps))
    except Exception as e:  # noqa: BLE001 - a graph the transformations do not handle (yet)
        return bundle, HardwareGraph((), failed=f"{type(e).__name__}: {e}")
    return tx, HardwareGraph.compare(bundle, tx, steps, log)


# ----------------------------------------------------------------------------- the estimate
@dataclass
class Totals:
    params: int
    weights: int
    nonzeros: int
    macs_dense: int
    macs: int
    bops: int
    bops_dense: int
    bops_float: int
    weight_bits_dense: int
    weight_bits_sparse: int
    bias_bits: int
    activation_bits_dense: int
    activation_bits_sparse: int
    footprint_bits: int  # the paper's footprint (qsp.bundle.footprint)
    footprint_weight_bits: int
    footprint_activation_bits: int
    float_footprint_bits: int
    adds: int = 0  # elementwise additions outside MACs (add nodes)
    #: what bops_float / float_footprint_bits describe: the graph as it is, or (a DJPQ bundle
    #: with pruned channels removed) the original dense network before the removal
    float_baseline: str = "graph"


@dataclass
class Estimate:
    layers: list[LayerEstimate]
    totals: Totals
    boards: list[BoardEstimate] = field(default_factory=list)
    bundle_path: str | None = None
    task: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    #: the graph ``boards`` (resources, latency, verdicts) describe; the rest is the trained bundle
    hardware: HardwareGraph | None = None
    #: the hls4ml IOType the board-facing numbers model
    io_type: str = "io_parallel"

    def board(self, name: str) -> BoardEstimate:
        b = get_board(name) if not isinstance(name, Board) else name
        for be in self.boards:
            if be.board.name == b.name:
                return be
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"bundle": self.bundle_path, "io_type": self.io_type, "task": self.task, "metrics": self.metrics,
                "totals": asdict(self.totals), "layers": [le.to_dict() for le in self.layers],
                "hardware_graph": None if self.hardware is None else self.hardware.to_dict(),
                "boards": [b.to_dict() for b in self.boards],
                "models": {"energy": E.SOURCE, "energy_asic": E.ASIC_LABEL,
                           "energy_fpga": "FPGA model: static + dynamic per used resource at the board clock, figures "
                                          "from boards/power/families.yaml (docs/estimate.md); per board in "
                                          "boards[].energy_fpga",
                           "resources": f"analytic model of hls4ml's {self.io_type} design, docs/estimate.md"}}


def original_float_baseline(bundle, ffp, weight_layers) -> tuple[int, int, str]:
    """The float32 dense baseline (footprint bits, BOPs, label) of the network as trained.

    DJPQ bundles come with pruned channels physically removed; the dense baseline is the
    network before that. ``qspec.extra["removed_channels"]`` (node -> original count and
    kept indices) restores it: the node's weights (and MACs) and the activations up to the
    next weight layer, whose weights (and MACs) scale too, grow by original/kept. BOPs come
    from ``qspec.extra["djpq"]["bops_fp32"]`` (the trainer's count of the original model)
    where present. Other bundles: the graph's own baseline."""
    extra = bundle.qspec.extra or {}
    removed = extra.get("removed_channels") or {}
    djpq_bops = (extra.get("djpq") or {}).get("bops_fp32")
    # ratio[t]: original / kept channels of tensor t, along the graph's inputs
    scale, ratio = {}, {GRAPH_INPUT: Fraction(1)}
    for n in bundle.graph:
        ins = n.inputs or [GRAPH_INPUT]
        r = ratio.get(ins[0], Fraction(1))
        if n.op in STRATEGY_OPS:  # the Dense/Conv layers
            rm = removed.get(n.name)
            r_out = Fraction(int(rm["original"]), len(rm["kept"])) if rm else Fraction(1)
            scale[n.name], ratio[n.name] = r * r_out, r_out
            continue
        if n.op == "concat":  # kept channels side by side: the channel-weighted ratio
            shapes = {m.name: m.out_shape for m in bundle.graph}
            kept = [int(shapes[x][0]) if x in shapes else 1 for x in ins]
            r = sum((k * ratio.get(x, Fraction(1)) for k, x in zip(kept, ins)), Fraction(0)) / max(sum(kept), 1)
        ratio[n.name] = r
        if n.op in ("quantize", "scale_shift"):  # per-channel: follows the channels it reads
            scale[n.name] = r
    bits = sum(x.footprint_bits * scale.get(x.name, 1) for x in ffp.layers + ffp.points)
    bops = sum(le.bops_float * scale.get(le.name, 1) for le in weight_layers)
    if djpq_bops is not None:
        bops = djpq_bops
    label = "original dense (before DJPQ channel removal)" if removed or djpq_bops is not None else "graph"
    return int(bits), int(bops), label


def estimate(bundle, boards: Iterable | str | None = "all", strategies: Mapping | None = None,
             board_dirs=None, as_trained: bool = False, steps=DEFAULT_STEPS, io_type: str = "io_parallel") -> Estimate:
    """Estimate ``bundle`` (a :class:`~qsp.bundle.Bundle` or a path) for ``boards`` ("all",
    names, :class:`Board` objects or None). ``strategies`` maps weight-layer names to the
    compiler's chosen strategy (objects with ``strategy``/``reuse_factor``, dicts, tuples or
    names); without it the compiler's default choice is modelled per board.

    Footprint, BOPs, MACs, sparsity, the per-layer table and the float32 baseline describe
    the bundle as trained. Board resources, latency/II and verdicts describe the hardware
    graph: the bundle after qsp-compile's transformations ``steps`` (its defaults), or the
    bundle as trained with ``as_trained=True`` (``Estimate.hardware`` says which).
    ``io_type``: the hls4ml IOType modelled, "io_parallel" (default) or "io_stream"."""
    from ..bundle import Bundle

    check_io_type(io_type)
    if not isinstance(bundle, Bundle):
        bundle = Bundle.read(bundle)
    counts = count_graph(bundle)
    layers = [_layer(n) for n in counts.nodes]
    fp, ffp = footprint(bundle), float_footprint(bundle)
    wl = [le for le in layers if le.weight_storage]
    al = [le for le in layers if le.activation_storage]
    float_bits, bops_float, baseline = original_float_baseline(bundle, ffp, wl)
    totals = Totals(
        params=sum(le.params for le in wl), weights=sum(le.weights for le in wl), nonzeros=sum(le.nonzeros for le in wl),
        macs_dense=sum(le.macs_dense for le in wl), macs=sum(le.macs for le in wl), bops=sum(le.bops for le in wl),
        bops_dense=sum(le.bops_dense for le in wl), bops_float=bops_float,
        weight_bits_dense=sum(le.weight_storage.dense_bits for le in wl),
        weight_bits_sparse=sum(le.weight_storage.sparse_bits for le in wl),
        bias_bits=sum(le.biases * le.bias_bits for le in wl),
        activation_bits_dense=sum(le.activation_storage.dense_bits for le in al),
        activation_bits_sparse=sum(le.activation_storage.sparse_bits for le in al),
        footprint_bits=fp.total_bits, footprint_weight_bits=fp.weight_bits,
        footprint_activation_bits=fp.activation_bits, float_footprint_bits=float_bits, float_baseline=baseline,
        adds=sum(le.adds for le in layers))
    if boards is None:
        blist = []
    elif isinstance(boards, str):
        blist = all_boards(board_dirs) if boards == "all" else [get_board(boards, board_dirs)]
    else:
        blist = [b if isinstance(b, Board) else get_board(b, board_dirs) for b in boards]
    est = Estimate(layers, totals, [], str(bundle.path) if bundle.path else None,
                   asdict(bundle.qspec.task), dict(bundle.qspec.metrics), io_type=io_type)
    if blist:
        hw, est.hardware = hardware_graph(bundle, as_trained, steps)
        hw_counts = counts if hw is bundle else count_graph(hw)
        # energy stays the trained bundle's (as in qsp-compile's summary); resources are hw's
        est.boards = [estimate_board(hw_counts, layers, b, strategies, io_type=io_type) for b in blist]
    return est


def strategies_from_project(project_dir) -> dict[str, LayerStrategy]:
    """Per-layer strategy and reuse factor of a compiled project (the qsp_hls_config.yaml
    qsp-compile wrote; hls4ml_config.yaml in projects of older qsp versions)."""
    from ..errors import ConfigError
    from ..paths import find_files, input_file, read_yaml

    p = Path(project_dir)
    if p.is_dir():
        found = find_files(p, "qsp_hls_config.yaml") or find_files(p, "hls4ml_config.yaml")
        f = found[0] if found else None
    else:
        f = input_file(p, "--project")  # a FIFO or device is refused before it is read
    if f is None:
        raise ConfigError(f"--project {str(project_dir)!r}: no qsp_hls_config.yaml found (qsp-compile writes it)")
    cfg = read_yaml(f, "--project") or {}
    hc = cfg.get("HLSConfig", cfg) if isinstance(cfg, dict) else None
    names = hc.get("LayerName") if isinstance(hc, dict) else None
    if not isinstance(names, (dict, type(None))):
        raise ConfigError(f"--project {f}: HLSConfig.LayerName must be a mapping of layer names")
    out = {}
    for name, entry in (names or {}).items():
        if isinstance(entry, dict) and "Strategy" in entry:
            rf = entry.get("ReuseFactor", 1)
            if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
                raise ConfigError(f"--project {f}: LayerName.{name}.ReuseFactor={rf!r} must be an integer >= 1")
            out[name] = LayerStrategy(str(entry["Strategy"]), rf, "compiled project")
    return out


def _fmt_bits(b: float) -> str:
    for unit, s in (("Mb", 1e6), ("kb", 1e3)):
        if b >= s:
            return f"{b / s:.3f} {unit}"
    return f"{b:.0f} b"


def _fmt_pj(p: float) -> str:
    for unit, s in (("uJ", 1e6), ("nJ", 1e3)):
        if p >= s:
            return f"{p / s:.3f} {unit}"
    return f"{p:.1f} pJ"


def summary_for_board(bundle_or_estimate, board, strategies=None, hardware=None, io_type: str | None = None) -> str:
    """A few lines for one board: verdict, resources, latency, footprint, BOPs, energy, each
    next to the float32 dense baseline.

    ``hardware``: the graph actually built (qsp-compile's transformed bundle: masks folded,
    dead features removed); verdict, resources and latency are then those of ``strategies``
    on it, while footprint, BOPs and energy stay those of the bundle as trained.
    ``io_type``: the IOType modelled (default: an Estimate's own, else io_parallel)."""
    from ..bundle import Bundle

    est = bundle_or_estimate
    if io_type is None:
        io_type = est.io_type if isinstance(est, Estimate) else "io_parallel"
    if not isinstance(est, Estimate):
        if hardware is not None and not isinstance(est, Bundle):
            est = Bundle.read(est)
        trained = est
        est = estimate(est, [board], None if hardware is not None else strategies, as_trained=hardware is not None,
                       io_type=io_type)
    else:
        trained = None
    be = next((b for b in est.boards if b.board.name == get_board(board).name), None)
    if be is None:
        hw, est.hardware = hardware_graph(_bundle_of(est))
        be = estimate_board(count_graph(hw), est.layers, get_board(board), strategies, io_type=io_type)
    described = est.hardware
    if hardware is not None:
        hw = fit_plan(hardware, be.board, strategies, io_type=io_type)
        be = replace(hw, energy=be.energy, energy_float=be.energy_float)
        described = HardwareGraph.compare(trained if trained is not None else _bundle_of(est), hardware)
    t = est.totals
    u = be.shown.utilization(be.board)
    r = be.shown.total
    lines = [f"board {be.board.name} ({be.board.part}, {be.board.clock_mhz:g} MHz, {be.io_type}): {be.verdict}; "
             f"binding {be.binding}"
             + (f" [{be.alternative.label}]" if be.alternative is not None else ""),
             "  resources   " + "  ".join(f"{k} {v:,} ({100 * u[k]:.1f} %)" for k, v in r.usage().items()),
             f"  latency     {r.latency_cycles} cycles = {be.latency_us:.3f} us, II {r.ii_cycles} cycles",
             f"  {'':<12}{'qsp':>16}{'float32 dense':>18}{'ratio':>9}",
             f"  {'footprint':<12}{_fmt_bits(t.footprint_bits):>16}{_fmt_bits(t.float_footprint_bits):>18}"
             f"{t.float_footprint_bits / max(t.footprint_bits, 1):>8.1f}x",
             f"  {'BOPs':<12}{t.bops:>16,}{t.bops_float:>18,}{t.bops_float / max(t.bops, 1):>8.1f}x",
             f"  {'energy/inf':<12}{_fmt_pj(be.energy.total):>16}{_fmt_pj(be.energy_float.total):>18}"
             f"{be.energy_float.total / max(be.energy.total, 1e-12):>8.1f}x"
             + ("  (float32 weights from DRAM)" if be.energy_float.weights_in_dram else ""),
             f"  {'':<12}(energy/inf: {E.ASIC_LABEL})",
             "  " + _fpga_line(be.fpga_energy)]
    if described is not None:
        lines.insert(1, f"  {described.describe()}")
    return "\n".join(lines)


def _fpga_line(f: E.FpgaEnergy) -> str:
    if f.missing:
        return f"{'FPGA energy':<12}{f.missing} (FPGA model: static + dynamic; no figure, not zero)"
    return (f"{'FPGA energy':<12}{_fmt_pj(f.energy_latency_pj):>16} per inference alone (P x latency), "
            f"{_fmt_pj(f.energy_ii_pj)} streaming (P x II); P = {f.static_w:.3g} W static + {f.dynamic_w:.3g} W "
            f"dynamic [{f.label}]")


def _bundle_of(est: Estimate):
    from ..bundle import Bundle
    return Bundle.read(est.bundle_path)
