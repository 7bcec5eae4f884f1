"""qsp-estimate's board numbers describe the graph qsp-compile builds (masks folded, dead
features/channels removed), so its verdict equals qsp-compile's summary; paper numbers
(footprint, BOPs) stay the trained bundle's."""
import json
import subprocess
import sys

import pytest

from qsp.boards import all_boards, get_board
from qsp.bundle import Bundle
from qsp.compile import transforms
from qsp.compile.hls4ml_project import CompileOptions, plan_strategies, rule_strategies
from qsp.compile.pipeline import prepare
from qsp.estimate import count_graph, default_strategies, estimate, fit_plan, summary_for_board
from qsp.estimate.core import DEFAULT_STEPS

BOARDS = ("pynq-z2", "arty-a7-35", "zcu102")


def _compile_summary(path, board):
    """qsp-compile's end summary for ``board``, computed as its CLI does (no C++ build)."""
    _, tx, _, plan = prepare(path)
    splan = plan_strategies(tx, plan, CompileOptions(board=board, fit=fit_plan))
    return splan, summary_for_board(path, board, strategies=splan.layers, hardware=tx)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_estimate_verdict_equals_compile_summary(kind, mlp_bundle, cnn_bundle):
    path = {"mlp": mlp_bundle, "cnn": cnn_bundle}[kind]
    est = estimate(path, list(BOARDS))
    for be in est.boards:
        splan, comp = _compile_summary(path, be.board.name)
        head, hwline = comp.splitlines()[:2]
        mine = summary_for_board(est, be.board.name).splitlines()
        assert mine[1] == hwline  # the same graph, described the same way
        if splan.source == "rule":  # compile builds the estimator's default plan
            assert mine[0] == head, (kind, be.board.name)
            assert mine[2] == comp.splitlines()[2]  # the same resources, to the LUT
        else:  # compile took the estimator's alternative: what qsp-estimate proposes
            assert be.verdict == "fits with another strategy" and head.endswith("fits; binding " + be.binding)
            assert {k: (s.strategy, s.reuse_factor) for k, s in be.alternative.strategies.items()} == \
                {k: (s.strategy, s.reuse_factor) for k, s in splan.layers.items()}
    pz = est.board("pynq-z2")
    assert pz.verdict == "fits" and pz.binding == "LUT"


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_default_plan_is_compiles_rule(kind, mlp_bundle, cnn_bundle):
    """The estimator's default plan is qsp-compile's auto rule, on every board."""
    path = {"mlp": mlp_bundle, "cnn": cnn_bundle}[kind]
    _, tx, _, plan = prepare(path)
    counts = count_graph(tx)
    for board in all_boards():
        rule = rule_strategies(tx, plan, CompileOptions(board=board))
        mine = default_strategies(counts, board)
        assert {k: (s.strategy, s.reuse_factor) for k, s in mine.items()} == \
            {k: (s.strategy, s.reuse_factor) for k, s in rule.items()}, board.name


def test_hardware_graph_described_and_paper_numbers_unchanged(mlp_bundle, cnn_bundle):
    assert DEFAULT_STEPS == transforms.DEFAULT_STEPS
    m = estimate(mlp_bundle, ["pynq-z2"])
    # the fixture MLP: mask1 zeros 16 whole features of dense1's 32, mask2 8 of dense2's 16
    assert (m.hardware.masks_folded, m.hardware.masks_removed, m.hardware.features_removed,
            m.hardware.channels_removed) == (2, 2, 24, 0)
    assert m.hardware.describe() == "hardware graph: 2 masks folded, 24 dead features removed (as qsp-compile builds it)"
    c = estimate(cnn_bundle, ["pynq-z2"])
    assert (c.hardware.masks_folded, c.hardware.masks_removed, c.hardware.channels_removed) == (2, 0, 3)
    assert c.hardware.describe() == "hardware graph: 2 masks folded, 3 dead channels removed (as qsp-compile builds it)"
    for path, e in ((mlp_bundle, m), (cnn_bundle, c)):
        t = estimate(path, ["pynq-z2"], as_trained=True)
        assert t.hardware.steps == () and "as trained" in t.hardware.describe()
        assert t.totals == e.totals and [x.to_dict() for x in t.layers] == [x.to_dict() for x in e.layers]
        # resources differ: the trained graph still computes the dead features
        tx, _ = transforms.run(Bundle.read(path))
        hw, tr = e.boards[0].plan.total, t.boards[0].plan.total
        assert hw.lut < tr.lut
        assert e.boards[0].plan.strategies.keys() == t.boards[0].plan.strategies.keys()  # same weight layers
        assert sum(n.out_shape[0] for n in tx.graph if n.op in ("linear", "conv2d")) < \
            sum(n.out_shape[0] for n in Bundle.read(path).graph if n.op in ("linear", "conv2d"))


def test_cli_says_which_graph(mlp_bundle, tmp_path, capsys):
    from qsp.estimate.cli import main
    assert main([str(mlp_bundle), "--board", "all", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    desc = "hardware graph: 2 masks folded, 24 dead features removed (as qsp-compile builds it)"
    assert desc in out
    d = json.loads((tmp_path / "o" / "estimate.json").read_text())
    assert d["hardware_graph"]["description"] == desc and d["hardware_graph"]["steps"] == list(DEFAULT_STEPS)
    assert desc in (tmp_path / "o" / "report.html").read_text()
    assert main([str(mlp_bundle), "--board", "pynq-z2", "--as-trained", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "hardware graph: the bundle as trained" in out
    d2 = json.loads((tmp_path / "t" / "estimate.json").read_text())
    assert d2["hardware_graph"]["steps"] == [] and d2["totals"] == d["totals"]
    assert d2["boards"][0]["plan"]["total"]["lut"] > next(
        b for b in d["boards"] if b["board"] == "pynq-z2")["plan"]["total"]["lut"]


def test_estimate_stays_free_of_hls4ml():
    code = ("import sys, qsp, qsp.estimate, qsp.report, qsp.compile.transforms\n"
            "assert 'hls4ml' not in sys.modules, 'hls4ml imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert get_board("pynq").name == "pynq-z2"
