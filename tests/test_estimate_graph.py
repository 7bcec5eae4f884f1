"""Estimator on DAG graphs (schema 2): per-op counts (depthwise / grouped conv, add,
scale_shift, concat, clip, global pooling) hand-computed on tests/graphs_dag.py, the footprint
with fan-out, formats from the emulator's range analysis, strategies that can be built, a
verdict on every shipped board, and the critical-path latency."""
import json

import numpy as np
import pytest

from qsp.boards import builtin_dirs, get_board
from qsp.bundle import AddNode, MaskNode, ReluNode
from qsp.bundle.footprint import float_footprint, footprint
from qsp.estimate import count_graph, default_strategies, estimate, fit_plan
from qsp.estimate.core import candidate_plans, make_plan
from qsp.verify.emulate import analyze

from .graphs import conv, linear, make, quant, random_codes
from .graphs_dag import dag_bundle

C, H = 4, 6  # dag_bundle's defaults


@pytest.fixture(scope="module")
def dag():
    return dag_bundle()[0]


@pytest.fixture(scope="module")
def est(dag):
    return estimate(dag, boards=None)


def _layers(e):
    return {le.name: le for le in e.layers}


def _conv_macs(w, alive_in, stride, padding, groups):
    """Brute force: products with a nonzero weight and an in-bounds, alive input element."""
    co, cg, kh, kw = w.shape
    ci, h, wd = alive_in.shape
    og = co // groups
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    n = 0
    for o in range(co):
        g = o // og
        for y in range(oh):
            for x in range(ow):
                for c in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            yy, xx = y * stride + i - padding, x * stride + j - padding
                            if 0 <= yy < h and 0 <= xx < wd and w[o, c, i, j] != 0 and alive_in[g * cg + c, yy, xx]:
                                n += 1
    return n


def test_depthwise_and_grouped_conv_counts(dag, est):
    L = _layers(est)
    dw, gc = L["dwconv"], L["gconv"]
    # dense: out_ch x OH x OW x (in_ch / groups) x kh x kw
    assert dw.macs_dense == C * H * H * 1 * 3 * 3 == 1296
    assert gc.macs_dense == C * H * H * (C // 2) * 1 * 1 == 288
    assert (dw.weights, gc.weights) == (C * 1 * 9, C * 2)
    wd, wg = dag.weight("dwconv"), dag.weight("gconv")
    alive = np.ones((C, H, H), bool)
    assert dw.macs == _conv_macs(wd, alive, 1, 1, C)
    # a 1x1 conv meets every input: 36 positions per nonzero weight
    assert gc.macs == _conv_macs(wg, alive, 1, 0, 2) == H * H * int(np.count_nonzero(wg))
    # BOPs = MACs x weight bits x input bits (quant3: 6 bits unsigned, quant4: 6 bits signed)
    assert dw.in_bits == 6 and gc.in_bits == 6
    assert (dw.bops, gc.bops) == (dw.macs * 6 * 6, gc.macs * 6 * 6)
    assert dw.bops_float == 1296 * 32 * 32
    cw = {n.name: n.weight for n in count_graph(dag).nodes if n.weight is not None}
    assert (cw["dwconv"].fan_in, cw["gconv"].fan_in, cw["conv2"].fan_in) == (9, 2, C * 9)
    assert cw["dwconv"].latency_only and cw["gconv"].latency_only and not cw["conv2"].latency_only


def test_add_scale_shift_concat_clip_counts(dag, est):
    L = _layers(est)
    add, ss = L["add1"], L["ss1"]
    # add: 0 MACs / BOPs, one add per element per extra input
    assert (add.macs, add.bops, add.weights, add.adds) == (0, 0, 0, C * H * H)
    assert est.totals.adds == C * H * H
    # scale_shift: one multiply + one add per element; BOPs = bits(x) x bits(scale)
    scale = dag.weight("ss1")
    elems = 2 * C * H * H
    assert ss.macs_dense == elems
    assert ss.macs == H * H * int(np.count_nonzero(scale))
    # x = clip(concat(6u, 6s) at frac 3, 0, 6): codes 0..48, 6 bits unsigned
    assert ss.in_bits == 6 and ss.weight_bits == 8
    assert ss.bops == ss.macs * 6 * 8
    assert (ss.weights, ss.biases, ss.bias_bits) == (2 * C, 2 * C, 8)
    for name in ("concat1", "clip1", "gap", "flatten1", "relu2"):
        assert (L[name].macs, L[name].bops, L[name].adds) == (0, 0, 0), name
    assert L["concat1"].out_elements == elems and L["gap"].out_elements == 2 * C
    # totals: sums over the weight layers (scale_shift included)
    wl = [le for le in est.layers if le.weight_storage]
    assert {le.name for le in wl} == {"conv1", "conv2", "dwconv", "gconv", "ss1", "dense1"}
    assert est.totals.macs == sum(le.macs for le in wl) and est.totals.bops == sum(le.bops for le in wl)


def test_formats_come_from_the_emulators_analysis(dag):
    """Every non-weight tensor's format is analyze's TensorInfo (ReLU unsigned, avg-pool
    fraction bits as the emulator keeps them); quantize nodes their own format."""
    steps = {s.node.name: s for s in analyze(dag)}
    for n in count_graph(dag).nodes:
        s = steps[n.name]
        if n.op == "quantize":
            assert n.out_format == s.node.format
        elif n.weight is None:
            assert (n.out_format.bits, n.out_format.frac, n.out_format.signed) == \
                (s.out_info.bits, s.out_info.frac, s.out_info.signed), n.name
        else:  # a weight layer's output is its accumulator, which holds every value
            assert n.out_format.frac == s.out_info.frac and n.out_format.bits >= s.out_info.bits
    nodes = {n.name: n for n in count_graph(dag).nodes}
    assert not nodes["relu1"].out_format.signed and not nodes["relu2"].out_format.signed
    assert nodes["gap"].out_format.frac == steps["gap"].out_info.frac


def test_footprint_counts_each_tensor_once(dag, est):
    fp = footprint(dag)
    wbits = 6  # every weight layer of dag_bundle has 6-bit weights; ss1's scale has 8
    nz = {k: int(np.count_nonzero(dag.weight(k))) for k in ("conv1", "conv2", "dwconv", "gconv", "ss1", "dense1")}
    assert {x.name: x.elements for x in fp.layers} == {"conv1": C * 3 * 9, "conv2": C * C * 9, "dwconv": C * 9,
                                                       "gconv": C * 2, "ss1": 2 * C, "dense1": 5 * 2 * C}
    assert fp.weight_bits == wbits * sum(v for k, v in nz.items() if k != "ss1") + 8 * nz["ss1"]
    # biases (and the scale_shift shift) are excluded, reported apart
    assert fp.bias_bits == 12 * C + 12 * C + 8 * 2 * C + 12 * 5
    # one point per quantize node: quant1 and quant3 fan out to two readers, counted once
    assert [x.name for x in fp.points] == ["input_quant"] + [f"quant{i}" for i in range(1, 8)]
    assert fp.activation_bits == 8 * 3 * H * H + 5 * 6 * C * H * H + 6 * 2 * C * H * H + 6 * 2 * C
    assert est.totals.footprint_bits == fp.total_bits
    ffp = float_footprint(dag)
    assert ffp.weight_bits == 32 * sum(x.elements for x in fp.layers)


def _fanout_mask_bundle(only_mask: bool):
    """input_quant -> fc1 -> relu -> q1 -> mask (zeros 2 of 4) -> fcA -> ... ; with
    ``only_mask=False`` q1 also feeds fcB and the two are added."""
    rng = np.random.default_rng(1)
    n = [quant("input_quant", [4], 8, 6), linear("fc1", 4, 4, 6, 5),
         ReluNode(name="relu1", in_shape=[4], out_shape=[4]),
         quant("q1", [4], 6, 3, False), MaskNode(name="mask1", in_shape=[4], out_shape=[4], sparsity=0.5),
         linear("fcA", 4, 3, 6, 5)]
    w = {k: random_codes(rng, s, 6) / 2.0 ** 5 for k, s in (("fc1.weight", (4, 4)), ("fcA.weight", (3, 4)),
                                                           ("fcB.weight", (3, 4)))}
    if not only_mask:
        fb = linear("fcB", 4, 3, 6, 5)
        fb.inputs = ["q1"]
        n += [fb, AddNode(name="add1", in_shape=[3], out_shape=[3], inputs=["fcA", "fcB"])]
    else:
        w.pop("fcB.weight")
    return make(n, w, {"mask1.mask": np.array([1.0, 0.0, 1.0, 0.0])})


def test_mask_after_a_fanned_out_quantizer():
    """A mask right after a quantize node zeroes the stored tensor only when it is the
    quantizer's only reader; with fan-out the other reader needs every element."""
    p1 = {x.name: x for x in footprint(_fanout_mask_bundle(True)).points}
    p2 = {x.name: x for x in footprint(_fanout_mask_bundle(False)).points}
    assert (p1["q1"].elements, p1["q1"].nonzeros) == (4, 2)
    assert (p2["q1"].elements, p2["q1"].nonzeros) == (4, 4)
    c1 = {n.name: n for n in count_graph(_fanout_mask_bundle(True)).nodes}
    c2 = {n.name: n for n in count_graph(_fanout_mask_bundle(False)).nodes}
    assert c1["q1"].masked and not c2["q1"].masked
    # fcA sees the masked input (2 alive of 4), fcB the whole tensor
    assert c2["fcA"].weight.macs <= 3 * 2 and c2["fcB"].weight.macs == int(np.count_nonzero(
        _fanout_mask_bundle(False).weight("fcB")))
    assert c2["add1"].adds == 3


def test_only_buildable_strategies(dag):
    counts = count_graph(dag)
    fixed = ("dwconv", "gconv")  # ss1 takes no strategy: modelled fully parallel
    for b in ("pynq-z2", "arty-a7-35"):
        board = get_board(b)
        d = default_strategies(counts, board)
        assert "ss1" not in d
        assert all((d[k].strategy, d[k].reuse_factor) == ("Latency", 1) for k in fixed)
        for label, plan in candidate_plans(counts, board):
            assert all((plan[k].strategy, plan[k].reuse_factor) == ("Latency", 1) for k in fixed), label
    # a given unbuildable strategy is modelled (and recorded) as the buildable one
    be = fit_plan(dag, "zcu102", {"dwconv": ("Resource", 4), "ss1": ("Resource", 2), "conv1": ("Resource", 3)})
    s = be.plan.strategies
    assert (s["dwconv"].strategy, s["dwconv"].reuse_factor) == ("Latency", 1) and "ss1" not in s
    assert be.plan.layers["ss1"].ii_cycles == 1
    assert (s["conv1"].strategy, s["conv1"].reuse_factor) == ("Resource", 3)
    # arty-a7-35 is too small for the all-Latency plan: the proposal still keeps them Latency
    a = fit_plan(dag, "arty-a7-35")
    for p in (a.plan, a.alternative):
        if p is not None:
            assert all(p.strategies[k].strategy == "Latency" for k in fixed)


def test_default_plan_is_compiles_rule_on_a_dag(dag):
    """The estimator's default plan is qsp-compile's auto rule on the graph it builds."""
    from qsp.boards import all_boards
    from qsp.compile.hls4ml_project import CompileOptions, rule_strategies
    from qsp.compile.pipeline import prepare

    b, x = dag_bundle()
    b.test_x = x
    _, tx, _, plan = prepare(b)
    counts = count_graph(tx)
    for board in all_boards():
        rule = rule_strategies(tx, plan, CompileOptions(board=board))
        mine = default_strategies(counts, board)
        assert {k: (s.strategy, s.reuse_factor) for k, s in mine.items()} == \
            {k: (s.strategy, s.reuse_factor) for k, s in rule.items()}, board.name


def test_resource_rules_new_ops(dag):
    counts = count_graph(dag)
    N = {n.name: n for n in counts.nodes}
    plan = make_plan(counts, get_board("zcu102"), default_strategies(counts, get_board("zcu102")), "t")
    r = plan.layers
    b = N["add1"].out_format.bits
    assert (r["add1"].dsp, r["add1"].lut, r["add1"].ff) == (0, C * H * H * b, C * H * H * b)
    assert (r["concat1"].lut, r["concat1"].ff, r["concat1"].dsp) == (0, 0, 0)
    bc = N["clip1"].out_format.bits
    assert (r["clip1"].lut, r["clip1"].dsp, r["clip1"].latency_cycles) == (2 * C * H * H * 2 * bc, 0, 0)
    # scale_shift: one constant multiplier per element (8 x 6 bits: LUTs), II 1
    assert r["ss1"].multipliers == N["ss1"].weight.macs and r["ss1"].ii_cycles == 1 and r["ss1"].dsp == 0
    # depthwise: one multiplier per nonzero weight (kh*kw per channel), II = output pixels
    assert r["dwconv"].multipliers == int(np.count_nonzero(dag.weight("dwconv")))
    assert r["dwconv"].ii_cycles == H * H


def _branching_bundle():
    """input_quant -> q0 -> {convA (3x3), convB (3x3)} -> qa, qb -> add -> flatten -> dense:
    two branches with latency each."""
    from qsp.bundle import FlattenNode

    rng = np.random.default_rng(2)
    s = [2, 4, 4]
    a = conv("convA", s, 2, 3, 6, 5, padding=1)
    bnode = conv("convB", s, 2, 3, 6, 5, padding=1)
    qa, qb = quant("qa", s, 6, 3), quant("qb", s, 6, 3)
    a.inputs, bnode.inputs, qa.inputs, qb.inputs = ["q0"], ["q0"], ["convA"], ["convB"]
    n = [quant("input_quant", s, 8, 6), quant("q0", s, 6, 3), a, bnode, qa, qb,
         AddNode(name="add1", in_shape=s, out_shape=s, inputs=["qa", "qb"]),
         FlattenNode(name="flat", in_shape=s, out_shape=[32]), linear("dense", 32, 3, 6, 5)]
    w = {"convA.weight": random_codes(rng, (2, 2, 3, 3), 6) / 32.0,
         "convB.weight": random_codes(rng, (2, 2, 3, 3), 6) / 32.0,
         "dense.weight": random_codes(rng, (3, 32), 6) / 32.0}
    return make(n, w)


def test_critical_path_latency():
    bundle = _branching_bundle()
    be = estimate(bundle, ["zcu102"], as_trained=True).boards[0]
    p = be.shown
    lat = {k: r.latency_cycles for k, r in p.layers.items()}
    assert lat["convA"] > 0 and lat["convB"] > 0
    want = max(lat["convA"], lat["convB"]) + lat["add1"] + lat["dense"]
    assert p.total.latency_cycles == want < sum(lat.values())
    assert be.latency_us == pytest.approx(want / be.board.clock_mhz)
    # a chain: the critical path is the sum
    dagp = estimate(dag_bundle()[0], ["zcu102"], as_trained=True).boards[0].shown
    assert dagp.total.latency_cycles == sum(r.latency_cycles for r in dagp.layers.values())


def test_energy_prices_adds(dag):
    from qsp.estimate import energy as E

    e = estimate(dag, ["pynq-z2"], as_trained=True)
    L = _layers(e)
    want = sum(le.macs * (E.e_mult(le.weight_bits, le.in_bits) + E.e_add(le.acc_bits)) for le in e.layers) \
        + L["add1"].adds * E.e_add(L["add1"].out_bits)
    assert e.boards[0].energy.compute == pytest.approx(want)


def test_cli_on_every_shipped_board(dag, tmp_path, capsys):
    from qsp.estimate.cli import main

    path = dag.write(tmp_path / "bundle")
    files = sorted(f for d in builtin_dirs() for f in d.glob("*.yaml"))
    assert len(files) >= 12
    assert main([str(path), "--board", "all", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    d = json.loads((tmp_path / "o" / "estimate.json").read_text())
    verdicts = {b["board"]: b["verdict"] for b in d["boards"]}
    assert set(verdicts) == {f.stem for f in files}
    assert set(verdicts.values()) <= {"fits", "fits with another strategy", "does not fit"}
    assert all(v in out for v in verdicts)
    for f in files:  # each shipped YAML on its own, by file
        assert main([str(path), "--board", str(f)]) == 0, f.name
        first = capsys.readouterr().out.splitlines()[0]
        assert first.startswith(f"board {f.stem} ")


def test_hardware_graph_falls_back_when_transforms_fail(dag, monkeypatch):
    """A graph qsp-compile's transformations cannot handle is estimated as trained, and the
    description says why (never silently)."""
    from qsp.estimate import core

    def boom(bundle, steps):
        raise ValueError("not on this graph")

    monkeypatch.setattr(core.transforms, "run", boom)
    e = estimate(dag, ["pynq-z2"])
    assert e.hardware.steps == () and "failed on this graph: ValueError: not on this graph" in e.hardware.describe()
    assert e.boards[0].verdict in ("fits", "fits with another strategy", "does not fit")


def test_no_resource_unrolled_where_compile_cannot_build_it():
    """qsp-compile writes a VivadoAccelerator project for boards with an hls4ml target, and
    hls4ml 1.3.0 rejects resource_unrolled there: the estimator neither defaults to it nor
    proposes it on those boards."""
    rng = np.random.default_rng(3)
    w = random_codes(rng, (64, 256), 6) / 32.0
    w[rng.random(w.shape) < 0.7] = 0  # 70 % pruned: resource_unrolled by the rule
    b = make([quant("input_quant", [256], 8, 6), linear("fc", 256, 64, 6, 5)], {"fc.weight": w})
    counts = count_graph(b)
    assert default_strategies(counts, get_board("kv260"))["fc"].strategy == "resource_unrolled"
    assert default_strategies(counts, get_board("pynq-z2"))["fc"].strategy != "resource_unrolled"
    for name in ("pynq-z2", "zcu102", "alveo-u50"):
        be = fit_plan(b, get_board(name), {"fc": ("Latency", 1)})
        for p in (be.plan, be.alternative):
            if p is not None and p.label != "given":
                assert all(s.strategy != "resource_unrolled" for s in p.strategies.values()), (name, p.label)
