"""qsp-compile --strategy auto by the board's budget: the rule's plan, checked by the
estimator on the transformed graph, replaced by the estimator's plan when it does not fit."""
import dataclasses

import numpy as np
import pytest

from qsp.boards import get_board
from qsp.compile.hls4ml_project import (CompileOptions, _valid_reuse, buildable_strategies, da4ml_available,
                                        plan_strategies, rule_strategies)
from qsp.compile.pipeline import compile_bundle, prepare
from qsp.estimate import fit_plan, smallest_valid_reuse, summary_for_board, valid_reuse_factors

PYNQ = get_board("pynq-z2")


def tiny(lut: int):
    """pynq-z2 with fewer LUTs: a fake board to push the rule's plan out of budget."""
    return dataclasses.replace(PYNQ, name="tiny", lut=int(lut))


def _rule_luts(bundle_path) -> tuple:
    b, tx, log, plan = prepare(bundle_path)
    rule = rule_strategies(tx, plan, CompileOptions(board=PYNQ))
    return tx, plan, rule, fit_plan(tx, PYNQ, rule).plan.total.usage()["LUT"]


def _as_tuples(layers):
    return {k: (v.strategy, v.reuse_factor) for k, v in layers.items()}


def test_reuse_rules_are_hls4ml_s():
    # divisors of n_in*n_out dividing n_in or multiples of n_in
    assert valid_reuse_factors(4, 3) == [1, 2, 4, 12]
    # resource_unrolled: hls4ml drops n_in*n_out itself
    assert valid_reuse_factors(4, 3, "resource_unrolled") == [1, 2, 4]
    # io_parallel Conv2D Resource: conv_2d_resource_cl is only correct for R <= n_in
    assert valid_reuse_factors(9, 3, "Resource", "conv2d") == [1, 3, 9]
    assert valid_reuse_factors(9, 3, "Resource", "conv2d", "io_stream") == [1, 3, 9, 27]
    assert smallest_valid_reuse(9, 3, 10, "Resource", "conv2d") == 9
    assert smallest_valid_reuse(8, 10, 41, "resource_unrolled") == 40  # 80 = n_in*n_out excluded
    assert smallest_valid_reuse(8, 10, 41, "Resource") == 80
    # the same lists as hls4ml's own check (Dense; its resource_unrolled drops the last)
    from hls4ml.backends import get_backend

    be = get_backend("Vitis")
    for n_in, n_out in ((4, 3), (8, 10), (27, 6), (64, 32), (12, 18)):
        ref = be.get_valid_reuse_factors(n_in, n_out)
        assert valid_reuse_factors(n_in, n_out, "Resource") == ref
        assert valid_reuse_factors(n_in, n_out, "resource_unrolled") == ref[:-1]
    # the compiler's helper is the estimator's function
    for args in ((64, 32, 5, "Resource", "linear", "io_parallel"), (27, 6, 30, "Resource", "conv2d", "io_parallel"),
                 (64, 32, 2, "resource_unrolled", "linear", "io_parallel")):
        assert _valid_reuse(*args) == smallest_valid_reuse(args[0], args[1], args[2], *args[3:])


def test_rule_plan_kept_when_it_fits(mlp_bundle):
    b, tx, log, plan = prepare(mlp_bundle)
    opts = CompileOptions(board=PYNQ, fit=fit_plan)
    sp = plan_strategies(tx, plan, opts)
    assert sp.source == "rule" and sp.verdict == "fits" and sp.warning is None and sp.board == "pynq-z2"
    assert _as_tuples(sp.layers) == _as_tuples(rule_strategies(tx, plan, opts))
    assert fit_plan(tx, PYNQ, sp.layers).verdict == "fits"
    # without a board: the rule alone; a forced strategy is never replaced
    assert plan_strategies(tx, plan, CompileOptions()).source == "rule"
    forced = plan_strategies(tx, plan, CompileOptions(board=tiny(100), strategy="Latency"))
    assert forced.source == "--strategy" and {s.strategy for s in forced.layers.values()} == {"Latency"}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_estimator_plan_when_rule_does_not_fit(kind, mlp_bundle, cnn_bundle):
    tx, plan, rule, luts = _rule_luts({"mlp": mlp_bundle, "cnn": cnn_bundle}[kind])
    board = tiny(luts // 2)  # the rule's plan needs 200 % of the LUTs
    sp = plan_strategies(tx, plan, CompileOptions(board=board, fit=fit_plan))
    be = fit_plan(tx, board, rule, available=buildable_strategies())
    assert be.verdict == "fits with another strategy"
    assert sp.source == "estimator" and sp.verdict == "fits" and sp.warning is None
    assert _as_tuples(sp.layers) == _as_tuples(be.alternative.strategies)
    assert _as_tuples(sp.layers) != _as_tuples(rule)
    again = fit_plan(tx, board, sp.layers)
    assert again.verdict == "fits" and again.binding == sp.binding
    nodes = {n.name: n for n in tx.graph}
    for name, s in sp.layers.items():
        w = tx.weight(name)
        n_in, n_out = (int(np.prod(w.shape[1:])), w.shape[0])
        assert s.reuse_factor in valid_reuse_factors(n_in, n_out, s.strategy, nodes[name].op), (name, s)
        if not da4ml_available():
            assert s.strategy != "distributed_arithmetic"
    # the summary qsp-compile prints describes that plan on the compiled graph
    first = summary_for_board(tx, board, strategies=sp.layers, hardware=tx).splitlines()[0]
    assert first.startswith("board tiny") and ": fits; binding LUT" in first


def test_warning_when_nothing_fits(mlp_bundle):
    tx, plan, rule, luts = _rule_luts(mlp_bundle)
    sp = plan_strategies(tx, plan, CompileOptions(board=tiny(100), fit=fit_plan))
    assert sp.source == "rule" and sp.verdict == "does not fit"
    assert _as_tuples(sp.layers) == _as_tuples(rule)
    assert sp.warning is not None and "fits tiny" in sp.warning and "LUT" in sp.warning
    assert sp.binding == "LUT" and sp.utilization == pytest.approx(luts / 100)


def test_estimator_plan_compiles_bit_exact(cnn_bundle, tmp_path):
    """One C++ build: the CNN with the estimator's plan (Resource convs at R <= n_in,
    resource_unrolled Dense) is bit-exact against the integer emulation."""
    tx, plan, rule, luts = _rule_luts(cnn_bundle)
    opts = CompileOptions(board=tiny(luts // 2), part=PYNQ.part, testbench=False, fit=fit_plan)
    res = compile_bundle(cnn_bundle, tmp_path / "hls", opts, max_inputs=64)
    assert res.strategy_plan.source == "estimator"
    assert {s.strategy for s in res.strategies.values()} <= {"Resource", "resource_unrolled"}
    assert any(s.reuse_factor > 1 for s in res.strategies.values())
    s = res.report.to_dict()["summary"]["paths"]
    assert s["hls4ml_predict"]["mismatches"] == 0 and s["hls4ml_predict"]["compared"] > 0
    txt = (tmp_path / "hls" / "precision.txt").read_text()
    assert "strategy (estimator, tiny: fits" in txt
