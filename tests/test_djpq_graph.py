"""DJPQ on traced graphs: residual adds, depthwise convs, folded BatchNorm, functional
activations (resnet8, mobilenet_v2_tiny, ds_cnn and small hand-built graphs)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qsp import djpq
from qsp.bundle import ModelRef, TaskInfo
from qsp.bundle.export import check_model
from qsp.bundle.graph import link_after
from qsp.djpq import DJPQConfig, DJPQLayer, LearnedQuantizer, model_bops
from qsp.djpq.transforms import PER_CHANNEL_OPS
from qsp.train.models import ds_cnn, mobilenet_v2_tiny, resnet8
from qsp.verify.emulate import emulate


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SHAPE = [1, 12, 12]
TASK = TaskInfo("rand", "classification", "accuracy", SHAPE, [3], 3)

MODELS = {
    "resnet8": (lambda: resnet8(in_channels=1, num_classes=3, channels=(4, 8, 8)),
                {"stack1.conv1.0", "stack2.conv1.0", "stack3.conv1.0"}),
    # stem 8 -> block 0 (4 channels) has no residual: its projection feeds block 1 alone
    "mobilenet_v2_tiny": (lambda: mobilenet_v2_tiny(in_channels=1, num_classes=3, channels=(4, 8, 8), stem=8,
                                                    head=8),
                          {"blocks.0.project.0", "head.0.0"}),
    "ds_cnn": (lambda: ds_cnn(in_channels=1, num_classes=3, channels=(4, 8, 8)), {"body.6.0"}),
}


def _data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + tuple(SHAPE), generator=g)
    return x, x.flatten(1)[:, :3].argmax(1)


def _train(m, cfg, x, y, steps=15, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(djpq.param_groups(m, 3e-3, cfg))
    obj = djpq.DJPQObjective(cfg)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(m(x[idx]), y[idx]) + obj(m)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _plain(name: str) -> str:
    return name[4:] if name.startswith("net.") else name


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request):
    factory, gated = MODELS[request.param]
    x, y = _data()
    cfg = DJPQConfig(lambda_bops=1.0, kl_weight=0.05, gate_init_logvar=-2.0, gate_lr=0.1)
    torch.manual_seed(0)
    m = djpq.convert(factory(), SHAPE, cfg)
    assert check_model(m, SHAPE)  # before training: every op exports (dry walk)
    _train(m, cfg, x, y)
    with torch.no_grad():  # prune some channels of every gated layer, keep the others
        for e in djpq.layer_chain(m):
            if e.layer.gate is not None:
                e.layer.gate.raw_mu.fill_(1.0)
                e.layer.gate.raw_logvar.fill_(-3.0)
                e.layer.gate.raw_logvar[::2] = 5.0
    ref = ModelRef("tests.test_djpq_graph:none", {})
    b = djpq.export_djpq(m, TASK, ref, x[:32].numpy(), y[:32].numpy(), cfg)
    raw = djpq.export_djpq(m, TASK, ref, x[:32].numpy(), y[:32].numpy(), cfg, remove_channels=False)
    return request.param, m, b, raw, x, gated


def test_bundle_equals_eval_model_bit_for_bit(trained):
    _, m, b, raw, x, _ = trained
    m.eval()
    with torch.no_grad():
        out = m(x).double().numpy()
    assert np.array_equal(emulate(raw, x.numpy()), out)
    assert np.array_equal(emulate(b, x.numpy()), out)  # channel removal changes nothing


def test_gates_only_where_the_graph_allows(trained):
    name, m, b, raw, _, gated = trained
    chain = djpq.layer_chain(m)
    assert {_plain(e.name) for e in chain if e.layer.gate is not None} == gated
    for e in chain:
        if e.layer.groups != 1:
            assert e.layer.gate is None
    # the torch-side links are the bundle's: a weight node is gated iff link_after finds a consumer
    weights = {n.source.split(" (+")[0]: i for i, n in enumerate(raw.graph) if n.op in ("conv2d", "linear")}
    assert set(weights) == {e.name for e in chain}
    for e in chain:
        link = link_after(raw.graph, weights[e.name], PER_CHANNEL_OPS)
        assert (link.consumer is not None) == (e.layer.gate is not None), e.name
    # every gated layer lost channels, all of them physically removed
    rep = b.qspec.extra["djpq"]
    assert "not_removed" not in rep
    removed = b.qspec.extra["removed_channels"]
    assert len(removed) == len(gated)
    by_source = {n.source.split(" (+")[0]: n for n in b.graph}
    for r in rep["layers"]:
        n = by_source[r["layer"]]
        assert n.out_shape[0] == r["kept"]
        assert r["gated"] == (_plain(r["layer"]) in gated)
        assert r["kept"] < r["out_channels"] if r["gated"] else r["kept"] == r["out_channels"]
    # the report's BOPs are the bundle graph's (real remaining work)
    assert djpq.bundle_bops(b, fp32_macs=rep["bops_fp32"] // 1024)["bops"] == pytest.approx(rep["bops"])
    # depthwise convs keep their groups, BatchNorms are folded (none left in the graph)
    convs = [n for n in b.graph if n.op == "conv2d"]
    if name != "resnet8":
        assert any(n.groups > 1 and n.groups == n.in_channels for n in convs)
    assert not any(n.op == "scale_shift" for n in b.graph)
    assert any("folded BatchNorm2d" in n.source for n in convs)


def test_every_weight_layer_reads_a_learned_quantizer(trained):
    _, m, b, _, _, _ = trained
    for e in djpq.layer_chain(m):
        assert isinstance(e.act_quant, LearnedQuantizer), e.name
    # in the bundle: every weight node's input comes from a quantize node (through flatten)
    prod = {n.name: n for n in b.graph}
    for n in b.graph:
        if n.op in ("conv2d", "linear"):
            src = prod.get(n.inputs[0])
            while src is not None and src.op == "flatten":
                src = prod.get(src.inputs[0])
            assert src is not None and src.op == "quantize", n.name


# ====================================================================== BatchNorm folding
def test_folded_batchnorm_trains_like_batchnorm_and_evaluates_folded():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
        bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
    bn.num_batches_tracked.fill_(5)  # not fresh: running statistics are kept and updated
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn))
    L = DJPQLayer(conv, gate=False, bn=bn, quant_kw=dict(init_bits=16, max_bits=16, min_bits=16))
    x = torch.randn(16, 2, 6, 6) * 2
    L.train()
    ref.train()
    y, yr = L(x), ref(x)
    assert torch.allclose(y, yr, atol=2e-3), (y - yr).abs().max()
    assert torch.allclose(bn.running_mean, ref[1].running_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, ref[1].running_var, rtol=1e-4)
    y.sum().backward()  # gradients reach the weights, gamma/beta and the weight quantizer
    assert conv.weight.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
    assert L.wq.raw_log_qmax.grad is not None
    L.eval()
    ref.eval()
    with torch.no_grad():
        ye, yre = L(x), ref(x)
        assert torch.allclose(ye, yre, atol=2e-3)
        w, b, bf = L.effective()  # evaluation is exactly the folded, quantized weight and bias
        assert torch.equal(ye, F.conv2d(x, w, b, padding=1))
        assert L.wq.format().contains(w.double().numpy()) and bf.contains(b.double().numpy())


def test_fresh_batchnorm_starts_from_the_first_batch():
    torch.manual_seed(0)
    L = DJPQLayer(nn.Conv2d(1, 2, 3), gate=False, bn=nn.BatchNorm2d(2))
    x = torch.randn(8, 1, 5, 5) * 10
    L.train()
    L(x)
    u = F.conv2d(x, L.layer.weight, L.layer.bias)
    assert torch.allclose(L.bn.running_mean, u.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(L.bn.running_var, u.var((0, 2, 3)), rtol=1e-4)
    w = L._folded()[0]  # the weight quantizer's range covers the deployed (folded) weight
    assert float(w.detach().abs().max()) <= 2 ** (L.wq.bits() - 1 - L.wq.frac()) + 1e-6


# ====================================================================== BOPs on a small graph
class Small(nn.Module):
    """c1 -> relu (fans out) -> [dw + BN -> relu -> pw1 -> relu -> pw2] + skip -> fc.
    c1 feeds two readers, dw is depthwise, pw2 feeds an add: only pw1 can be gated."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pw1 = nn.Conv2d(4, 3, 1)
        self.pw2 = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        a = F.relu(self.c1(x))
        h = torch.relu(self.bn(self.dw(a)))
        h = self.pw2(F.relu(self.pw1(h)))
        return self.fc(torch.flatten(a + h, 1))


def _set_bits(q, d_exp, qmax):
    with torch.no_grad():
        q.raw_log_d.fill_(d_exp * math.log(2))
        q.raw_log_qmax.fill_(math.log(qmax))
    q.initialized.fill_(True)


def test_bops_hand_computed_on_a_graph():
    m = djpq.convert(Small(), [1, 4, 4], DJPQConfig())
    net = m.net
    c1, dw, pw1, pw2, fc = (net.get_submodule(k) for k in ("c1", "dw", "pw1", "pw2", "fc"))
    assert [L.gate is not None for L in (c1, dw, pw1, pw2, fc)] == [False, False, True, False, False]
    assert dw.bn is not None and dw.groups == 4
    chain = djpq.layer_chain(m)
    assert [e.name for e in chain] == ["net.c1", "net.dw", "net.pw1", "net.pw2", "net.fc"]
    assert [e.prev for e in chain] == [None, None, None, pw1, None]
    # the quantizers feeding each layer, found by walking the graph's producers
    q_in, q_a, q_b, q_c = m.input_quant, chain[1].act_quant, chain[2].act_quant, chain[3].act_quant
    q_add = chain[4].act_quant
    assert chain[0].act_quant is q_in and len({id(q) for q in (q_in, q_a, q_b, q_c, q_add)}) == 5
    assert not q_a.signed and not q_b.signed and q_add.signed  # relu outputs; relu + linear pw2 output
    assert [int(L.macs) for L in (c1, dw, pw1, pw2, fc)] == [576, 576, 192, 192, 128]
    _set_bits(q_in, -3, 7 / 8)      # signed (auto, before data): log2(8) + 1 = 4
    _set_bits(q_a, -4, 31 / 16)     # unsigned: log2(32) = 5
    _set_bits(q_b, -2, 3 / 4)       # unsigned: 2
    _set_bits(q_c, -3, 63 / 8)      # unsigned: 6
    _set_bits(q_add, -1, 7 / 2)     # signed: 4
    for L, (e, qm) in zip((c1, dw, pw1, pw2, fc), ((-2, 3 / 4), (-5, 63 / 32), (-2, 7 / 4), (-3, 15 / 8), (-1, 1.5))):
        _set_bits(L.wq, e, qm)      # signed: 3, 7, 4, 5, 3
    with torch.no_grad():           # pw1: channels 0 and 2 kept (alpha 4), 1 pruned
        pw1.gate.raw_mu.copy_(torch.tensor([2.0, 0.1, 2.0]))
        pw1.gate.raw_logvar.zero_()
    total, rows = model_bops(m, hard=True)
    assert [r.w_bits for r in rows] == [3, 7, 4, 5, 3] and [r.a_bits for r in rows] == [4, 5, 2, 6, 4]
    expect = 576 * 3 * 4 + 576 * 7 * 5 + 192 * 4 * 2 * (2 / 3) + 192 * 5 * 6 * (2 / 3) + 128 * 3 * 4
    assert total == pytest.approx(expect, rel=1e-12)
    assert djpq.fp32_bops(m) == (576 * 2 + 192 * 2 + 128) * 1024
    soft, _ = model_bops(m, hard=False)
    p = torch.sigmoid(torch.log(torch.tensor([4.0, 0.01, 4.0]))).mean().item()
    assert float(soft.detach()) == pytest.approx(576 * 3 * 4 + 576 * 7 * 5 + 192 * 4 * 2 * p + 192 * 5 * 6 * p
                                        + 128 * 3 * 4, rel=1e-5)
    # exported: pw1's pruned channel is removed with pw2's matching input; same BOPs on the bundle
    x = torch.rand(64, 1, 4, 4)
    with torch.no_grad():  # fill the running statistics so the folded weights are ordinary
        m.train()
        m(x)
    _set_bits(q_in, -3, 7 / 8)
    b = djpq.export_djpq(m, TaskInfo("r", "classification", "accuracy", [1, 4, 4], [2], 2),
                         ModelRef("tests.test_djpq_graph:Small", {}), x[:8].numpy(), np.zeros(8, int))
    assert b.qspec.extra["removed_channels"] == {"conv3": {"original": 3, "kept": [0, 2]}}
    rep = b.qspec.extra["djpq"]
    assert djpq.bundle_bops(b)["bops"] == pytest.approx(rep["bops"])
    m.eval()
    with torch.no_grad():
        assert np.array_equal(emulate(b, x.numpy()), m(x).double().numpy())


def test_functional_relu_gets_its_learned_quantizer():
    class F1(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    m = djpq.convert(F1(), [6], DJPQConfig())
    wrapped = [mod for mod in m.modules() if isinstance(mod, nn.Sequential) and "act" in mod._modules]
    assert len(wrapped) == 1 and isinstance(wrapped[0].act, nn.ReLU)
    assert isinstance(wrapped[0].quant, LearnedQuantizer) and not wrapped[0].quant.signed
    chain = djpq.layer_chain(m)
    assert chain[1].act_quant is wrapped[0].quant and chain[0].layer.gate is not None
    assert chain[1].prev is chain[0].layer
    ops = [n.op for n in check_model(m, [6])]
    assert ops == ["quantize", "linear", "relu", "quantize", "linear"]


def test_shared_activation_module_gets_one_quantizer_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    m = djpq.convert(Shared(), [4], DJPQConfig())
    qs = [e.act_quant for e in djpq.layer_chain(m)]
    assert all(isinstance(q, LearnedQuantizer) for q in qs) and len({id(q) for q in qs}) == 3


# ====================================================================== qsp-train
def test_qsp_train_djpq_resnet8_digits(tmp_path):
    from qsp.bundle import Bundle
    from qsp.train import TrainConfig, run

    cfg = TrainConfig(task="digits", method="djpq", model="resnet8", epochs=1, train_limit=192, test_limit=64,
                      model_kwargs={"in_channels": 1, "channels": [4, 8, 8]}, out=str(tmp_path / "run"),
                      progress=False, float_baseline=False)
    rep = run(cfg, echo=lambda *a: None)
    b = Bundle.read(rep.bundle_path)
    assert b.qspec.method == "djpq"
    assert sum(n.op == "add" for n in b.graph) == 3
    r = b.qspec.extra["djpq"]
    assert len(r["layers"]) == 10 and sum(x["gated"] for x in r["layers"]) == 3
    assert "not_removed" not in r
    assert b.test_x is not None and emulate(b, b.test_x[:8]).shape == (8, 10)


class CatNet(nn.Module):
    """Two branches concatenated (producers ungated), a functional hardtanh, a max pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 1)
        self.c = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        h = F.max_pool2d(F.hardtanh(self.c(h)), 2)
        return self.fc(h.view(h.size(0), -1))


def test_concat_and_hardtanh_graph_is_exact():
    x = torch.rand(64, 1, 6, 6)
    y = x.flatten(1)[:, :3].argmax(1)
    cfg = DJPQConfig(gate_init_logvar=-2.0)
    m = djpq.convert(CatNet(), [1, 6, 6], cfg)
    gated = [_plain(e.name) for e in djpq.layer_chain(m) if e.layer.gate is not None]
    assert gated == ["c"]  # a and b feed the concatenation; c reaches fc through clip, quant, pool, flatten
    _train(m, cfg, x, y, steps=8)
    with torch.no_grad():
        m.net.c.gate.raw_logvar[1] = 6.0
    b = djpq.export_djpq(m, TaskInfo("r", "classification", "accuracy", [1, 6, 6], [3], 3), ModelRef("a:b", {}))
    assert [n.op for n in b.graph].count("concat") == 1 and any(n.op == "clip" for n in b.graph)
    assert b.qspec.extra["removed_channels"]["conv3"]["kept"] == [0, 2, 3]
    m.eval()
    with torch.no_grad():
        assert np.array_equal(emulate(b, x.numpy()), m(x).double().numpy())
