"""``scale_shift``: per-channel ``x * scale[c] + shift[c]`` (a BatchNorm with no weight layer
before it), exact at full width; qsp's ``QspScaleShift`` in hls4ml (Latency only).

Counts: one multiply and one add per element; it counts as a weight layer with ``fan_in``
1, MACs = elements (counted: alive elements of channels whose scale is nonzero), BOPs = MACs
x bits(scale) x bits(x); the scale is its weight tensor (``channels`` weights), the shift its
bias. Resources: one constant multiplier per alive element with a nonzero scale and one
adder per alive output element (the kernel is unrolled over all elements).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import BundleError
from ..fixedpoint import format_for_codes, to_int_np
from .base import (CountOut, Fixed, LayerTypes, OpRule, Resources, TensorInfo, check_bound, multipliers, need_info,
                   weight_info, weights_of)
from .registry import register


def aligned_fracs(in_frac: int, scale_frac: int, shift_frac: int) -> tuple[int, int, int]:
    """(output fraction bits, shift of the product, shift of the shift term)."""
    pf = in_frac + scale_frac
    out_f = max(pf, shift_frac)
    return out_f, out_f - pf, out_f - shift_frac


@register
class ScaleShift(OpRule):
    op = "scale_shift"
    hls_class = "QspScaleShift"
    casting = producer = weighted = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        try:
            sc = to_int_np(ctx.bundle.weight(node.name), node.weight.frac)
            sh = to_int_np(ctx.bundle.bias(node.name), node.bias.frac)
        except (KeyError, ValueError, AttributeError) as e:
            raise BundleError(f"node {node.name!r} (scale_shift): scale/shift not usable ({e})") from None
        out_f, sp, sb = aligned_fracs(info.frac, node.weight.frac, node.bias.frac)
        bound = max((abs(int(a)) * info.bound << sp) + (abs(int(b)) << sb) for a, b in zip(sc, sh))
        check_bound(node, bound)
        return TensorInfo(out_f, bound, True), {"scale": sc, "shift": sh, "sp": sp, "sb": sb}

    def run(self, step, x):
        p = step.params
        shape = (1, -1) + (1,) * (x.codes.ndim - 2)
        y = ((x.codes * p["scale"].reshape(shape)) << p["sp"]) + (p["shift"].reshape(shape) << p["sb"])
        return Fixed(y, step.out_info.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        shape = (-1,) + (1,) * (t.ndim - 2)
        w = torch.as_tensor(np.asarray(bundle.weight(n.name), dtype=np.float32))
        b = torch.as_tensor(np.asarray(bundle.bias(n.name), dtype=np.float32))
        return t * w.reshape(shape) + b.reshape(shape)

    def types(self, bundle, n, ins, post):
        c, sf, bf = ins[0], n.weight, n.bias
        sc = np.abs(bundle.weight(n.name)) * 2.0 ** sf.frac
        frac, sp, sb = aligned_fracs(c.frac, sf.frac, bf.frac)
        xmax = max(abs(c.int_min), abs(c.int_max))
        bound = int(np.max(sc)) * xmax << sp
        bound += max(abs(bf.int_min), abs(bf.int_max)) << sb
        return LayerTypes(format_for_codes(-bound, bound, frac), weight=sf, bias=bf, weight_key="scale")

    def latency_only(self, node) -> str:
        return "scale_shift: qsp's QspScaleShift, elementwise, fully parallel"

    def counts(self, n, ins, bundle) -> CountOut:
        """``x * scale[c] + shift[c]``: one multiply + one add per element; MACs = elements."""
        st = ins[0]
        w, b = weights_of(bundle, n)
        c = int(n.channels or w.size)
        per_ch = st.alive.reshape(c, -1)
        positions = per_ch.shape[1]
        alive_in = per_ch.sum(axis=1)
        macs = int(alive_in[w.reshape(-1) != 0].sum())
        info = weight_info(n, w.reshape(c, 1), b, st, c * positions, macs, 1, c, positions, self.latency_only(n))
        shift_nz = np.zeros(c, bool) if b is None else (b.reshape(-1) != 0)
        alive = (per_ch & (w.reshape(-1) != 0)[:, None]) | shift_nz[:, None]
        return CountOut(alive.reshape(st.alive.shape), info)

    def weight_count(self, n) -> int:
        return int(n.channels)

    def bias_count(self, n) -> int:
        return int(n.channels)

    def weight_nonzeros(self, n, weights) -> int:
        """No count in the qspec: the array, else all channels."""
        w = None if weights is None else weights.get(f"{n.name}.weight")
        return int(np.count_nonzero(w)) if w is not None else int(n.channels)

    def weight_resources(self, n, st, dsp_width) -> Resources:
        """Its own model (Latency only): one constant multiplier per alive element with a
        nonzero scale, one adder per alive output element."""
        w = n.weight
        count = w.macs
        dsp, lut, kind = multipliers(n, count, True, dsp_width)
        acc = w.acc_format.bits
        lut += n.out_nonzero * min(acc, w.weight_bits + w.in_format.bits + 1)
        ff = n.out_nonzero * acc
        depth = {"DSP": 1}.get(kind, 0) + 1
        return Resources(dsp, lut, ff, 0, depth, 1, count, kind)

    def stream_weight_resources(self, n, st, kernel, s, dsp_width=(27, 18)) -> Resources:
        """io_stream (qsp's nnet_qsp_elementwise.h ``qsp_scale_shift``: PIPELINE over
        pixels, UNROLL over the word): the io_parallel model for one pixel's lanes: one
        constant multiplier per lane with a nonzero scale (``ceil(alive products / pixels)``),
        one adder and ``acc`` FFs per lane; II 1 per pixel."""
        w = n.weight
        count = math.ceil(w.macs / max(s.pixels, 1))
        dsp, lut, kind = multipliers(n, count, True, dsp_width)
        acc = w.acc_format.bits
        lut += s.lanes * min(acc, w.weight_bits + w.in_format.bits + 1)
        depth = {"DSP": 1}.get(kind, 0) + 1
        return Resources(dsp, lut, s.lanes * acc, 0, depth + 1, s.pixels, count, kind)

