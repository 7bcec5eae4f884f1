"""Learned-bitwidth quantizer (Uhlich et al., ICLR 2020, as used by DJPQ).

Each quantizer learns its step ``d`` and its range ``q_max`` (both through their logarithms,
which keeps them positive). The bitwidth is not a parameter: it follows from them,

    signed:    b = log2(q_max / d + 1) + 1
    unsigned:  b = log2(q_max / d + 1)

which is differentiable in ``d`` and ``q_max``, so the BOPs penalty (which multiplies bits)
pulls on the range and the step directly.

Hardware needs a fixed-point format, so the quantizer always *computes* with one:

* the step is snapped to a power of two, ``d -> 2**-frac`` with ``frac = -round(log2 d)``;
* the bitwidth is snapped up to an integer, ``B = ceil(b)`` (clamped to ``[min_bits,
  max_bits]``), or, with ``pow2=True``, to the nearest allowed power-of-two bitwidth
  (2, 4, 8, 16) in the log domain;
* the output is ``Q(x) = clamp(R(x * 2**frac), k_min, k_max) * 2**-frac`` of
  ``FixedFormat(B, frac, signed, rounding)``, rounded by :mod:`qsp.fixedpoint`.

The forward value is therefore, in training and in evaluation alike, exactly the exported
format's quantization (what ``ap_fixed`` computes). Gradients are straight-through: the
snaps (round of ``log2 d``, ceil / power-of-two of ``b``, the rounding of ``x / d``) pass
the gradient of their continuous argument, the clip passes it to ``x`` inside the range and
to the range outside it. Written that way the gradient reaching ``q_max`` is exactly that
of Uhlich et al.'s ``clip(x, -q_max, q_max)`` and the gradient reaching ``d`` that of
``d * round(x / d)`` (``round(x/d) - x/d`` inside the range).

In ``pow2`` mode the snapped bitwidth sets the clipping range (``q_max`` is then only a
continuous handle on ``b``): the network is trained with exactly the power-of-two formats it
will be deployed with, and the BOPs penalty sees the snapped bits (straight-through).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import fixedpoint as fp
from .scaled import ScaledParams
from ..nn.state import dist_cat, dist_max_

POW2_BITS = (2, 4, 8, 16)
LN2 = math.log(2.0)


def ste(exact: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``exact`` in the forward pass (bit for bit), the gradient of ``surrogate``."""
    return exact.detach() + (surrogate - surrogate.detach())


def signed_bits(q_max, d, signed: bool):
    """Uhlich et al.'s bitwidth of a range ``q_max`` and a step ``d`` (torch or float)."""
    if isinstance(q_max, torch.Tensor):
        b = torch.log2(q_max / d + 1.0)
    else:
        b = math.log2(q_max / d + 1.0)
    return b + 1 if signed else b


class _LearnedQuant(torch.autograd.Function):
    """The quantizer's forward (``exact``, the format's quantization) and Uhlich et al.'s
    straight-through gradients in one autograd node: what the composition
    ``d * (u + (round(u) - u).detach())`` with ``u = clamp(x, lo, hi) / d``, ``hi`` and ``lo``
    functions of the bits ``bs`` and the step ``d``, gives (torch.maximum/minimum's
    half-and-half split at ties included), without its ~25 tensor-sized kernels per call."""

    @staticmethod
    def forward(ctx, x, d, bs, bits: int, frac: int, signed: bool, rounding: str):
        exact = fp.quantize_torch(x, bits, frac, signed, rounding)
        ctx.save_for_backward(x, d, bs)
        ctx.signed = signed
        return exact

    @staticmethod
    def backward(ctx, g):
        x, d, bs = ctx.saved_tensors
        p = torch.exp2(bs - 1) if ctx.signed else torch.exp2(bs)
        hi = (p - 1) * d
        lo = -p * d if ctx.signed else torch.zeros_like(hi)
        below, above = x < lo, x > hi
        t_lo, t_hi = x == lo, x == hi
        half = g * 0.5
        gx = torch.where(below | above, torch.zeros_like(g), torch.where(t_lo | t_hi, half, g))
        u = torch.minimum(torch.maximum(x, lo), hi) / d
        g_d_direct = (g * (torch.round(u) - u)).sum()
        g_lo = torch.where(below, g, torch.where(t_lo, half, torch.zeros_like(g))).sum()
        g_hi = torch.where(above, g, torch.where(t_hi, half, torch.zeros_like(g))).sum()
        if ctx.signed:  # hi = (2^(b-1) - 1) d, lo = -2^(b-1) d
            g_d = g_d_direct + g_hi * (p - 1) - g_lo * p
            g_bs = (g_hi - g_lo) * p * LN2 * d
        else:  # hi = (2^b - 1) d, lo = 0
            g_d = g_d_direct + g_hi * (p - 1)
            g_bs = g_hi * p * LN2 * d
        return gx, g_d.reshape(d.shape), g_bs.reshape(bs.shape), None, None, None, None


def snap_pow2_bits(b: float, allowed=POW2_BITS) -> int:
    """The allowed bitwidth nearest to ``b`` in the log domain (ties to the larger)."""
    lb = math.log2(max(b, 1e-9))
    return min(allowed, key=lambda a: (abs(math.log2(a) - lb), -a))


class LearnedQuantizer(ScaledParams):
    """Per-tensor fixed-point quantizer with a learned step and range.

    ``signed=None`` decides the sign from the first training batch (signed if it holds a
    negative value); the choice is kept in a buffer. The range and step are initialised
    from the first tensor seen (``init_from``; weights are initialised at construction) so
    that the initial bitwidth is ``init_bits``.
    """

    _scaled = ("log_d", "log_qmax")

    def __init__(self, signed: bool | None = True, *, init_bits: int = 8, min_bits: int = 2,
                 max_bits: int = 16, pow2: bool = False, rounding: str = fp.DEFAULT_ROUNDING,
                 init_quantile: float = 1.0):
        super().__init__()
        fp.check_bits(init_bits, "init_bits", 1, 24)
        fp.check_bits(min_bits, "min_bits", 1, 24)
        fp.check_bits(max_bits, "max_bits", min_bits, 24)
        self.init_bits = int(init_bits)
        self.min_bits = int(min_bits)
        self.max_bits = int(max_bits)
        self.pow2 = bool(pow2)
        self.allowed = tuple(a for a in POW2_BITS if self.min_bits <= a <= self.max_bits)
        if self.pow2 and not self.allowed:
            raise ValueError(f"pow2=True but no power-of-two bitwidth lies in [{min_bits}, {max_bits}]")
        self.rounding = fp.check_rounding(rounding)
        if not 0.0 < init_quantile <= 1.0:
            raise ValueError(f"init_quantile={init_quantile!r} must be in (0, 1]")
        self.init_quantile = float(init_quantile)
        # parameters are stored divided by `param_scale` (an lr multiplier for optimizers
        # that give every parameter the same learning rate; see set_param_scale)
        self.raw_log_d = nn.Parameter(torch.tensor(math.log(2.0 ** -7)))
        self.raw_log_qmax = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("_signed", torch.tensor(-1 if signed is None else int(bool(signed)), dtype=torch.int8))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._flags_cache: tuple[int, bool] | None = None  # (_signed, initialized) read once, not per call

    def _flags(self) -> tuple[int, bool]:
        """The sign and init buffers as Python values, read from the device once (a read
        is a host-device synchronisation); re-read after init_from, a state_dict load or
        a train/eval switch."""
        if self._flags_cache is None:
            self._flags_cache = (int(self._signed), bool(self.initialized))
        return self._flags_cache

    def _load_from_state_dict(self, *args, **kwargs):
        self._flags_cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        self._flags_cache = None
        return super().train(mode)

    def extra_repr(self):
        s = {-1: "auto", 0: False, 1: True}[self._flags()[0]]
        return f"signed={s}, init_bits={self.init_bits}, bits=[{self.min_bits},{self.max_bits}], pow2={self.pow2}"

    # ------------------------------------------------------------------ parameters
    @property
    def log_d(self) -> torch.Tensor:
        """Natural log of the step ``d``."""
        return self.scaled("log_d")

    @property
    def log_qmax(self) -> torch.Tensor:
        """Natural log of the range ``q_max``."""
        return self.scaled("log_qmax")

    # ------------------------------------------------------------------ init
    @property
    def signed(self) -> bool:
        return self._flags()[0] != 0  # unknown counts as signed until data is seen

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, sharded: bool = False) -> None:
        """Set ``q_max`` to the data's (quantile of) magnitude and ``d`` so that the
        bitwidth is ``init_bits``. ``sharded``: ``x`` is this rank's share of a batch (under
        torchrun the statistics are then those of the whole batch, on every rank)."""
        self._flags_cache = None
        x = x.detach().float()
        if int(self._signed) == -1:
            neg = (x < 0).any().reshape(1).float()
            self._signed.fill_(int((dist_max_(neg) if sharded else neg).item()))
        a = x.abs().flatten()
        if sharded and self.init_quantile < 1.0:  # the ranks' shares in rank order: the global batch's
            a = dist_cat(a[: 1 << 20])
        elif sharded:  # the global batch's largest magnitude (0 adds nothing to a max of |x|)
            a = dist_max_(torch.cat([a, a.new_zeros(1)]).max().reshape(1))
        if a.numel() == 0:
            q = 1.0
        elif self.init_quantile < 1.0:
            q = float(torch.quantile(a[: 1 << 20], self.init_quantile))
        else:
            q = float(a.max())
        q = q if q > 0 else 1.0
        levels = 2 ** (self.init_bits - 1) - 1 if self.signed else 2 ** self.init_bits - 1
        d = 2.0 ** math.ceil(math.log2(q / max(levels, 1)))  # the data's range fits init_bits
        q = max(q, d)
        self.raw_log_d.fill_(math.log(d) / float(self.param_scale))
        self.raw_log_qmax.fill_(math.log(q) / float(self.param_scale))
        self.initialized.fill_(True)
        self._flags_cache = None

    def freeze(self) -> None:
        """Stop learning the step and the range: the format stays what it is (DJPQ's
        fine-tuning phase); the gradient still reaches ``x``."""
        self.raw_log_d.requires_grad_(False)
        self.raw_log_qmax.requires_grad_(False)

    # ------------------------------------------------------------------ bits and formats
    def log2_step(self) -> torch.Tensor:
        return self.log_d / LN2

    def frac(self) -> int:
        """Fraction bits of the snapped power-of-two step."""
        return -int(torch.round(self.log2_step().detach()).item())

    def bits_unclamped(self) -> torch.Tensor:
        """Uhlich's differentiable bitwidth, the step already snapped to a power of two
        (straight-through)."""
        l2 = self.log2_step()
        d = torch.exp2(ste(torch.round(l2.detach()), l2))
        return signed_bits(torch.exp(self.log_qmax), d, self.signed)

    def bits_continuous(self) -> torch.Tensor:
        """:meth:`bits_unclamped` clamped to ``[min_bits, max_bits]`` (what BOPs count)."""
        return torch.clamp(self.bits_unclamped(), float(self.min_bits), float(self.max_bits))

    def _snap(self, b: float) -> int:
        if self.pow2:
            return snap_pow2_bits(b, self.allowed)
        return int(min(max(math.ceil(b - 1e-4), self.min_bits), self.max_bits))

    def bits(self) -> int:
        """The integer bitwidth used in the forward pass and at export."""
        return self._snap(float(self.bits_continuous().detach()))

    def bits_train(self) -> torch.Tensor:
        """Bits for the BOPs penalty: continuous (integer mode) or the snapped power of two
        with the continuous gradient (pow2 mode)."""
        b = self.bits_continuous()
        if self.pow2:
            return ste(torch.tensor(float(self._snap(float(b.detach()))), device=b.device), b)
        return b

    def format(self) -> fp.FixedFormat:
        """The fixed-point format this quantizer computes with (and exports): :meth:`bits`
        and :meth:`frac` from one read of the device."""
        l2, b = torch.stack([self.log2_step().detach(), self.bits_continuous().detach()]).tolist()
        return fp.FixedFormat(self._snap(b), -int(round(l2)), self.signed, self.rounding)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._flags()[1]:
            self.init_from(x, sharded=True)
        fmt = self.format()
        if not torch.is_grad_enabled() or not (x.requires_grad or self.raw_log_d.requires_grad):
            return fp.quantize_torch(x, fmt.bits, fmt.frac, fmt.signed, fmt.rounding)
        # Uhlich's gradients (see the module docstring) in one autograd node
        l2 = self.log2_step()
        d = torch.exp2(ste(torch.round(l2.detach()), l2))
        b = self.bits_unclamped()  # unclamped: the task can pull a clamped range back
        bs = ste(torch.tensor(float(fmt.bits), device=x.device), b)
        return _LearnedQuant.apply(x, d, bs, fmt.bits, fmt.frac, fmt.signed, fmt.rounding)
