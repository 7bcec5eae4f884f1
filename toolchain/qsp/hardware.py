"""What qsp can build with hls4ml 1.3.0, and the one rule that picks each layer's strategy.

A shared base module (like :mod:`qsp.fixedpoint` and :mod:`qsp.bundle`): numpy and the
standard library only, so that qsp-compile (which builds the plan) and qsp-estimate
(which models it) both import it downward and neither imports the other for it.

* :class:`LayerStrategy`: a layer's hls4ml ``Strategy`` and ``ReuseFactor``;
* :func:`valid_reuse_factors` / :func:`smallest_valid_reuse`: the reuse factors hls4ml
  accepts for a kernel and strategy;
* :func:`latency_only`: the layers qsp builds only fully parallel (depthwise / grouped
  conv, scale_shift), and why;
* :func:`buildable_strategies`: the strategies qsp-compile can build (for a board), and
  :func:`unbuildable_reason`: why one cannot be (the refusal qsp-compile raises up front);
* :class:`LayerFacts` (:func:`layer_facts` from a bundle; the estimator makes them from
  its counts) and :func:`rule_strategies`: the per-layer rule of ``--strategy auto``
  (and of a forced ``--strategy``), which is qsp-compile's plan before its board check and
  the estimator's default plan.

The auto rule, per Dense/Conv layer, in order:

1. depthwise / grouped conv: ``Latency``, reuse factor 1 (the only way qsp builds them);
2. ``distributed_arithmetic`` when ``da4ml`` is importable (weights become a shift-add
   graph; a pruned weight costs nothing; bit-exact);
3. a Dense layer with at least ``SPARSE_RU`` of its weights pruned, in io_parallel, on a
   target that can build it (not where the board's hls4ml VivadoAccelerator project is
   written: hls4ml 1.3.0's VivadoAccelerator backend rejects it): ``resource_unrolled``
   (one multiplier per nonzero weight only; needs ReuseFactor > 1, so the smallest valid
   reuse factor >= 2);
4. ``Resource`` with the smallest valid reuse factor that brings the layer's multipliers
   (nonzero weights) under the DSP budget (the board's DSP count), when they exceed it;
5. otherwise ``Latency`` (fully parallel).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from .ops import RULES

#: the hls4ml strategies qsp models and builds (qsp-compile adds "auto")
STRATEGIES = ("Latency", "Resource", "resource_unrolled", "distributed_arithmetic")
#: ops whose hls4ml layer takes a Strategy / ReuseFactor (the keys of a strategy plan): the
#: op rules with ``strategy`` set (linear, conv2d, conv1d); scale_shift has none in
#: qsp-compile's config (built fully parallel)
STRATEGY_OPS = tuple(op for op, r in RULES.items() if r.strategy)


def _flag(op: str, name: str) -> bool:
    r = RULES.get(op)
    return r is not None and bool(getattr(r, name))


def unrolled_op(op: str) -> bool:
    """Whether hls4ml builds ``resource_unrolled`` for ``op``'s layer (Dense only):
    :attr:`qsp.ops.OpRule.unrolled`."""
    return _flag(op, "unrolled")


#: The board check of a strategy plan: ``fit(graph, board, strategies, available=..., io_type=...)`` ->
#: a verdict with ``verdict`` ("fits" | "fits with another strategy" | "does not fit"),
#: ``plan`` / ``alternative`` (each with ``strategies``, ``label`` and ``utilization(board)``)
#: and ``board``. The estimator's :func:`qsp.estimate.fit_plan` is one; qsp-compile takes it
#: as an argument (:attr:`qsp.compile.hls4ml_project.CompileOptions.fit`) so that the
#: compiler never imports a later stage.
BoardCheck = Callable[..., object]

#: weight sparsity from which a Dense layer is given resource_unrolled (auto)
SPARSE_RU = 0.5


@dataclass
class LayerStrategy:
    """A layer's hls4ml strategy and reuse factor, and why it was chosen."""

    strategy: str = "Latency"
    reuse_factor: int = 1
    why: str = ""


def da4ml_available() -> bool:
    """Whether distributed_arithmetic can be built here (hls4ml needs da4ml for it)."""
    return importlib.util.find_spec("da4ml") is not None


def accelerator(board) -> bool:
    """Whether qsp-compile writes the board's hls4ml VivadoAccelerator project too (the
    board names an ``hls4ml_board``); hls4ml 1.3.0's VivadoAccelerator backend cannot build
    resource_unrolled ('Unexpected backend VivadoAccelerator in GenerateUnrolledDenseResource')."""
    return board is not None and bool(getattr(board, "hls4ml_board", None))


def buildable_strategies(board=None, installed: bool = True) -> tuple[str, ...]:
    """The strategies qsp-compile can build for ``board`` (None: no board): no
    resource_unrolled where the board's VivadoAccelerator project is written; with
    ``installed`` distributed_arithmetic only when da4ml is importable here (without, it is
    listed: the estimator proposes it, labelled as needing hls4ml[da])."""
    return tuple(s for s in STRATEGIES
                 if not (s == "resource_unrolled" and accelerator(board))
                 and not (s == "distributed_arithmetic" and installed and not da4ml_available()))


def unbuildable_reason(strategy: str, board=None, installed: bool = True) -> str:
    """Why qsp-compile cannot build ``strategy`` (one of :data:`STRATEGIES`, or "auto") for
    ``board`` (None: no board), naming the board, the strategy and the reason; "" when it
    can. The one place the refusals are worded: qsp-compile's option check
    (:class:`qsp.compile.hls4ml_project.CompileOptions`) and its project writer raise
    :class:`~qsp.errors.ConfigError` with it before hls4ml is called."""
    where = f" for {board.name}" if board is not None else ""
    if strategy == "resource_unrolled" and accelerator(board):
        return (f"--strategy resource_unrolled cannot be built{where}: hls4ml 1.3.0's VivadoAccelerator backend "
                f"(the board's accelerator project, hls4ml board {board.hls4ml_board!r}) rejects it "
                "('Unexpected backend VivadoAccelerator in GenerateUnrolledDenseResource'); use --strategy "
                "Resource or auto")
    if strategy == "distributed_arithmetic" and installed and not da4ml_available():
        return (f"--strategy distributed_arithmetic cannot be built{where}: hls4ml needs da4ml for it, "
                "which is not installed here (pip install 'hls4ml[da]==1.3.0')")
    return ""


# ----------------------------------------------------------------------------- reuse factors
def valid_reuse_factors(n_in: int, n_out: int, strategy: str | None = None, op: str = "linear",
                        io_type: str = "io_parallel") -> list[int]:
    """Reuse factors hls4ml 1.3.0 accepts for an ``n_in x n_out`` kernel: divisors R of
    ``n_in * n_out`` with R dividing n_in (R <= n_in) or n_in dividing R; for
    ``resource_unrolled`` not ``n_in * n_out`` itself (hls4ml drops it); for a ``conv2d`` in
    io_parallel with ``Resource`` (or resource_unrolled, which hls4ml turns into Resource
    there) only R <= n_in: hls4ml's conv_2d_resource_cl is correct only up to n_in (tried:
    R = 27 on a 9 x 3 kernel changed 10,975 of 12,288 outputs)."""
    rfs = list(_valid_reuse(int(n_in), int(n_out)))
    if _flag(op, "reuse_at_most_n_in") and io_type == "io_parallel" and strategy in ("Resource", "resource_unrolled"):
        return [r for r in rfs if r <= n_in]
    if strategy == "resource_unrolled" and len(rfs) > 1:
        rfs.pop()
    return rfs


def smallest_valid_reuse(n_in: int, n_out: int, at_least: int, strategy: str | None = None, op: str = "linear",
                         io_type: str = "io_parallel") -> int:
    """The smallest reuse factor >= ``at_least`` that hls4ml accepts for this kernel and
    strategy (:func:`valid_reuse_factors`), else the largest it accepts. The one rule used
    by both the estimator and qsp-compile."""
    rfs = valid_reuse_factors(n_in, n_out, strategy, op, io_type)
    return next((r for r in rfs if r >= at_least), rfs[-1])


@lru_cache(maxsize=256)
def _valid_reuse(n_in: int, n_out: int) -> tuple[int, ...]:
    total = n_in * n_out
    divs = set()
    for d in range(1, math.isqrt(total) + 1):
        if total % d == 0:
            divs.update((d, total // d))
    return tuple(r for r in sorted(divs) if (r <= n_in and n_in % r == 0) or (r >= n_in and r % n_in == 0))


# ----------------------------------------------------------------------------- the rule
def latency_only(node) -> str:
    """Why only ``Latency`` with reuse factor 1 can be built for ``node`` (a bundle graph
    node), or "" when every strategy can (:meth:`qsp.ops.OpRule.latency_only`: a depthwise
    conv is hls4ml's DepthwiseConv2D, a grouped conv qsp's QspGroupedConv2d, scale_shift
    qsp's QspScaleShift, all fully parallel; conv1d is verified with Latency only)."""
    r = RULES.get(node.op)
    return r.latency_only(node) if r is not None else ""


@dataclass(frozen=True)
class LayerFacts:
    """What the strategy rule reads of one Dense/Conv layer (of the graph as built)."""

    name: str
    op: str  # "linear" | "conv2d" | "conv1d"
    n_in: int  # kernel inputs per output (hls4ml's n_in; a conv: in/groups x kh x kw)
    n_out: int  # outputs per position (features / filters)
    weights: int
    nonzeros: int  # multipliers of one kernel instance (pruned weights cost none)
    latency_only: str = ""  # see :func:`latency_only`

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / max(self.weights, 1)


def layer_facts(bundle, names: Iterable[str] | None = None) -> list[LayerFacts]:
    """:class:`LayerFacts` of ``bundle``'s Dense/Conv layers (those in ``names``, in that
    order, when given; else in graph order), read off its weights."""
    nodes = {n.name: n for n in bundle.graph}
    order = list(names) if names is not None else list(nodes)
    out = []
    for name in order:
        n = nodes.get(name)
        if n is None or n.op not in STRATEGY_OPS:
            continue
        w = np.asarray(bundle.weight(name))
        n_in, n_out = RULES[n.op].kernel_io(n, w)
        out.append(LayerFacts(name, n.op, int(n_in), int(n_out), int(w.size), int(np.count_nonzero(w)), latency_only(n)))
    return out


def rule_strategies(layers: Iterable[LayerFacts], board=None, io_type: str = "io_parallel", strategy: str = "auto",
                    dsp_budget: int | None = None) -> dict[str, LayerStrategy]:
    """Per-layer strategy and reuse factor by the fixed rule (module docstring) for
    ``strategy="auto"``, or the forced ``strategy`` (made valid per layer: a reuse factor
    hls4ml accepts, >= 2 for Resource / resource_unrolled; resource_unrolled on a Conv
    becomes Latency). ``dsp_budget`` defaults to ``board.dsp``. Depthwise / grouped convs are
    always Latency, reuse factor 1."""
    if dsp_budget is None and board is not None:
        dsp_budget = board.dsp
    unrolled_ok = "resource_unrolled" in buildable_strategies(board, installed=False)
    da = strategy == "auto" and da4ml_available()
    out: dict[str, LayerStrategy] = {}
    for f in layers:
        def rf(s: str, at_least: int, f=f) -> int:
            return smallest_valid_reuse(f.n_in, f.n_out, max(1, at_least), s, f.op, io_type)

        if f.latency_only:
            out[f.name] = LayerStrategy("Latency", 1, f.latency_only)
        elif strategy == "auto":
            if da:
                out[f.name] = LayerStrategy("distributed_arithmetic", 1, "da4ml available: shift-add, zeros free")
            elif unrolled_op(f.op) and io_type == "io_parallel" and f.sparsity >= SPARSE_RU and unrolled_ok:
                out[f.name] = LayerStrategy("resource_unrolled", rf("resource_unrolled", 2),
                                            f"{f.sparsity:.0%} pruned: multipliers only for nonzero weights")
            elif dsp_budget is not None and f.nonzeros > dsp_budget:
                out[f.name] = LayerStrategy("Resource", rf("Resource", -(-f.nonzeros // dsp_budget)),
                                            f"{f.nonzeros} multipliers > {dsp_budget} DSPs")
            else:
                out[f.name] = LayerStrategy("Latency", 1, "fully parallel")
        elif strategy == "resource_unrolled" and not unrolled_op(f.op):
            out[f.name] = LayerStrategy("Latency", 1, "resource_unrolled is Dense-only in hls4ml")
        elif strategy in ("Resource", "resource_unrolled"):
            out[f.name] = LayerStrategy(strategy, rf(strategy, 2), "--strategy")
        else:
            out[f.name] = LayerStrategy(strategy, 1, "--strategy")
    return out
