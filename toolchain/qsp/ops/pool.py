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
from .base import (FLOAT64_EXACT, CountOut, Fixed, LayerTypes, OpRule, Resources, TensorInfo, check_bound, csd_digits,
                   hw, need_info, pair, spatial, srl_luts, windows)
from .registry import RULES, register
from .weight import OneD


def avgpool_frac(in_frac: int, window: int, next_quant_frac: int | None) -> int:
    """Fraction bits the average pool keeps (see the module doc): the emulator's and
    hls4ml's pooling accumulator's."""
    if window & (window - 1) == 0:  # power of two: the mean is exact
        return in_frac + ceil_log2(window)
    base = in_frac if next_quant_frac is None else max(in_frac, next_quant_frac + 1)
    return base + ceil_log2(window)


def is_global(node) -> bool:
    """A pooling node whose one window is its whole input map (kernel = the input's
    ``(H, W)``, or ``L`` for a 1-D node; stride = kernel; pooling nodes have no padding):
    ``AdaptiveAvgPool2d(1)``, ``x.mean((2, 3))``. hls4ml's global pooling
    (``global_pooling2d_cl`` / ``global_pooling1d_cl``) computes it."""
    if node.op not in ("avgpool2d", "avgpool1d", "maxpool2d", "maxpool1d"):
        return False
    sp = spatial(node)
    return tuple(sp["kernel"]) == hw(node.in_shape) and tuple(sp["stride"]) == tuple(sp["kernel"])


def const_div_luts(bits: int, n: int) -> int:
    """LUTs of one division of a ``bits``-bit value by the constant ``n`` (hls4ml's
    ``accum_t / (in_height * in_width)``): free (a shift, wiring) when ``n`` is a power of
    two, else the multiply by the reciprocal that synthesis reduces it to (the quotient's
    ``bits`` x the ``bits + ceil(log2 n)``-bit constant ``ceil(2**(bits + ceil(log2 n)) / n)``
    as shift-adds: one ``bits``-bit adder per CSD digit after the first)."""
    if n <= 1 or n & (n - 1) == 0:
        return 0
    magic = -(-(1 << (bits + ceil_log2(n))) // n)
    digits = int(csd_digits(np.array([magic], dtype=np.int64))[0]) if magic < 2 ** 62 else bits
    return max(digits - 1, 0) * bits


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
        """io_stream (hls4ml nnet_pooling_stream.h ``global_pooling2d_cl`` for a global average
        pool (:meth:`global_stream_resources`), else ``pooling2d_buffer_cl`` /
        ``compute_pool_buffer_2d``, below)."""
        if n.node is not None and self.hls_class_of(n.node).startswith("Global"):
            return self.global_stream_resources(n, s)
        return self.window_stream_resources(n, s)

    def global_stream_resources(self, n, s):
        """io_stream global average pooling (hls4ml nnet_pooling_stream.h
        ``global_pooling2d_cl``: ``data_window[C]`` of ``accum_t``, one input pixel added per
        cycle, then ``data_window[c] / (H x W)`` cast to ``res_t``): per lane one accumulator
        (FFs) and one adder of ``b_acc = min(b, b_in + ceil(log2 k))`` bits, one division by
        the constant ``k`` (:func:`const_div_luts`), the output word in FFs; no line buffer,
        no window. First output after every input pixel + the divider, II 1 per input pixel."""
        b_in, b = s.in_bits or n.out_format.bits, n.out_format.bits
        b_acc = min(b, b_in + ceil_log2(n.pool))
        lut = s.lanes * (b_acc + const_div_luts(b_acc, n.pool))
        ff = s.lanes * (b_acc + b)
        return Resources(0, lut, ff, 0, s.in_pixels + 2, max(s.in_pixels, s.pixels))

    def window_stream_resources(self, n, s):
        """io_stream (hls4ml nnet_pooling_stream.h ``pooling2d_buffer_cl`` /
        ``compute_pool_buffer_2d``, the same line buffer as a conv; a global max pool is
        this with the window = the map): line buffer ``(k_h - 1)`` rows x ``W_in`` x ``C`` x ``b``
        in SRLs, the window ``k_h x k_w x C x b`` in FFs, ``(k - 1)`` reduction steps
        (comparator + mux, or adder) of ``min(b, b_in + ceil(log2 k))`` bits per lane; first
        output after ``(k_h - 1) x W_in + k_w`` input pixels + the reduction depth, II 1 per input pixel."""
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
            return LayerTypes(exact, accum=FixedFormat(c.bits + 2 * lg, c.frac + lg, c.signed),
                              hls_class=self.hls_class_of(n))
        # the window sum goes to accum, is divided keeping accum's fraction bits (truncation
        # toward zero), then cast to result: exact when accum keeps enough fraction bits
        frac = avgpool_frac(c.frac, cnt, post.frac)
        acc = FixedFormat(c.integer + (0 if c.signed else 1) + lg + frac, frac, True)  # + a sign bit for unsigned input
        return LayerTypes(acc, accum=acc, hls_class=self.hls_class_of(n))

    #: hls4ml's class of a global average pooling node (see :func:`is_global`)
    global_class = "GlobalPooling2D"

    def hls_class_of(self, node) -> str:
        """A global window (:func:`is_global`) is hls4ml's global pooling: the same sum in
        ``accum_t`` and the same division (``accum_t`` divided by the window size, an
        unsigned int: the quotient keeps ``accum_t``'s fraction bits, truncated toward
        zero, then cast to ``result_t``), without the window buffer; docs/hls4ml-ops.md."""
        return self.global_class if is_global(node) else ""

    def resources(self, n):
        """``(k-1)`` adders per output; a global pool (hls4ml's ``global_pooling2d_cl``, the
        same sum and division, all pixels at once) adds its division by the constant ``k``
        per output (:func:`const_div_luts`)."""
        b = n.out_format.bits
        lut = n.out_nonzero * (n.pool - 1) * b
        if n.node is not None and self.hls_class_of(n.node).startswith("Global"):
            lut += n.out_nonzero * const_div_luts(b, n.pool)
        return Resources(0, lut, n.out_nonzero * b, 0, 1 + ceil_log2(n.pool) // 2, 1)


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
    global_class = "GlobalPooling1D"

    def torch_forward(self, n, t, bundle, torch, F):
        return F.avg_pool1d(t, int(n.kernel_size[0]), int(n.stride[0]))
