"""DJPQ: learned-bitwidth quantizer, VIB gates, BOPs, the lambda controller, export and
pruned-channel removal."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from qsp import djpq
from qsp import fixedpoint as fp
from qsp.bundle import ModelRef, TaskInfo
from qsp.djpq import (BopsController, DJPQConfig, DJPQLayer, LearnedQuantizer, RemovePrunedChannels, VIBGate,
                      model_bops)
from qsp.errors import BundleError
from qsp.verify.emulate import emulate


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is ~10x faster than two on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(model, cfg, steps, x, y, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(djpq.param_groups(model, lr, cfg))
    obj = djpq.DJPQObjective(cfg)
    model.train()
    for i in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) + obj(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return obj


def _data(n=256, seed=0, shape=(1, 8, 8), classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + shape, generator=g)
    y = (x.flatten(1)[:, :classes].argmax(1))  # learnable: which of the first pixels is largest
    return x, y


# ================================================================= the quantizer
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("pow2", [False, True])
def test_quantizer_forward_is_its_fixed_format(signed, pow2):
    torch.manual_seed(1)
    q = LearnedQuantizer(signed, init_bits=5, pow2=pow2)
    x = torch.randn(4000) * 3
    q.train()
    y = q(x.requires_grad_())
    fmt = q.format()
    assert fmt.signed == signed and fmt.frac == -round(float(q.log_d.detach()) / math.log(2))
    assert torch.equal(y.detach(), fmt.quantize_torch(x.detach()))  # bit for bit, training mode
    assert fmt.contains(y.detach().double().numpy())
    q.eval()
    assert torch.equal(q(x.detach()), fmt.quantize_torch(x.detach()))
    if pow2:
        assert fmt.bits in djpq.POW2_BITS


def test_bitwidth_formula_and_export_snap():
    q = LearnedQuantizer(True)
    with torch.no_grad():
        q.raw_log_d.fill_(math.log(0.3))      # snaps to 2^-2 = 0.25 (log2 0.3 = -1.74)
        q.raw_log_qmax.fill_(math.log(2.6))
    q.initialized.fill_(True)
    # b = log2(2.6 / 0.25 + 1) + 1 = log2(11.4) + 1 = 4.511 -> 5 bits, frac 2
    assert float(q.bits_continuous().detach()) == pytest.approx(math.log2(2.6 / 0.25 + 1) + 1, rel=1e-6)
    assert q.format() == fp.FixedFormat(5, 2, True)
    u = LearnedQuantizer(False)
    with torch.no_grad():
        u.raw_log_d.fill_(math.log(0.25))
        u.raw_log_qmax.fill_(math.log(2.6))
    assert float(u.bits_continuous().detach()) == pytest.approx(math.log2(11.4), rel=1e-6)
    assert u.format() == fp.FixedFormat(4, 2, False)
    assert djpq.signed_bits(2.6, 0.25, True) == pytest.approx(math.log2(11.4) + 1)


def test_uhlich_gradients():
    """d(Q)/d(q_max) = 1 for clipped inputs, 0 inside; d(Q)/d(d) = round(x/d) - x/d inside."""
    q = LearnedQuantizer(True)
    with torch.no_grad():
        q.raw_log_d.fill_(math.log(0.25))
        q.raw_log_qmax.fill_(math.log(1.75))  # b = log2(8) + 1 = 4 exactly: format max = 7 * 0.25
    q.initialized.fill_(True)
    q.train()
    x = torch.tensor([0.3, 5.0])
    y = q(x)
    assert y.tolist() == [0.25, 1.75]
    y[1].backward(retain_graph=True)
    # y1 = q_max (saturated): dy/dlog_qmax = q_max, dy/dlog_d = 0
    assert float(q.raw_log_qmax.grad) == pytest.approx(1.75, rel=1e-5)
    assert float(q.raw_log_d.grad) == pytest.approx(0.0, abs=1e-6)
    q.zero_grad()
    y[0].backward()
    # y0 = d * round(x/d): dy/dlog_d = d * (round(x/d) - x/d) = 0.25 * (1 - 1.2)
    assert float(q.raw_log_d.grad) == pytest.approx(0.25 * (1 - 1.2), rel=1e-5)
    assert float(q.raw_log_qmax.grad) == pytest.approx(0.0, abs=1e-6)


def _uhlich_composition(q, x):
    """Uhlich et al.'s quantizer gradients as the plain autograd composition (what
    LearnedQuantizer computed before its single autograd node): the reference."""
    fmt = q.format()
    exact = fp.quantize_torch(x, fmt.bits, fmt.frac, fmt.signed, fmt.rounding)
    l2 = q.log2_step()
    d = torch.exp2(l2 + (torch.round(l2) - l2).detach())
    b = q.bits_unclamped()
    bs = b + (float(fmt.bits) - b).detach()
    p = torch.exp2(bs - 1) if fmt.signed else torch.exp2(bs)
    hi = (p - 1) * d
    lo = -p * d if fmt.signed else torch.zeros_like(hi)
    u = torch.minimum(torch.maximum(x, lo), hi) / d
    sur = d * (u + (torch.round(u) - u).detach())
    return exact.detach() + (sur - sur.detach())


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_fused_quantizer_gradients_equal_the_composition(signed, bits):
    """One autograd node, the same forward bit for bit and the same gradients (x exactly;
    the step and range to float rounding), ties at both clipping bounds included."""
    torch.manual_seed(bits)
    q = LearnedQuantizer(signed, init_bits=bits)
    q.train()
    q(torch.randn(64) * 3)  # initialises the range from data
    fmt = q.format()
    step = 2.0 ** -fmt.frac
    hi = (2 ** (fmt.bits - 1) - 1 if signed else 2 ** fmt.bits - 1) * step
    lo = -(2 ** (fmt.bits - 1)) * step if signed else 0.0
    x0 = torch.cat([torch.randn(300) * 3, torch.tensor([hi, lo, 3 * hi + 1, lo - 1, 0.0])])
    g = torch.randn_like(x0)
    got = []
    for fn in (q, lambda x: _uhlich_composition(q, x)):
        q.zero_grad()
        x = x0.clone().requires_grad_(True)
        y = fn(x)
        (y * g).sum().backward()
        got.append((y.detach(), x.grad, q.raw_log_d.grad.clone(), q.raw_log_qmax.grad.clone()))
    (y1, gx1, gd1, gq1), (y2, gx2, gd2, gq2) = got
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2)
    assert float(gd1) == pytest.approx(float(gd2), rel=1e-4, abs=1e-5)  # float32 sums in another order
    assert float(gq1) == pytest.approx(float(gq2), rel=1e-4, abs=1e-5)
    assert ((gx1 == 0.5 * g) | (gx1 == 0) | (gx1 == g)).all() and (gx1 == 0.5 * g).sum() >= 2  # the planted ties


def test_training_objective_reads_the_device_once_per_step():
    """The BOPs objective's per-layer report is skipped in training: one host read (the
    controller's ratio), not one per layer and channel."""
    from qsp.djpq.bops import DJPQObjective

    x, _ = _data(n=16, seed=1)
    model = djpq.convert(_cnn(), [1, 8, 8], DJPQConfig())
    model.train()
    model(x)
    obj = DJPQObjective(DJPQConfig(bops_target=0.05))
    reads = [0]
    orig_item, orig_tolist = torch.Tensor.item, torch.Tensor.tolist

    def count(fn):
        def wrapped(self, *a, **k):
            reads[0] += 1
            return fn(self, *a, **k)
        return wrapped

    obj(model)  # the first call reads lambda from the model once
    torch.Tensor.item, torch.Tensor.tolist = count(orig_item), count(orig_tolist)
    try:
        obj(model)
    finally:
        torch.Tensor.item, torch.Tensor.tolist = orig_item, orig_tolist
    assert reads[0] == 1


def test_pow2_restriction_yields_only_allowed_bitwidths():
    torch.manual_seed(0)
    seen = set()
    for b in np.linspace(1.2, 17.0, 60):
        q = LearnedQuantizer(True, pow2=True)
        with torch.no_grad():
            q.raw_log_d.fill_(0.0)
            q.raw_log_qmax.fill_(math.log(2 ** (b - 1) - 1 + 1e-3))
        q.initialized.fill_(True)
        fmt = q.format()
        seen.add(fmt.bits)
        assert fmt.bits in (2, 4, 8, 16)
        assert float(q.bits_train().detach()) == fmt.bits  # the penalty sees the snapped bits
    assert seen == {2, 4, 8, 16}
    assert djpq.snap_pow2_bits(5.0) == 4 and djpq.snap_pow2_bits(6.0) == 8 and djpq.snap_pow2_bits(11.0) == 8
    # a model trained in pow2 mode exports only power-of-two formats
    x, y = _data()
    m = djpq.convert(_cnn(), [1, 8, 8], DJPQConfig(pow2=True, lambda_bops=5.0, quant_lr=0.05))
    _train(m, DJPQConfig(pow2=True, lambda_bops=5.0, quant_lr=0.05), 15, x, y)
    fmts = [mod.format() for mod in m.modules() if isinstance(mod, LearnedQuantizer)]
    assert fmts and all(f.bits in (2, 4, 8, 16) for f in fmts)


# ================================================================= gates
def test_gate_shuts_a_channel_without_signal():
    """Channel 2 of the hidden layer has all-zero weights and bias: the task loss does not
    depend on its gate, the KL term shuts it; the informative channels stay open."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[2.0, -2.0, 1.0], [-2.0, 2.0, 1.0]]))
        net[2].bias.zero_()
    cfg = DJPQConfig(lambda_bops=0.0, kl_weight=0.05, gate_lr=0.1, quant_lr=0.0, gate_init_logvar=-6.0)
    m = djpq.convert(net, [4], cfg)
    for p in m.parameters():
        p.requires_grad_(False)
    gate = m.net[0].gate
    for p in gate.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(gate.parameters(), lr=0.1)
    obj = djpq.DJPQObjective(cfg)
    g = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(150):
        x = torch.rand(64, 4, generator=g)
        y = (x[:, 1] > x[:, 0]).long()
        loss = nn.functional.cross_entropy(m(x), y) + obj(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    la = gate.log_alpha().detach()
    assert gate.kept() == [0, 1], la
    assert la[2] < 0 < la[0] and la[1] > 0
    m.eval()
    w, b, _ = m.net[0].effective()
    assert torch.all(w[2] == 0) and b[2] == 0 and torch.any(w[0] != 0)


def test_gate_eval_is_deterministic_and_kl():
    g = VIBGate(3, threshold=1.0)
    with torch.no_grad():
        g.raw_mu.copy_(torch.tensor([1.0, 0.5, -2.0]))
        g.raw_logvar.copy_(torch.tensor([0.0, 0.0, 0.0]))
    # alpha = mu^2 / 1 = [1, 0.25, 4]: kept where alpha > 1
    assert g.kept() == [2]
    assert float(g.kl()) == pytest.approx(math.log(2) + math.log(1.25) + math.log(5), rel=1e-6)
    g.eval()
    assert g().tolist() == [0.0, 0.0, -2.0]
    g.train()
    torch.manual_seed(0)
    assert not torch.equal(g(), g())  # stochastic in training
    # never prunes everything: the highest alpha is kept
    with torch.no_grad():
        g.raw_logvar.fill_(10.0)
    assert g.kept() == [2]


# ================================================================= BOPs
def test_bops_formula_exact_on_a_hand_computed_model():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    m = djpq.convert(net, [2, 5, 5], DJPQConfig())
    conv, lin = m.net[0], m.net[3]
    assert int(conv.macs) == 4 * 2 * 3 * 3 * 25 and int(lin.macs) == 100 * 3

    def set_bits(q, d_exp, qmax):
        with torch.no_grad():
            q.raw_log_d.fill_(d_exp * math.log(2))
            q.raw_log_qmax.fill_(math.log(qmax))
        q.initialized.fill_(True)

    set_bits(m.input_quant, -3, 7 / 8)   # signed (auto before data): b = log2(8) + 1 = 4
    set_bits(conv.wq, -2, 7 / 4)         # signed b = 4 ... make it 3: qmax 3/4 -> log2(4) + 1 = 3
    set_bits(conv.wq, -2, 3 / 4)
    aq = m.net[1].quant                  # unsigned: b = log2(qmax/d + 1) = log2(32) = 5
    set_bits(aq, -4, 31 / 16)
    set_bits(lin.wq, -5, 63 / 32)        # signed: log2(64) + 1 = 7
    with torch.no_grad():                # gate: channels 0, 2 kept (alpha 4 > 1), 1, 3 pruned
        conv.gate.raw_mu.copy_(torch.tensor([2.0, 0.1, 2.0, 0.1]))
        conv.gate.raw_logvar.zero_()
    total, rows = model_bops(m, hard=True)
    assert [r.w_bits for r in rows] == [3, 7] and [r.a_bits for r in rows] == [4, 5]
    expect_conv = 1800 * 3 * 4 * 1.0 * 0.5
    expect_lin = 300 * 7 * 5 * 0.5 * 1.0
    assert total == expect_conv + expect_lin
    assert djpq.fp32_bops(m) == (1800 + 300) * 1024
    # the soft version: continuous bits and mean keep probabilities
    soft, srows = model_bops(m, hard=False)
    p = torch.sigmoid(torch.log(torch.tensor([4.0, 0.01, 4.0, 0.01]))).mean().item()
    assert float(soft) == pytest.approx(1800 * 3 * 4 * p + 300 * 7 * 5 * p, rel=1e-5)
    soft.backward()  # differentiable in bits and gates
    assert conv.gate.raw_mu.grad is not None and conv.wq.raw_log_qmax.grad is not None
    assert aq.raw_log_qmax.grad is not None and float(aq.raw_log_qmax.grad) > 0


def test_bigger_lambda_gives_fewer_bits():
    x, y = _data(seed=3)
    bits = {}
    for lam in (0.0, 20.0):
        torch.manual_seed(0)
        cfg = DJPQConfig(lambda_bops=lam, kl_weight=0.0, quant_lr=0.05, gate_lr=0.0)
        m = djpq.convert(_cnn(), [1, 8, 8], cfg)
        _train(m, cfg, 25, x, y)
        bits[lam] = [float(q.bits_continuous().detach()) for q in m.modules() if isinstance(q, LearnedQuantizer)]
    assert sum(bits[20.0]) < sum(bits[0.0]) - 3, bits
    assert all(b20 <= b0 + 1e-6 for b20, b0 in zip(bits[20.0], bits[0.0])), bits


def test_controller_reaches_the_target():
    c = BopsController(lam=1.0, target=0.02, gain=0.5)
    assert c.update(0.04) > 1.0          # above target: lambda rises
    lam = c.lam
    assert c.update(0.01) < lam          # below: it falls back
    fixed = BopsController(lam=3.0)
    assert fixed.update(0.5) == 3.0
    # closed loop on a DJPQ model: lambda rises while the model is above the target, the
    # BOPs ratio crosses the target, then lambda falls back
    x, y = _data(seed=4)
    cfg = DJPQConfig(bops_target=0.02, lambda_bops=1.0, controller_gain=0.2, quant_lr=0.05, gate_lr=0.02)
    m = djpq.convert(_cnn(), [1, 8, 8], cfg)
    opt = torch.optim.Adam(djpq.param_groups(m, 3e-3, cfg))
    obj = djpq.DJPQObjective(cfg)
    torch.manual_seed(0)
    hist = []
    for _ in range(40):
        idx = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(m(x[idx]), y[idx]) + obj(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(dict(obj.last))
    assert hist[0]["bops_ratio"] > 0.04
    peak = max(range(len(hist)), key=lambda i: hist[i]["lambda_bops"])
    assert hist[peak]["lambda_bops"] > 5.0
    assert hist[peak]["bops_ratio"] == pytest.approx(0.02, rel=0.5)  # turns around at the target
    assert hist[-1]["bops_ratio"] < 0.02 and hist[-1]["lambda_bops"] < hist[peak]["lambda_bops"]


# ================================================================= export
@pytest.fixture(scope="module")
def trained_cnn():
    x, y = _data(n=256, seed=5)
    cfg = DJPQConfig(lambda_bops=2.0, kl_weight=0.05, quant_lr=0.03, gate_lr=0.1, gate_init_logvar=-2.0)
    m = djpq.convert(_cnn(), [1, 8, 8], cfg)
    _train(m, cfg, 20, x, y)
    with torch.no_grad():  # these channels pruned, all others kept (the transform's cases)
        for L in (m.net[0], m.net[3], m.net[7]):
            L.gate.raw_mu.fill_(1.0)
            L.gate.raw_logvar.fill_(-3.0)
        m.net[0].gate.raw_logvar[1] = 5.0
        m.net[3].gate.raw_logvar[[0, 4]] = 5.0
        m.net[7].gate.raw_logvar[2] = 5.0
    task = TaskInfo("rand", "classification", "accuracy", [1, 8, 8], [3], 3)
    b = djpq.export_djpq(m, task, ModelRef("tests.test_djpq:_cnn", {}), x[:64].numpy(), y[:64].numpy(), cfg)
    raw = djpq.export_djpq(m, task, ModelRef("tests.test_djpq:_cnn", {}), x[:64].numpy(), y[:64].numpy(), cfg,
                           remove_channels=False)
    return m, b, raw, x


def test_export_is_exact_and_channels_removed(trained_cnn):
    m, b, raw, x = trained_cnn
    m.eval()
    with torch.no_grad():
        ref = m(x).double().numpy()
    assert np.array_equal(emulate(raw, x.numpy()), ref)   # the model in eval mode is the bundle
    assert np.array_equal(emulate(b, x.numpy()), ref)     # removal changes nothing
    conv1, conv2, dense1, dense2 = [n for n in b.graph if n.op in ("conv2d", "linear")]
    assert (conv1.out_channels, conv2.in_channels) == (3, 3)
    assert (conv2.out_channels, dense1.in_features) == (4, 4 * 2 * 2)
    assert (dense1.out_features, dense2.in_features) == (7, 7)
    assert all(n.kept_outputs is None for n in (conv1, conv2, dense1))
    assert b.qspec.extra["removed_channels"]["conv1"] == {"original": 4, "kept": [0, 2, 3]}
    rep = b.qspec.extra["djpq"]
    assert [r["kept"] for r in rep["layers"]] == [3, 4, 7, 3]
    assert [r["w_bits"] for r in rep["layers"]] == [n.weight.bits for n in (conv1, conv2, dense1, dense2)]
    assert rep["bops_ratio"] == pytest.approx(rep["bops"] / rep["bops_fp32"])
    assert 0 <= rep["metrics"]["accuracy"] <= 1
    # BOPs of the bundle graph equal the model's hard BOPs
    bb = djpq.bundle_bops(b, fp32_macs=rep["bops_fp32"] // 1024)
    assert bb["bops"] == rep["bops"]
    assert b.qspec.method == "djpq"
    assert "w bits" in djpq.format_report(rep)


def test_written_bundle_round_trips(trained_cnn, tmp_path):
    from qsp.bundle import Bundle

    _, b, _, x = trained_cnn
    p = b.write(tmp_path / "bundle")
    r = Bundle.read(p)
    assert np.array_equal(emulate(r, x[:16].numpy()), emulate(b, x[:16].numpy()))
    assert r.qspec.extra["djpq"]["layers"][0]["kept_indices"] == [0, 2, 3]


def test_removal_through_masks_on_a_qsparse_bundle():
    """The transform is generic: zero two channels of a qsparse CNN bundle (which has
    activation masks between its layers), mark them, remove them: same outputs."""
    from tests.bundles import build_bundle

    b = build_bundle("cnn")
    conv1 = b.graph[1]
    assert conv1.op == "conv2d"
    w = b.weights[f"{conv1.name}.weight"].copy()
    w[[1, 3]] = 0
    b.weights[f"{conv1.name}.weight"] = w
    b.weights[f"{conv1.name}.bias"] = b.weights[f"{conv1.name}.bias"].copy()
    b.weights[f"{conv1.name}.bias"][[1, 3]] = 0
    conv1.nonzeros = int(np.count_nonzero(w))
    conv1.kept_outputs = [0, 2]
    assert any(n.op == "mask" for n in b.graph)
    x = b.test_x
    before = emulate(b, x)
    after_b = RemovePrunedChannels().apply(b)
    assert np.array_equal(emulate(after_b, x), before)
    nxt = [n for n in after_b.graph if n.op == "conv2d"][1]
    assert nxt.in_channels == 2 and after_b.weights[f"{nxt.name}.weight"].shape[1] == 2
    masks = [n for n in after_b.graph if n.op == "mask"]
    assert after_b.mask(masks[0].name).shape[0] == 2
    assert b.graph[1].kept_outputs == [0, 2]  # the input bundle is not modified
    # marking a channel that still carries weights is refused
    bad = copy.deepcopy(b.qspec)
    bad.graph[1].kept_outputs = [0]
    from qsp.bundle import Bundle
    with pytest.raises(BundleError, match="nonzero"):
        RemovePrunedChannels().apply(Bundle(bad, b.weights, b.masks, b.state_dict, b.test_x, b.test_y))


def test_djpq_layer_rejects_unsupported():
    from qsp.errors import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError, match="Conv3d is not supported"):
        DJPQLayer(nn.Conv3d(1, 2, 3))
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        DJPQLayer(nn.Conv1d(2, 4, 3, groups=2))
    with pytest.raises(Exception, match="bops_target"):
        DJPQConfig(bops_target=2.0)


def test_controller_lambda_is_saved_with_the_model():
    x, y = _data(seed=6)
    cfg = DJPQConfig(bops_target=0.01, lambda_bops=1.0, controller_gain=0.5)
    m = djpq.convert(_cnn(), [1, 8, 8], cfg)
    obj = _train(m, cfg, 3, x, y)
    lam = obj.controller.lam
    assert lam > 1.0 and float(m.djpq_lambda) == lam
    twin = djpq.convert(_cnn(), [1, 8, 8], cfg)
    twin.load_state_dict(m.state_dict())
    fresh = djpq.DJPQObjective(cfg)
    fresh(twin, update=False)
    assert fresh.controller.lam == lam
