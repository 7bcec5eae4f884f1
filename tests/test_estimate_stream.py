"""The io_stream model of the estimator (docs/estimate.md, "io_stream"): hand-computed
FIFOs, line buffer, element-wise lanes and dataflow latency/II on a tiny conv net; io_parallel
unchanged; every shipped board gets an io_stream verdict; a ResNet-like model needs far fewer
LUTs in io_stream; ``qsp-estimate --io-type``; qsp-compile's board check models the io type
it compiles."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from qsp.boards import all_boards, get_board
from qsp.bundle import AddNode, AvgPool2dNode, FlattenNode, ReluNode
from qsp.estimate import estimate, fit_plan
from qsp.estimate.counts import count_graph
from qsp.estimate.resources import layer_resources
from qsp.estimate.stream import bram18_blocks, fifo_resources
from qsp.hardware import LayerStrategy
from tests.graphs import conv, linear, make, quant, random_codes

PYNQ = get_board("pynq-z2")
LAT = LayerStrategy("Latency", 1)


def _nonzero(rng, shape, bits=4, frac=2):
    w = random_codes(rng, shape, bits) / 2 ** frac
    w[w == 0] = 2 ** -frac
    return w


def tiny_net():
    """q0 [2,6,6] (4-bit, the input type) -> c1 (3x3, pad 1, 2 filters) -> r1 -> q1 (4-bit)
    -> add1 (+ q0: a skip, so q0 has two readers) -> flatten -> fc (72 -> 3)."""
    rng = np.random.default_rng(0)
    s = [2, 6, 6]
    nodes = [quant("q0", s, 4, 2, signed=False), conv("c1", s, 2, 3, 4, 2, padding=1),
             ReluNode(name="r1", in_shape=s, out_shape=s), quant("q1", s, 4, 2, signed=False),
             AddNode(name="add1", in_shape=s, out_shape=s, inputs=["q1", "q0"]),
             FlattenNode(name="fl", in_shape=s, out_shape=[72]), linear("fc", 72, 3, 4, 2)]
    b = make(nodes, {"c1.weight": _nonzero(rng, (2, 2, 3, 3)), "fc.weight": _nonzero(rng, (3, 72))})
    b.test_x = (rng.integers(0, 16, size=(4, 2, 6, 6)) / 4.0).astype(np.float32)
    return b


def resnet_like(c=8, hw=16):
    """A ResNet-8-like block: conv-relu-conv + skip, add, relu, average pool, dense."""
    rng = np.random.default_rng(1)
    s = [c, hw, hw]
    p = [c, hw // 4, hw // 4]
    nodes = [quant("q0", [4, hw, hw], 6, 4), conv("c1", [4, hw, hw], c, 3, 4, 2, padding=1),
             ReluNode(name="r1", in_shape=s, out_shape=s), quant("q1", s, 4, 2, signed=False),
             conv("c2", s, c, 3, 4, 2, padding=1), quant("q2", s, 6, 2),
             AddNode(name="add1", in_shape=s, out_shape=s, inputs=["q2", "q1"]),
             ReluNode(name="r2", in_shape=s, out_shape=s), quant("q3", s, 4, 2, signed=False),
             AvgPool2dNode(name="pool", in_shape=s, out_shape=p, kernel_size=[4, 4], stride=[4, 4]),
             quant("q4", p, 6, 3, signed=False),
             FlattenNode(name="fl", in_shape=p, out_shape=[math.prod(p)]), linear("fc", math.prod(p), 4, 4, 2)]
    b = make(nodes, {"c1.weight": _nonzero(rng, (c, 4, 3, 3)), "c2.weight": _nonzero(rng, (c, c, 3, 3)),
                     "fc.weight": _nonzero(rng, (4, math.prod(p)))})
    b.test_x = (rng.integers(-32, 32, size=(4, 4, hw, hw)) / 16.0).astype(np.float32)
    return b


# ----------------------------------------------------------------------------- FIFO mapping
def test_fifo_mapping_srl_lutram_bram():
    # 784 x 48 bits (a 16-channel 3-bit map of 28 x 28): above 1024 bits -> BRAM18, the
    # cheapest aspect: 1024 x 18 -> ceil(48/18) x 1 = 3 (512 x 36 would need 2 x 2 = 4)
    assert bram18_blocks(784, 48) == 3
    assert fifo_resources(784, 48).bram18 == 3 and fifo_resources(784, 48).lut == 0
    assert bram18_blocks(49, 704) == 20  # shallow and wide: 512 x 36, ceil(704 / 36)
    # at most 1024 bits: SRL when at most 2 deep (one LUT per bit), else LUTRAM (per 64 words)
    assert fifo_resources(2, 100).usage() == {"LUT": 100, "FF": 2, "DSP": 0, "BRAM18": 0}
    assert fifo_resources(36, 8).usage() == {"LUT": 8, "FF": 12, "DSP": 0, "BRAM18": 0}
    assert fifo_resources(128, 8).usage() == {"LUT": 16, "FF": 14, "DSP": 0, "BRAM18": 0}  # 1024 bits
    assert fifo_resources(129, 8).bram18 == 1  # 1032 bits


# ----------------------------------------------------------------------------- the tiny net by hand
@pytest.fixture(scope="module")
def tiny():
    b = tiny_net()
    strat = {"c1": LAT, "fc": LAT}
    return b, count_graph(b), fit_plan(b, PYNQ, strat, io_type="io_stream").plan


def test_tiny_streams_and_fifos(tiny):
    b, counts, plan = tiny
    L = plan.layers
    # one FIFO per stream a layer writes: q0 is the (transposed) input's type, read by c1 and
    # add1 -> a clone and one FIFO per reader; the zero-padded map c1 reads; r1 writes q1's
    # stream (q1 folds into r1's cast and is hoisted into c1's: c1's stream is 4-bit too);
    # the flatten's; fc writes the top-level output port (no FIFO)
    fifos = sorted(k for k in L if k.startswith("fifo:"))
    assert fifos == ["fifo:add1", "fifo:c1", "fifo:fl", "fifo:q0", "fifo:q0_cpy1", "fifo:q0_cpy2",
                     "fifo:r1", "fifo:zeropad:c1"]
    assert {"transpose:input", "zeropad:c1", "clone:q0"} <= set(L)
    assert "fifo:q1" not in L and "fifo:fc" not in L
    N = {n.name: n for n in counts.nodes}
    b_add = N["add1"].out_format.bits
    # depth x width, each <= 1024 bits and deeper than 2: LUTRAM, width x ceil(depth / 64)
    # LUTs, 2 x ceil(log2 depth) pointer FFs
    expect = {"fifo:q0": (36, 2 * 4), "fifo:q0_cpy1": (36, 8), "fifo:q0_cpy2": (36, 8),
              "fifo:zeropad:c1": (8 * 8, 2 * 4), "fifo:c1": (36, 2 * 4), "fifo:r1": (36, 2 * 4),
              "fifo:add1": (36, 2 * b_add), "fifo:fl": (2 * 6, 6 * b_add)}
    for k, (depth, width) in expect.items():
        assert L[k].usage() == {"LUT": width * math.ceil(depth / 64), "FF": 2 * math.ceil(math.log2(depth)),
                                "DSP": 0, "BRAM18": 0}, k
    # the input transpose holds the whole 2 x 6 x 6 x 4-bit input in registers
    assert L["transpose:input"].ff == 72 * 4


def test_tiny_line_buffer_and_lanes(tiny):
    b, counts, plan = tiny
    L = plan.layers
    N = {n.name: n for n in counts.nodes}
    kernel = layer_resources(N["c1"], LAT, PYNQ.dsp_mult_width)  # one kernel instance (io_parallel model)
    # line buffer: (K_h - 1) x C_in x b_in = 2 x 2 x 4 = 16 shift registers, 8 deep (the
    # padded width) -> one SRLC32E each; the 3 x 3 x 2 window of 4-bit values in FFs
    assert L["c1"].lut == kernel.lut + 16
    assert L["c1"].ff == kernel.ff + 3 * 3 * 2 * 4
    assert (L["c1"].dsp, L["c1"].multipliers) == (kernel.dsp, kernel.multipliers)
    # element-wise: C = 2 lanes, not H x W x C = 72
    b_r, b_add, b_q = N["r1"].out_format.bits, N["add1"].out_format.bits, N["q1"].out_format.bits
    assert (L["r1"].lut, L["r1"].ff) == (2 * math.ceil(b_r / 2), 2 * b_r)
    assert (L["add1"].lut, L["add1"].ff) == (2 * 1 * b_add, 2 * b_add)
    assert (L["q1"].lut, L["q1"].ff) == (2 * b_q, 2 * b_q)
    par = fit_plan(b, PYNQ, {"c1": LAT, "fc": LAT}).plan.layers
    assert par["r1"].lut == 72 * math.ceil(b_r / 2) and par["add1"].lut == 72 * b_add  # io_parallel: every element
    # the dense after the flatten computes like io_parallel's
    assert (L["fc"].lut, L["fc"].dsp) == (par["fc"].lut, par["fc"].dsp)


def test_tiny_latency_and_ii(tiny):
    b, counts, plan = tiny
    L = plan.layers
    N = {n.name: n for n in counts.nodes}
    k_depth = layer_resources(N["c1"], LAT, PYNQ.dsp_mult_width).latency_cycles - (36 - 1)
    fc_depth = layer_resources(N["fc"], LAT, PYNQ.dsp_mult_width).latency_cycles
    # per layer: II = words x per-word II; the conv reads the 8 x 8 padded map, one pixel a cycle
    assert L["c1"].ii_cycles == 64 and L["r1"].ii_cycles == 36 and L["add1"].ii_cycles == 36
    assert L["c1"].latency_cycles == ((3 - 1) * 8 + 3) * 1 + k_depth
    assert L["fc"].ii_cycles == 12 and L["fc"].latency_cycles == 12 + fc_depth  # reads 2 x 6 words of 6
    # the fill: transpose (12 input rows + 1) -> clone (+1) -> zero padding (+1) -> c1 -> r1
    # (1; q1 folded: 0) -> add1 (its q0 input cloned: +1; 1 + 1 adder stage) -> flatten (reads
    # 36 words + 1) -> fc
    fill = 13 + 1 + 1 + L["c1"].latency_cycles
    fill += 1  # r1
    fill += 1 + 2  # add1 (after its cloned input)
    fill += 37 + L["fc"].latency_cycles
    assert plan.total.ii_cycles == 64  # the slowest layer: the conv over the padded map
    assert plan.total.latency_cycles == fill + 64
    assert plan.io_type == "io_stream"


def test_reuse_factor_scales_conv_ii(tiny):
    b, counts, plan = tiny
    p = fit_plan(b, PYNQ, {"c1": LayerStrategy("Resource", 2), "fc": LAT}, io_type="io_stream").plan
    assert p.layers["c1"].ii_cycles == 64 * 2 and p.total.ii_cycles == 128
    assert p.layers["c1"].multipliers == math.ceil(36 / 2)  # Resource: ceil(n_in x n_out / R)


# ----------------------------------------------------------------------------- io_parallel unchanged
def test_io_parallel_numbers_unchanged():
    """The default is io_parallel, with the numbers of the model before io_stream existed
    (recorded from commit 72a8bfd on this graph)."""
    b = tiny_net()
    default = estimate(b, ["pynq-z2"]).boards[0]
    par = estimate(b, ["pynq-z2"], io_type="io_parallel").boards[0]
    assert default.io_type == par.io_type == "io_parallel"
    t = default.shown.total
    assert (t.lut, t.ff, t.dsp, t.bram18, t.latency_cycles, t.ii_cycles) == OLD_TINY
    assert par.shown.total == t


#: (LUT, FF, DSP, BRAM18, latency, II) of tiny_net on pynq-z2, qsp-estimate before io_stream
OLD_TINY = (4666, 4034, 0, 0, 40, 36)


# ----------------------------------------------------------------------------- boards, ResNet-like
def test_every_shipped_board_gets_an_io_stream_verdict():
    est = estimate(resnet_like(), "all", io_type="io_stream")
    assert {be.board.name for be in est.boards} == {b.name for b in all_boards()}
    for be in est.boards:
        assert be.verdict in ("fits", "fits with another strategy", "does not fit")
        assert be.io_type == "io_stream" and be.to_dict()["io_type"] == "io_stream"
        assert be.shown.total.latency_cycles > be.shown.total.ii_cycles > 0
    assert est.to_dict()["io_type"] == "io_stream"


def test_resnet_like_uses_far_fewer_luts_in_io_stream():
    b = resnet_like()
    strat = {"c1": LAT, "c2": LAT, "fc": LAT}
    par = fit_plan(b, PYNQ, strat).plan
    st = fit_plan(b, PYNQ, strat, io_type="io_stream").plan
    assert st.total.lut * 3 < par.total.lut, (st.total.lut, par.total.lut)
    # the same multipliers (one kernel instance per conv in both), the difference is the
    # element-wise layers: C lanes instead of H x W x C
    assert st.total.multipliers == par.total.multipliers
    assert st.layers["r1"].lut * 16 * 16 == par.layers["r1"].lut


# ----------------------------------------------------------------------------- CLI and compile
def test_cli_io_type_flag(tmp_path, capsys):
    from qsp.estimate.cli import main

    path = resnet_like().write(tmp_path / "bundle")
    assert main([str(path), "--board", "pynq-z2", "--io-type", "io_stream", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "io_stream" in out.splitlines()[0]
    d = json.loads((tmp_path / "o" / "estimate.json").read_text())
    assert d["io_type"] == "io_stream" and d["boards"][0]["io_type"] == "io_stream"
    assert any(k.startswith("fifo:") for k in d["boards"][0]["plan"]["layers"])
    assert "io_stream design" in (tmp_path / "o" / "report.html").read_text()
    assert main([str(path), "--board", "all"]) == 0
    assert "io_type io_parallel" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(path), "--io-type", "io_banana"])


def test_compile_board_check_uses_the_io_type():
    """qsp-compile's ``--strategy auto`` board check models the io type it compiles: on a
    board with LUTs between the rule plan's io_stream and io_parallel needs, io_stream keeps
    the rule's plan (it fits) while io_parallel must change it."""
    from qsp.compile.hls4ml_project import CompileOptions, plan_strategies, rule_strategies
    from qsp.compile.pipeline import prepare

    b, tx, log, plan = prepare(resnet_like(), steps=())
    rule = rule_strategies(tx, plan, CompileOptions(board=PYNQ))
    par = fit_plan(tx, PYNQ, rule).plan.total.lut
    st = fit_plan(tx, PYNQ, rule, io_type="io_stream").plan.total.lut
    assert st < par
    board = dataclasses.replace(PYNQ, name="mid", lut=(st + par) // 2)
    seen = []

    def spy(*a, **k):
        seen.append(k.get("io_type"))
        return fit_plan(*a, **k)

    sp_stream = plan_strategies(tx, plan, CompileOptions(board=board, io_type="io_stream", fit=spy))
    sp_par = plan_strategies(tx, plan, CompileOptions(board=board, io_type="io_parallel", fit=spy))
    assert seen == ["io_stream", "io_parallel"]
    assert sp_stream.verdict == "fits" and sp_stream.source == "rule"
    assert sp_par.source != "rule" or sp_par.verdict != "fits"
