"""Conv1d through every stage (issue #13): the bundle's conv1d / maxpool1d / avgpool1d
nodes (each its 2-D op of height 1), by hand in the emulator; a 1-D model with folded
BatchNorm1d, MaxPool1d, global average pooling and a Linear, trained with qsparse, exported,
emulated (= the eval model), run in onnxruntime, compiled with hls4ml (io_parallel and
io_stream, csim verified), a one-LSB fault in the conv1d's HLS output caught, estimated;
DJPQ on the same kind of model; what is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import qsp
from qsp.bundle import AvgPool1dNode, Conv1dNode, MaxPool1dNode, ModelRef, TaskInfo, WeightFormat
from qsp.bundle.export import check_model, make_bundle
from qsp.bundle.schema import node_problem
from qsp.errors import UnsupportedLayerError, VerificationError
from qsp.fixedpoint import FixedFormat
from qsp.verify.emulate import emulate

from .graphs import make, quant

C, L, N = 4, 16, 20


# ----------------------------------------------------------------------------- by hand
def _hand_bundle(pool):
    q0 = quant("input_quant", [1, 4], 8, 2)
    c = Conv1dNode(name="conv1", in_shape=[1, 4], out_shape=[2, 4], in_channels=1, out_channels=2,
                   kernel_size=[3], stride=[1], padding=[1], weight=WeightFormat(8, 2), bias=FixedFormat(8, 2),
                   inputs=["input_quant"])
    p = pool(name="pool1", in_shape=[2, 4], out_shape=[2, 2], kernel_size=[2], stride=[2], inputs=["conv1"])
    w = {"conv1.weight": np.array([[[1, 0.5, -1]], [[0.25, 0, 2]]]), "conv1.bias": np.array([0.5, -0.25])}
    return make([q0, c, p], w)


def test_conv1d_and_pools_by_hand():
    """x = [1, 2, -1, 0.5], padding 1: each output a 3-tap dot product plus the bias,
    computed on paper; max / average over pairs."""
    x = np.array([[[1, 2, -1, 0.5]]])
    t = emulate(_hand_bundle(MaxPool1dNode), x, trace=True)
    assert t["conv1"].tolist() == [[[-1.0, 3.5, 1.5, -0.25], [3.75, -2.0, 1.25, -0.5]]]
    assert t["pool1"].tolist() == [[[3.5, 1.5], [3.75, 1.25]]]
    a = emulate(_hand_bundle(AvgPool1dNode), x)
    assert a.tolist() == [[[1.25, 0.625], [0.875, 0.375]]]


def test_conv1d_node_checks():
    ok = Conv1dNode(name="c", in_shape=[3, 10], out_shape=[4, 8], in_channels=3, out_channels=4, kernel_size=[3],
                    weight=WeightFormat(8, 4))
    assert node_problem(ok) == ""
    assert "groups 1" in node_problem(Conv1dNode(**{**ok.__dict__, "groups": 3, "in_channels": 3,
                                                    "out_channels": 3, "out_shape": [3, 8]}))
    assert "one integer each" in node_problem(Conv1dNode(**{**ok.__dict__, "kernel_size": [3, 3]}))
    assert "is not the" in node_problem(Conv1dNode(**{**ok.__dict__, "out_shape": [4, 9]}))


@pytest.mark.parametrize("layer, msg", [(nn.Conv1d(4, 4, 3, groups=2), "groups=2"),
                                        (nn.Conv1d(4, 4, 3, dilation=2), "dilation"),
                                        (nn.MaxPool1d(2, padding=1), "padding")])
def test_unsupported_conv1d_forms_refused_before_training(layer, msg):
    q = qsp.convert(nn.Sequential(layer, nn.ReLU()), qsp.Plan(total_steps=10))
    with pytest.raises(UnsupportedLayerError, match=msg):
        check_model(q, [C, L])


# ----------------------------------------------------------------------------- a trained 1-D model
class Net1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(C, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(), nn.MaxPool1d(2),
                                  nn.Conv1d(6, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x))


#: MACs by hand: 6 x 16 x (4 x 3) + 8 x 8 x (6 x 3) + 8 x 3
HAND_MACS = {"conv1": 1152, "conv2": 1152, "dense1": 24}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    q = qsp.convert(Net1d(), qsp.Plan(total_steps=30))
    opt = torch.optim.SGD(q.parameters(), lr=0.02)
    for _ in range(30):
        loss = q(torch.randn(8, C, L)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    x = torch.randn((N, C, L), generator=torch.Generator().manual_seed(1))
    task = TaskInfo("seq", "regression", "mse", [C, L], [3])
    b = make_bundle(q, task, ModelRef("tests.test_conv1d:Net1d"), x.numpy(), np.zeros(N))
    with torch.no_grad():
        ref = q(x).double().numpy()
    return b, x.numpy(), ref


def test_bundle_equals_trained_model_and_onnx(trained):
    from qsp.export.onnx import build_onnx, run_onnx

    b, x, ref = trained
    ops = [n.op for n in b.graph]
    assert ops.count("conv1d") == 2 and "maxpool1d" in ops and "avgpool1d" in ops and "scale_shift" not in ops
    assert all("folded BatchNorm1d" in n.source for n in b.graph if n.op == "conv1d")
    assert np.array_equal(emulate(b, x), ref)
    assert np.array_equal(run_onnx(build_onnx(b), x), ref)


@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_compiles_bit_exact(trained, io_type, tmp_path):
    from qsp.boards import get_board
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    b = trained[0]
    board = get_board("pynq-z2")
    res = compile_bundle(b, tmp_path, CompileOptions(board=board, part=board.part, io_type=io_type))
    assert res.report.mismatches == 0 and len(res.report.paths) == 3
    assert all(p.ran and p.outputs_compared == N * 3 for p in res.report.paths)
    from qsp.compile.precision import HLS_CLASS
    classes = {lp.name: lp.hls_class or HLS_CLASS[lp.op] for lp in res.plan.layers}
    assert classes["conv1"] == "Conv1D" and classes["pool1"] == "Pooling1D"


def test_one_lsb_in_conv1d_output_is_caught(trained, tmp_path):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle, prepare

    b = trained[0]
    lp = prepare(b)[3].by_name()["conv1"]
    f = lp.result
    coarse = FixedFormat(f.bits - 1, f.frac - 1, f.signed, f.rounding)
    typ = coarse.ap_type() if lp.result_rounds else coarse.ap_type_plain()
    with pytest.raises(VerificationError):
        compile_bundle(b, tmp_path, CompileOptions(), result_overrides={"conv1": typ})
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["first_diverging_layer"] == "conv1"


def test_estimate_macs_and_verdict(trained, tmp_path, capsys):
    from qsp.estimate import count_graph
    from qsp.estimate.cli import main

    b = trained[0]
    macs = {n.name: n.weight.macs_dense for n in count_graph(b).nodes if n.weight is not None}
    assert macs == HAND_MACS
    path = b.write(tmp_path / "bundle")
    assert main([str(path), "--board", "pynq-z2", "--out", str(tmp_path / "o")]) == 0
    d = json.loads((tmp_path / "o" / "estimate.json").read_text())
    assert d["boards"][0]["verdict"] in ("fits", "fits with another strategy", "does not fit")


# ----------------------------------------------------------------------------- DJPQ, the reference model
def test_djpq_kws_cnn1d_exports_bit_exact():
    import torch.nn.functional as F

    from qsp import djpq
    from qsp.djpq import DJPQConfig
    from qsp.train.models import kws_cnn1d

    shape = [8, 8]
    g = torch.Generator().manual_seed(0)
    x = torch.rand((64, 8, 8), generator=g)
    y = x.flatten(1)[:, :3].argmax(1)
    cfg = DJPQConfig(lambda_bops=1.0, kl_weight=0.05, gate_init_logvar=-2.0, gate_lr=0.1)
    torch.manual_seed(0)
    m = djpq.convert(kws_cnn1d(in_channels=8, num_classes=3, channels=(6, 8)), shape, cfg)
    assert check_model(m, shape)
    opt = torch.optim.Adam(djpq.param_groups(m, 3e-3, cfg))
    obj = djpq.DJPQObjective(cfg)
    m.train()
    for _ in range(10):
        loss = F.cross_entropy(m(x[:32]), y[:32]) + obj(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gated = [e for e in djpq.layer_chain(m) if e.layer.gate is not None]
    assert len(gated) == 2  # both conv1d layers carry channel gates
    with torch.no_grad():  # prune every other channel
        for e in gated:
            e.layer.gate.raw_mu.fill_(1.0)
            e.layer.gate.raw_logvar.fill_(-3.0)
            e.layer.gate.raw_logvar[::2] = 5.0
    m.eval()
    b = djpq.export_djpq(m, TaskInfo("r", "classification", "accuracy", shape, [3], 3), ModelRef("a:b", {}),
                         x[:8].numpy(), y[:8].numpy(), cfg)
    convs = [n for n in b.graph if n.op == "conv1d"]
    assert [n.out_channels for n in convs] == [3, 4]  # pruned channels removed
    with torch.no_grad():
        assert np.array_equal(emulate(b, x.numpy()), m(x).double().numpy())


def test_driver_turns_a_1d_output_back_to_channels_first():
    """A 1-D model's [C, L] output leaves hls4ml channels-last ([L, C]); the deploy driver
    turns it back (a flat reshape would scramble it)."""
    import importlib.util

    from qsp.resources import data_file

    spec = importlib.util.spec_from_file_location("qsp_driver", data_file("deploy", "pynq", "qsp_driver.py"))
    drv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drv)
    f = FixedFormat(8, 0).to_dict()
    d = drv.QspDesign({"input_format": f, "output_format": f, "input_shape": [2, 3], "output_shape": [2, 3],
                       "channels_last": True})
    y = np.arange(6.0).reshape(1, 2, 3)  # [C, L]
    words = d.out.pack(y.transpose(0, 2, 1).reshape(1, -1))  # what the design streams: [L, C]
    assert np.array_equal(d.from_stream(words), y)
