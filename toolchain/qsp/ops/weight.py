"""Weight layers: ``linear``, ``conv2d`` (grouped / depthwise with ``groups``) and ``conv1d``
(the conv2d of height 1 on ``[C, 1, L]``, kernel ``(1, k)``).

Emulation: the exact sum of products of the codes (fraction bits ``f_x + f_w``) plus the
bias aligned to the finer of the product's and the bias's fraction bits, never rounded;
per-channel weight formats are brought to one grid with
:func:`qsp.fixedpoint.widen_to_cover`; convolution is an exact im2col matmul. Range: the
largest output is ``max over outputs of sum|w| * max|x| + |b|``.

Types: input type, the one weight type, the trained bias type, and the accumulator
(:func:`~qsp.ops.base.acc_format`): no sum can overflow or round; the result is the
accumulator unless a quantizer folds in.

Counts: ``linear`` MACs ``in x out``, counted MACs nonzero weight x alive input; ``conv2d``
with ``groups`` g dense MACs ``out_ch x OH x OW x (in_ch / g) x kh x kw``, counted MACs
nonzero weight x alive input element that its group reads (padding counts as a static
zero); ``fan_in`` is ``(in_ch / g) x kh x kw``.
"""
from __future__ import annotations

import numpy as np

from ..bundle.schema import as_2d
from ..fixedpoint import FixedFormat
from .base import (CHUNK_ELEMENTS, Alive, CountOut, Fixed, LayerTypes, OpRule, TensorInfo, acc_format,
                   bias_codes, check_bound, hw, int_matmul, need_info, pair, replace_timing, spatial, srl_luts,
                   weight_codes, weight_format, weight_info, weights_of, windows)
from .registry import register


def _infer_weighted(bundle, node, info, fan_in_rows: np.ndarray, w: np.ndarray, wf: int):
    """Shared by linear and conv: bound = max over outputs of sum|w| * max|x| + |b|."""
    b, bf = bias_codes(bundle, node)
    pf = info.frac + wf
    out_f = pf if bf is None else max(pf, bf)
    sp = out_f - pf
    abs_rows = [int(v) for v in fan_in_rows]
    if b is None:
        bound = max(abs_rows, default=0) * info.bound << sp
    else:
        sb = out_f - bf
        bound = max((r * info.bound << sp) + (abs(int(bb)) << sb) for r, bb in zip(abs_rows, b))
    prod_bound = max(abs_rows, default=0) * info.bound  # partial sums before the shift
    check_bound(node, bound)
    params = {"w": w, "w_frac": wf, "b": b, "b_frac": bf, "shift_prod": sp,
              "shift_bias": None if bf is None else out_f - bf, "prod_bound": prod_bound}
    return TensorInfo(out_f, bound, True), params


def add_bias(acc: np.ndarray, p: dict, channel_axis: int) -> np.ndarray:
    if p["shift_prod"]:
        acc = acc << p["shift_prod"]
    if p["b"] is not None:
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        acc = acc + (p["b"] << p["shift_bias"]).reshape(shape)
    return acc


def _t(torch, a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _tb(torch, a):
    return None if a is None else _t(torch, a)


class _WeightLayer(OpRule):
    casting = True
    producer = True
    strategy = True
    weighted = True

    def types(self, bundle, node, ins, post) -> LayerTypes:
        acc = acc_format(ins[0], node, np.asarray(bundle.weight(node.name)), node.bias)
        # hls4ml adds a zero bias when there is none; give it a 1-bit type
        bias = node.bias if node.bias is not None else FixedFormat(1, 0, True)
        return LayerTypes(acc, weight=weight_format(node), bias=bias, accum=acc, hls_class=self.hls_class_of(node))

    def bias_count(self, node) -> int:
        return int(node.out_channels)

    def kernel_io(self, node, w: np.ndarray) -> tuple[int, int]:
        """(n_in, n_out) of hls4ml's kernel: inputs per output (a conv: in/groups x kh x kw)
        and outputs per position."""
        return int(np.prod(w.shape[1:])), int(node.out_channels)


@register
class Linear(_WeightLayer):
    op = "linear"
    hls_class = "Dense"
    unrolled = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        w, wf = weight_codes(ctx.bundle, node)
        if w.ndim != 2 or w.shape[1] != node.in_shape[-1]:
            raise_shape(node, w)
        return _infer_weighted(ctx.bundle, node, info, np.abs(w).sum(axis=1), w, wf)

    def run(self, step, x):
        p = step.params
        acc = int_matmul(x.codes, p["w"].T, p["prod_bound"])
        return Fixed(add_bias(acc, p, acc.ndim - 1), step.out_info.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.linear(t, _t(torch, bundle.weight(n.name)), _tb(torch, bundle.bias(n.name)))

    def counts(self, n, ins, bundle) -> CountOut:
        st = ins[0]
        w, b = weights_of(bundle, n)
        alive_in = st.alive.reshape(-1).astype(np.int64)
        nzw = (w != 0).astype(np.int64)
        per_out = nzw @ alive_in
        macs = int(per_out.sum())
        info = weight_info(n, w, b, st, n.in_features * n.out_features, macs, n.in_features, n.out_features, 1)
        alive = (per_out > 0) | (b != 0 if b is not None else False)
        return CountOut(np.asarray(alive).reshape(n.out_shape), info)

    def weight_count(self, n) -> int:
        return n.in_features * n.out_features

    def kernel_io(self, node, w) -> tuple[int, int]:
        return int(node.in_features), int(node.out_features)

    def kernel_constants(self, w) -> int:
        """A Dense layer's nonzero weights that meet a statically nonzero input (a masked
        input is a constant zero HLS propagates)."""
        return w.macs

    def bias_count(self, n) -> int:
        return n.out_features


def raise_shape(node, w):
    from ..errors import BundleError

    g = getattr(node, "groups", None)
    grp = "" if g is None else f" (groups {g})"
    raise BundleError(f"node {node.name!r}: weight shape {list(w.shape)}{grp} does not match input "
                      f"{node.in_shape}")


@register
class Conv2d(_WeightLayer):
    op = "conv2d"
    hls_class = "Conv2D"
    reuse_at_most_n_in = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        w, wf = weight_codes(ctx.bundle, node)
        g = int(node.groups)
        nd = len(node.in_shape) - 1
        if g < 1 or node.in_shape[0] % g or w.ndim != nd + 2 or w.shape[0] % g or w.shape[1] * g != node.in_shape[0]:
            raise_shape(node, w)
        out, params = _infer_weighted(ctx.bundle, node, info, np.abs(w).reshape(w.shape[0], -1).sum(axis=1), w, wf)
        if nd == 1:  # conv1d: the conv2d of height 1
            params["w"] = w[:, :, None, :]
        params.update(spatial(node), groups=g, out_hw=hw(node.out_shape))
        return out, params

    def run(self, step, x):
        p = step.params
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
        w, g = p["w"], p.get("groups", 1)
        o = w.shape[0]
        og, cg = o // g, w.shape[1]  # outputs and input channels per group
        codes = np.pad(x.codes, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        b = codes.shape[0]
        oh, ow = p["out_hw"]
        per_sample = oh * ow * cg * kh * kw * g
        chunk = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
        out = np.empty((b, o, oh, ow), dtype=np.int64)
        for s in range(0, b, chunk):
            win = windows(codes[s:s + chunk], (kh, kw), (sh, sw))[:, :, :oh, :ow]
            nb = win.shape[0]
            # (B, OH, OW, G, Cg*kh*kw) @ (G, Cg*kh*kw, Og) per group
            cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(nb * oh * ow, g, cg * kh * kw)
            w2 = w.reshape(g, og, cg * kh * kw).transpose(0, 2, 1)
            if g == 1:
                acc = int_matmul(cols[:, 0], w2[0], p["prod_bound"])
            else:
                acc = np.stack([int_matmul(cols[:, k], w2[k], p["prod_bound"]) for k in range(g)], axis=1)
            out[s:s + chunk] = acc.reshape(nb, oh, ow, o).transpose(0, 3, 1, 2)
        return Fixed(add_bias(out, p, 1), step.out_info.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.conv2d(t, _t(torch, bundle.weight(n.name)), _tb(torch, bundle.bias(n.name)),
                        stride=pair(n.stride), padding=pair(n.padding), groups=int(n.groups))

    def counts(self, n, ins, bundle) -> CountOut:
        """Grouped conv: output channel o (group o // (co/g)) reads input channels of its group
        only; MACs ``co x OH x OW x (ci/g) x kh x kw`` dense."""
        st = ins[0]
        w, b = weights_of(bundle, n)
        (kh, kw), (sh, sw), (ph, pw) = n.kernel_size, n.stride, n.padding
        co, ho, wo = n.out_shape
        g = max(int(n.groups), 1)
        ci = int(st.alive.shape[0])
        cg, og = ci // g, co // g
        a = np.pad(st.alive.astype(np.int64), ((0, 0), (ph, ph), (pw, pw)))
        nzw = (w != 0).astype(np.int64).reshape(g, og, cg, kh, kw)
        # cnt[ci, i, j] = alive input elements met by kernel tap (i, j) over all output positions
        cnt = np.empty((ci, kh, kw), np.int64)
        hit = np.zeros((g, og, ho, wo), np.int64)
        for i in range(kh):
            for j in range(kw):
                win = a[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]  # (ci, ho, wo)
                cnt[:, i, j] = win.sum(axis=(1, 2))
                hit += np.einsum("goc,gchw->gohw", nzw[:, :, :, i, j], win.reshape(g, cg, ho, wo))
        macs = int((nzw * cnt.reshape(g, 1, cg, kh, kw)).sum())
        fan_in = cg * kh * kw
        info = weight_info(n, w, b, st, co * ho * wo * fan_in, macs, fan_in, co, ho * wo, self.latency_only(n))
        alive = hit.reshape(co, ho, wo) > 0
        if b is not None:
            alive |= (b != 0)[:, None, None]
        return CountOut(alive, info)

    def weight_count(self, n) -> int:
        return n.out_channels * (n.in_channels // max(int(n.groups), 1)) * int(np.prod(n.kernel_size))

    def hls_class_of(self, n) -> str:
        if n.op == "conv2d" and n.groups > 1:
            return "DepthwiseConv2D" if n.depthwise and n.in_channels == n.out_channels else "QspGroupedConv2d"
        return ""

    def stream_weight_resources(self, n, st, kernel, s, dsp_width=(27, 18)):
        """io_stream, hls4ml's ``conv_implementation::linebuffer`` (nnet_conv2d_stream.h
        ``conv_2d_buffer_cl``, nnet_conv_stream.h ``shift_line_buffer`` /
        ``compute_output_buffer_2d``; a conv1d or k_h = 1: ``compute_output_buffer_1d``, no
        line buffer). The input arrives zero-padded (hls4ml inserts a ZeroPadding layer,
        counted by the driver), so ``W_in`` is the padded width.

        * the kernel: ``kernel``, the io_parallel model of ONE kernel instance at the layer's
          strategy and reuse factor R (multipliers, adders, weight ROM);
        * line buffer: ``ap_shift_reg<T, W_in> line_buffer[k_h - 1][C_in]``, synthesized into
          SRLs (UG1399, ap_shift_reg): ``(k_h - 1) x C_in x b_in`` shift registers of depth
          ``W_in``, ``ceil(W_in / 32)`` SRLC32E LUTs each;
        * the window ``kernel_data[k_h x k_w x C_in]``, completely partitioned: FFs;
        * timing: one input pixel every R cycles (``PIPELINE II = reuse_factor``; Resource:
          the dense_resource loop of R iterations), II = ``in_pixels x R``; first output after
          ``((k_h - 1) x W_in + k_w) x R`` + the kernel's pipeline depth."""
        (kh, kw) = spatial(n.node)["kernel"]
        r = max(int(st.reuse_factor), 1) if st is not None else 1
        depth = kernel.latency_cycles - (n.weight.positions - 1) * r
        c, b_in, w_in = s.in_channels, n.weight.in_format.bits, s.in_width
        line = srl_luts((kh - 1) * c * b_in, w_in) if kh > 1 else 0
        out = replace_timing(kernel, ((kh - 1) * w_in + kw) * r + depth, s.in_pixels * r)
        out.lut += line
        out.ff += kh * kw * c * b_in
        return out

    def latency_only(self, node) -> str:
        if max(int(getattr(node, "groups", 1) or 1), 1) > 1:
            return ("depthwise conv: hls4ml's DepthwiseConv2D, built with Latency" if node.depthwise else
                    "grouped conv: qsp's QspGroupedConv2d, built with Latency")
        return ""


class OneD:
    """Mixin of a 1-D op (conv1d, maxpool1d, avgpool1d on ``[C, L]``): its 2-D parent's rules
    on ``[C, 1, L]`` (kernel ``(1, k)``), the same code path and exactness."""

    def run(self, step, x):
        y = super().run(step, Fixed(x.codes[:, :, None, :], x.frac))
        return Fixed(y.codes[:, :, 0, :], y.frac)

    def counts(self, n, ins, bundle) -> CountOut:
        r = super().counts(as_2d(n), [Alive(s.fmt, s.alive[:, None, :]) for s in ins], bundle)
        if r.weight is not None:
            r.weight.latency_only = self.latency_only(n)
        return CountOut(r.alive[:, 0, :], r.weight, r.adds)


@register
class Conv1d(OneD, Conv2d):
    op = "conv1d"
    hls_class = "Conv1D"
    reuse_at_most_n_in = False  # built with Latency only (latency_only)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.conv1d(t, _t(torch, bundle.weight(n.name)), _tb(torch, bundle.bias(n.name)),
                        stride=int(n.stride[0]), padding=int(n.padding[0]))

    def hls_class_of(self, n) -> str:
        return ""

    def latency_only(self, node) -> str:
        return "conv1d: hls4ml's Conv1D, built with Latency (the one strategy qsp verified bit-exact for it)"
