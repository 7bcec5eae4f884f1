"""Bit-exactness of qsp's extra hls4ml ops (qsp.compile.extension) and of the native hls4ml
layers qsp relies on (residual add, channel concat, LeakyReLU, global average pooling,
fan-out of an intermediate tensor), in the generated C simulation against an exact float64
numpy reference. One small model holds every op; one g++ build per (backend, io type)
(hm.trace compiles once with the per-layer trace hooks), plus one build of a model with
perturbed weights (fault test). See docs/hls4ml-ops.md."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from qsp.compile import extension
from qsp.fixedpoint import FixedFormat, accumulator_format

warnings.filterwarnings("ignore", category=DeprecationWarning)

N = 48  # random inputs
C, H, W = 4, 4, 4
SLOPE = 0.1
CLIP1 = (-1.5, 2.25)
CLIP2 = (float("-inf"), 1.0)

# formats (qsp style: weights plain types on their grid; results with rounding and AP_SAT)
F_IN = FixedFormat(6, 3)
F_W = FixedFormat(5, 3)
F_B = FixedFormat(6, 4)
ACC_DW = accumulator_format(F_IN, F_W, 9, F_B)
R_DW = FixedFormat(7, 3)  # narrow: saturates
F_SC, F_SH = FixedFormat(5, 3), FixedFormat(5, 3)
R_SS = FixedFormat(8, 3)
R_CL = FixedFormat(6, 2)  # rounds the clip's input (frac 3 -> 2)
ACC_GC = accumulator_format(R_CL, F_W, 18, F_B)
R_GC = FixedFormat(8, 3)
R_ADD = FixedFormat(9, 3)  # exact: frac max(2, 3), integer bits max(4, 5) + 1
R_CAT = FixedFormat(9, 3)  # widest of the inputs
P_LR = FixedFormat(8, 7)  # LeakyReLU's param type: alpha = Q(0.1) = 13/128 (RND_CONV)
R_LR = FixedFormat(10, 5)  # product frac 10 -> 5: rounds; saturates at +-16
ACC_GAP = FixedFormat(R_LR.bits + 4 + 4, R_LR.frac + 4)  # 16 = 2**4 cells: frac + 4, integer + 4
R_GAP = FixedFormat(8, 4)
F_SC2, F_SH2 = FixedFormat(6, 4), FixedFormat(6, 3)
R_SS2 = FixedFormat(8, 4)
R_CL2 = FixedFormat(8, 4)


def grid(rng, f: FixedFormat, shape) -> np.ndarray:
    return rng.integers(f.int_min, f.int_max + 1, size=shape) * f.step


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"dw_w": grid(rng, F_W, (C, 1, 3, 3)), "dw_b": grid(rng, F_B, (C,)),
            "sc": grid(rng, F_SC, (C,)), "sh": grid(rng, F_SH, (C,)),
            "gc_w": grid(rng, F_W, (C, 2, 3, 3)), "gc_b": grid(rng, F_B, (C,)),
            "sc2": grid(rng, F_SC2, (2 * C,)), "sh2": grid(rng, F_SH2, (2 * C,)),
            "clip1": CLIP1, "clip2": CLIP2}


class Net(nn.Module):
    """dw -> ss -> cl = a; a fans out to gc, add and cat; t = a + gc(a); cat([a, t]) ->
    LeakyReLU -> global AvgPool2d -> Flatten -> ss2 (1-D input) -> cl2 (one-sided clip)."""

    def __init__(self, p):
        super().__init__()
        self.dw = extension.QspDepthwiseConv2d(p["dw_w"], p["dw_b"], stride=(1, 1), padding=(1, 1))
        self.ss = extension.QspScaleShift(p["sc"], p["sh"])
        self.cl = extension.QspClip(*p["clip1"])
        self.gc = extension.QspGroupedConv2d(p["gc_w"], p["gc_b"], stride=(1, 1), padding=(1, 1), groups=2)
        self.lr = nn.LeakyReLU(SLOPE)
        self.gap = nn.AvgPool2d((H, W))
        self.fl = nn.Flatten()
        self.ss2 = extension.QspScaleShift(p["sc2"], p["sh2"])
        self.cl2 = extension.QspClip(*p["clip2"])

    def forward(self, x):
        a = self.cl(self.ss(self.dw(x)))
        t = a + self.gc(a)
        u = torch.cat([a, t], dim=1)
        return self.cl2(self.ss2(self.fl(self.gap(self.lr(u)))))


PRECISION = {
    "x": {"result": F_IN.ap_type()},
    "dw": {"weight": F_W.ap_type_plain(), "bias": F_B.ap_type_plain(), "accum": ACC_DW.ap_type_plain(),
           "result": R_DW.ap_type()},
    "ss": {"scale": F_SC.ap_type_plain(), "bias": F_SH.ap_type_plain(), "result": R_SS.ap_type()},
    "cl": {"result": R_CL.ap_type()},
    "gc": {"weight": F_W.ap_type_plain(), "bias": F_B.ap_type_plain(), "accum": ACC_GC.ap_type_plain(),
           "result": R_GC.ap_type()},
    "add": {"result": R_ADD.ap_type()},
    "cat": {"result": R_CAT.ap_type()},
    "lr": {"param": P_LR.ap_type(), "result": R_LR.ap_type()},
    "gap": {"accum": ACC_GAP.ap_type_plain(), "result": R_GAP.ap_type()},
    "fl": {"result": R_GAP.ap_type_plain()},
    "ss2": {"scale": F_SC2.ap_type_plain(), "bias": F_SH2.ap_type_plain(), "result": R_SS2.ap_type()},
    "cl2": {"result": R_CL2.ap_type()},
}
CHECKED = ["dw", "ss", "cl", "gc", "add", "cat", "lr", "gap", "ss2", "cl2"]
INPUT_OF = {"dw": "x", "ss": "dw", "cl": "ss", "gc": "cl", "lr": "cat", "gap": "lr", "ss2": "gap", "cl2": "ss2"}


# ---------------------------------------------------------------------------- reference
def conv2d_np(x, w, b, stride, pad, groups):
    """Exact grouped conv in float64 (values on dyadic grids: every sum is exact)."""
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - kh) // stride[0] + 1
    ow = (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((n, co, oh, ow))
    cog = co // groups
    for o in range(co):
        g = o // cog
        for i in range(cig):
            for dy in range(kh):
                for dx in range(kw):
                    patch = xp[:, g * cig + i, dy:dy + stride[0] * oh:stride[0], dx:dx + stride[1] * ow:stride[1]]
                    out[:, o] += w[o, i, dy, dx] * patch
    return out + (0 if b is None else b[None, :, None, None])


def clip_np(v, lo, hi):
    return np.minimum(np.maximum(v, lo), hi)


def layer_ref(name, p, inp):
    """The exact output of one layer from its input(s) (NCHW / NC, float64)."""
    def chan(a, v):
        return a[None, :, None, None] if v.ndim == 4 else a[None, :]

    if name == "dw":
        return R_DW.quantize_np(conv2d_np(inp, p["dw_w"], p["dw_b"], (1, 1), (1, 1), C))
    if name in ("ss", "ss2"):
        sc, sh, r = (p["sc"], p["sh"], R_SS) if name == "ss" else (p["sc2"], p["sh2"], R_SS2)
        return r.quantize_np(inp * chan(sc, inp) + chan(sh, inp))
    if name in ("cl", "cl2"):
        (lo, hi), r = (p["clip1"], R_CL) if name == "cl" else (p["clip2"], R_CL2)
        return r.quantize_np(clip_np(inp, lo, hi))
    if name == "gc":
        return R_GC.quantize_np(conv2d_np(inp, p["gc_w"], p["gc_b"], (1, 1), (1, 1), 2))
    if name == "add":
        return R_ADD.quantize_np(inp[0] + inp[1])
    if name == "cat":
        return R_CAT.quantize_np(np.concatenate(inp, axis=1))
    if name == "lr":  # alpha cast to the param type (its rounding), exact product, one cast
        alpha = P_LR.quantize_np(np.float64(SLOPE))
        return R_LR.quantize_np(np.where(inp > 0, inp, alpha * inp))
    if name == "gap":  # sum exact in accum, divide keeping accum's fraction bits (toward zero), cast
        s = inp.sum(axis=(2, 3))
        q = np.trunc(s / (H * W) * 2.0 ** ACC_GAP.frac) / 2.0 ** ACC_GAP.frac
        return R_GAP.quantize_np(q)
    raise KeyError(name)


def inputs_of(name, get):
    if name == "add":
        return (get("cl"), get("gc"))
    if name == "cat":
        return (get("cl"), get("add"))
    return get(INPUT_OF[name])


def reference_chain(p, x):
    out = {"x": x}
    for name in CHECKED:
        out[name] = layer_ref(name, p, inputs_of(name, out.__getitem__))
    return out


def to_hls_layout(v):
    """NCHW -> hls4ml's flat channels-last (N, H*W*C)."""
    return (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v).reshape(len(v), -1)


def from_hls_layout(flat, like):
    if like.ndim == 4:
        n, c, h, w = like.shape
        return np.asarray(flat, np.float64).reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return np.asarray(flat, np.float64).reshape(like.shape)


def mismatches(hls_flat, expected) -> int:
    return int(np.count_nonzero(np.asarray(hls_flat, np.float64).reshape(len(expected), -1) != to_hls_layout(expected)))


# ---------------------------------------------------------------------------- builds
def build(params, backend, io_type, out_dir):
    import hls4ml

    extension.register()
    model = Net(params).eval()
    cfg = hls4ml.utils.config_from_pytorch_model(model, (C, H, W), granularity="name", backend=backend,
                                                 default_precision="ap_fixed<16,6>",
                                                 channels_last_conversion="full", transpose_outputs=False)
    layers = cfg["LayerName"]
    assert set(layers) == set(PRECISION), sorted(layers)
    for name, prec in PRECISION.items():
        layers[name]["Precision"] = dict(prec)
        layers[name]["Trace"] = True
    cfg["Model"]["Strategy"] = "Latency"
    hm = hls4ml.converters.convert_from_pytorch_model(model, hls_config=cfg, output_dir=str(out_dir),
                                                      backend=backend, io_type=io_type)
    return model, hm


def run(hm, x):
    """One g++ build (trace compiles with the trace hooks), then trace and predict."""
    xin = np.ascontiguousarray(x.astype(np.float32))
    _, trace = hm.trace(xin)
    y = np.asarray(hm.predict(xin), np.float64).reshape(len(x), -1)
    return y, {k: np.asarray(v, np.float64) for k, v in trace.items()}


@pytest.fixture(scope="module")
def inputs():
    return grid(np.random.default_rng(7), F_IN, (N, C, H, W))


@pytest.fixture(scope="module")
def params():
    return make_params(0)


@pytest.fixture(scope="module", params=[("Vitis", "io_parallel"), ("Vitis", "io_stream"), ("Vivado", "io_stream")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def built(request, params, inputs, tmp_path_factory):
    backend, io_type = request.param
    model, hm = build(params, backend, io_type, tmp_path_factory.mktemp(f"ops_{backend}_{io_type}"))
    y, trace = run(hm, inputs)
    return {"model": model, "hm": hm, "y": y, "trace": trace, "ref": reference_chain(params, inputs)}


# ---------------------------------------------------------------------------- tests
def test_every_layer_bit_exact(built):
    ref, trace = built["ref"], built["trace"]
    bad = {name: mismatches(trace[name], ref[name]) for name in CHECKED}
    assert bad == {name: 0 for name in CHECKED}
    assert mismatches(built["y"], ref["cl2"]) == 0


def test_every_layer_exact_from_its_own_input(built, params):
    """Each layer's C++ output against the reference applied to the C++ input of that layer
    (so a fault is pinned to one layer)."""
    ref, trace = built["ref"], built["trace"]

    def hls(name):
        return ref["x"] if name == "x" else from_hls_layout(trace[name], ref[name])

    bad = {name: mismatches(trace[name], layer_ref(name, params, inputs_of(name, hls))) for name in CHECKED}
    assert bad == {name: 0 for name in CHECKED}


def test_reference_is_not_trivial(built, params):
    """The values exercise rounding, saturation and both sides of the clips and LeakyReLU."""
    ref = built["ref"]
    raw_dw = conv2d_np(ref["x"], params["dw_w"], params["dw_b"], (1, 1), (1, 1), C)
    assert np.count_nonzero(raw_dw > R_DW.max) and np.count_nonzero(raw_dw < R_DW.min)  # SAT
    assert np.count_nonzero(raw_dw * 8 != np.round(raw_dw * 8))  # rounding in dw
    assert np.count_nonzero(ref["ss"] < CLIP1[0]) and np.count_nonzero(ref["ss"] > CLIP1[1])
    assert np.count_nonzero(ref["ss2"] > CLIP2[1]) and np.count_nonzero(ref["cl2"] < 0)
    assert np.count_nonzero(ref["cat"] < 0) and np.count_nonzero(ref["cat"] > 0)
    alpha = P_LR.quantize_np(np.float64(SLOPE))
    assert alpha == 13 / 128 != SLOPE
    assert len(np.unique(ref["gap"])) > 10


def test_one_lsb_off_in_expected_is_detected(built):
    """The comparison is not vacuous: one element one LSB off fails, for every layer."""
    ref, trace = built["ref"], built["trace"]
    steps = {"dw": R_DW, "ss": R_SS, "cl": R_CL, "gc": R_GC, "add": R_ADD, "cat": R_CAT, "lr": R_LR,
             "gap": R_GAP, "ss2": R_SS2, "cl2": R_CL2}
    for name in CHECKED:
        bad = ref[name].copy()
        bad.flat[5] += steps[name].step
        assert mismatches(trace[name], bad) == 1, name


def test_perturbed_weights_are_caught_in_their_layer(params, inputs, tmp_path):
    """One LSB changed in one weight of each of our layers (and one clip bound) in the HLS
    model: the per-layer check against the unperturbed reference fails in exactly those
    layers."""
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    bad["dw_w"][1, 0, 1, 1] += F_W.step if bad["dw_w"][1, 0, 1, 1] < F_W.max else -F_W.step
    bad["sc"][2] += F_SC.step if bad["sc"][2] < F_SC.max else -F_SC.step
    bad["gc_w"][3, 1, 0, 2] += F_W.step if bad["gc_w"][3, 1, 0, 2] < F_W.max else -F_W.step
    bad["sh2"][5] += F_SH2.step if bad["sh2"][5] < F_SH2.max else -F_SH2.step
    bad["clip1"] = (CLIP1[0], CLIP1[1] + R_CL.step)
    _, hm = build(bad, "Vitis", "io_parallel", tmp_path / "bad")
    _, trace = run(hm, inputs)
    ref = reference_chain(params, inputs)

    def hls(name):
        return ref["x"] if name == "x" else from_hls_layout(trace[name], ref[name])

    local = {name: mismatches(trace[name], layer_ref(name, params, inputs_of(name, hls))) for name in CHECKED}
    faulty = {name for name, n in local.items() if n}
    assert faulty == {"dw", "ss", "cl", "gc", "ss2"}, local


def test_torch_forward_is_the_float_semantics(params, inputs):
    m = Net(params).eval()
    x = torch.tensor(inputs, dtype=torch.float64)
    with torch.no_grad():
        dw = m.dw.double()(x).numpy()
        gc = m.gc.double()(x).numpy()
    assert np.array_equal(dw, conv2d_np(inputs, params["dw_w"], params["dw_b"], (1, 1), (1, 1), C))
    assert np.array_equal(gc[:, :, :, :], conv2d_np(inputs[:, :C], params["gc_w"], params["gc_b"], (1, 1), (1, 1), 2))
    dense = m.gc.dense_weight().astype(np.float64)
    assert np.array_equal(conv2d_np(inputs, dense, params["gc_b"], (1, 1), (1, 1), 1), gc)
    ss = m.ss(torch.tensor(inputs, dtype=torch.float32)).double().numpy()
    assert np.array_equal(ss, inputs * params["sc"][None, :, None, None] + params["sh"][None, :, None, None])
    v = torch.linspace(-3, 3, 25)
    assert torch.equal(extension.QspClip(0, 6)(v), torch.nn.functional.relu6(v))
    assert torch.equal(extension.QspClip(-1, 1)(v), torch.nn.functional.hardtanh(v))
    assert torch.equal(extension.QspClip(float("-inf"), 1.0)(v), torch.clamp(v, max=1.0))


def test_constructor_checks_and_register_idempotent():
    extension.register()
    extension.register()
    with pytest.raises(ValueError):
        extension.QspDepthwiseConv2d(np.zeros((4, 2, 3, 3)))  # grouped: use QspGroupedConv2d
    with pytest.raises(ValueError):
        extension.QspGroupedConv2d(np.zeros((5, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError):
        extension.QspClip(0.1, 1.0)  # not a fixed-point value
    with pytest.raises(ValueError):
        extension.QspClip(2.0, 1.0)
    with pytest.raises(ValueError):
        extension.QspScaleShift(np.ones(3), np.ones(4))
