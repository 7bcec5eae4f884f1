"""Data movement: ``flatten`` (NCHW order) and ``pixel_shuffle`` (PyTorch's channel order),
exact on the codes; free in hardware (wiring)."""
from __future__ import annotations

from ..errors import BundleError
import math

from .base import CountOut, Fixed, OpRule, Resources, need_info
from .registry import register


@register
class Flatten(OpRule):
    op = "flatten"
    hls_class = "Reshape"
    commuting = transparent = host_reshape = True

    def infer(self, ctx, node, info):
        return need_info(node, info), {}

    def run(self, step, x):
        return Fixed(x.codes.reshape(x.codes.shape[0], -1), x.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return torch.flatten(t, 1)

    def stream_words(self, in_shape, out_shape):
        """The transpose before the flatten writes PyTorch's order: ``C x H`` words of ``W``
        (``prod(in_shape[:-1])`` words of ``in_shape[-1]``; a 1 x 1 map: C words of 1)."""
        return int(math.prod(in_shape[:-1])), int(in_shape[-1])

    def stream_resources(self, n, s):
        """io_stream: hls4ml puts a transpose (channels-last back to PyTorch's order) before
        the Reshape (nnet_transpose_stream.h ``transpose``: the whole tensor in a completely
        partitioned array, i.e. registers): ``elements x b`` FFs; it reads every input word
        before it writes (first output after ``in_pixels`` + 1), II the larger of the words
        read and written."""
        b = n.out_format.bits
        return Resources(0, 0, n.out_elements * b, 0, s.in_pixels + 1, max(s.in_pixels, s.pixels))


@register
class PixelShuffle(OpRule):
    op = "pixel_shuffle"
    hls_class = "QspDepthToSpace"
    casting = commuting = transparent = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        r = int(node.factor)
        if r < 1 or len(node.in_shape) != 3 or node.in_shape[0] % (r * r):
            raise BundleError(f"node {node.name!r} (pixel_shuffle): factor {r} does not divide the channels of "
                              f"{node.in_shape}")
        return info, {"factor": r}

    def run(self, step, x):
        r = step.params["factor"]
        b, c, h, w = x.codes.shape
        y = x.codes.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
        return Fixed(y.reshape(b, c // (r * r), h * r, w * r), x.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return F.pixel_shuffle(t, int(n.factor))

    def counts(self, n, ins, bundle) -> CountOut:
        r = n.factor
        c, h, w = ins[0].alive.shape
        return CountOut(ins[0].alive.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(n.out_shape))
