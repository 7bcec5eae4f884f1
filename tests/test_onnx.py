"""ONNX export: onnxruntime equals the integer-exact emulation bit for bit."""
import json

import numpy as np
import onnx
import pytest

from qsp.bundle import PixelShuffleNode, ReluNode, read_bundle
from qsp.export.onnx import OPSET, build_onnx, layer_report, run_onnx, write_onnx
from qsp.fixedpoint import ROUNDING_MODES
from qsp.verify import emulate
from tests.bundles import build_bundle
from tests.graphs import avgpool, conv, make, quant, random_codes, wide_bundle


def _assert_traces_equal(bundle, model, x):
    em = emulate(bundle, x, trace=True)
    ox = run_onnx(model, x, trace=True)
    assert list(ox) == list(em) == [n.name for n in bundle.graph]
    for name in em:
        assert np.array_equal(em[name], ox[name]), f"{name}: {np.count_nonzero(em[name] != ox[name])} differ"
    return em, ox


def _tie_inputs(bundle, n=64, seed=0):
    """Inputs on the half-grid of the input quantizer (every one a rounding tie) mixed
    with plain random ones."""
    rng = np.random.default_rng(seed)
    fmt = bundle.graph[0].format
    shape = [n] + list(bundle.graph[0].in_shape)
    ties = (2 * rng.integers(fmt.int_min, fmt.int_max, size=shape) + 1) / 2.0 ** (fmt.frac + 1)
    plain = rng.random(shape)
    return np.concatenate([ties, plain]).astype(np.float32)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fixture_bundles_bit_exact(kind, request):
    path = request.getfixturevalue(f"{kind}_bundle")
    b = read_bundle(path)
    onnx_path = write_onnx(b)
    assert onnx_path == path / "model.onnx"
    model = onnx.load(str(onnx_path))
    assert model.opset_import[0].version == OPSET
    onnx.checker.check_model(model, full_check=True)
    y = emulate(b, b.test_x)
    for optimize in (True, False):
        assert np.array_equal(y, run_onnx(onnx_path, b.test_x, optimize=optimize))
    em, ox = _assert_traces_equal(b, model, b.test_x)
    quants = [n.name for n in b.graph if n.op == "quantize"]
    assert set(quants) <= set(ox) and len(quants) == 3
    # every (convergent, <= 16-bit) quantize node is a real QuantizeLinear/DequantizeLinear
    # pair, except next to a max-pool or concat (onnxruntime's QDQ propagation across those
    # rejects mixed-sign pairs: the exact chain there, see export/onnx.py)
    ops = [(n.name.split("/")[0], n.op_type) for n in model.graph.node]
    from qsp.bundle import consumers
    cons, prod = consumers(b.graph), {n.name: n for n in b.graph}
    for q in quants:
        near = {c.op for c in cons[q]} | {prod[i].op for i in prod[q].inputs if i in prod}
        if near & {"maxpool2d", "concat"}:
            assert (q, "Round") in ops and (q, "QuantizeLinear") not in ops
        else:
            assert (q, "QuantizeLinear") in ops and (q, "DequantizeLinear") in ops
    # weights are integer initializers (int8 codes)
    inits = {i.name: i for i in model.graph.initializer}
    wq = [i for name, i in inits.items() if "/weight_q" in name]
    assert wq and all(i.data_type == onnx.TensorProto.INT8 for i in wq)
    assert not any(layer["float64_compute"] for layer in layer_report(model))


@pytest.mark.parametrize("mode", sorted(ROUNDING_MODES))
def test_every_rounding_mode_bit_exact(mode):
    b = build_bundle("mlp", steps=16, n_test=8, rounding=mode)
    assert all(n.format.rounding == mode for n in b.graph if n.op == "quantize")
    model = build_onnx(b)
    x = _tie_inputs(b)
    em, ox = _assert_traces_equal(b, model, x)
    qnodes = {n.name.split("/")[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    if mode == "convergent":
        assert qnodes == {"input_quant", "quant1", "quant2"}
    else:
        assert not qnodes
    # the inputs really are ties, and the rounding mode decides them
    fmt = b.graph[0].format
    scaled = x[:64].astype(np.float64) * 2.0 ** fmt.frac
    assert np.all(scaled - np.floor(scaled) == 0.5)


def test_wide_layers_use_float64_and_stay_exact():
    b, x = wide_bundle()
    model = build_onnx(b)
    rep = {layer["node"]: layer for layer in layer_report(model)}
    assert rep["conv1"]["float64_compute"] and rep["conv1"]["bound_bits"] == 38
    assert rep["dense1"]["float64_compute"] and rep["dense1"]["dtype"] == "float64"
    assert not rep["input_quant"]["float64_compute"] and rep["quant1"]["dtype"] == "float32"
    assert "Conv" not in {n.op_type for n in model.graph.node}  # the im2col MatMul instead
    _assert_traces_equal(b, model, x)


def test_avgpool_and_pixel_shuffle_both_paths():
    rng = np.random.default_rng(5)
    for bits in (8, 20):  # 8: float32 AveragePool + exact sum recovery; 20: float64 im2col sums
        nodes = [quant("input_quant", [8, 6, 6], bits, 4), avgpool("avg", [8, 6, 6], 3),
                 ReluNode(name="relu", in_shape=[8, 2, 2], out_shape=[8, 2, 2]),
                 quant("q", [8, 2, 2], 6, 1, True, "nearest"),
                 PixelShuffleNode(name="ps", in_shape=[8, 2, 2], out_shape=[2, 4, 4], factor=2),
                 avgpool("avg2", [2, 4, 4], 2)]
        b = make(nodes)
        x = (random_codes(rng, (32, 8, 6, 6), bits) / 16.0).astype(np.float32)
        x[0, 0, :3, :3] = 0.25  # window sum 36 codes: a tie at q's grid
        model = build_onnx(b)
        em, _ = _assert_traces_equal(b, model, x)
        assert em["q"][0, 0, 0, 0] == 0.5
        ops = {n.op_type for n in model.graph.node}
        avg_ops = {n.op_type for n in model.graph.node if n.name.startswith("avg/")}
        assert "DepthToSpace" in ops
        assert ("AveragePool" in avg_ops) == (bits == 8) and ("Gather" in avg_ops) == (bits == 20)


def test_conv_stride_padding_bias_float32_path():
    rng = np.random.default_rng(2)
    w = {"conv1.weight": random_codes(rng, (5, 3, 3, 3), 8) / 64, "conv1.bias": random_codes(rng, (5,), 12) / 2 ** 10}
    b = make([quant("input_quant", [3, 7, 6], 8, 4, True, "zero"),
              conv("conv1", [3, 7, 6], 5, 3, 8, 6, stride=2, padding=1, bbits=12, bfrac=10)], w)
    x = (random_codes(rng, (16, 3, 7, 6), 10) / 32.0).astype(np.float32)
    model = build_onnx(b)
    assert "Conv" in {n.op_type for n in model.graph.node}
    _assert_traces_equal(b, model, x)


def test_metadata_and_float32_input_check():
    b = make([quant("input_quant", [3], 8, 2)])
    model = build_onnx(b)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["qsp.nodes"]) == ["input_quant"] and props["qsp.opset"] == str(OPSET)
    from qsp.errors import QspError
    with pytest.raises(QspError, match="float32"):
        run_onnx(model, np.array([[0.1, 0.2, 0.3]], dtype=np.float64))
