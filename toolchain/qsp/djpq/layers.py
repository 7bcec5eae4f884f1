"""A Linear/Conv2d layer with a VIB gate per output channel and a learned-bitwidth weight
quantizer.

The gate is folded into the weights *before* quantization:

    y = Q_w(W * z) x + Q_b(b * z)

which equals gating the layer output ``z * (W x + b)`` up to the quantizer, and makes the
evaluated network exactly the deployed one: in evaluation ``z = mu`` (0 for pruned
channels), so pruned rows of the weight and their biases are exactly 0, and every weight is
on the quantizer's fixed-point grid. (DJPQ and Dai et al. draw the noise per sample on the
output; folding it into the weights draws one gate vector per mini-batch.)

The bias is quantized to ``bias_bits`` signed bits with the finest fraction that holds its
largest magnitude (it costs no multiplications, so it does not enter BOPs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import fixedpoint as fp
from ..errors import UnsupportedLayerError
from ..nn.state import eval_mode
from .gates import VIBGate
from .quant import LearnedQuantizer, ste


class DJPQLayer(nn.Module):
    def __init__(self, layer: nn.Module, *, gate: bool = True, bias_bits: int = 16,
                 gate_kw: dict | None = None, quant_kw: dict | None = None, name: str = ""):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise UnsupportedLayerError(f"layer {name!r} (Conv2d): groups != 1 is not supported by DJPQ")
        elif not isinstance(layer, nn.Linear):
            raise UnsupportedLayerError(f"layer {name!r}: {type(layer).__name__} is not supported by DJPQ "
                                        "(supported: Linear, Conv2d)")
        self.layer = layer
        self.out_channels = layer.weight.shape[0]
        self.gate = VIBGate(self.out_channels, **(gate_kw or {})) if gate else None
        self.wq = LearnedQuantizer(True, **(quant_kw or {}))
        self.wq.init_from(layer.weight)
        self.bias_bits = fp.check_bits(bias_bits, "bias_bits", 2, 32)
        self.register_buffer("macs", torch.zeros((), dtype=torch.int64))  # dense MACs per input

    # ------------------------------------------------------------------ weights
    def _z(self):
        return None if self.gate is None else self.gate()

    def bias_format(self, b: torch.Tensor) -> fp.FixedFormat:
        m = float(b.detach().abs().max()) if b.numel() else 0.0
        if m == 0.0:
            return fp.FixedFormat(self.bias_bits, self.wq.frac(), True, self.wq.rounding)
        # largest frac with max|b| <= (2^(B-1) - 1) * 2^-frac
        frac = math.floor(math.log2((2 ** (self.bias_bits - 1) - 1) / m))
        return fp.FixedFormat(self.bias_bits, frac, True, self.wq.rounding)

    def _weights(self):
        z = self._z()
        w = self.layer.weight
        b = self.layer.bias
        if z is not None:
            w = w * z.view((-1,) + (1,) * (w.dim() - 1))
            b = None if b is None else b * z
        wq = self.wq(w)
        f = None
        if b is not None:
            f = self.bias_format(b)
            exact = f.quantize_torch(b)
            b = ste(exact, b) if torch.is_grad_enabled() else exact
        return wq, b, f

    @torch.no_grad()
    def effective(self):
        """(weight, bias, bias format) of evaluation / deployment: deterministic gates, on the grid."""
        with eval_mode(self):
            return self._weights()

    def kept(self) -> list[int]:
        return list(range(self.out_channels)) if self.gate is None else self.gate.kept()

    # ------------------------------------------------------------------ forward
    def forward(self, x):
        w, b, _ = self._weights()
        if isinstance(self.layer, nn.Linear):
            y = F.linear(x, w, b)
        else:
            y = self.layer._conv_forward(x, w, b)
        if not self._macs_known:
            self.record_macs(y)
        return y

    _macs_known = False

    def record_macs(self, y: torch.Tensor) -> None:
        """Dense MACs per input, from the output's shape (first forward pass)."""
        w = self.layer.weight
        positions = 1 if isinstance(self.layer, nn.Linear) else int(y.shape[-2] * y.shape[-1])
        self.macs.fill_(int(w.numel()) * positions)
        self._macs_known = True
