"""Elementwise activations: ``relu``, ``clip`` (ReLU6, Hardtanh) and ``leaky_relu``.

All exact on the codes. ``clip``'s bounds lie on the input grid (:func:`clip_codes`);
``leaky_relu`` is ``x`` above 0 and ``alpha * x`` below at ``f + f_slope`` fraction bits,
``alpha`` the slope's code on the ``param`` grid (:func:`leaky_alpha`).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import BundleError
from ..fixedpoint import FixedFormat, format_for_codes
from .base import (CountOut, Fixed, LayerTypes, OpRule, Resources, TensorInfo, check_bound, elementwise, need_info,
                   stream_elementwise)
from .registry import register


def relu_format(f: FixedFormat) -> FixedFormat:
    """Exact type of max(x, 0) for x of format f."""
    if not f.signed or f.bits < 2:
        return f
    return FixedFormat(f.bits - 1, f.frac, False, f.rounding)


@register
class Relu(OpRule):
    op = "relu"
    hls_class = "Activation"
    casting = commuting = transparent = True
    per_unit = elementwise = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        return TensorInfo(info.frac, info.bound, False), {}

    def run(self, step, x):
        return Fixed(np.maximum(x.codes, 0), x.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.relu(t)

    def types(self, bundle, node, ins, post):
        return LayerTypes(relu_format(ins[0]))

    def resources(self, n):
        """``ceil(b/2)`` LUTs and ``b`` FFs per element, 0 cycles."""
        b = n.out_format.bits
        return Resources(0, n.out_nonzero * math.ceil(b / 2), n.out_nonzero * b, 0, 0, 1)

    def stream_resources(self, n, s):
        """io_stream (hls4ml nnet_activation_stream.h ``relu``: PIPELINE over pixels, UNROLL
        over the word): ``ceil(b/2)`` LUTs and ``b`` FFs per lane, 1 cycle, II 1 per pixel."""
        b = n.out_format.bits
        return Resources(0, s.lanes * math.ceil(b / 2), s.lanes * b, 0, 1, s.pixels)


def clip_codes(node, frac: int, strict: bool = True) -> tuple[int, int]:
    """The clip bounds as codes at ``frac`` fraction bits; ``strict``: they must lie on that
    grid (the emulator's check; the compiler's types take the nearest codes)."""
    lo, hi = (np.ldexp(float(v), frac) for v in (node.lo, node.hi))
    if not strict:
        return int(round(lo)), int(round(hi))
    if lo != np.floor(lo) or hi != np.floor(hi) or lo > hi:
        raise BundleError(f"node {node.name!r} (clip): bounds [{node.lo}, {node.hi}] are not on the input grid "
                          f"2^-{frac}")
    return int(lo), int(hi)


@register
class Clip(OpRule):
    op = "clip"
    hls_class = "QspClip"
    casting = commuting = True
    elementwise = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        lo, hi = clip_codes(node, info.frac)
        return TensorInfo(info.frac, max(min(info.bound, max(abs(lo), abs(hi))), 0), lo < 0), {"lo": lo, "hi": hi}

    def run(self, step, x):
        return Fixed(np.clip(x.codes, step.params["lo"], step.params["hi"]), x.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return torch.clamp(t, float(n.lo), float(n.hi))

    def types(self, bundle, node, ins, post):
        c = ins[0]
        lo, hi = clip_codes(node, c.frac, strict=False)
        return LayerTypes(format_for_codes(max(lo, c.int_min), min(hi, c.int_max), c.frac))

    def counts(self, n, ins, bundle) -> CountOut:
        """0 MACs; 0 stays 0 when lo <= 0 <= hi, else every element is a nonzero constant."""
        a = ins[0].alive.reshape(n.out_shape)
        return CountOut(a if float(n.lo) <= 0.0 <= float(n.hi) else np.ones_like(a))

    def resources(self, n):
        """Two comparators against constants and two muxes: b LUTs per bound per element."""
        return elementwise(n, 2)

    def stream_resources(self, n, s):
        """io_stream (qsp's nnet_qsp_elementwise.h ``qsp_clip``): ``2b`` LUTs per lane."""
        return stream_elementwise(n, s, 2)


def leaky_alpha(node, strict: bool = True) -> int:
    """The slope's code on its ``param`` grid; ``strict``: it must lie there (the emulator's
    check)."""
    pf = node.param.frac
    a = int(round(float(node.slope) * 2 ** pf))
    if strict and a / 2 ** pf != float(node.slope):
        raise BundleError(f"node {node.name!r} (leaky_relu): slope {node.slope} is not on its grid 2^-{pf}")
    return a


@register
class LeakyRelu(OpRule):
    op = "leaky_relu"
    hls_class = "LeakyReLU"
    casting = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        pf, a = node.param.frac, leaky_alpha(node)
        bound = max(info.bound << pf, info.bound * abs(a))  # 0 <= slope < 1: pf >= 15
        check_bound(node, bound)
        return TensorInfo(info.frac + pf, bound, True), {"alpha": a, "shift": pf}

    def run(self, step, x):
        p = step.params
        c = x.codes
        return Fixed(np.where(c >= 0, c << p["shift"], c * p["alpha"]), step.out_info.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.leaky_relu(t, float(n.slope))

    def types(self, bundle, node, ins, post):
        """hls4ml's LeakyReLU (ParametrizedActivation): x above 0, alpha * x below (product at
        full width), one cast to result; the slope is on the ``param`` grid already."""
        c, pf, a = ins[0], node.param.frac, leaky_alpha(node, strict=False)
        lo, hi = (c.int_min * a, c.int_max << pf) if c.signed else (0, c.int_max << pf)
        return LayerTypes(format_for_codes(min(lo, 0), hi, c.frac + pf), param=node.param)

    def resources(self, n):
        """A comparator, a constant multiply (shift-adds in LUTs) and a mux per element."""
        return elementwise(n, 3, 1)

    def stream_resources(self, n, s):
        """io_stream (hls4ml nnet_activation_stream.h ``leaky_relu``): ``3b`` LUTs per lane."""
        return stream_elementwise(n, s, 3, 1)
