"""Joins of two or more inputs: ``add`` (elementwise sum) and ``concat`` (along channels).

Inputs are aligned to the finest fraction bits (exact shifts, :func:`align`), then summed /
concatenated. Types: the exact format of the inputs (fraction bits of the finest, integer
bits widened so the sum cannot overflow); both cast, so a quantize after them folds in.
Counts: ``add`` of k inputs 0 MACs and 0 BOPs, ``adds`` = elements x (k - 1) at the output's
bits; ``concat`` is wiring.
"""
from __future__ import annotations

import math

import numpy as np

from ..fixedpoint import ceil_log2, code_range, format_for_codes
from .base import ADDS_PER_STAGE, CountOut, Fixed, LayerTypes, OpRule, Resources, TensorInfo, check_bound, need_info
from .registry import register


def align(fracs) -> tuple[int, list[int]]:
    """(common fraction bits, left shift of each input): the finest input's grid."""
    f = max(fracs)
    return f, [f - x for x in fracs]


class _Join(OpRule):
    multi_input = True
    casting = True
    reduce = staticmethod(sum)  # how the inputs' code ranges combine

    def infer(self, ctx, node, infos):
        for x in infos:
            need_info(node, x)
        f, shifts = align([x.frac for x in infos])
        bound = self.reduce(x.bound << s for x, s in zip(infos, shifts))
        check_bound(node, bound)
        return TensorInfo(f, bound, any(x.signed for x in infos)), {"shifts": shifts}

    def types(self, bundle, node, ins, post):
        frac, _ = align([f.frac for f in ins])
        lo = self.reduce_lo(code_range(f, frac)[0] for f in ins)
        hi = self.reduce(code_range(f, frac)[1] for f in ins)
        return LayerTypes(format_for_codes(lo, hi, frac))


@register
class Add(_Join):
    op = "add"
    hls_class = "Merge"
    producer = True
    reduce = staticmethod(sum)
    reduce_lo = staticmethod(sum)

    def run(self, step, xs):
        return Fixed(sum(x.codes << s for x, s in zip(xs, step.params["shifts"])), step.out_info.frac)

    def torch_forward(self, n, ts, bundle, torch, F):
        return sum(ts[1:], ts[0])

    def counts(self, n, ins, bundle) -> CountOut:
        """0 MACs / BOPs; adds = elements x (inputs - 1)."""
        alive = np.zeros(n.out_shape, bool)
        for s in ins:
            alive |= s.alive.reshape(n.out_shape)
        return CountOut(alive, adds=math.prod(n.out_shape) * (len(ins) - 1))

    def resources(self, n):
        """k - 1 adders of b bits per alive output element (LUTs, no DSP)."""
        b = n.out_format.bits
        k = len(n.inputs) if n.inputs else 2
        return Resources(0, n.out_nonzero * (k - 1) * b, n.out_nonzero * b, 0,
                         math.ceil(ceil_log2(k) / ADDS_PER_STAGE), 1)

    def stream_resources(self, n, s):
        """io_stream (hls4ml nnet_merge_stream.h ``add``: one word of each input per cycle,
        PIPELINE, UNROLL over the word): ``k - 1`` adders of ``b`` bits and ``b`` FFs per
        lane; 1 + the adder stages, II 1 per pixel."""
        b = n.out_format.bits
        k = len(n.inputs) if n.inputs else 2
        return Resources(0, s.lanes * (k - 1) * b, s.lanes * b, 0,
                         1 + math.ceil(ceil_log2(k) / ADDS_PER_STAGE), s.pixels)


@register
class Concat(_Join):
    op = "concat"
    hls_class = "Concatenate"
    reduce = staticmethod(max)
    reduce_lo = staticmethod(min)

    def run(self, step, xs):
        return Fixed(np.concatenate([x.codes << s for x, s in zip(xs, step.params["shifts"])], axis=1),
                     step.out_info.frac)

    def torch_forward(self, n, ts, bundle, torch, F):
        return torch.cat(ts, dim=1)

    def counts(self, n, ins, bundle) -> CountOut:
        """0 MACs: wiring along the channel axis."""
        return CountOut(np.concatenate([s.alive for s in ins], axis=0).reshape(n.out_shape))

    def stream_resources(self, n, s):
        """io_stream (hls4ml nnet_merge_stream.h ``concatenate3d_2``: a word of each input
        per pixel, placed side by side): wiring, 1 cycle, II 1 per pixel."""
        return Resources(0, 0, 0, 0, 1, s.pixels)
