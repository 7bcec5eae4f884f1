"""Public one-line API: ``qsp.quantize`` and ``qsp.prune`` on layers (weights) or alone
(activations), and the :class:`QLayer` wrapper that carries a layer's weight operators."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import fixedpoint as fp
from .ops import ActivationPruner, ActivationQuantizer, Quantizer, WeightPruner
from .state import eval_mode


class QLayer(nn.Module):
    """A Linear/Conv layer whose weight passes through a list of operators (pruning and
    quantization, in the order they were applied) before every forward.

    The bias, when the layer has one and a weight quantizer is present, is quantized to
    ``bias_bits`` with its own delayed search (same delay as the weight quantizer).
    Pickles, deep-copies and loads a state_dict into a freshly built twin.
    """

    def __init__(self, layer: nn.Module, bn: nn.Module | None = None):
        super().__init__()
        if not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise ValueError(
                f"layer={type(layer).__name__} has no weight: qsp.quantize/qsp.prune take a layer with a "
                "`weight` (Linear, Conv1d/2d/3d, ...), or no layer at all for activations")
        if bn is not None and not (bn.affine and bn.track_running_stats):
            raise ValueError("a BatchNorm folded into a layer needs affine=True and track_running_stats=True")
        self.layer = layer
        self.bn = bn  # a BatchNorm folded into this layer (fold-aware training, see _weights)
        self.weight_ops = nn.ModuleList()
        self.bias_quant: Quantizer | None = None

    # ------------------------------------------------------------------ building
    def add_prune(self, **kw) -> "QLayer":
        self.weight_ops.append(WeightPruner(self.layer.weight.shape, **kw))
        return self

    def add_quantize(self, bits, bias_bits=None, per_channel=False, **kw) -> "QLayer":
        ch = self.layer.weight.shape[0] if per_channel else None
        self.weight_ops.append(Quantizer(bits, channels=ch, channel_axis=0, **kw))
        if getattr(self.layer, "bias", None) is not None or self.bn is not None:
            bkw = {k: v for k, v in kw.items() if k in ("delay", "window", "interval", "rounding")}
            self.bias_quant = Quantizer(bias_bits or min(24, 2 * bits), signed=True, **bkw)
        return self

    # ------------------------------------------------------------------ views
    @property
    def pruner(self) -> WeightPruner | None:
        return next((op for op in self.weight_ops if isinstance(op, WeightPruner)), None)

    @property
    def quantizer(self) -> Quantizer | None:
        return next((op for op in self.weight_ops if isinstance(op, Quantizer)), None)

    @property
    def weight(self):
        return self.layer.weight

    @property
    def bias(self):
        return self.layer.bias

    def _bn_scale(self):
        bn = self.bn
        return bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def _folded(self):
        """(weight, bias) with the BatchNorm folded in with its running statistics:
        ``w * g/s`` and ``beta + (b - mean) * g/s`` (``s = sqrt(var + eps)``)."""
        w, b = self.layer.weight, self.layer.bias
        if self.bn is None:
            return w, b
        scale = self._bn_scale()
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b0 = -self.bn.running_mean if b is None else b - self.bn.running_mean
        return w, self.bn.bias + b0 * scale

    def _weights(self):
        w, b = self._folded()
        for op in self.weight_ops:
            w = op(w)
        if b is not None and self.bias_quant is not None:
            b = self.bias_quant(b)
        return w, b

    @property
    def bn_frozen(self) -> bool:
        """With a folded BatchNorm: True once the weight quantizer is on (then training
        computes exactly what the hardware does: folded, quantized weight and bias with the
        running statistics, which stop updating); before, batch statistics are used and
        the running ones updated, as torch.ao's fused ConvBn modules do."""
        q = self.quantizer
        return q is not None and q.is_on

    @property
    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with now (pruned and quantized); never advances
        a schedule."""
        return self.effective()[0]

    @torch.no_grad()
    def effective(self):
        """(weight, bias) as used in the forward pass, without advancing schedules."""
        with eval_mode(self):
            return self._weights()

    # ------------------------------------------------------------------ forward
    def _apply_layer(self, x, w, b):
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, w, b)
        if isinstance(layer, nn.modules.conv._ConvNd):
            return layer._conv_forward(x, w, b)
        params = {"weight": w}
        if b is not None:
            params["bias"] = b
        return torch.func.functional_call(layer, params, (x,))

    def forward(self, x):
        w, b = self._weights()
        if self.bn is None or not self.training or self.bn_frozen:
            return self._apply_layer(x, w, b)
        # fold-aware training with batch statistics (torch.ao's ConvBn scheme): the layer
        # runs with the folded weight, the per-channel scale is undone and BatchNorm is
        # applied with the batch's statistics (updating the running ones)
        bn = self.bn
        y = self._apply_layer(x, w, None)
        shape = (1, -1) + (1,) * (y.ndim - 2)
        y = y / self._bn_scale().reshape(shape)
        if self.layer.bias is not None:
            y = y + self.layer.bias.reshape(shape)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                            0.1 if bn.momentum is None else bn.momentum, bn.eps)


def quantize(layer: nn.Module | None = None, bits: int = 8, *, delay: int = 0, window: int = 1,
             interval: int = 0, signed: bool | None = None, rounding: str = fp.DEFAULT_ROUNDING,
             quantiles: Sequence[float] | None = None, frac: int | None = None,
             per_channel: bool = False, bias_bits: int | None = None) -> nn.Module:
    """Quantize a layer's weights (``qsp.quantize(nn.Conv2d(...), bits=8)``) or, with no
    layer, return an activation quantizer module (``qsp.quantize(bits=8)``).

    ``signed=None`` means signed for weights and signed for activations; set
    ``signed=False`` after a ReLU to spend every bit on magnitude.
    """
    kw = dict(delay=delay, window=window, interval=interval, rounding=rounding,
              quantiles=quantiles, frac=frac)
    if layer is None:
        if per_channel:
            raise ValueError("per_channel=True applies to weights only: pass the layer to quantize")
        return ActivationQuantizer(bits, signed=True if signed is None else signed, **kw)
    q = layer if isinstance(layer, QLayer) else QLayer(layer)
    return q.add_quantize(bits, bias_bits=bias_bits, per_channel=per_channel,
                          signed=True if signed is None else signed, **kw)


def prune(layer: nn.Module | None = None, sparsity: float = 0.5, *, start: int = 0,
          interval: int = 1, repetition: int = 1, window: int = 1) -> nn.Module:
    """Magnitude-prune a layer's weights (``qsp.prune(nn.Linear(...), sparsity=0.5)``) or,
    with no layer, return an activation pruner (``qsp.prune(sparsity=0.5)``)."""
    if layer is None:
        return ActivationPruner(sparsity, start=start, interval=interval, repetition=repetition,
                                window=window)
    q = layer if isinstance(layer, QLayer) else QLayer(layer)
    return q.add_prune(sparsity=sparsity, start=start, interval=interval, repetition=repetition)


class QScaleShift(nn.Module):
    """A BatchNorm with no weight layer before it, trained as the bundle's ``scale_shift``
    node computes it (qsp.convert puts one in place of each such BatchNorm).

    For the first ``delay`` training steps (the weight quantizers' delay) it is the
    BatchNorm itself: batch statistics, running statistics updated. From then on the running
    statistics are frozen and it computes ``x * Q(scale) + Q(shift)`` with the per-channel
    scale and shift quantized by :func:`qsp.fixedpoint.scale_shift` (16 bits each, the
    finest fraction that holds them) and straight-through gradients to the BatchNorm's
    weight and bias: the values the bundle stores, so training sees the deployed node.
    Evaluation always computes the quantized form."""

    def __init__(self, bn: nn.Module, delay: int = 0):
        super().__init__()
        if not (isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and bn.track_running_stats):
            raise ValueError("QScaleShift takes a BatchNorm1d/2d with track_running_stats=True")
        self.bn = bn
        self.delay = int(delay)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def extra_repr(self):
        return f"delay={self.delay}, bits={fp.SCALE_SHIFT_BITS}"

    @property
    def frozen(self) -> bool:
        return int(self.steps) >= self.delay

    def quantized(self):
        """(scale, shift) on their grids as float64 tensors, with straight-through gradients
        to the BatchNorm's weight and bias."""
        bn = self.bn
        var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
        g = bn.weight.double() if bn.affine else torch.ones_like(var)
        b = bn.bias.double() if bn.affine else torch.zeros_like(var)
        scale = g / torch.sqrt(var + bn.eps)
        shift = b - mean * scale
        _, _, sq, bq = fp.scale_shift(g.detach().cpu().numpy(), b.detach().cpu().numpy(), mean.cpu().numpy(),
                                      var.cpu().numpy(), bn.eps)
        sq, bq = torch.from_numpy(sq).to(scale.device), torch.from_numpy(bq).to(shift.device)
        return sq + (scale - scale.detach()), bq + (shift - shift.detach())

    def forward(self, x):
        if self.training:
            frozen = self.frozen
            self.steps += 1
            if not frozen:
                return self.bn(x)
        s, t = self.quantized()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x.double() * s.reshape(shape) + t.reshape(shape)).to(x.dtype)
