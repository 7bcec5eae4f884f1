"""``mask``: elementwise product with a constant 0/1 mask (masks.npz ``<name>.mask``), exact on
the codes; masked elements are constant zeros (counted as statically dead, free in hardware)."""
from __future__ import annotations

import numpy as np

from ..errors import BundleError, UnsupportedLayerError
import math

from .base import CountOut, Fixed, OpRule, Resources, need_info
from .registry import register


@register
class Mask(OpRule):
    op = "mask"
    hls_class = "QspMask"
    casting = commuting = transparent = True
    per_unit = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        try:
            m = np.asarray(ctx.bundle.mask(node.name))
        except KeyError:
            raise BundleError(f"masks.npz: missing array '{node.name}.mask'") from None
        if list(m.shape) != list(node.in_shape) or not np.isin(m, (0, 1)).all():
            raise BundleError(f"masks.npz: {node.name}.mask must be 0/1 of shape {node.in_shape}")
        return info, {"mask": m.astype(np.int64)}

    def run(self, step, x):
        return Fixed(x.codes * step.params["mask"], x.frac)

    def torch_forward(self, n, t, bundle, torch, F):
        return t * torch.as_tensor(np.asarray(bundle.mask(n.name), dtype=np.float32))

    def counts(self, n, ins, bundle) -> CountOut:
        m = bundle.masks.get(f"{n.name}.mask") if bundle is not None else None
        if m is None:
            raise UnsupportedLayerError(f"node {n.name!r} (mask): masks.npz has no '{n.name}.mask'")
        a = ins[0].alive
        return CountOut(a & (np.asarray(m) != 0).reshape(a.shape))

    def stream_resources(self, n, s):
        """io_stream (qsp's nnet_qsp_mask.h ``qsp_mask``): the mask is indexed by the pixel
        counter, so it is no longer a constant: an AND per bit per lane (``b`` LUTs) and the
        mask itself as a LUT-ROM of ``ceil(elements / 64)`` LUTs; 1 cycle, II 1 per pixel."""
        b = n.out_format.bits
        return Resources(0, s.lanes * b + math.ceil(n.out_elements / 64), s.lanes * b, 0, 1, s.pixels)
