"""The one place where qsp's fixed-point semantics live.

Every stage uses this module: the training operators (``qsp.nn``), the integer-exact
emulator, the ONNX export and the ``ap_fixed`` type strings of the HLS compiler. If a
rounding or saturation rule changes here, it changes everywhere at once, which is what
makes C-simulation bit-exact by design.

A value in format ``FixedFormat(bits=N, frac=d, signed=s, rounding=R)`` is ``k * 2**-d``
with ``k`` an integer in ``[-2**(N-1), 2**(N-1)-1]`` (signed) or ``[0, 2**N-1]``
(unsigned). Quantization is::

    Q(x; N, d) = clamp(R(x * 2**d), k_min, k_max) * 2**-d

``d`` (fraction bits) may be negative or larger than ``N``. Overflow always saturates
(``AP_SAT``). The rounding modes map one to one to ``ap_fixed`` quantization modes:

=============  =============  ==============================================
qsp name       ap_fixed       meaning
=============  =============  ==============================================
convergent     AP_RND_CONV    half to even (torch.round, numpy.round, ONNX)
nearest        AP_RND         half up (towards +inf)
floor          AP_TRN         towards -inf
zero           AP_TRN_ZERO    towards zero (what qsparse does, a C cast)
=============  =============  ==============================================

In ``ap_fixed<W, I>`` the integer bits ``I`` include the sign bit, so ``W = N`` and
``I = N - d``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

ROUNDING_MODES = {
    "convergent": "AP_RND_CONV",
    "nearest": "AP_RND",
    "floor": "AP_TRN",
    "zero": "AP_TRN_ZERO",
}
DEFAULT_ROUNDING = "convergent"
#: fraction bits searched by the delayed quantizer (qsparse searches [0, 20); negative
#: values let wide-range tensors be represented too).
DEFAULT_FRAC_CANDIDATES = tuple(range(-8, 25))


def check_rounding(mode: str) -> str:
    if mode not in ROUNDING_MODES:
        raise ValueError(
            f"rounding={mode!r} is not a known rounding mode; allowed: {sorted(ROUNDING_MODES)}")
    return mode


def check_bits(bits, name: str = "bits", low: int = 1, high: int = 32) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not low <= bits <= high:
        raise ValueError(f"{name}={bits!r} is out of range: it must be an integer in [{low}, {high}]")
    return int(bits)


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range ``(k_min, k_max)`` of an N-bit signed/unsigned format."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


# --------------------------------------------------------------------------- numpy (exact)
def round_np(x: np.ndarray, mode: str) -> np.ndarray:
    """Round to integers with a named mode (float64 in, float64 out)."""
    if mode == "convergent":
        return np.round(x)  # half to even
    if mode == "nearest":
        return np.floor(x + 0.5)
    if mode == "floor":
        return np.floor(x)
    if mode == "zero":
        return np.trunc(x)
    raise ValueError(check_rounding(mode))


def quantize_np(x, bits: int, frac, signed: bool = True, rounding: str = DEFAULT_ROUNDING,
                channel_axis: int | None = None) -> np.ndarray:
    """Exact quantization in float64. ``frac`` may be an int or a per-channel array
    (broadcast along ``channel_axis``)."""
    x = np.asarray(x, dtype=np.float64)
    frac = np.asarray(frac, dtype=np.float64)
    if frac.ndim == 1 and channel_axis is not None:
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        frac = frac.reshape(shape)
    lo, hi = int_range(bits, signed)
    scale = np.exp2(frac)
    return np.clip(round_np(x * scale, rounding), lo, hi) / scale


def to_int_np(x, frac, bits: int | None = None, signed: bool = True) -> np.ndarray:
    """Integer codes of values already on the grid 2**-frac (raises if they are not)."""
    k = np.asarray(x, dtype=np.float64) * np.exp2(frac)
    ki = np.round(k)
    if not np.array_equal(k, ki):
        raise ValueError("values are not on the fixed-point grid 2**-%s" % (frac,))
    if bits is not None:
        lo, hi = int_range(bits, signed)
        if ki.size and (ki.min() < lo or ki.max() > hi):
            raise ValueError(f"values exceed the {bits}-bit {'signed' if signed else 'unsigned'} range")
    return ki.astype(np.int64)


def on_grid(x, bits: int, frac, signed: bool = True) -> bool:
    try:
        to_int_np(x, frac, bits, signed)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- torch
def round_torch(x, mode: str):
    """Round a torch tensor to integers with a named mode (no gradient handling)."""
    import torch

    if mode == "convergent":
        return torch.round(x)
    if mode == "nearest":
        return torch.floor(x + 0.5)
    if mode == "floor":
        return torch.floor(x)
    if mode == "zero":
        return torch.trunc(x)
    raise ValueError(check_rounding(mode))


def quantize_torch(x, bits: int, frac, signed: bool = True, rounding: str = DEFAULT_ROUNDING):
    """Fake-quantize a torch tensor onto the grid (no straight-through gradient; see
    :func:`quantize_ste`). ``frac`` is an int or a tensor broadcastable to ``x``.
    Scaling by a power of two is exact in floating point, so the result equals
    :func:`quantize_np` bit for bit while ``bits <= 24`` (float32 mantissa)."""
    import torch

    lo, hi = int_range(bits, signed)
    if isinstance(frac, torch.Tensor):
        scale = torch.exp2(frac.to(x.dtype))
    else:
        scale = float(2.0 ** frac)
    return torch.clamp(round_torch(x * scale, rounding), lo, hi) / scale


def _round_inplace(k, mode: str):
    if mode == "convergent":
        return k.round_()
    if mode == "nearest":
        return k.add_(0.5).floor_()
    if mode == "floor":
        return k.floor_()
    if mode == "zero":
        return k.trunc_()
    raise ValueError(check_rounding(mode))


def _ste_function():
    import torch

    class _FakeQuant(torch.autograd.Function):
        """Fake quantization (few in-place passes over the data) with the straight-through
        gradient masked to the codes that did not saturate."""

        @staticmethod
        def forward(ctx, x, scale, lo, hi, mode):
            k = _round_inplace(torch.mul(x, scale), mode)
            q = torch.clamp(k, lo, hi)
            ctx.save_for_backward(q == k)  # not saturated
            return q.div_(scale)

        @staticmethod
        def backward(ctx, g):
            (inside,) = ctx.saved_tensors
            return g * inside, None, None, None, None

    return _FakeQuant


_FAKE_QUANT = None


def quantize_ste(x, bits: int, frac, signed: bool = True, rounding: str = DEFAULT_ROUNDING,
                 channel_axis: int | None = None):
    """Quantize with a straight-through gradient.

    Forward: exactly :func:`quantize_torch` (same values, bit for bit). Backward: the
    incoming gradient passes unchanged where the rounded code ``R(x * 2**d)`` lies inside
    ``[k_min, k_max]`` and is zero where the output saturated (it no longer depends on
    the input there): for round-to-nearest modes that is ``x`` outside about
    ``[(k_min - 1/2) * 2**-d, (k_max + 1/2) * 2**-d]``.

    ``frac`` is an int, a 0-d tensor (per tensor) or a 1-d tensor of one value per channel
    along ``channel_axis``. On CUDA in eager mode, ``convergent`` rounding of a per-tensor
    float32 value runs PyTorch's fused ``fake_quantize_per_tensor_affine`` (one kernel
    forward, one backward, the same mask; it rounds half to even with ``nearbyint`` and the
    power-of-two scale is exact); elsewhere it is a few in-place passes (the fused op
    measured slower on CPU here, and under ``torch.compile`` the passes fuse anyway).
    """
    import torch

    global _FAKE_QUANT
    if _FAKE_QUANT is None:
        _FAKE_QUANT = _ste_function()
    lo, hi = int_range(bits, signed)
    if (isinstance(frac, int) and rounding == "convergent" and x.is_cuda and x.dtype == torch.float32
            and not torch.compiler.is_compiling()):
        return torch.fake_quantize_per_tensor_affine(x, 2.0 ** -frac, 0, lo, hi)
    if isinstance(frac, torch.Tensor):
        if frac.dim() == 1 and channel_axis is not None:
            shape = [1] * x.dim()
            shape[channel_axis] = -1
            frac = frac.view(shape)
        scale = torch.exp2(frac.to(x.dtype))
    else:
        scale = float(2.0 ** frac)
    return _FAKE_QUANT.apply(x, scale, lo, hi, rounding)


# --------------------------------------------------------------------------- the format
@dataclass(frozen=True)
class FixedFormat:
    """A fixed-point format: ``bits`` total, ``frac`` fraction bits, sign, rounding."""

    bits: int
    frac: int
    signed: bool = True
    rounding: str = DEFAULT_ROUNDING

    def __post_init__(self):
        check_bits(self.bits, "bits", 1, 64)
        if isinstance(self.frac, bool) or not isinstance(self.frac, (int, np.integer)):
            raise ValueError(f"frac={self.frac!r} must be an integer")
        object.__setattr__(self, "frac", int(self.frac))
        object.__setattr__(self, "bits", int(self.bits))
        check_rounding(self.rounding)

    # ranges
    @property
    def integer(self) -> int:
        """``I`` of ``ap_fixed<W, I>`` (includes the sign bit when signed)."""
        return self.bits - self.frac

    @property
    def step(self) -> float:
        return 2.0 ** -self.frac

    @property
    def int_min(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def int_max(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def min(self) -> float:
        return self.int_min * self.step

    @property
    def max(self) -> float:
        return self.int_max * self.step

    # quantization
    def quantize_np(self, x) -> np.ndarray:
        return quantize_np(x, self.bits, self.frac, self.signed, self.rounding)

    def quantize_torch(self, x):
        return quantize_torch(x, self.bits, self.frac, self.signed, self.rounding)

    def contains(self, x) -> bool:
        return on_grid(x, self.bits, self.frac, self.signed)

    # hardware and interchange
    def ap_type(self, saturate: bool = True) -> str:
        """``ap_fixed``/``ap_ufixed`` type string with this rounding mode and AP_SAT."""
        base = "ap_fixed" if self.signed else "ap_ufixed"
        sat = "AP_SAT" if saturate else "AP_WRAP"
        return f"{base}<{self.bits},{self.integer},{ROUNDING_MODES[self.rounding]},{sat}>"

    def ap_type_plain(self) -> str:
        """Type string without modes (truncate/wrap): for values already on the grid."""
        base = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{base}<{self.bits},{self.integer}>"

    def onnx_params(self) -> dict:
        """Scale and integer clip range for an ONNX Mul/Round/Clip/Mul quantization node
        chain (``QuantizeLinear``'s scale is ``2**-frac``, zero point 0)."""
        return {"scale": self.step, "k_min": self.int_min, "k_max": self.int_max,
                "rounding": self.rounding}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FixedFormat":
        unknown = set(d) - {"bits", "frac", "signed", "rounding"}
        if unknown:
            raise ValueError(f"unknown fixed-format keys: {sorted(unknown)}")
        return cls(int(d["bits"]), int(d["frac"]), bool(d.get("signed", True)),
                   d.get("rounding", DEFAULT_ROUNDING))

    def __str__(self) -> str:
        return self.ap_type()


def widen_to_cover(formats: Sequence[FixedFormat]) -> FixedFormat:
    """Smallest single format that holds every value of every format in ``formats``
    exactly (used for per-channel weight formats, since hls4ml has one type per layer)."""
    frac = max(f.frac for f in formats)
    signed = any(f.signed for f in formats)
    top = max(f.integer - (1 if f.signed else 0) for f in formats)  # magnitude bits above the point
    bits = top + frac + (1 if signed else 0)
    return FixedFormat(max(bits, 1), frac, signed, formats[0].rounding)


def fit_format(values, bits: int, rounding: str = DEFAULT_ROUNDING) -> FixedFormat:
    """The signed ``bits``-bit format with the most fraction bits that holds every value of
    ``values`` without saturating (for constants: a standalone BatchNorm's scale and
    shift, a LeakyReLU's slope)."""
    a = np.asarray(values, np.float64).reshape(-1)
    m = float(np.max(np.abs(a))) if a.size else 0.0
    frac = bits - 1 if m == 0 else bits - 2 - int(np.floor(np.log2(m)))
    fmt = FixedFormat(bits, frac, True, rounding)
    while a.size and np.max(np.abs(fmt.quantize_np(a) - a)) > fmt.step / 2:  # saturated somewhere
        frac -= 1
        fmt = FixedFormat(bits, frac, True, rounding)
    return fmt


#: bits of a standalone BatchNorm's per-channel scale and shift (the bundle's scale_shift node)
SCALE_SHIFT_BITS = 16


def scale_shift(gamma, beta, mean, var, eps: float, bits: int = SCALE_SHIFT_BITS):
    """A BatchNorm at inference as per-channel ``x * scale + shift`` with ``scale = gamma /
    sqrt(var + eps)`` and ``shift = beta - mean * scale`` (float64), each quantized to its
    :func:`fit_format`: (scale format, shift format, scale on its grid, shift on its grid).
    The one rule qsp.convert trains with and the bundle export writes."""
    var, mean = np.asarray(var, np.float64), np.asarray(mean, np.float64)
    g = np.ones_like(var) if gamma is None else np.asarray(gamma, np.float64)
    b = np.zeros_like(var) if beta is None else np.asarray(beta, np.float64)
    scale = g / np.sqrt(var + eps)
    shift = b - mean * scale
    sf, bf = fit_format(scale, bits), fit_format(shift, bits)
    return sf, bf, sf.quantize_np(scale), bf.quantize_np(shift)


#: bits of a LeakyReLU slope (hls4ml's ``param`` type); qsp.convert trains with the slope on
#: this grid, so the exported slope is the trained one
LEAKY_SLOPE_BITS = 16


def leaky_slope(slope: float) -> tuple[float, FixedFormat]:
    """(the slope on its grid, its format)."""
    fmt = fit_format([slope], LEAKY_SLOPE_BITS)
    return float(fmt.quantize_np(np.array([slope]))[0]), fmt


def format_for_codes(lo: int, hi: int, frac: int, rounding: str = "floor") -> FixedFormat:
    """Smallest format with ``frac`` fraction bits holding every integer code in
    ``[lo, hi]`` (signed iff ``lo < 0``)."""
    lo, hi = int(min(lo, 0)), int(max(hi, 0))
    if lo < 0:
        bits = max((-lo - 1).bit_length(), hi.bit_length()) + 1
    else:
        bits = max(hi.bit_length(), 1)
    return FixedFormat(bits, frac, lo < 0, rounding)


def code_range(f: FixedFormat, frac: int) -> tuple[int, int]:
    """(lo, hi) codes of format ``f`` expressed at ``frac >= f.frac`` fraction bits."""
    s = frac - f.frac
    return f.int_min << s, f.int_max << s


def accumulator_format(in_fmt: FixedFormat, w_fmt: FixedFormat, fan_in: int,
                       bias_fmt: FixedFormat | None = None, nonzero_fan_in: int | None = None) -> FixedFormat:
    """A signed format that holds any sum of ``fan_in`` products ``w*x`` plus the bias
    without overflow or rounding: fraction bits ``f_w + f_x`` (or the bias's, if finer),
    integer part from the largest possible magnitude."""
    n = nonzero_fan_in if nonzero_fan_in is not None else fan_in
    frac = w_fmt.frac + in_fmt.frac
    max_prod = max(abs(w_fmt.int_min), abs(w_fmt.int_max)) * max(abs(in_fmt.int_min), abs(in_fmt.int_max))
    max_int = max(n, 1) * max_prod  # in units of 2**-frac
    if bias_fmt is not None:
        if bias_fmt.frac > frac:
            max_int <<= (bias_fmt.frac - frac)
            frac = bias_fmt.frac
        max_int += max(abs(bias_fmt.int_min), abs(bias_fmt.int_max)) << (frac - bias_fmt.frac)
    bits = int(max_int).bit_length() + 1  # + sign
    return FixedFormat(bits, frac, True, "floor")


# --------------------------------------------------------------------------- d* search
def quant_error_np(x: np.ndarray, bits: int, frac: int, signed: bool, rounding: str) -> float:
    q = quantize_np(x, bits, frac, signed, rounding)
    return float(np.sum((np.asarray(x, np.float64) - q) ** 2))


def best_frac_np(x, bits: int, signed: bool = True, rounding: str = DEFAULT_ROUNDING,
                 candidates: Iterable[int] = DEFAULT_FRAC_CANDIDATES,
                 quantiles: tuple[float, float] | None = None) -> int:
    """Exhaustive reference: ``argmin_d sum (S(x) - Q(S(x); N, d))**2`` where S clips to
    the data's quantiles when given. Ties go to the smallest ``d`` (widest range)."""
    x = np.asarray(x, np.float64).ravel()
    if quantiles is not None:
        lo, hi = np.quantile(x, quantiles)
        x = np.clip(x, lo, hi)
    cands = list(candidates)
    errs = [quant_error_np(x, bits, d, signed, rounding) for d in cands]
    return cands[int(np.argmin(errs))]


def sum_bits_needed(values: np.ndarray) -> int:
    """Bits of a signed integer that holds every value of ``values`` (int array)."""
    m = int(np.max(np.abs(values))) if np.size(values) else 0
    return max(1, m.bit_length() + 1)


def ceil_log2(n: int) -> int:
    return max(0, math.ceil(math.log2(max(n, 1))))
