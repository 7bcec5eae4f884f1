"""Estimator: exact counts (footprint, MACs, BOPs, storage) for hand-computed models, the
resource model's rules, and the fit verdicts."""
import math

import numpy as np
import pytest

from qsp.boards import get_board
from qsp.bundle import Bundle, LinearNode, MaskNode, ModelRef, QSpec, QuantNode, ReluNode, TaskInfo, WeightFormat
from qsp.bundle.footprint import footprint
from qsp.estimate import csd_digits, estimate, summary_for_board, valid_reuse_factors
from qsp.estimate import energy as E
from qsp.fixedpoint import FixedFormat


def _bundle(nodes, weights, masks=None):
    spec = QSpec(TaskInfo("t", "classification", "accuracy", list(nodes[0].in_shape), list(nodes[-1].out_shape), 2),
                 ModelRef("x:y"), nodes)
    return Bundle(spec, weights, masks or {}).validate()


def hand_model():
    """input_quant(8u,[4]) -> fc1 4->3 (4-bit, 6 of 12 nonzero, bias) -> relu -> mask [1,0,1]
    -> q2 (6u) -> fc2 3->2 (8-bit, 4 of 6 nonzero, no bias)."""
    w1 = np.array([[1, 0, -2, 0.5], [0, 0, 0, 0.25], [-1, 1, 0, 0]])
    w2 = np.array([[1, 2, 0], [0, 0.5, -1]])
    nodes = [
        QuantNode("input_quant", [4], [4], format=FixedFormat(8, 8, False)),
        LinearNode("fc1", [4], [3], in_features=4, out_features=3, weight=WeightFormat(4, 2),
                   bias=FixedFormat(8, 4), nonzeros=6, weight_sparsity=0.5),
        ReluNode("relu1", [3], [3]),
        MaskNode("mask1", [3], [3], sparsity=1 / 3),
        QuantNode("q2", [3], [3], format=FixedFormat(6, 4, False)),
        LinearNode("fc2", [3], [2], in_features=3, out_features=2, weight=WeightFormat(8, 4), bias=None,
                   nonzeros=4, weight_sparsity=1 / 3),
    ]
    return _bundle(nodes, {"fc1.weight": w1, "fc1.bias": np.zeros(3), "fc2.weight": w2},
                   {"mask1.mask": np.array([1.0, 0.0, 1.0])})


def test_hand_counts_exact():
    est = estimate(hand_model(), boards=None)
    L = {le.name: le for le in est.layers}
    fc1, fc2 = L["fc1"], L["fc2"]
    assert (fc1.weights, fc1.nonzeros, fc1.biases, fc1.params) == (12, 6, 3, 15)
    assert (fc1.macs_dense, fc1.macs, fc1.weight_bits, fc1.in_bits) == (12, 6, 4, 8)
    assert (fc1.bops, fc1.bops_dense, fc1.bops_float) == (6 * 4 * 8, 12 * 4 * 8, 12 * 32 * 32)
    # fc2 sees inputs 0 and 2 only (mask): w[0,0] and w[1,2] count, w[0,1] and w[1,1] do not
    assert (fc2.macs_dense, fc2.macs, fc2.in_bits, fc2.in_nonzero) == (6, 2, 6, 2)
    assert fc2.bops == 2 * 8 * 6
    t = est.totals
    assert (t.macs, t.bops, t.bops_float) == (8, 192 + 96, (12 + 6) * 1024)
    # paper footprint: 4*6 + 8*4 weight bits; 8*4 input + 6*2 unmasked q2 elements
    assert (t.footprint_weight_bits, t.footprint_activation_bits, t.footprint_bits) == (56, 44, 100)
    assert t.float_footprint_bits == 32 * (12 + 6) + 32 * (4 + 3)
    fp = footprint(hand_model())
    assert t.footprint_bits == fp.total_bits
    # storage: bitmask beats dense and CSR for both (12+24=36 < 48; 6+32=38 < 48, 49)
    assert (fc1.weight_storage.dense_bits, fc1.weight_storage.sparse_bits, fc1.weight_storage.encoding) == (48, 36, "bitmask")
    assert (fc2.weight_storage.sparse_bits, fc2.weight_storage.encoding) == (38, "bitmask")
    assert L["q2"].activation_storage.sparse_bits == 2 * 6 + 3 and L["q2"].activation_storage.encoding == "static-mask"
    assert (t.weight_bits_dense, t.weight_bits_sparse, t.activation_bits_dense, t.activation_bits_sparse) == (96, 74, 50, 47)
    assert t.bias_bits == 3 * 8


def test_energy_formula():
    est = estimate(hand_model(), boards=["pynq-z2"])
    L = {le.name: le for le in est.layers}
    be = est.boards[0]
    want = sum(L[n].macs * (E.e_mult(L[n].weight_bits, L[n].in_bits) + E.e_add(L[n].acc_bits)) for n in ("fc1", "fc2"))
    assert be.energy.compute == pytest.approx(want)
    assert be.energy_float.compute == pytest.approx(18 * (3.7 + 0.9))
    assert not be.energy.weights_in_dram
    assert be.energy.weights == pytest.approx(74 / 64 * 10.0)  # 74 bits from an SRAM < 8 KB
    assert E.e_mult(32, 32) == pytest.approx(3.2) and E.e_sram_64(32 * 1024) == pytest.approx(20.0)
    assert E.e_sram_64(math.sqrt(32 * 1024 * 1024 * 1024)) == pytest.approx(math.sqrt(20 * 100))


def test_csd_and_reuse():
    assert list(csd_digits(np.array([0, 1, 2, 3, 7, 11, -7, 127, -128]))) == [0, 1, 1, 2, 2, 3, 2, 2, 1]
    assert valid_reuse_factors(4, 3) == [1, 2, 4, 12]


def _big_model(n_in=2048, n_out=1024, bits=8, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, size=(n_out, n_in)).astype(np.float64) / 2 ** 7
    nz = int(np.count_nonzero(w))
    nodes = [QuantNode("input_quant", [n_in], [n_in], format=FixedFormat(8, 8, False)),
             LinearNode("fc", [n_in], [n_out], in_features=n_in, out_features=n_out, weight=WeightFormat(bits, 7),
                        bias=None, nonzeros=nz)]
    return _bundle(nodes, {"fc.weight": w})


def test_too_large_for_pynq_z2():
    est = estimate(_big_model(), boards=["pynq-z2", "zcu102"])
    pz, zcu = est.boards
    assert pz.verdict == "does not fit"
    assert pz.binding == "BRAM18"  # 16.8 Mb of weights vs 5.2 Mb of block RAM
    assert pz.shown.utilization(pz.board)["BRAM18"] > 1.0
    assert pz.energy.weights_in_dram and pz.energy_float.weights_in_dram
    # qsp-compile's rule: 2,088,974 multipliers > 2,520 DSPs -> Resource, smallest valid R >= 829
    assert zcu.verdict == "fits" and zcu.alternative is None
    assert (zcu.plan.strategies["fc"].strategy, zcu.plan.strategies["fc"].reuse_factor) == ("Resource", 1024)
    zl = estimate(_big_model(), boards=["zcu102"], strategies={"fc": "Latency"}).boards[0]
    assert zl.verdict == "fits with another strategy"
    assert zl.alternative is not None and "reuse" in zl.alternative.label
    s = summary_for_board(est, "pynq")
    assert "does not fit" in s and "BRAM18" in s and "float32" in s


def test_small_fits_and_given_strategy(mlp_bundle):
    est = estimate(mlp_bundle, boards=["zcu102"])
    assert est.boards[0].verdict == "fits"
    fp = footprint(Bundle.read(mlp_bundle))
    assert est.totals.footprint_bits == fp.total_bits
    given = {n: ("Resource", 16) for n in ("dense1",)}
    e2 = estimate(mlp_bundle, boards=["zcu102"], strategies=given)
    p = e2.boards[0].plan
    assert p.label == "given" and p.strategies["dense1"].reuse_factor == 16
    assert p.layers["dense1"].ii_cycles == 16


def test_dsp_rule():
    from qsp.estimate.resources import dsps_per_multiply, uses_dsp
    assert not uses_dsp(8, 8) and uses_dsp(10, 10) and uses_dsp(16, 8)
    assert dsps_per_multiply(16, 16, get_board("pynq-z2").dsp_mult_width) == 1
    assert dsps_per_multiply(32, 32, (27, 18)) == 4


def test_cli(mlp_bundle, tmp_path, capsys):
    from qsp.estimate.cli import main
    assert main([str(mlp_bundle), "--board", "all", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    for b in ("pynq-z2", "zcu102", "arty-a7-35", "alveo-u250"):
        assert b in out
    assert (tmp_path / "o" / "estimate.json").exists() and (tmp_path / "o" / "report.html").exists()
    import json
    d = json.loads((tmp_path / "o" / "estimate.json").read_text())
    assert d["totals"]["footprint_bits"] == footprint(Bundle.read(mlp_bundle)).total_bits
    assert main([str(mlp_bundle), "--board", "pynq-z2"]) == 0
    out = capsys.readouterr().out
    assert "footprint" in out and "BOPs" in out and "energy/inf" in out and "float32 dense" in out
    assert main([str(mlp_bundle), "--board", "nosuchboard"]) == 2
    assert "known boards" in capsys.readouterr().err


def test_float_baseline_is_the_network_before_channel_removal(cnn_bundle):
    """DJPQ bundles have their pruned channels removed (RemovePrunedChannels, as export_djpq
    does); the float32 dense baseline (BOPs, footprint) is still the original network's."""
    from qsp.bundle.footprint import float_footprint
    from qsp.djpq import RemovePrunedChannels

    b = Bundle.read(cnn_bundle)
    conv1 = next(n for n in b.graph if n.op == "conv2d")
    for k in ("weight", "bias"):
        a = b.weights[f"{conv1.name}.{k}"].copy()
        a[[1, 3]] = 0
        b.weights[f"{conv1.name}.{k}"] = a
    conv1.nonzeros = int(np.count_nonzero(b.weights[f"{conv1.name}.weight"]))
    conv1.kept_outputs = [0, 2]
    after = RemovePrunedChannels().apply(b)
    assert after.qspec.extra["removed_channels"][conv1.name]["original"] == 4
    t0, t = estimate(b, None).totals, estimate(after, None).totals
    assert t0.float_baseline == "graph" and t.float_baseline.startswith("original dense")
    assert t.float_footprint_bits == t0.float_footprint_bits == float_footprint(b).total_bits
    assert float_footprint(after).total_bits < t.float_footprint_bits  # the shrunk graph's own
    assert t.bops_float == t0.bops_float == sum(le.bops_float for le in estimate(b, None).layers)
    assert sum(le.bops_float for le in estimate(after, None).layers) < t.bops_float
    # the DJPQ trainer's own count of the original model, where present, is the one used
    after.qspec.extra["djpq"] = {"bops_fp32": t0.bops_float + 1}
    assert estimate(after, None).totals.bops_float == t0.bops_float + 1
