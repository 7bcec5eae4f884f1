"""QONNX: qsp's export (Quant nodes) run by qonnx's executor and by hls4ml's ONNX frontend
(csim) equals qsp's emulation bit for bit; qonnx's inference_cost agrees with qsp's counts;
a QONNX model made elsewhere (Brevitas-style, by hand) goes estimate -> compile -> csim.
Every exactness check is shown to fail on a one-LSB (or one-rounding-mode) fault."""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qsp.bundle import Bundle
from qsp.errors import QspError, UnsupportedLayerError
from qsp.export.qonnx import build_qonnx, run_qonnx
from qsp.fixedpoint import FixedFormat
from qsp.verify.emulate import emulate

from .bundles import build_bundle
from .graphs_dag import dag_bundle
from .conftest import needs_gxx
from .qonnx_fixtures import brevitas_mlp

PLAN = dict(steps=20, weight_bits=6, act_bits=6, weight_sparsity=0.5)


@pytest.fixture(scope="module")
def bundles():
    mlp = build_bundle("mlp", act_sparsity=0.5, **PLAN)
    cnn = build_bundle("cnn", act_sparsity=0.5, **PLAN)
    dag, x = dag_bundle()
    dag.test_x = x
    return {"mlp": mlp, "cnn": cnn, "dag": dag}


def _init(model, name_part):
    return next(t for t in model.graph.initializer if name_part in t.name)


def _set(model, t, arr):
    t.CopyFrom(numpy_helper.from_array(np.asarray(arr, numpy_helper.to_array(t).dtype), t.name))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "dag"])
def test_qonnx_executor_equals_emulation(bundles, kind):
    b = bundles[kind]
    m = build_qonnx(b)
    ops = {n.op_type for n in m.graph.node}
    assert "Quant" in ops and not ops & {"QuantizeLinear", "DequantizeLinear"}
    x = b.test_x[:6]
    ref = emulate(b, x)
    assert np.array_equal(run_qonnx(m, x), ref)


def test_one_lsb_and_rounding_faults_are_caught(bundles):
    b = bundles["mlp"]
    x = b.test_x[:6]
    ref = emulate(b, x)
    m = build_qonnx(b)
    last = b.graph[-1]
    bad = copy.deepcopy(m)
    t = _init(bad, f"{last.name}/bias")
    v = numpy_helper.to_array(t).copy()
    v[3] += 2.0 ** -last.bias.frac  # one LSB of one output's bias
    _set(bad, t, v)
    y = run_qonnx(bad, x)
    assert not np.array_equal(y, ref) and np.count_nonzero(y != ref) == len(x)  # exactly output 3 of each input
    bad = copy.deepcopy(m)
    q = next(n for n in bad.graph.node if n.op_type == "Quant" and n.input[0] == "input")
    next(a for a in q.attribute if a.name == "rounding_mode").s = b"FLOOR"  # one rounding mode
    assert not np.array_equal(run_qonnx(bad, x), ref)


def test_rounding_modes_refused_or_exact(bundles):
    b, x = dag_bundle()
    # nearest on a ReLU'd (non-negative) value: QONNX HALF_UP, exact
    b.qspec.node("quant1").format = FixedFormat(6, 3, False, "nearest")
    b.qspec.node("quant4").format = FixedFormat(6, 3, True, "zero")  # DOWN
    assert np.array_equal(run_qonnx(build_qonnx(b), x[:4]), emulate(b, x[:4]))
    b.qspec.node("quant2").format = FixedFormat(6, 3, True, "nearest")  # signed input: no QONNX mode
    with pytest.raises(QspError, match=r"quant2.*'nearest'.*HALF_UP.*QDQ"):
        build_qonnx(b)
    b.qspec.node("quant2").format = FixedFormat(1, 0, True)
    with pytest.raises(QspError, match="1-bit signed.*bipolar"):
        build_qonnx(b)


@pytest.mark.slow
@needs_gxx
def test_hls4ml_onnx_frontend_csim_equals_emulation(tmp_path):
    from qsp.export.qonnx import convert_with_hls4ml

    b = build_bundle("mlp", act_sparsity=0.0, **PLAN)  # hls4ml's frontend has no constant-mask Mul
    x = b.test_x[:32]
    ref = emulate(b, x)
    hm = convert_with_hls4ml(build_qonnx(b), tmp_path / "prj")
    hm.compile()
    y = np.asarray(hm.predict(np.ascontiguousarray(x.reshape(len(x), -1), np.float64)), np.float64)
    assert np.array_equal(y.reshape(ref.shape), ref)
    # the check fails on one LSB of one output
    y[0, 0] += 2.0 ** -b.graph[-1].bias.frac
    assert not np.array_equal(y.reshape(ref.shape), ref)


def test_inference_cost_agrees_with_qsp_counts(bundles):
    from qonnx.util.inference_cost import inference_cost

    from qsp.estimate.core import estimate
    from qsp.export.qonnx import qonnx_wrapper

    for kind, b in (("mlp", build_bundle("mlp", act_sparsity=0.0, **PLAN)), ("cnn", bundles["cnn"])):
        w = qonnx_wrapper(build_qonnx(b), cleanup=False)
        dense = inference_cost(w, discount_sparsity=False)["total_cost"]
        sparse = inference_cost(copy.deepcopy(w), discount_sparsity=True)["total_cost"]
        t = estimate(b, None).totals
        assert dense["total_macs"] == t.macs_dense, kind
        assert dense["total_bops"] == t.bops_dense, kind
        assert dense["total_mem_w_bits"] == t.weight_bits_dense, kind
        assert sparse["total_mem_w_elems"] == t.nonzeros, kind
        if kind == "mlp":  # no activation masks, no padding: the same discounted MACs and BOPs
            assert sparse["total_macs"] == t.macs and sparse["total_bops"] == t.bops
        else:  # qsp also skips MACs on statically zero inputs (masks, padding): docs/qonnx.md
            assert t.macs < sparse["total_macs"]


# ----------------------------------------------------------------------------- import
@pytest.fixture
def brevitas_file(tmp_path):
    p = tmp_path / "brevitas_mlp.onnx"
    onnx.save(brevitas_mlp(), str(p))
    return p


def test_import_emulation_equals_qonnx_on_the_original(brevitas_file):
    b = Bundle.read(brevitas_file)
    assert [n.op for n in b.graph] == ["quantize", "flatten", "linear", "relu", "quantize", "linear"]
    assert b.graph[-1].weight.frac == [4, 5, 4, 5, 4]  # per-row weight scales kept
    x = b.test_x[:48]
    assert np.array_equal(emulate(b, x), run_qonnx(brevitas_file, x, cleanup=False))


@pytest.mark.slow
@needs_gxx
def test_import_estimate_compile_csim(brevitas_file, tmp_path, capsys):
    from qsp.compile.pipeline import compile_bundle
    from qsp.estimate.cli import main as estimate_main

    assert estimate_main([str(brevitas_file), "--board", "pynq-z2"]) == 0
    assert "pynq-z2" in capsys.readouterr().out
    res = compile_bundle(brevitas_file, tmp_path / "hls", max_inputs=40)  # raises unless bit-exact
    s = res.report.to_dict()["summary"]
    assert all(v["mismatches"] == 0 and v["compared"] == 200 for v in s["paths"].values())
    x = Bundle.read(brevitas_file).test_x[:40]
    csim = np.asarray(res.hls_model.predict(np.ascontiguousarray(x.reshape(40, -1), np.float64)), np.float64)
    original = run_qonnx(brevitas_file, x, cleanup=False)
    assert np.array_equal(csim, original)
    # qsp-compile wrote the QONNX export of the verified graph too; qonnx runs it to the same outputs
    assert np.array_equal(run_qonnx(tmp_path / "hls" / "model.qonnx.onnx", x[:8]), original[:8])
    # one LSB of one bias in the original model: the same comparison fails
    bad = brevitas_mlp()
    t = _init(bad, "fc2_bias")
    v = numpy_helper.to_array(t).copy()
    v[1] = np.round(v[1] * 256) / 256 + 1 / 256.0
    _set(bad, t, v)
    assert not np.array_equal(csim, run_qonnx(bad, x, cleanup=False))


def _edit(model, node_name, **attrs):
    n = next(n for n in model.graph.node if n.name == node_name)
    for a in n.attribute:
        if a.name in attrs:
            v = attrs[a.name]
            if isinstance(v, str):
                a.s = v.encode()
            else:
                a.i = v
    return model


@pytest.mark.parametrize("change, match", [
    (lambda m: _set(m, _init(m, "QuantReLU_0_scale"), 0.3), r"QuantReLU_0.*not a power of two"),
    (lambda m: _edit(m, "QuantReLU_0", rounding_mode="CEIL"), r"QuantReLU_0.*CEIL"),
    (lambda m: _edit(m, "QuantReLU_0", narrow=1), r"QuantReLU_0.*narrow"),
    (lambda m: setattr(next(n for n in m.graph.node if n.name == "Relu_0"), "op_type", "Sigmoid"),
     r"Relu_0.*Sigmoid.*not supported"),
    (lambda m: setattr(next(n for n in m.graph.node if n.name == "QuantReLU_0"), "op_type", "BipolarQuant"),
     r"QuantReLU_0.*BipolarQuant.*bipolar"),
])
def test_import_refuses_naming_the_node(tmp_path, change, match):
    m = brevitas_mlp()
    change(m)
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    with pytest.raises(UnsupportedLayerError, match=match):
        Bundle.read(p)


def test_import_qsp_does_not_import_qonnx():
    code = "import qsp, qsp.bundle, qsp.export.qonnx, sys; print('qonnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
