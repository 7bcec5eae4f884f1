"""The integer-exact emulator on hand-computed graphs and the fixture bundles."""
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qsp.bundle import FlattenNode, MaskNode, PixelShuffleNode, ReluNode
from qsp.errors import QspError
from qsp.fixedpoint import ROUNDING_MODES, quantize_np
from qsp.verify import analyze, emulate, fake_quant_forward
from qsp.verify.emulate import avgpool_frac, int_matmul
from tests.graphs import avgpool, conv, linear, make, quant, random_codes, wide_bundle

MODES = sorted(ROUNDING_MODES)


def _tiny_linear(rounding):
    nodes = [quant("input_quant", [3], 8, 2), linear("dense1", 3, 2, 8, 3, 8, 4), quant("q", [2], 4, 1, True, rounding)]
    w = {"dense1.weight": [[0.5, -0.25, 1.0], [-1.0, 0.125, 0.375]], "dense1.bias": [0.0625, -0.5]}
    return make(nodes, w)


def test_linear_hand_computed():
    b = _tiny_linear("convergent")
    x = np.array([[1.25, -0.5, 3.0]])
    tr = emulate(b, x, trace=True)
    # codes: x [5,-2,12] (f=2), w [[4,-2,8],[-8,1,3]] (f=3): products at f=5 -> [120, -6];
    # bias [1,-8] (f=4) shifted to f=5: [2,-16] -> [122, -22] / 32
    assert tr["dense1"].tolist() == [[122 / 32, -22 / 32]]
    steps = analyze(b)
    assert steps[1].out_info.frac == 5
    # 4-bit signed, f=1: 7.625 -> 8 saturates to 7 (3.5); -1.375 -> -1
    assert tr["q"].tolist() == [[3.5, -0.5]]


@pytest.mark.parametrize("mode,expected", [("convergent", [3.5, -0.5]), ("nearest", [3.5, -0.5]),
                                           ("floor", [3.5, -1.0]), ("zero", [3.5, -0.5])])
def test_linear_then_quantize_each_mode(mode, expected):
    assert emulate(_tiny_linear(mode), np.array([[1.25, -0.5, 3.0]])).tolist() == [expected]


def test_quantize_ties_match_fixedpoint():
    x = (np.arange(-40, 40) + 0.5)[None, :] / 4  # every value a tie at frac 2
    for mode in MODES:
        b = make([quant("input_quant", [80], 6, 2, True, mode)])
        y = emulate(b, x)
        assert np.array_equal(y, quantize_np(x, 6, 2, True, mode))
    assert emulate(make([quant("input_quant", [80], 6, 2, True, "convergent")]), x)[0, 40] == 0.0  # 0.125 -> 0


def test_conv_hand_computed():
    xin = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    w = {"conv1.weight": np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)}
    b = make([quant("input_quant", [1, 3, 3], 4, 0, False), conv("conv1", [1, 3, 3], 1, 2, 8, 0)], w)
    assert emulate(b, xin)[0, 0].tolist() == [[37, 47], [67, 77]]
    b2 = make([quant("input_quant", [1, 3, 3], 4, 0, False), conv("conv1", [1, 3, 3], 1, 2, 8, 0, stride=2, padding=1)], w)
    assert emulate(b2, xin)[0, 0].tolist() == [[4, 18], [36, 77]]


def test_conv_matches_torch_float64_with_bias_and_channels():
    rng = np.random.default_rng(3)
    w = {"conv1.weight": random_codes(rng, (5, 3, 3, 3), 8) / 64, "conv1.bias": random_codes(rng, (5,), 12) / 2 ** 10}
    b = make([quant("input_quant", [3, 7, 6], 8, 4), conv("conv1", [3, 7, 6], 5, 3, 8, 6, stride=2, padding=1,
                                                          bbits=12, bfrac=10)], w)
    x = random_codes(rng, (4, 3, 7, 6), 8) / 16
    ref = F.conv2d(torch.tensor(x), torch.tensor(w["conv1.weight"]), torch.tensor(w["conv1.bias"]), stride=2,
                   padding=1).numpy()
    assert np.array_equal(emulate(b, x), ref)  # exact: every value has few bits


def test_pixel_shuffle_and_flatten_order():
    r = 2
    nodes = [quant("input_quant", [8, 2, 3], 8, 0), PixelShuffleNode(name="ps", in_shape=[8, 2, 3], out_shape=[2, 4, 6],
                                                                     factor=r),
             FlattenNode(name="flat", in_shape=[2, 4, 6], out_shape=[48])]
    b = make(nodes)
    x = np.arange(2 * 48, dtype=np.float64).reshape(2, 8, 2, 3) - 48
    tr = emulate(b, x, trace=True)
    ref = F.pixel_shuffle(torch.tensor(x), r)
    assert np.array_equal(tr["ps"], ref.numpy())
    assert np.array_equal(tr["flat"], ref.reshape(2, -1).numpy())
    small = make([quant("input_quant", [4, 1, 1], 8, 0), PixelShuffleNode(name="ps", in_shape=[4, 1, 1],
                                                                           out_shape=[1, 2, 2], factor=2)])
    assert emulate(small, np.array([1.0, 2, 3, 4]).reshape(1, 4, 1, 1))[0, 0].tolist() == [[1, 2], [3, 4]]


def _exact_round(v: Fraction, mode: str) -> int:
    """Test oracle: rounding of an exact rational."""
    fl = v.numerator // v.denominator
    rem = v - fl
    if mode == "floor":
        return fl
    if mode == "zero":
        return fl if v >= 0 or rem == 0 else fl + 1
    if mode == "nearest":
        return fl + (1 if rem >= Fraction(1, 2) else 0)
    if rem != Fraction(1, 2):
        return fl + (1 if rem > Fraction(1, 2) else 0)
    return fl if fl % 2 == 0 else fl + 1


@pytest.mark.parametrize("mode", MODES)
def test_avgpool_non_power_of_two_then_quantize_is_exact(mode):
    rng = np.random.default_rng(7)
    f, d = 4, 1
    nodes = [quant("input_quant", [2, 6, 6], 8, f), avgpool("avg", [2, 6, 6], 3), ReluNode(name="relu", in_shape=[2, 2, 2],
             out_shape=[2, 2, 2]), quant("q", [2, 2, 2], 6, d, True, mode)]
    b = make(nodes)
    codes = random_codes(rng, (5, 2, 6, 6), 8)
    # windows whose mean is a tie at frac d: sum 36 -> 36/(9*16) = 0.25 -> 0.5 at d=1
    codes[0, 0, :3, :3] = 4
    codes[0, 1, :3, :3] = 12  # sum 108 -> 0.75 -> 1.5
    codes[1, 0, :3, :3] = -4
    x = codes / 2.0 ** f
    y = emulate(b, x)
    win = codes.reshape(5, 2, 2, 3, 2, 3).sum(axis=(3, 5))
    want = np.array([_exact_round(Fraction(int(s), 9 * 2 ** f) * 2 ** d, mode) for s in np.maximum(win, 0).ravel()])
    want = np.clip(want, -32, 31).reshape(win.shape) / 2.0 ** d
    assert np.array_equal(y, want)


def test_avgpool_power_of_two_exact_and_truncated_otherwise():
    rng = np.random.default_rng(1)
    codes = random_codes(rng, (3, 1, 4, 4), 8)
    b2 = make([quant("input_quant", [1, 4, 4], 8, 3), avgpool("avg", [1, 4, 4], 2)])
    assert np.array_equal(emulate(b2, codes / 8.0), codes.reshape(3, 1, 2, 2, 2, 2).mean(axis=(3, 5)) / 8.0)
    assert analyze(b2)[1].out_info.frac == 3 + 2
    codes = random_codes(rng, (3, 1, 3, 3), 8)
    b3 = make([quant("input_quant", [1, 3, 3], 8, 3), avgpool("avg", [1, 3, 3], 3)])
    fr = avgpool_frac(3, 9, None)
    assert fr == 3 + 4
    s = codes.sum(axis=(2, 3)) * 2 ** (fr - 3)
    trunc = np.array([int(Fraction(int(v), 9)) for v in s.ravel()]).reshape(s.shape)  # toward zero
    assert np.array_equal(emulate(b3, codes / 8.0)[:, :, 0, 0], trunc / 2.0 ** fr)


def test_mask_and_relu():
    m = np.array([1.0, 0.0, 1.0, 0.0])
    b = make([quant("input_quant", [4], 8, 2), ReluNode(name="relu", in_shape=[4], out_shape=[4]),
              MaskNode(name="mask", in_shape=[4], out_shape=[4])], masks={"mask.mask": m})
    assert emulate(b, np.array([[1.25, 2.0, -3.0, 0.5]])).tolist() == [[1.25, 0.0, 0.0, 0.0]]


def test_int64_path_is_exact_beyond_2_53():
    rng = np.random.default_rng(0)
    a = rng.integers(-2 ** 31, 2 ** 31, size=(5, 64))
    w = rng.integers(-2 ** 24, 2 ** 24, size=(64, 3))
    got = int_matmul(a, w, bound=2 ** 61)
    want = [[sum(int(a[i, k]) * int(w[k, j]) for k in range(64)) for j in range(3)] for i in range(5)]
    assert got.tolist() == want
    assert any(abs(v) >= 2 ** 53 for row in want for v in row)


def test_overflow_guard_raises():
    nodes = [quant("input_quant", [1024], 32, 0), linear("dense1", 1024, 2, 32, 0)]
    w = {"dense1.weight": np.full((2, 1024), -(2.0 ** 31))}
    with pytest.raises(QspError, match="dense1"):
        emulate(make(nodes, w), np.zeros((1, 1024)))


def test_wide_layers_exact_where_float32_is_not():
    b, x = wide_bundle()
    steps = analyze(b)
    assert steps[1].out_info.bound >= 2 ** 24 and steps[-1].out_info.bound >= 2 ** 24
    y = emulate(b, x)
    # float64 torch on the same graph is exact here (sums < 2**53) -> the reference of the reference
    ref = fake_quant_forward_f64(b, x)
    assert np.array_equal(y, ref)
    # the float32 training-time forward is NOT exact here: why ONNX needs its float64 guard
    tr, fq = emulate(b, x, trace=True), fake_quant_forward(b, x, trace=True)
    assert np.count_nonzero(tr["conv1"] != fq["conv1"]) > 0
    assert np.count_nonzero(tr["quant1"] != fq["quant1"]) > 0


def fake_quant_forward_f64(b, x):
    tr = {}
    t = torch.tensor(np.asarray(x, np.float64))
    for n in b.graph:
        if n.op == "quantize":
            t = torch.tensor(n.format.quantize_np(t.numpy()))
        elif n.op == "conv2d":
            t = F.conv2d(t, torch.tensor(b.weight(n.name)), torch.tensor(b.bias(n.name)), padding=n.padding)
        elif n.op == "linear":
            t = F.linear(t, torch.tensor(b.weight(n.name)), torch.tensor(b.bias(n.name)))
        elif n.op == "flatten":
            t = t.flatten(1)
        tr[n.name] = t
    return t.numpy()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fake_quant_forward_equals_emulate_on_fixtures(kind, request):
    from qsp.bundle import read_bundle
    b = read_bundle(request.getfixturevalue(f"{kind}_bundle"))
    x = b.test_x
    em = emulate(b, x, trace=True)
    fq = fake_quant_forward(b, x, trace=True)
    assert list(em) == [n.name for n in b.graph] == list(fq)
    for name in em:
        assert np.array_equal(em[name], fq[name]), name
    assert em[b.graph[-1].name].shape == (len(x), 10)
