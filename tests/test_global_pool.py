"""Global average pooling (an avgpool2d / avgpool1d node whose window is its whole input map)
compiles to hls4ml's global pooling (``global_pooling2d_cl`` / ``global_pooling1d_cl``:
one ``accum_t`` accumulator per channel, no window buffer) in io_parallel and io_stream,
bit-exact against qsp's emulation and onnxruntime: 7x7 (49 cells) and 3x3 (9) with the
quantizer after it, 4x4 (16, a power of two) with no quantizer; a one-LSB fault in that
layer's output is caught; the estimator models it (no line buffer, C accumulators)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qsp.bundle import AvgPool1dNode, FlattenNode, ReluNode
from qsp.errors import VerificationError
from qsp.fixedpoint import FixedFormat
from qsp.ops.pool import is_global

from tests.conftest import needs_gxx

from .graphs import avgpool, conv, linear, make, quant, random_codes


def _bundle(h=7, c=4, post=True, seed=0, n=24, w_bits=6):
    """input (2, h, h) -> q -> conv3x3 (pad 1) -> relu -> q1 -> global avgpool -> [q2] ->
    flatten -> dense."""
    rng = np.random.default_rng(seed)
    s = [c, h, h]
    nodes = [quant("input_quant", [2, h, h], 8, 5, True),
             conv("conv1", [2, h, h], c, 3, w_bits, w_bits - 1, padding=1, bbits=10, bfrac=6),
             ReluNode(name="relu1", in_shape=s, out_shape=s),
             quant("quant1", s, 7, 4, False),
             avgpool("gap", s, h)]
    if post:
        nodes.append(quant("quant2", [c, 1, 1], 8, 5, True))
    nodes += [FlattenNode(name="flatten1", in_shape=[c, 1, 1], out_shape=[c]),
              linear("dense1", c, 3, w_bits, w_bits - 1, bbits=10, bfrac=6)]
    w = {"conv1.weight": random_codes(rng, (c, 2, 3, 3), w_bits) / 2.0 ** (w_bits - 1),
         "conv1.bias": random_codes(rng, (c,), 10) / 2.0 ** 6,
         "dense1.weight": random_codes(rng, (3, c), w_bits) / 2.0 ** (w_bits - 1),
         "dense1.bias": random_codes(rng, (3,), 10) / 2.0 ** 6}
    b = make(nodes, w)
    b.test_x = rng.normal(0, 1.5, (n, 2, h, h)).astype(np.float32)
    b.test_y = None
    return b


def _bundle_1d(length=10, c=4, seed=0, n=24):
    """input (2, L) -> q -> flatten-free 1-D: conv1d is not needed; q -> relu -> q1 -> global
    avgpool1d -> q2 -> flatten -> dense."""
    rng = np.random.default_rng(seed)
    s = [c, length]
    nodes = [quant("input_quant", s, 8, 5, True),
             ReluNode(name="relu1", in_shape=s, out_shape=s),
             quant("quant1", s, 6, 4, False),
             AvgPool1dNode(name="gap", in_shape=s, out_shape=[c, 1], kernel_size=[length], stride=[length]),
             quant("quant2", [c, 1], 8, 5, True),
             FlattenNode(name="flatten1", in_shape=[c, 1], out_shape=[c]),
             linear("dense1", c, 3, 6, 5, bbits=10, bfrac=6)]
    w = {"dense1.weight": random_codes(rng, (3, c), 6) / 2.0 ** 5, "dense1.bias": random_codes(rng, (3,), 10) / 2.0 ** 6}
    b = make(nodes, w)
    b.test_x = rng.normal(0, 1.5, (n, c, length)).astype(np.float32)
    b.test_y = None
    return b


def _firmware(project) -> str:
    fw = project / "firmware"
    return "\n".join(p.read_text() for p in [fw / "myproject.cpp", fw / "parameters.h"])


def test_is_global():
    assert is_global(avgpool("p", [4, 7, 7], 7)) and is_global(avgpool("p", [4, 3, 3], 3))
    assert not is_global(avgpool("p", [4, 8, 8], 2)) and not is_global(avgpool("p", [4, 7, 7], 3, 4))
    assert is_global(AvgPool1dNode(name="p", in_shape=[4, 5], out_shape=[4, 1], kernel_size=[5], stride=[5]))
    assert not is_global(AvgPool1dNode(name="p", in_shape=[4, 6], out_shape=[4, 3], kernel_size=[2], stride=[2]))


@needs_gxx
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
@pytest.mark.parametrize("h, post", [(7, True), (3, True), (4, False)])
def test_global_avgpool_is_hls4ml_global_pooling_and_bit_exact(h, post, io_type, tmp_path):
    """The window of 49 and of 9 cells (no power of two: the mean truncated at the
    accumulator's fraction bits, then rounded to the quantizer after it) and of 16 (exact,
    no quantizer): hls4ml's global_pooling2d_cl computes every output bit for bit as qsp's
    emulation and onnxruntime (three-way verification, per-layer trace)."""
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    b = _bundle(h=h, post=post)
    res = compile_bundle(b, tmp_path, CompileOptions(io_type=io_type))
    assert res.report.mismatches == 0 and len(res.report.paths) == 3
    assert all(p.ran and p.outputs_compared == len(b.test_x) * 3 for p in res.report.paths)
    lp = res.plan.by_name()["gap"]
    assert lp.hls_class == "GlobalPooling2D"
    assert (lp.post is not None) == post
    fw = _firmware(res.project)
    assert "nnet::global_pooling2d_cl<" in fw and "nnet::pooling2d_cl<" not in fw
    assert f"static const unsigned in_height = {h};" in fw
    # the sum really is fractional for the odd windows (the division truncates)
    if post:
        assert lp.accum.frac > 4 + 3


@needs_gxx
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_global_avgpool1d_is_global_pooling1d(io_type, tmp_path):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    b = _bundle_1d()
    res = compile_bundle(b, tmp_path, CompileOptions(io_type=io_type))
    assert res.report.mismatches == 0 and all(p.ran for p in res.report.paths)
    assert res.plan.by_name()["gap"].hls_class == "GlobalPooling1D"
    fw = _firmware(res.project)
    assert "nnet::global_pooling1d_cl<" in fw and "nnet::pooling1d_cl<" not in fw


@needs_gxx
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_one_lsb_in_global_pool_output_is_caught(io_type, tmp_path):
    """The global pool's result one fraction bit coarser (its outputs then differ by one
    LSB of the quantizer where they round differently): verification fails, and the
    per-layer report names the global pool first."""
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle, prepare

    b = _bundle(h=7)
    lp = prepare(b)[3].by_name()["gap"]
    f = lp.result
    coarse = FixedFormat(f.bits - 1, f.frac - 1, f.signed, f.rounding)
    typ = coarse.ap_type() if lp.result_rounds else coarse.ap_type_plain()
    with pytest.raises(VerificationError):
        compile_bundle(b, tmp_path, CompileOptions(io_type=io_type), result_overrides={"gap": typ})
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["first_diverging_layer"] == "gap"


_DIV_CPP = r"""
#include <cstdio>
#include "ap_fixed.h"
struct cfg { static const unsigned in_height = H; static const unsigned in_width = WD; };
typedef ap_fixed<AW, AI> accum_t;
int main() {
    long long bad = 0, n = 0, off_floor = 0;
    for (long long k = KLO; k <= KHI; k++) {
        accum_t a; a.range() = k << UP;               // the window sum, at accum_t's fraction bits
        accum_t s = a / (cfg::in_height * cfg::in_width);  // io_stream: global_pooling2d_cl's AvgPoolPack
        accum_t p = a; p /= (unsigned)(H * WD);        // io_parallel: nnet::avg's y /= length
        long long want = (k << UP) / (long long)(H * WD);  // C++: truncation toward zero
        long long gs = s.range().to_int64(), gp = p.range().to_int64();
        gs = gs << (64 - AW) >> (64 - AW); gp = gp << (64 - AW) >> (64 - AW);  // sign-extend
        bad += (gs != want) + (gp != want); n++;
        long long a_ = k << UP, d_ = H * WD, floor_ = a_ / d_ - ((a_ % d_ != 0) && (a_ < 0));
        off_floor += (gs != floor_) + (gp != floor_);  // control: floor division is told apart
    }
    std::printf("%lld %lld %lld\n", n, bad, off_floor);
    return 0;
}
"""


@needs_gxx
@pytest.mark.parametrize("h, w, in_fmt, post_frac", [(7, 7, FixedFormat(7, 4, False), 5), (3, 3, FixedFormat(8, 5), 5),
                                                      (7, 7, FixedFormat(8, 3), 4), (5, 1, FixedFormat(6, 2), 6),
                                                      (4, 4, FixedFormat(8, 5), None)])
def test_accum_division_is_the_emulators_truncation(h, w, in_fmt, post_frac, tmp_path):
    """hls4ml's division of the global pool (``accum_t / unsigned`` in io_stream, ``accum_t
    /= unsigned`` in io_parallel) on every window sum the input type can produce, with the
    accum_t qsp's one avgpool rule gives: the quotient keeps accum_t's fraction bits and
    truncates toward zero, which is what the emulator computes (round_np 'zero' of S / n)."""
    import subprocess

    import hls4ml

    from qsp.fixedpoint import round_np
    from qsp.ops.pool import avgpool_frac
    from qsp.ops.registry import RULES

    node = avgpool("p", [2, h, w], h) if w == h else avgpool("p", [2, h, w], 1)
    node.kernel_size, node.stride = [h, w], [h, w]
    node.out_shape = [2, 1, 1]
    post = None if post_frac is None else FixedFormat(8, post_frac)
    t = RULES["avgpool2d"].types(None, node, [in_fmt], post)
    acc, n = t.accum, h * w
    up = avgpool_frac(in_fmt.frac, n, post_frac) - in_fmt.frac
    assert acc.frac == in_fmt.frac + up
    klo, khi = n * in_fmt.int_min, n * in_fmt.int_max
    inc = __import__("pathlib").Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    src = tmp_path / "div.cpp"
    src.write_text(_DIV_CPP)
    exe = tmp_path / "div"
    defs = dict(H=h, WD=w, AW=acc.bits, AI=acc.bits - acc.frac, KLO=klo, KHI=khi, UP=up)
    subprocess.run(["g++", "-O1", "-std=c++14", f"-I{inc}", *[f"-D{k}={v}LL" if k in ("KLO", "KHI") else f"-D{k}={v}"
                                                            for k, v in defs.items()], str(src), "-o", str(exe)],
                   check=True)
    count, bad, off_floor = map(int, subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split())
    assert count == khi - klo + 1 and bad == 0
    # the comparison can fail: against floor division (the other plausible rule) hls4ml's
    # quotients differ wherever a negative sum is not a multiple of the window
    neg_inexact = sum(1 for k in range(klo, min(khi, -1) + 1) if (k << up) % n)
    assert off_floor == 2 * neg_inexact
    # the emulator's kernel on the same sums is the same truncation
    k = np.arange(klo, khi + 1, dtype=np.int64) << up
    assert np.array_equal(round_np(k.astype(np.float64) / n, "zero").astype(np.int64), np.trunc(k / n).astype(np.int64))
    assert np.array_equal(round_np(k.astype(np.float64) / n, "zero").astype(np.int64),
                          np.sign(k) * (np.abs(k) // n))


def test_estimator_models_the_global_layer():
    """io_stream: per channel lane one accumulator and one adder of b_acc = min(b, b_in +
    ceil(log2 49)) = min(15, 7 + 6) = 13 bits and one division by 49 (the reciprocal
    ceil(2**19 / 49) = 10700 = 0b10100111001100 has 6 CSD digits: 5 adders of 13 bits); no
    line buffer, no window; II = the 49 input pixels, first output after them + 2. io_parallel:
    the 48 adders of 15 bits per channel plus the division (ceil(2**21 / 49) = 42800, 6 CSD
    digits: 5 x 15 LUTs). A 4x4 window divides by a shift (no LUTs)."""
    from qsp.boards import get_board
    from qsp.estimate import count_graph, fit_plan
    from qsp.hardware import LayerStrategy
    from qsp.ops.pool import const_div_luts

    b = _bundle(h=7)
    pynq = get_board("pynq-z2")
    st = {"conv1": LayerStrategy("Latency", 1), "dense1": LayerStrategy("Latency", 1)}
    nodes = {n.name: n for n in count_graph(b).nodes}
    assert nodes["gap"].out_format.bits == 15 and nodes["quant1"].out_format.bits == 7
    assert const_div_luts(13, 49) == 5 * 13 and const_div_luts(15, 49) == 5 * 15 and const_div_luts(13, 16) == 0
    s = fit_plan(b, pynq, st, io_type="io_stream").plan.layers["gap"]
    assert (s.lut, s.ff, s.dsp, s.bram18) == (4 * (13 + 5 * 13), 4 * (13 + 15), 0, 0)
    assert (s.latency_cycles, s.ii_cycles) == (49 + 2, 49)
    p = fit_plan(b, pynq, st, io_type="io_parallel").plan.layers["gap"]
    assert (p.lut, p.ff) == (4 * (48 * 15 + 5 * 15), 4 * 15)
    s16 = fit_plan(_bundle(h=4, post=False), pynq, st, io_type="io_stream").plan.layers["gap"]
    assert s16.ii_cycles == 16 and s16.lut == 4 * min(count_graph(_bundle(h=4, post=False)).nodes[4].out_format.bits,
                                                      7 + 4)
