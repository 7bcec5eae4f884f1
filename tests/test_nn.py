"""Training core (qsp.nn): exact semantics of every operator."""
import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import qsp
from qsp import fixedpoint as fp
from qsp.nn import ActivationPruner, Plan, QLayer, Quantizer, WeightPruner, zhu_gupta


# ------------------------------------------------------------------ grids and rounding
@pytest.mark.parametrize("mode,expected", [
    ("convergent", [-2.0, -2.0, -1.0, -0.0, 0.0, 2.0, 2.0, 3.0]),
    ("nearest", [-2.0, -1.0, -1.0, 0.0, 1.0, 2.0, 3.0, 3.0]),
    ("floor", [-3.0, -2.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]),
    ("zero", [-2.0, -1.0, -1.0, 0.0, 0.0, 1.0, 2.0, 3.0]),
])
def test_rounding_modes_exact(mode, expected):
    x = np.array([-2.5, -1.5, -1.25, -0.5, 0.5, 1.5, 2.5, 3.0])
    # frac=0, 8 bits: no saturation
    assert fp.quantize_np(x, 8, 0, True, mode).tolist() == expected
    t = fp.quantize_torch(torch.tensor(x), 8, 0, True, mode)
    assert t.tolist() == expected


@pytest.mark.parametrize("mode", sorted(fp.ROUNDING_MODES))
@pytest.mark.parametrize("signed", [True, False])
def test_grid_and_saturation(mode, signed):
    bits, frac = 4, 2
    x = np.linspace(-6, 6, 1001)
    q = fp.quantize_np(x, bits, frac, signed, mode)
    k = q * 4
    assert np.array_equal(k, np.round(k))  # on the grid k * 2^-2
    lo, hi = (-8, 7) if signed else (0, 15)
    assert k.min() == lo and k.max() == hi  # saturates, never wraps
    assert len(np.unique(k)) == hi - lo + 1
    # torch and numpy agree bit for bit
    assert np.array_equal(fp.quantize_torch(torch.tensor(x), bits, frac, signed, mode).numpy(), q)


def test_negative_frac_and_ap_type():
    f = fp.FixedFormat(4, -2)
    assert f.step == 4.0 and f.max == 28.0 and f.min == -32.0
    assert f.ap_type() == "ap_fixed<4,6,AP_RND_CONV,AP_SAT>"
    assert fp.FixedFormat(8, 8, False, "zero").ap_type() == "ap_ufixed<8,0,AP_TRN_ZERO,AP_SAT>"
    assert fp.quantize_np([9.0, 10.0, 14.0, 100.0], 4, -2).tolist() == [8.0, 8.0, 16.0, 28.0]


def test_ste_gradient_inside_and_outside_range():
    x = torch.tensor([-3.0, -0.3, 0.2, 0.9, 5.0], requires_grad=True)
    y = fp.quantize_ste(x, 4, 2, True, "convergent")  # range [-2, 1.75]
    y.sum().backward()
    assert y.tolist() == [-2.0, -0.25, 0.25, 1.0, 1.75]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


# ------------------------------------------------------------------ delayed quantization
def test_dstar_uniform_8bit():
    torch.manual_seed(0)
    x = torch.rand(20000) * 4 - 2  # U(-2, 2)
    q = Quantizer(8, delay=3, window=3)
    q.train()
    for i in range(3):
        assert torch.equal(q(x), x)  # identity before the delay
    y = q(x)
    assert int(q.frac) == 6  # range [-2, 1.984], step 1/64
    assert int(q.frac) == fp.best_frac_np(x.numpy(), 8)
    assert torch.equal(y, fp.quantize_torch(x, 8, 6))


def test_saturation_shifts_dstar():
    torch.manual_seed(1)
    x = torch.randn(20000) * 0.1
    x[:20] = 50.0  # a few outliers
    plain = Quantizer(8, delay=0)
    sat = Quantizer(8, delay=0, quantiles=(0.001, 0.999))
    plain.train(), sat.train()
    plain(x), sat(x)
    assert int(plain.frac) == fp.best_frac_np(x.numpy(), 8)
    assert int(sat.frac) == fp.best_frac_np(x.numpy(), 8, quantiles=(0.001, 0.999))
    assert int(sat.frac) > int(plain.frac)  # clipping outliers buys resolution


def test_window_statistics_equal_exhaustive_search():
    """Bounded-memory accumulation picks the same d* as the search over every sample."""
    torch.manual_seed(2)
    batches = [torch.randn(500) * s for s in (0.5, 1.0, 3.0, 0.2)]
    q = Quantizer(6, delay=4, window=4)
    q.train()
    for b in batches:
        q(b)
    q(torch.zeros(3))  # t == delay: choose from the window's statistics
    assert int(q.frac) == fp.best_frac_np(torch.cat(batches).numpy(), 6)
    assert q.err.numel() == len(fp.DEFAULT_FRAC_CANDIDATES)  # memory: one number per candidate


def test_per_channel_weight_frac():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.01] * 4, [1.0] * 4, [30.0] * 4]) * torch.linspace(0.5, 1, 4))
    q = qsp.quantize(lin, bits=8, per_channel=True)
    q.train()
    q(torch.randn(2, 4))
    fr = q.quantizer.frac.tolist()
    for c in range(3):
        assert fr[c] == fp.best_frac_np(lin.weight[c].detach().numpy(), 8)
    assert fr[0] > fr[1] > fr[2]


def test_activation_quantize_acceptance():
    a = qsp.quantize(bits=4, delay=0)
    a.train()
    y = a(torch.randn(4096) * 2)
    d = int(a.frac)
    k = y * 2 ** d
    assert torch.equal(k, torch.round(k))
    assert torch.unique(k).numel() <= 16


def test_reestimation_interval():
    q = Quantizer(8, delay=2, window=1, interval=3)
    q.train()
    for _ in range(3):
        q(torch.rand(100) * 0.5)
    assert int(q.frac) == fp.best_frac_np((torch.rand(1000) * 0.5).numpy(), 8)
    for _ in range(3):  # t=3,4 collect at t=4, estimate at t=5
        q(torch.rand(100) * 60)
    assert int(q.frac) == fp.best_frac_np((torch.rand(1000) * 60).numpy(), 8)


# ------------------------------------------------------------------ pruning
def test_zhu_gupta_schedule_values():
    assert zhu_gupta(0.5, 0, 4) == 0.0
    assert zhu_gupta(0.5, 1, 4) == pytest.approx(0.5 * (1 - 0.75 ** 3))
    assert zhu_gupta(0.5, 4, 4) == 0.5


def test_weight_prune_acceptance_exact_count():
    m = qsp.prune(nn.Linear(100, 100), sparsity=0.5, start=0, interval=1, repetition=1)
    m.train()
    for _ in range(3):
        m(torch.randn(2, 100))
    assert int((m.effective_weight == 0).sum()) == 5000


@pytest.mark.parametrize("n,s", [(7, 0.5), (10, 0.33), (1000, 0.9), (999, 0.25)])
def test_exactly_round_s_n_pruned(n, s):
    p = WeightPruner((n,), s, start=0, interval=1, repetition=1)
    p.train()
    w = torch.randn(n)
    p(w)
    out = p(w)
    assert int((out == 0).sum()) == round(s * n)


def test_schedule_timing():
    p = WeightPruner((1000,), 0.8, start=5, interval=10, repetition=3)
    p.train()
    w = torch.randn(1000) + 10  # no natural zeros
    zeros = []
    for t in range(50):
        zeros.append(int((p(w) == 0).sum()))
    expect = {15: zhu_gupta(0.8, 1, 3), 25: zhu_gupta(0.8, 2, 3), 35: 0.8}
    for t in range(50):
        last = max([k for k in expect if k <= t], default=None)
        want = 0 if last is None else round(expect[last] * 1000)
        assert zeros[t] == want, t


def test_eval_never_advances():
    p = WeightPruner((100,), 0.5, start=0, interval=1, repetition=1)
    p.eval()
    for _ in range(5):
        p(torch.randn(100))
    assert p.t == 0 and p.mask.sum() == 100


def test_activation_pruning_window_and_exact_count():
    ap = ActivationPruner(0.25, start=3, interval=2, repetition=1, window=2)
    ap.train()
    hot = torch.arange(16, dtype=torch.float32).reshape(1, 4, 2, 2)
    for t in range(6):
        ap(hot.repeat(3, 1, 1, 1))
    assert ap.mask.shape == (4, 2, 2)
    assert int((ap.mask == 0).sum()) == 4
    assert ap.mask.reshape(-1)[:4].sum() == 0  # the 4 least salient elements
    assert ap.ring.shape[0] == 2  # bounded memory: window entries


def test_activation_mask_tiling():
    ap = ActivationPruner(0.5, start=0, interval=1, repetition=1, window=1)
    ap.train()
    ap(torch.rand(2, 3, 4, 4))
    ap(torch.rand(2, 3, 4, 4))
    ap.eval()
    big = torch.ones(1, 3, 8, 12)
    out = ap(big)
    assert torch.equal(out[0, :, :4, :4], ap.mask) and torch.equal(out[0, :, 4:, 8:], ap.mask)
    with pytest.raises(qsp.errors.MaskShapeError, match="cannot be applied"):
        ap(torch.ones(1, 3, 6, 4))


# ------------------------------------------------------------------ state and orderings
def _net(order="prune-then-quantize"):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 4))
    return qsp.convert(m, total_steps=40, order=order)


def test_state_dict_round_trip_into_fresh_model():
    a = _net()
    a.train()
    for _ in range(40):
        a(torch.rand(8, 1, 8, 8))
    b = _net()  # fresh, no forward pass
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(a(x), b(x))
    # counters restored: further training continues identically
    a.train(), b.train()
    torch.manual_seed(3)
    xa = torch.rand(8, 1, 8, 8)
    assert torch.equal(a(xa), b(xa))
    for m in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        m.eval(), a.eval()
        assert torch.equal(m(x), a(x))


@pytest.mark.parametrize("order", ["prune-then-quantize", "quantize-then-prune"])
def test_orderings(order):
    m = _net(order)
    sch = Plan(total_steps=40, order=order).schedule()
    if order == "prune-then-quantize":
        assert sch.quant_delay > sch.prune_end
    else:
        assert sch.quant_delay < sch.prune_start
    q = m.net[3]
    ops = [type(o) for o in q.weight_ops]
    assert ops == ([WeightPruner, Quantizer] if order == "prune-then-quantize" else [Quantizer, WeightPruner])
    m.train()
    for _ in range(40):
        m(torch.rand(8, 1, 8, 8))
    w = q.effective_weight
    f = q.quantizer.formats()[0]
    assert f.contains(w.numpy())
    assert int((w == 0).sum()) == round(0.5 * w.numel())
    assert m.net[0].pruner is None  # first layer left dense (the paper's default)


def test_convert_include_exclude_and_dense():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    c = qsp.convert(m, exclude=("2",), input_bits=None)
    assert isinstance(c[0], QLayer) and c[0].pruner is None  # first: dense
    assert isinstance(c[2], nn.Linear)  # excluded
    assert c[4].pruner is None  # last: dense


# ------------------------------------------------------------------ integer arithmetic
def _int_check(layer, x, wbits=8, abits=8):
    q = qsp.quantize(layer, bits=wbits, delay=0)
    aq = qsp.quantize(bits=abits, delay=0, signed=True)
    q.train(), aq.train()
    xa = aq(x)
    y = q(xa)
    fa = int(aq.frac)
    fw = int(q.quantizer.frac)
    fb = int(q.bias_quant.frac)
    xi = torch.round(xa * 2 ** fa).long()
    wi = torch.round(q.effective_weight * 2 ** fw).long()
    bi = torch.round(q.effective()[1] * 2 ** fb).long()
    return y, xi, wi, bi, fa, fw, fb


def test_integer_linear_equals_fake_quant():
    torch.manual_seed(4)
    y, xi, wi, bi, fa, fw, fb = _int_check(nn.Linear(32, 8), torch.randn(16, 32))
    f = max(fa + fw, fb)
    acc = (xi @ wi.T) * 2 ** (f - fa - fw) + bi * 2 ** (f - fb)
    assert torch.equal(acc.double() / 2 ** f, y.double())


def test_integer_conv_equals_fake_quant():
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    y, xi, wi, bi, fa, fw, fb = _int_check(conv, torch.randn(2, 3, 6, 6))
    f = max(fa + fw, fb)
    acc = nn.functional.conv2d(xi.double(), wi.double(), padding=1)  # integers: exact in float64
    acc = acc.long() * 2 ** (f - fa - fw) + (bi * 2 ** (f - fb)).view(1, -1, 1, 1)
    assert torch.equal(acc.double() / 2 ** f, y.double())


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call,match", [
    (lambda: qsp.quantize(bits=0), "bits=0"),
    (lambda: qsp.quantize(bits=33), "bits=33"),
    (lambda: qsp.prune(sparsity=1.0), r"sparsity=1.0.*\[0, 1\)"),
    (lambda: qsp.prune(sparsity=-0.1), "sparsity"),
    (lambda: qsp.prune(window=0), "window=0"),
    (lambda: qsp.quantize(window=0), "window=0"),
    (lambda: qsp.quantize(rounding="up"), "rounding='up'"),
    (lambda: qsp.quantize(nn.ReLU(), bits=8), "has no weight"),
    (lambda: qsp.prune(nn.ReLU()), "has no weight"),
])
def test_bad_input_names_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
