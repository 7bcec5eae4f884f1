"""ONNX export of schema-2 graphs (DAG: add, concat, grouped/depthwise conv, clip,
scale_shift, global average pooling): onnxruntime equals the integer-exact emulation bit
for bit, node by node, on both the float32 and the float64 paths."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qsp.bundle import AddNode, ClipNode, ConcatNode, FlattenNode, ScaleShiftNode
from qsp.errors import QspError
from qsp.export.onnx import build_onnx, layer_report, run_onnx, write_onnx
from qsp.fixedpoint import FixedFormat
from qsp.verify import emulate
from tests.graphs import avgpool, conv, linear, make, quant, random_codes, wide_bundle
from tests.graphs_dag import dag_bundle


def _check(bundle, model, x, optimize=True):
    """Every node's ONNX tensor equals the emulator's (and the output)."""
    em = emulate(bundle, x, trace=True)
    ox = run_onnx(model, x, trace=True, optimize=optimize)
    assert list(ox) == list(em) == [n.name for n in bundle.graph]
    for name in em:
        assert np.array_equal(em[name], ox[name]), f"{name}: {np.count_nonzero(em[name] != ox[name])} differ"
    assert np.array_equal(emulate(bundle, x), run_onnx(model, x, optimize=optimize))
    return em, ox


def _ops(model, node):
    return [n.op_type for n in model.graph.node if n.name.startswith(node + "/") or n.name == node]


@pytest.mark.parametrize("kw", [dict(seed=0), dict(seed=1, act_bits=8, w_bits=8), dict(seed=2, c=6, h=5),
                                dict(seed=3, act_bits=4, w_bits=3)])
def test_dag_bundle_bit_exact(kw, tmp_path):
    b, x = dag_bundle(**kw)
    path = write_onnx(b, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for optimize in (True, False):
        _check(b, model, x, optimize)
    # the new ops are real ONNX ops on the float32 path
    assert "Add" in _ops(model, "add1") and _ops(model, "concat1") == ["Concat"]
    assert _ops(model, "clip1") == ["Clip"]
    conv_group = {n.name.split("/")[0]: {a.name: a.i for a in n.attribute}.get("group", 1)
                  for n in model.graph.node if n.op_type == "Conv"}
    c = kw.get("c", 4)
    assert conv_group == {"conv1": 1, "conv2": 1, "dwconv": c, "gconv": 2}
    rep = {r["node"]: r for r in layer_report(model)}
    assert not any(r["float64_compute"] for n, r in rep.items() if n != "gap")
    assert "AveragePool" in _ops(model, "gap")  # global pooling: kernel == input H, W


def test_dag_bundle_16_bit_float64_paths():
    b, x = dag_bundle(seed=4, act_bits=16, w_bits=16)
    model = build_onnx(b)
    rep = {r["node"]: r for r in layer_report(model)}
    for n in ("conv1", "conv2", "dwconv", "gconv", "dense1"):
        assert rep[n]["float64_compute"], n
    assert "Conv" not in {n.op_type for n in model.graph.node}  # grouped im2col MatMuls instead
    _check(b, model, x)
    _check(b, model, x, optimize=False)


def wide_dag(seed=0, wide_bits=28, c=4, h=5):
    """Wide tensors (float64) meeting narrow ones (float32) in add/concat/scale_shift/clip,
    inputs at different fraction bits, a 3-input add, global pooling of a wide tensor."""
    rng = np.random.default_rng(seed)
    s, s3 = [c, h, h], [3 * c, h, h]

    def on(node, *inputs):
        node.inputs = list(inputs)
        return node

    n = [quant("input_quant", [3, h, h], 8, 4),
         on(conv("narrow", [3, h, h], c, 1, 4, 2), "input_quant"),  # frac 6, float32
         on(conv("conv1", [3, h, h], c, 3, 12, 10, padding=1, bbits=16, bfrac=12), "input_quant"),  # frac 14
         on(quant("qw", s, wide_bits, 12), "conv1"),  # exact rounding chain; float64 past 24 bits
         on(quant("qn", s, 6, 2, True, "floor"), "qw"),
         AddNode(name="add3", in_shape=s, out_shape=s, inputs=["qw", "qn", "conv1"]),
         AddNode(name="addn", in_shape=s, out_shape=s, inputs=["qn", "narrow"]),
         ConcatNode(name="cat", in_shape=s, out_shape=s3, inputs=["add3", "addn", "qn"]),
         on(ClipNode(name="clipw", in_shape=s3, out_shape=s3, lo=-3.25, hi=6.0), "cat"),
         on(ScaleShiftNode(name="ssw", in_shape=s3, out_shape=s3, channels=3 * c,
                           weight=FixedFormat(16, 12, True), bias=FixedFormat(26, 22, True)), "clipw"),
         on(quant("cat_q", s3, 8, 3, True), "cat"),
         on(ScaleShiftNode(name="ssn", in_shape=s3, out_shape=s3, channels=3 * c,
                           weight=FixedFormat(6, 4, True), bias=FixedFormat(6, 3, True)), "cat_q"),
         AddNode(name="mix", in_shape=s3, out_shape=s3, inputs=["ssw", "ssn"]),
         on(avgpool("gap", s3, h), "mix"),
         on(FlattenNode(name="flat", in_shape=[3 * c, 1, 1], out_shape=[3 * c]), "gap"),
         on(linear("dense", 3 * c, 3, 10, 8), "flat")]
    w = {"conv1.weight": random_codes(rng, (c, 3, 3, 3), 12) / 2.0 ** 10,
         "conv1.bias": random_codes(rng, (c,), 16) / 2.0 ** 12,
         "narrow.weight": random_codes(rng, (c, 3, 1, 1), 4) / 4.0,
         "ssw.weight": random_codes(rng, (3 * c,), 16) / 2.0 ** 12,
         "ssw.bias": random_codes(rng, (3 * c,), 26) / 2.0 ** 22,
         "ssn.weight": random_codes(rng, (3 * c,), 6) / 2.0 ** 4,
         "ssn.bias": random_codes(rng, (3 * c,), 6) / 2.0 ** 3,
         "dense.weight": random_codes(rng, (3, 3 * c), 10) / 2.0 ** 8}
    x = rng.uniform(-8, 8, size=(16, 3, h, h)).astype(np.float32)
    return make(n, w), x


def test_wide_dag_mixed_dtypes():
    b, x = wide_dag()
    model = build_onnx(b)
    rep = {r["node"]: r for r in layer_report(model)}
    assert rep["qw"]["dtype"] == "float64" and rep["qn"]["dtype"] == "float32"
    for n in ("add3", "cat", "clipw", "ssw", "mix", "gap"):
        assert rep[n]["float64_compute"], n
    for n in ("addn", "ssn", "narrow"):
        assert not rep[n]["float64_compute"], n
    for n in ("addn", "ssn", "cat_q", "clipw"):  # back to float32 where the codes fit 24 bits
        assert rep[n]["dtype"] == "float32", n
    assert rep["ssw"]["dtype"] == rep["mix"]["dtype"] == rep["cat"]["dtype"] == "float64"
    em, _ = _check(b, model, x)
    _check(b, model, x, optimize=False)
    # the clip bounds and the 3-input add's alignment are exercised
    assert (em["clipw"] == -3.25).any() and (em["clipw"] == 6.0).any()
    assert len({*np.ldexp(em["add3"], 12).ravel() % 1}) > 1  # finer than the qw grid


@pytest.mark.parametrize("seed", [1, 2])
def test_wide_dag_other_seeds(seed):
    b, x = wide_dag(seed=seed, wide_bits=20, c=2, h=4)
    _check(b, build_onnx(b), x)


def _perturb(model, prefix, index):
    """A copy of the model with one integer code of the initializer ``prefix*`` raised by one."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    inits = [i for i in m.graph.initializer if i.name.startswith(prefix)]
    assert len(inits) == 1, [i.name for i in inits]
    arr = numpy_helper.to_array(inits[0]).copy()
    assert np.issubdtype(arr.dtype, np.integer)
    flat = arr.reshape(-1)
    flat[index] = flat[index] + 1 if flat[index] < np.iinfo(arr.dtype).max else flat[index] - 1
    inits[0].CopyFrom(numpy_helper.from_array(arr, inits[0].name))
    return m


@pytest.mark.parametrize("prefix,node", [("dwconv/weight_q", "dwconv"), ("gconv/weight_q", "gconv"),
                                         ("ss1/scale_q", "ss1"), ("ss1/shift_q", "ss1")])
def test_fault_one_lsb_is_caught(prefix, node):
    b, x = dag_bundle(seed=0)
    model = build_onnx(b)
    em = emulate(b, x, trace=True)
    assert np.array_equal(run_onnx(model, x), emulate(b, x))
    # perturb a code whose input is nonzero: the centre tap of channel 0 / the busiest channel
    if node == "ss1":
        index = int(np.argmax(np.count_nonzero(em["clip1"], axis=(0, 2, 3))))
    else:
        index = int(np.prod(numpy_helper.to_array(
            next(i for i in model.graph.initializer if i.name.startswith(prefix))).shape[1:]) // 2)
    bad = _perturb(model, prefix, index)
    ox = run_onnx(bad, x, trace=True)
    order = [n.name for n in b.graph]
    differ = [n for n in order if not np.array_equal(em[n], ox[n])]
    assert differ and differ[0] == node  # caught exactly at the perturbed node
    assert all(np.array_equal(em[n], ox[n]) for n in order[:order.index(node)])


def test_fault_float64_path_is_caught():
    b, x = wide_dag()
    model = build_onnx(b)
    em = emulate(b, x, trace=True)
    assert np.array_equal(run_onnx(model, x), emulate(b, x))
    ch = int(np.argmax(np.count_nonzero(em["clipw"], axis=(0, 2, 3))))
    ox = run_onnx(_perturb(model, "ssw/scale_q", ch), x, trace=True)  # one LSB of a 16-bit scale code
    assert np.array_equal(em["clipw"], ox["clipw"]) and not np.array_equal(em["ssw"], ox["ssw"])
    assert not np.array_equal(em["dense"], ox["dense"])


def test_sequential_bundles_unchanged():
    # schema-1 style chain (no inputs named): still exports, no Identity, one group per node
    b, x = wide_bundle(seed=1)
    assert [n.inputs for n in b.graph] == [["input"], ["input_quant"], ["conv1"], ["quant1"], ["flatten1"]]
    model = build_onnx(b)
    assert "Identity" not in {n.op_type for n in model.graph.node}
    assert model.graph.output[0].name == "dense1"
    rep = {r["node"]: r for r in layer_report(model)}
    assert rep["conv1"]["float64_compute"] and rep["conv1"]["bound_bits"] == 38
    _check(b, model, x)
    rng = np.random.default_rng(3)
    w = {"conv1.weight": random_codes(rng, (4, 2, 3, 3), 8) / 64}
    nodes = [quant("input_quant", [2, 5, 5], 8, 4), conv("conv1", [2, 5, 5], 4, 3, 8, 6, padding=1),
             quant("q1", [4, 5, 5], 8, 2)]
    for n in nodes:
        n.inputs = []
    s = make(nodes, w)
    model = build_onnx(s)
    assert [n.op_type for n in model.graph.node].count("Conv") == 1
    assert not [a for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    _check(s, model, (random_codes(rng, (8, 2, 5, 5), 8) / 16).astype(np.float32))


def test_float64_limit_raises():
    # an add whose codes pass 2**53 cannot be exact in float64: refused, not silently wrong
    # (formats are at most 32 bits; aligning fractions 0 and 25 gives codes up to 2**56)
    s = [4]

    def nodes(frac):
        q2 = quant("fine", s, 32, frac, True, "floor")
        q2.inputs = ["input"]
        return [quant("input_quant", s, 32, 0, True, "floor"), q2,
                AddNode(name="add", in_shape=s, out_shape=s, inputs=["input_quant", "fine"])]

    with pytest.raises(QspError, match="'add' .*float64"):
        build_onnx(make(nodes(25)))
    b = make(nodes(20))  # codes below 2**52: fine, and exact
    x = np.array([[2.0 ** 30, -(2.0 ** 31), 3.0 + 2.0 ** -20, 2.0 ** 31 - 2 ** 8]], np.float64).astype(np.float32)
    _check(b, build_onnx(b), x)


def _on(node, *inputs):
    node.inputs = list(inputs)
    return node


@pytest.mark.parametrize("bits", [8, 18])  # 8: Conv(group); 18: grouped im2col MatMul in float64
def test_grouped_conv_stride_padding_multiplier(bits):
    rng = np.random.default_rng(bits)
    c, g, o = 6, 3, 6 * 2  # 3 groups of 2 input channels, 4 outputs each; then depthwise x2
    nodes = [quant("input_quant", [c, 7, 6], bits, 4),
             conv("g3", [c, 7, 6], o, 3, bits, bits - 2, stride=2, padding=1, bbits=bits + 4, bfrac=bits),
             quant("q", [o, 4, 3], bits, 3, True, "nearest"),
             conv("dw", [o, 4, 3], 2 * o, 2, bits, bits - 1, padding=1)]
    nodes[1].groups, nodes[3].groups = g, o
    w = {"g3.weight": random_codes(rng, (o, c // g, 3, 3), bits) / 2.0 ** (bits - 2),
         "g3.bias": random_codes(rng, (o,), bits + 4) / 2.0 ** bits,
         "dw.weight": random_codes(rng, (2 * o, 1, 2, 2), bits) / 2.0 ** (bits - 1)}
    b = make(nodes, w)
    x = (random_codes(rng, (8, c, 7, 6), bits) / 16.0).astype(np.float32)
    model = build_onnx(b)
    assert ("Conv" in {n.op_type for n in model.graph.node}) == (bits == 8)
    _check(b, model, x)


@pytest.mark.parametrize("mode", ["convergent", "floor"])
def test_8_bit_qdq_around_add_concat(mode):
    # 8-bit codes in 8-bit storage: no Clip before QuantizeLinear, so onnxruntime may fuse
    # DQ -> op -> Q groups (QLinearConv); the results stay exact
    rng = np.random.default_rng(7)
    s = [4, 5, 5]
    nodes = [quant("input_quant", s, 8, 4), _on(quant("a", s, 8, 3), "input_quant"),
             _on(quant("b", s, 8, 5), "input_quant"),
             AddNode(name="add", in_shape=s, out_shape=s, inputs=["a", "b"]),
             _on(quant("qa", s, 8, 4, True, mode), "add"),
             ConcatNode(name="cat", in_shape=s, out_shape=[8, 5, 5], inputs=["a", "qa"]),
             _on(quant("qc", [8, 5, 5], 8, 3, True, mode), "cat"),
             _on(conv("cv", [8, 5, 5], 4, 3, 8, 6, padding=1), "qc"), _on(quant("qv", s, 8, 2, True, mode), "cv")]
    b = make(nodes, {"cv.weight": random_codes(rng, (4, 8, 3, 3), 8) / 64})
    x = (rng.integers(-2 ** 11, 2 ** 11, size=(64, 4, 5, 5)) / 2 ** 7).astype(np.float32)
    model = build_onnx(b)
    em, _ = _check(b, model, x)
    _check(b, model, x, optimize=False)
    assert np.abs(em["add"]).max() > 8  # the add saturates qa somewhere


@pytest.mark.parametrize("fa,fb,fo,signed", [(3, 5, 4, True), (4, 4, 3, False), (5, 2, 2, True)])
def test_8_bit_add_as_the_output(fa, fb, fo, signed):
    # DQ, DQ -> Add -> Q with nothing else reading the sum: onnxruntime may fuse it into
    # QLinearAdd (power-of-two scales: still exact, ties to even like the emulator)
    rng = np.random.default_rng(fa * 10 + fb)
    s = [4, 5, 5]
    nodes = [quant("input_quant", s, 8, 4), _on(quant("a", s, 8, fa, signed), "input_quant"),
             _on(quant("b", s, 8, fb, signed), "input_quant"),
             AddNode(name="add", in_shape=s, out_shape=s, inputs=["a", "b"]), _on(quant("qa", s, 8, fo, signed), "add")]
    b = make(nodes)
    x = (rng.integers(-2 ** 11, 2 ** 11, size=(128, 4, 5, 5)) / 2 ** 7).astype(np.float32)
    model = build_onnx(b)
    assert np.array_equal(emulate(b, x), run_onnx(model, x))
    _check(b, model, x)
