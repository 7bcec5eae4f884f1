"""Real networks through every stage: torch.fx capture, BatchNorm folding, residual adds,
concatenation, depthwise convolutions; the schema-2 bundle; the check before training;
compile + three-way verification (io_parallel and io_stream) with a fault test per new op."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import qsp
from qsp.bundle import Bundle, BundleWarning, ModelRef, TaskInfo
from qsp.bundle.export import check_model, make_bundle
from qsp.errors import BundleError, UnsupportedLayerError, VerificationError
from qsp.fixedpoint import FixedFormat
from qsp.train.cli import main as train_main
from qsp.train.models import ds_cnn, mobilenet_v2_tiny, resnet8
from qsp.verify.emulate import emulate

from .graphs_dag import dag_bundle

QUIET = ["--no-progress", "--float-baseline", "false"]
TINY = {"resnet8": (resnet8, dict(in_channels=1, channels=(4, 8, 8))),
        "mobilenet_v2_tiny": (mobilenet_v2_tiny, dict(channels=(4, 8, 8), stem=4, head=8)),
        "ds_cnn": (ds_cnn, dict(channels=(4, 4, 4)))}


def _train(q, steps=30, shape=(1, 8, 8), seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(q.parameters(), lr=0.02)
    for _ in range(steps):
        x = torch.randn((8,) + shape)
        loss = q(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval()


def _bundle(q, shape=(1, 8, 8), n=16, seed=1):
    x = torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = list(q(x[:1]).shape[1:])
    task = TaskInfo("t", "regression", "mse", list(shape), out)
    return make_bundle(q, task, ModelRef("tests.user_models:user_net"), x.numpy(), np.zeros(n)), x


# ----------------------------------------------------------------------------- capture + training
@pytest.mark.parametrize("name", sorted(TINY))
def test_reference_model_bundle_equals_trained_model(name):
    """Folded BatchNorm, adds, depthwise convs: the bundle's exact emulation is the eval-mode
    model, bit for bit (the folded, quantized weights are the ones trained)."""
    fn, kw = TINY[name]
    torch.manual_seed(0)
    q = _train(qsp.convert(fn(**kw), qsp.Plan(total_steps=30)))
    b, x = _bundle(q)
    with torch.no_grad():
        ref = q(x).double().numpy()
    assert np.array_equal(emulate(b, x.numpy()), ref)
    ops = [n.op for n in b.graph]
    assert "batchnorm" not in ops and all(n.op != "scale_shift" for n in b.graph)  # every BN folded
    if name != "ds_cnn":
        assert ops.count("add") == 3
    if name != "resnet8":
        assert any(n.op == "conv2d" and n.groups > 1 and n.depthwise for n in b.graph)
    assert any("folded BatchNorm2d" in n.source for n in b.graph)


def test_bn_fold_aware_training_phases():
    """Before the weight quantizer is on: batch statistics, running ones updated; after:
    the folded weights with frozen running statistics, train forward == eval forward."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, 2))
    q = qsp.convert(m, qsp.Plan(total_steps=20, weight_sparsity=0, act_sparsity=0))
    ql = q.net[0]
    assert isinstance(ql, qsp.QLayer) and ql.bn is not None and isinstance(m[1], nn.Identity)
    rm0 = ql.bn.running_mean.clone()
    q.train()
    q(torch.randn(8, 1, 8, 8))
    assert not ql.bn_frozen and not torch.equal(rm0, ql.bn.running_mean)  # batch stats used, EMA updated
    _train(q.train(), steps=25)
    assert ql.bn_frozen
    rm = ql.bn.running_mean.clone()
    x = torch.randn(4, 1, 8, 8)
    q.train()
    with torch.no_grad():
        yt = q(x)
    q.eval()
    with torch.no_grad():
        ye = q(x)
    assert torch.equal(rm, ql.bn.running_mean) and torch.equal(yt, ye)
    w, b = ql.effective()
    assert ql.quantizer.formats()[0].contains(w.double().numpy())


def test_functional_activations_get_what_modules_get():
    """F.relu / torch.relu become modules with a pruner and a quantizer, like nn.ReLU."""
    from tests.user_models import UserNet

    q = qsp.convert(UserNet(), qsp.Plan(total_steps=30))
    net = q.net
    assert isinstance(net, torch.fx.GraphModule)
    acts = {k: v for k, v in net.named_children() if isinstance(v, nn.Sequential) and "act" in v._modules}
    assert len(acts) == 3 and all(isinstance(v.act, nn.ReLU) for v in acts.values())
    assert all(isinstance(v.prune, qsp.nn.ActivationPruner) and isinstance(v.quant, qsp.nn.Quantizer)
               for v in acts.values())


def test_unsupported_op_reported_before_training(tmp_path):
    """GELU is refused within seconds, naming the source line, listing ops in user terms;
    nothing is trained or written."""
    t0 = time.perf_counter()
    q = qsp.convert(__import__("tests.user_models", fromlist=["x"]).gelu_net(), qsp.Plan(total_steps=10))
    with pytest.raises(UnsupportedLayerError) as e:
        check_model(q, [1, 8, 8])
    msg = str(e.value)
    assert "gelu" in msg and "user_models.py" in msg and "BatchNorm" in msg and "add (+" in msg
    out = tmp_path / "run"
    rc = train_main(["--model", "tests.user_models:gelu_net", "--epochs", "50", "--out", str(out), *QUIET])
    assert rc == 1 and not (out / "checkpoints").exists()
    assert time.perf_counter() - t0 < 30


def test_trace_failure_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="could not be traced by torch.fx"):
        qsp.convert(Branchy())


# ----------------------------------------------------------------------------- the user's module, CLI
@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("user") / "run"
    rc = train_main(["--model", "tests.user_models:user_net", "--epochs", "3", "--out", str(out), *QUIET])
    assert rc == 0
    return out


def test_user_module_cli_bundle(user_run):
    b = Bundle.read(user_run)
    ops = [n.op for n in b.graph]
    assert ops.count("add") == 1 and ops.count("concat") == 1 and ops.count("conv2d") == 3
    # activation pruning applied to the functional activations (three relus: masks on each)
    masks = [n for n in b.graph if n.op == "mask"]
    assert len(masks) >= 3 and all(n.sparsity > 0.3 for n in masks)
    assert {n.source for n in masks} >= {"relu", "relu_1", "relu_2"} or len(masks) >= 3
    m = json.loads((user_run / "metrics.json").read_text())
    assert m["act_sparsity_masked_points"] > 0.3
    add = next(n for n in b.graph if n.op == "add")
    assert len(add.inputs) == 2


def test_user_module_compiles_bit_exact(user_run, tmp_path):
    from qsp.boards import get_board
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    board = get_board("pynq-z2")
    res = compile_bundle(user_run / "bundle", tmp_path / "hls", CompileOptions(board=board, part=board.part),
                         max_inputs=48)
    assert res.report.mismatches == 0 and len(res.report.paths) == 3
    assert all(p.ran and p.outputs_compared == 48 * 10 for p in res.report.paths)


# ----------------------------------------------------------------------------- schema
def test_schema_1_bundle_loads_and_unknown_version_says_how(tmp_path):
    from tests.graphs import wide_bundle

    b, x = wide_bundle()
    p = b.write(tmp_path / "b")
    spec = json.loads((p / "qspec.json").read_text())
    v1 = {**spec, "schema_version": 1, "graph": [{k: v for k, v in n.items() if k != "inputs"} for n in spec["graph"]]}
    v1.pop("checksums")  # schema 3 added them
    (p / "qspec.json").write_text(json.dumps(v1))
    with pytest.warns(BundleWarning, match="no array checksums"):
        b1 = Bundle.read(p)  # a sequential schema-1 bundle: each node reads the one before
    assert b1.qspec.schema_version == 3
    assert [n.inputs for n in b1.graph] == [["input"]] + [[n.name] for n in b1.graph[:-1]]
    assert np.array_equal(emulate(b1, x), emulate(b, x))
    (p / "qspec.json").write_text(json.dumps({**spec, "schema_version": 4}))
    with pytest.raises(BundleError, match="re-export"):
        Bundle.read(p)


def test_graph_errors_name_the_node():
    b, _ = dag_bundle()
    spec = b.qspec.to_dict()
    spec["graph"][6]["inputs"] = ["quant1", "nowhere"]
    with pytest.raises(BundleError, match="'nowhere' is not an earlier node"):
        type(b.qspec).from_dict(spec)
    spec = b.qspec.to_dict()
    spec["graph"][6]["inputs"] = ["quant1"]
    with pytest.raises(BundleError, match="takes two or more inputs"):
        type(b.qspec).from_dict(spec)


# ----------------------------------------------------------------------------- emulator, by hand
def _tiny(nodes, weights):
    from tests.graphs import make
    return make(nodes, weights)


def test_emulator_new_ops_by_hand():
    from qsp.bundle import AddNode, ClipNode, ConcatNode, ScaleShiftNode
    from tests.graphs import conv, quant

    s = [2, 1, 2]
    q0 = quant("input_quant", s, 8, 2)  # step 1/4
    q1 = quant("q1", s, 8, 1, True)  # step 1/2 (rounds half to even)
    q1.inputs = ["input_quant"]
    add = AddNode(name="add1", in_shape=s, out_shape=s, inputs=["input_quant", "q1"])
    cat = ConcatNode(name="cat1", in_shape=s, out_shape=[4, 1, 2], inputs=["add1", "q1"])
    clip = ClipNode(name="clip1", in_shape=[4, 1, 2], out_shape=[4, 1, 2], lo=0.0, hi=1.5)
    ss = ScaleShiftNode(name="ss1", in_shape=[4, 1, 2], out_shape=[4, 1, 2], channels=4,
                        weight=FixedFormat(8, 2), bias=FixedFormat(8, 2))
    dw = conv("dw", [4, 1, 2], 4, 1, 8, 0)
    dw.groups = 4
    w = {"ss1.weight": np.array([1, 0.5, -1, 2.0]), "ss1.bias": np.array([0, 0.25, 1, -0.5]),
         "dw.weight": np.array([1, 2, 3, -1.0]).reshape(4, 1, 1, 1)}
    clip.inputs, ss.inputs, dw.inputs = ["cat1"], ["clip1"], ["ss1"]
    b = _tiny([q0, q1, add, cat, clip, ss, dw], w)
    x = np.array([[[[0.75, -0.25]], [[1.25, 0.5]]]])
    t = emulate(b, x, trace=True)
    assert t["q1"].tolist() == [[[[1.0, -0.0]], [[1.0, 0.5]]]]  # 0.75 -> 1.0 (half-even at 1/2: 1.5/2)
    assert t["add1"].tolist() == [[[[1.75, -0.25]], [[2.25, 1.0]]]]
    assert t["cat1"][0, :, 0].tolist() == [[1.75, -0.25], [2.25, 1.0], [1.0, 0.0], [1.0, 0.5]]
    assert t["clip1"][0, :, 0].tolist() == [[1.5, 0.0], [1.5, 1.0], [1.0, 0.0], [1.0, 0.5]]
    assert t["ss1"][0, :, 0].tolist() == [[1.5, 0.0], [1.0, 0.75], [0.0, 1.0], [1.5, 0.5]]
    assert t["dw"][0, :, 0].tolist() == [[1.5, 0.0], [2.0, 1.5], [0.0, 3.0], [-1.5, -0.5]]


# ----------------------------------------------------------------------------- compile the DAG
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_dag_compiles_bit_exact(io_type, tmp_path):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    b, x = dag_bundle()
    b.test_x, b.test_y = x, None
    res = compile_bundle(b, tmp_path, CompileOptions(io_type=io_type))
    assert res.report.mismatches == 0 and all(p.ran for p in res.report.paths) and len(res.report.paths) == 3
    classes = {lp.name: (lp.hls_class or lp.op) for lp in res.plan.layers}
    assert classes["dwconv"] == "DepthwiseConv2D" and classes["gconv"] == "QspGroupedConv2d"
    assert {"add1", "concat1", "clip1", "ss1", "gap"} <= set(classes)


@pytest.mark.parametrize("layer", ["add1", "concat1", "dwconv", "clip1", "ss1"])
def test_one_lsb_in_a_new_op_is_caught(layer, tmp_path):
    """The smallest fault in one new op's HLS output (its result type one fraction bit
    coarser) fails verification and the report names that layer first."""
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle, prepare

    b, x = dag_bundle()
    b.test_x, b.test_y = x, None
    plan = prepare(b)[3]
    f = plan.by_name()[layer].result
    coarse = FixedFormat(f.bits - 1, f.frac - 1, f.signed, "floor" if f.rounding == "floor" else f.rounding)
    typ = coarse.ap_type() if plan.by_name()[layer].result_rounds else coarse.ap_type_plain()
    with pytest.raises(VerificationError):
        compile_bundle(b, tmp_path, CompileOptions(), result_overrides={layer: typ})
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["first_diverging_layer"] == layer


def test_global_mean_over_odd_window_compiles(tmp_path):
    """x.mean((2, 3)) over a 3x3 map (9 cells, no power of two) -> avgpool + flatten, with
    convert's quantizer after the flatten: the quantizer folds into the pooling's cast
    through the flatten, and the design verifies bit-exactly."""
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    fn, kw = TINY["mobilenet_v2_tiny"]
    torch.manual_seed(0)
    q = _train(qsp.convert(fn(**kw), qsp.Plan(total_steps=30)), shape=(1, 12, 12))
    b, x = _bundle(q, shape=(1, 12, 12), n=24)
    pool = next(n for n in b.graph if n.op == "avgpool2d")
    assert pool.kernel_size == [3, 3]
    res = compile_bundle(b, tmp_path, CompileOptions())
    assert res.report.mismatches == 0 and all(p.ran for p in res.report.paths)
    lp = res.plan.by_name()[pool.name]
    assert lp.post is not None and lp.folded  # the quantizer behind the flatten folded here


def test_standalone_batchnorm_becomes_scale_shift():
    """A BatchNorm with no weight layer before it (here right after the input quantizer)
    trains as the scale_shift node it becomes (QScaleShift: batch statistics until the
    quantizers' delay, then the 16-bit quantized scale and shift with straight-through
    gradients): the bundle's exact emulation is the eval-mode model, bit for bit."""
    from qsp.nn import QScaleShift

    torch.manual_seed(0)
    m = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, 2))
    q = qsp.convert(m, qsp.Plan(total_steps=30, weight_sparsity=0, act_sparsity=0))
    assert isinstance(q.net[0], QScaleShift) and q.net[0].delay > 0
    q = _train(q)
    assert q.net[0].frozen
    b, x = _bundle(q)
    ss = [n for n in b.graph if n.op == "scale_shift"]
    assert len(ss) == 1 and ss[0].inputs == ["input_quant"] and ss[0].weight.bits == 16
    bn = q.net[0].bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    assert np.allclose(b.weight(ss[0].name), scale, atol=2.0 ** -ss[0].weight.frac)
    assert ss[0].weight.contains(b.weight(ss[0].name)) and ss[0].bias.contains(b.bias(ss[0].name))
    with torch.no_grad():
        ref = q(x).double().numpy()
    assert np.array_equal(emulate(b, x.numpy()), ref)
    # after the delay the BatchNorm's weight and bias still learn (straight through the grids)
    q.train()
    running = bn.running_mean.clone()
    q(x).pow(2).mean().backward()
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0 and torch.equal(bn.running_mean, running)


def test_elementwise_after_flatten_moves_before_it_and_io_stream_is_exact(tmp_path):
    """conv -> flatten -> relu -> quantize -> dense: in io_stream hls4ml's ReLU after its
    flatten computes wrong values (or crashes); flatten_last moves relu and quantize before
    the flatten (same values) and the design verifies."""
    from qsp.bundle import FlattenNode, ReluNode
    from qsp.bundle.transforms import run
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle
    from tests.graphs import conv, linear, make, quant, random_codes

    rng = np.random.default_rng(0)
    nodes = [quant("input_quant", [2, 4, 4], 8, 5), conv("conv1", [2, 4, 4], 4, 3, 6, 5, padding=1),
             FlattenNode(name="flatten1", in_shape=[4, 4, 4], out_shape=[64]),
             ReluNode(name="relu1", in_shape=[64], out_shape=[64]), quant("quant1", [64], 6, 3, False),
             linear("dense1", 64, 3, 6, 5)]
    w = {"conv1.weight": random_codes(rng, (4, 2, 3, 3), 6) / 32, "dense1.weight": random_codes(rng, (3, 64), 6) / 32}
    b = make(nodes, w)
    b.test_x, b.test_y = rng.uniform(-2, 2, (32, 2, 4, 4)).astype(np.float32), None
    tx, log = run(b, ("flatten_last",))
    assert [n.name for n in tx.graph] == ["input_quant", "conv1", "relu1", "quant1", "flatten1", "dense1"]
    assert tx.qspec.node("relu1").in_shape == [4, 4, 4] and tx.qspec.node("flatten1").inputs == ["quant1"]
    assert np.array_equal(emulate(tx, b.test_x), emulate(b, b.test_x)) and len(log) == 2
    assert [n.name for n in b.graph][2] == "flatten1"  # the input bundle is left as it was
    res = compile_bundle(b, tmp_path, CompileOptions(io_type="io_stream"))
    assert res.report.mismatches == 0 and all(p.ran for p in res.report.paths)


# ----------------------------------------------------------------------------- LeakyReLU
def _leaky_bundle(seed=0):
    from qsp.bundle import LeakyReluNode
    from qsp.fixedpoint import leaky_slope
    from tests.graphs import conv, linear, make, quant, random_codes

    rng = np.random.default_rng(seed)
    slope, pfmt = leaky_slope(0.1)
    nodes = [quant("input_quant", [2, 4, 4], 8, 5), conv("conv1", [2, 4, 4], 3, 3, 6, 5, padding=1, bbits=10, bfrac=7),
             LeakyReluNode(name="leaky1", in_shape=[3, 4, 4], out_shape=[3, 4, 4], slope=slope, param=pfmt),
             quant("quant1", [3, 4, 4], 6, 3), LeakyReluNode(name="leaky2", in_shape=[3, 4, 4], out_shape=[3, 4, 4],
                                                             slope=slope, param=pfmt),
             quant("quant2", [3, 4, 4], 8, 4)]
    from qsp.bundle import FlattenNode
    nodes += [FlattenNode(name="flatten1", in_shape=[3, 4, 4], out_shape=[48]), linear("dense1", 48, 3, 6, 5)]
    w = {"conv1.weight": random_codes(rng, (3, 2, 3, 3), 6) / 32, "conv1.bias": random_codes(rng, (3,), 10) / 128,
         "dense1.weight": random_codes(rng, (3, 48), 6) / 32}
    b = make(nodes, w)
    b.test_x, b.test_y = rng.uniform(-3, 3, (24, 2, 4, 4)).astype(np.float32), None
    return b


def test_leaky_relu_by_hand_and_onnx():
    from qsp.export.onnx import build_onnx, run_onnx
    from qsp.fixedpoint import leaky_slope

    slope, fmt = leaky_slope(0.1)
    assert fmt.bits == 16 and fmt.frac == 18 and slope == 26214 / 2 ** 18  # 0.1 on a 16-bit grid
    b = _leaky_bundle()
    t = emulate(b, b.test_x, trace=True)
    q = t["quant1"]
    assert np.array_equal(t["leaky2"], np.where(q >= 0, q, q * slope))  # exact, no rounding
    assert (q < 0).any() and (q > 0).any()
    assert np.array_equal(run_onnx(build_onnx(b), b.test_x), emulate(b, b.test_x))


@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_leaky_relu_compiles_bit_exact(io_type, tmp_path):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    res = compile_bundle(_leaky_bundle(), tmp_path, CompileOptions(io_type=io_type))
    assert res.report.mismatches == 0 and all(p.ran for p in res.report.paths)
    lp = res.plan.by_name()["leaky2"]
    assert lp.hls_precision()["param"] == "ap_fixed<16,-2>" and lp.folded == ["quant2"]


def test_leaky_relu_one_lsb_caught(tmp_path):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle, prepare

    b = _leaky_bundle()
    f = prepare(b)[3].by_name()["leaky2"].result
    coarse = FixedFormat(f.bits - 1, f.frac - 1, f.signed, f.rounding)
    with pytest.raises(VerificationError):
        compile_bundle(b, tmp_path, CompileOptions(), result_overrides={"leaky2": coarse.ap_type()})
    assert json.loads((tmp_path / "verify.json").read_text())["first_diverging_layer"] == "leaky2"


def test_leaky_relu_trained_slope_is_the_exported_one():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(3 * 64, 2))
    q = _train(qsp.convert(m, qsp.Plan(total_steps=30)))
    b, x = _bundle(q)
    leaky = next(n for n in b.graph if n.op == "leaky_relu")
    assert leaky.slope == m[1].act.negative_slope != 0.1
    with torch.no_grad():
        ref = q(x).double().numpy()
    assert np.array_equal(emulate(b, x.numpy()), ref)


@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_joins_of_more_than_two_inputs_compile_bit_exact(io_type, tmp_path):
    """hls4ml joins two tensors at a time: a 4-input add and a 4-input concat become chains
    of two-input joins (split_joins), emulate exactly as the original and csim bit-exact."""
    from qsp.bundle import AddNode, ConcatNode, transforms
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle
    from tests.graphs import make, quant

    s = [2, 2, 2]
    nodes = [quant("input_quant", s, 8, 4), quant("q1", s, 6, 2), quant("q2", s, 6, 3), quant("q3", s, 5, 1),
             AddNode(name="add1", in_shape=s, out_shape=s, inputs=["input_quant", "q1", "q2", "q3"]),
             ConcatNode(name="cat1", in_shape=s, out_shape=[8, 2, 2], inputs=["add1", "q1", "q2", "input_quant"])]
    for n in nodes[1:4]:
        n.inputs = ["input_quant"]
    b = make(nodes, {})
    x = np.random.default_rng(0).uniform(-3, 3, (16, 2, 2, 2))
    t = emulate(b, x, trace=True)
    assert np.array_equal(t["add1"], t["input_quant"] + t["q1"] + t["q2"] + t["q3"])  # hand sum: exact
    tx, log = transforms.run(b, ("split_joins",))
    assert [n.name for n in tx.graph if n.op in ("add", "concat")] == ["add1_j1", "add1_j2", "add1", "cat1_j1",
                                                                       "cat1_j2", "cat1"]
    assert all(len(n.inputs) == 2 for n in tx.graph if n.op in ("add", "concat")) and len(log) == 2
    assert np.array_equal(emulate(tx, x), emulate(b, x))
    b.test_x = x.astype(np.float32)
    res = compile_bundle(b, tmp_path, CompileOptions(io_type=io_type))
    assert res.report.mismatches == 0 and all(p.ran for p in res.report.paths)
    assert any("split_joins" in m for m in res.report.transforms)