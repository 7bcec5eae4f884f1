"""``quantize``: round + saturate to the node's format (:mod:`qsp.fixedpoint` only).

Emulation: :meth:`qsp.fixedpoint.FixedFormat.quantize_np` on the exact values, then the
codes at the node's ``frac``. In hls4ml it is no layer of its own: the compiler folds it into
the cast of the layer that produces its value (or hoists it back across commuting ops), and
a quantize that can fold nowhere becomes qsp's ``QspRequant`` (:data:`REQUANT`).
"""
from __future__ import annotations

from ..fixedpoint import to_int_np
from .base import Alive, CountOut, Fixed, OpRule, TensorInfo, elementwise, stream_elementwise
from .registry import register


@register
class Quantize(OpRule):
    op = "quantize"
    #: its deploy layer when it folds into no other layer's cast (:data:`REQUANT`)
    hls_class = "QspRequant"
    per_unit = elementwise = True

    def infer(self, ctx, node, info):
        f = node.format
        return TensorInfo(f.frac, max(abs(f.int_min), abs(f.int_max)), f.signed), {"format": f}

    def run(self, step, x):
        fmt = step.params["format"]
        values = x if not isinstance(x, Fixed) else x.to_float(step.node.name)
        q = fmt.quantize_np(values)  # exact float64 (rounding + saturation of qsp.fixedpoint)
        return Fixed(to_int_np(q, fmt.frac), fmt.frac)

    def torch_forward(self, node, t, bundle, torch, F):
        return node.format.quantize_torch(t)

    def counts(self, node, ins: list[Alive], bundle) -> CountOut:
        """0 stays 0 (a format that holds 0 rounds 0 to 0)."""
        return CountOut(ins[0].alive.reshape(node.out_shape))

    def resources(self, n):
        """A rounding/saturating quantize: ``b`` LUTs per element."""
        return elementwise(n, 1)

    def stream_resources(self, n, s):
        """io_stream: ``b`` LUTs per lane (the rounding/saturating cast, folded into the
        producer's cast or qsp's ``qsp_requant``, PIPELINE over pixels)."""
        return stream_elementwise(n, s, 1)


class Requant(OpRule):
    """A standalone quantize node in the deploy model (qsp's ``QspRequant``): its types are
    the input's, the quantizer's format folds into its result."""

    op = "requant"
    hls_class = "QspRequant"
    casting = True


#: the deploy layer of a quantize node that folds into no other layer (compile only)
REQUANT = Requant()
