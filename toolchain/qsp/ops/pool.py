"""Pooling: ``maxpool2d`` / ``avgpool2d`` and their 1-D ops ``maxpool1d`` / ``avgpool1d``
(the 2-D op of height 1, :class:`~qsp.ops.weight.OneD`).

``avgpool2d``: the window sum ``S`` (exact) divided by the window size ``n``. When ``n`` is a
power of two the mean is exact at ``f + log2 n`` fraction bits. Otherwise the mean has no
finite binary expansion; the emulator keeps ``F = avgpool_frac(...)`` fraction bits and
truncates toward zero (what hls4ml's pooling does with an accumulator of ``F`` fraction
bits; the compiler gives it the same, from the same :func:`avgpool_frac`). With
``F = max(f, d + 1) + ceil(log2 n)``, where ``d`` is the fraction bits of the next
``quantize`` node (reached through ops whose rule is ``transparent``: relu, mask, maxpool,
flatten, pixel_shuffle, which commute with truncation), no mean lies closer than ``2**-F``
to a grid or half-grid point of ``d``, so the quantized result equals the quantized exact
mean for every rounding mode. With no quantize node after it, ``F = f + ceil(log2 n)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..bundle.schema import QuantNode
from ..errors import QspError, UnsupportedLayerError
from ..fixedpoint import FixedFormat, ceil_log2, round_np
from .base import (FLOAT64_EXACT, CountOut, Fixed, LayerTypes, OpRule, Resources, TensorInfo, check_bound,
                   need_info, pair, spatial, srl_luts, windows)
from .registry import RULES, register
from .weight import OneD


def avgpool_frac(in_frac: int, window: int, next_quant_frac: int | None) -> int:
    """Fraction bits the average pool keeps (see the module doc): the emulator's and
    hls4ml's pooling accumulator's."""
    if window & (window - 1) == 0:  # power of two: the mean is exact
        return in_frac + ceil_log2(window)
    base = in_frac if next_quant_frac is None else max(in_frac, next_quant_frac + 1)
    return base + ceil_log2(window)


def next_quant_frac(ctx) -> int | None:
    """Fraction bits of the quantize node that alone reads node ``ctx.index``'s value
    (through single-consumer transparent nodes), else None."""
    cons = ctx.consumers
    name = ctx.graph[ctx.index].name
    while len(cons[name]) == 1:
        n = cons[name][0]
        if isinstance(n, QuantNode):
            return n.format.frac
        r = RULES.get(n.op)
        if r is None or not r.transparent:
            return None
        name = n.name
    return None


def _alive(n, alive: np.ndarray) -> np.ndarray:
    (kh, kw), (sh, sw) = n.kernel_size, n.stride
    c, ho, wo = n.out_shape
    out = np.zeros((c, ho, wo), bool)
    for i in range(kh):
        for j in range(kw):
            out |= alive[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return out


class _Pool(OpRule):
    casting = True

    def counts(self, n, ins, bundle) -> CountOut:
        """Max and average pooling (global average pooling: kernel = H, W): 0 MACs; an output
        is alive when any element of its window is."""
        return CountOut(_alive(n, ins[0].alive))

    def pool_window(self, node) -> int:
        return math.prod(node.kernel_size)

    #: LUTs per bit of one window reduction step (max: comparator + mux; avg: adder)
    reduce_luts = 1

    def stream_resources(self, n, s):
        """io_stream (hls4ml nnet_pooling_stream.h ``pooling2d_buffer_cl`` /
        ``compute_pool_buffer_2d``, the same line buffer as a conv; a global pool is this
        with the window = the map): line buffer ``(k_h - 1)`` rows x ``W_in`` x ``C`` x ``b``
        in SRLs, the window ``k_h x k_w x C x b`` in FFs, ``(k - 1)`` reduction steps
        (comparator + mux, or adder) of ``min(b, b_in + ceil(log2 k))`` bits per lane; first output after ``(k_h - 1) x W_in + k_w`` input pixels + the
        reduction depth, II 1 per input pixel."""
        (kh, kw) = spatial(n.node)["kernel"] if n.node is not None else (1, n.pool)
        b_in, c, w_in = s.in_bits or n.out_format.bits, s.in_channels, s.in_width
        b = n.out_format.bits
        line = srl_luts((kh - 1) * c * b_in, w_in) if kh > 1 else 0
        # an adder/comparator of the window never needs more than the input's bits plus the
        # carries of k values (the constant upper bits of accum_t are trimmed by synthesis)
        logic = s.lanes * (n.pool - 1) * self.reduce_luts * min(b, b_in + ceil_log2(n.pool))
        depth = 1 + ceil_log2(n.pool) // 2
        return Resources(0, line + logic, kh * kw * c * b_in + s.lanes * b, 0,
                         (kh - 1) * w_in + kw + depth, max(s.in_pixels, s.pixels))


@register
class MaxPool2d(_Pool):
    op = "maxpool2d"
    hls_class = "Pooling2D"
    reduce_luts = 2  # a comparator and a mux per bit, as in io_parallel
    commuting = transparent = True
    per_unit = True

    def infer(self, ctx, node, info):
        return need_info(node, info), spatial(node)

    def run(self, step, x):
        return Fixed(windows(x.codes, step.params["kernel"], step.params["stride"]).max(axis=(4, 5)), x.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.max_pool2d(t, pair(n.kernel_size), pair(n.stride))

    def types(self, bundle, node, ins, post):
        return LayerTypes(ins[0], accum_is_result=True)

    def resources(self, n):
        """``(k-1)`` comparators of ``b`` bits and a mux per output."""
        b = n.out_format.bits
        per = (n.pool - 1) * 2 * b
        return Resources(0, n.out_nonzero * per, n.out_nonzero * b, 0, 1 + ceil_log2(n.pool) // 2, 1)


@register
class AvgPool2d(_Pool):
    op = "avgpool2d"
    hls_class = "Pooling2D"
    post_sensitive = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        sp = spatial(node)
        k, s = sp["kernel"], sp["stride"]
        n = k[0] * k[1]
        frac = avgpool_frac(info.frac, n, next_quant_frac(ctx))
        up = frac - info.frac
        check_bound(node, info.bound * n << up, "window sum")
        if (info.bound * n << up) >= FLOAT64_EXACT:
            raise QspError(f"node {node.name!r} (avgpool2d): window sums of {(info.bound * n << up).bit_length()} "
                           "bits are too wide for the exact division")
        return TensorInfo(frac, info.bound << up, info.signed), {"kernel": k, "stride": s, "window": n, "up": up}

    def run(self, step, x):
        p = step.params
        sums = windows(x.codes, p["kernel"], p["stride"]).sum(axis=(4, 5)) << p["up"]
        # a / n correctly rounded in float64 then truncated equals the exact truncated
        # quotient while |a| < 2**53 (checked in the analysis)
        q = round_np(sums.astype(np.float64) / p["window"], "zero")
        return Fixed(q.astype(np.int64), step.out_info.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.avg_pool2d(t, pair(n.kernel_size), pair(n.stride))

    def types(self, bundle, n, ins, post):
        cnt = int(np.prod(n.kernel_size))
        lg = ceil_log2(cnt)
        c = ins[0]
        if post is None:
            if 2 ** lg != cnt:
                raise UnsupportedLayerError(
                    f"node {n.name!r} ({n.op}): a {n.kernel_size} window mean is not a fixed-point value; "
                    "quantize its output (add a quantizer after the pooling) to compile it")
            exact = FixedFormat(c.bits + lg, c.frac + lg, c.signed)
            # the window sum needs lg more integer bits than the mean (hls4ml sums in accum)
            return LayerTypes(exact, accum=FixedFormat(c.bits + 2 * lg, c.frac + lg, c.signed))
        # the window sum goes to accum, is divided keeping accum's fraction bits (truncation
        # toward zero), then cast to result: exact when accum keeps enough fraction bits
        frac = avgpool_frac(c.frac, cnt, post.frac)
        acc = FixedFormat(c.integer + (0 if c.signed else 1) + lg + frac, frac, True)  # + a sign bit for unsigned input
        return LayerTypes(acc, accum=acc)

    def resources(self, n):
        """``(k-1)`` adders per output (global pooling: kernel = the map)."""
        b = n.out_format.bits
        return Resources(0, n.out_nonzero * (n.pool - 1) * b, n.out_nonzero * b, 0, 1 + ceil_log2(n.pool) // 2, 1)


@register
class MaxPool1d(OneD, MaxPool2d):
    op = "maxpool1d"
    hls_class = "Pooling1D"

    def torch_forward(self, n, t, bundle, torch, F):
        return F.max_pool1d(t, int(n.kernel_size[0]), int(n.stride[0]))


@register
class AvgPool1d(OneD, AvgPool2d):
    op = "avgpool1d"
    hls_class = "Pooling1D"

    def torch_forward(self, n, t, bundle, torch, F):
        return F.avg_pool1d(t, int(n.kernel_size[0]), int(n.stride[0]))
