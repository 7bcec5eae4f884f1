"""A Linear/Conv2d layer (groups allowed: depthwise, grouped) with a VIB gate per output
channel, a learned-bitwidth weight quantizer and optionally a BatchNorm folded into it.

The gate is folded into the weights *before* quantization:

    y = Q_w(W * z) x + Q_b(b * z)

which equals gating the layer output ``z * (W x + b)`` up to the quantizer, and makes the
evaluated network exactly the deployed one: in evaluation ``z = mu`` (0 for pruned
channels), so pruned rows of the weight and their biases are exactly 0, and every weight is
on the quantizer's fixed-point grid. (DJPQ and Dai et al. draw the noise per sample on the
output; folding it into the weights draws one gate vector per mini-batch.)

**Folded BatchNorm.** With ``bn`` (a BatchNorm that reads only this layer's output), with
``s = gamma / sqrt(running_var + eps)`` per output channel:

* evaluation / deployment: ``W_f = W * s``, ``b_f = beta + (b - running_mean) * s`` and
  ``y = Q_w(W_f * z) x + Q_b(b_f * z)`` -- exactly what the bundle holds;
* training (DJPQ quantizes from the first step, so the batch-statistics phase cannot be
  float as in :class:`qsp.nn.QLayer`): the weight quantizer always sees the deployed
  tensor ``W_f * z``. The batch mean ``m_B`` and variance ``v_B`` of the float ``W x`` are
  measured (one extra float pass; the running statistics are updated from them), and the
  quantized layer's output is rescaled per channel from the running to the batch
  statistics (Krishnamoorthi 2018, torch.ao's fused ConvBn)::

      y = sqrt(running_var + eps) / sqrt(v_B + eps) * (Q_w(W_f * z) x)
          + z * (beta - gamma * m_B / sqrt(v_B + eps))

  which is ``z * BN_batch(W x + b)`` up to the weight quantization, without ever dividing by
  ``gamma`` or by the gate. A fresh BatchNorm (``num_batches_tracked == 0``) takes the
  first batch's statistics as its running ones and the weight quantizer is re-initialised
  from the folded weight, so its range starts at the deployed weight's.

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


BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


class DJPQLayer(nn.Module):
    def __init__(self, layer: nn.Module, *, gate: bool = True, bias_bits: int = 16,
                 gate_kw: dict | None = None, quant_kw: dict | None = None, name: str = "",
                 bn: nn.Module | None = None):
        super().__init__()
        if isinstance(layer, nn.Conv1d) and layer.groups != 1:
            raise UnsupportedLayerError(f"layer {name!r} (Conv1d): groups={layer.groups} is not supported (the "
                                        "bundle's conv1d has groups 1)")
        if isinstance(layer, nn.Conv2d):
            if gate and layer.groups != 1:
                raise UnsupportedLayerError(f"layer {name!r} (Conv2d): a grouped/depthwise conv cannot carry "
                                            "channel gates (its channels are not independent units)")
        elif not isinstance(layer, (nn.Linear, nn.Conv1d)):
            raise UnsupportedLayerError(f"layer {name!r}: {type(layer).__name__} is not supported by DJPQ "
                                        "(supported: Linear, Conv1d, Conv2d incl. depthwise/grouped)")
        if bn is not None:
            if not isinstance(bn, BN_TYPES) or not bn.track_running_stats or bn.running_mean is None:
                raise UnsupportedLayerError(f"layer {name!r}: the BatchNorm folded into it needs "
                                            "track_running_stats=True")
            if bn.num_features != layer.weight.shape[0]:
                raise UnsupportedLayerError(f"layer {name!r}: BatchNorm of {bn.num_features} features after "
                                            f"{layer.weight.shape[0]} outputs")
        self.layer = layer
        self.bn = bn
        self.name = name
        self.out_channels = layer.weight.shape[0]
        self.gate_kw = dict(gate_kw or {})
        self.gate = VIBGate(self.out_channels, **self.gate_kw) if gate else None
        self.wq = LearnedQuantizer(True, **(quant_kw or {}))
        with torch.no_grad():
            self.wq.init_from(self._folded()[0])
        self.bias_bits = fp.check_bits(bias_bits, "bias_bits", 2, 32)
        self.register_buffer("macs", torch.zeros((), dtype=torch.int64))  # dense MACs per input

    @property
    def groups(self) -> int:
        return int(getattr(self.layer, "groups", 1))

    def set_gated(self, gated: bool) -> None:
        """Give the layer a VIB gate on its outputs (``gated``) or remove it."""
        if gated and self.groups != 1:
            raise UnsupportedLayerError(f"layer {self.name!r}: a grouped/depthwise conv cannot carry channel gates")
        if gated and self.gate is None:
            dev = self.layer.weight.device
            self.gate = VIBGate(self.out_channels, **self.gate_kw).to(dev)
        elif not gated:
            self.gate = None

    # ------------------------------------------------------------------ weights
    def _z(self):
        return None if self.gate is None else self.gate()

    def _bn_consts(self):
        """(gamma, beta, sqrt(running_var + eps)) of the folded BatchNorm."""
        bn = self.bn
        g = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
        return g, beta, torch.sqrt(bn.running_var + bn.eps)

    def _folded(self):
        """(weight, bias) with the BatchNorm folded in with its running statistics:
        ``W * s`` and ``beta + (b - running_mean) * s``, ``s = gamma / sqrt(var + eps)``."""
        w, b = self.layer.weight, self.layer.bias
        if self.bn is None:
            return w, b
        g, beta, std = self._bn_consts()
        s = g / std
        w = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
        b0 = -self.bn.running_mean if b is None else b - self.bn.running_mean
        return w, beta + b0 * s

    def bias_format(self, b: torch.Tensor) -> fp.FixedFormat:
        m = float(b.detach().abs().max()) if b.numel() else 0.0
        if m == 0.0:
            return fp.FixedFormat(self.bias_bits, self.wq.frac(), True, self.wq.rounding)
        # largest frac with max|b| <= (2^(B-1) - 1) * 2^-frac
        frac = math.floor(math.log2((2 ** (self.bias_bits - 1) - 1) / m))
        return fp.FixedFormat(self.bias_bits, frac, True, self.wq.rounding)

    def _gated(self, w, b, z):
        if z is not None:
            w = w * z.view((-1,) + (1,) * (w.dim() - 1))
            b = None if b is None else b * z
        return w, b

    def _weights(self):
        w, b = self._gated(*self._folded(), self._z())
        wq = self.wq(w)
        f = None
        if b is not None:
            f = self.bias_format(b)
            exact = f.quantize_torch(b)
            b = ste(exact, b) if torch.is_grad_enabled() else exact
        return wq, b, f

    @torch.no_grad()
    def effective(self):
        """(weight, bias, bias format) of evaluation / deployment: deterministic gates, on the grid
        (a folded BatchNorm with its running statistics)."""
        with eval_mode(self):
            return self._weights()

    def kept(self) -> list[int]:
        return list(range(self.out_channels)) if self.gate is None else self.gate.kept()

    # ------------------------------------------------------------------ forward
    def _run(self, x, w, b):
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return self.layer._conv_forward(x, w, b)

    def freeze(self) -> None:
        """DJPQ's fine-tuning phase: the gate and the bitwidth stop learning, and a folded
        BatchNorm uses its running statistics in training too, so the training forward is the
        deployed network (only the weights, and BatchNorm's gamma and beta, still learn)."""
        if self.gate is not None:
            self.gate.freeze()
        self.wq.freeze()
        self.bn_frozen = True

    bn_frozen = False

    def forward(self, x):
        if self.bn is not None and self.training and not self.bn_frozen:
            y = self._forward_bn_train(x)
        else:
            w, b, _ = self._weights()
            y = self._run(x, w, b)
        if not self._macs_known:
            self.record_macs(y)
        return y

    def _forward_bn_train(self, x):
        """Fold-aware training with batch statistics (see the module doc)."""
        bn = self.bn
        u = self._run(x, self.layer.weight, None)  # float pass: the batch statistics
        dims = [0] + list(range(2, u.dim()))
        m_b = u.mean(dims)
        v_b = u.var(dims, unbiased=False)
        self._update_running(m_b, v_b, u.numel() // max(u.shape[1], 1))
        g, beta, std = self._bn_consts()
        z = self._z()
        w, _ = self._gated(self._folded()[0], None, z)
        shape = (1, -1) + (1,) * (u.dim() - 2)
        std_b = torch.sqrt(v_b + bn.eps)
        y = self._run(x, self.wq(w), None) * (std / std_b).reshape(shape)
        shift = beta - g * m_b / std_b
        if z is not None:
            shift = shift * z
        return y + shift.reshape(shape)

    @torch.no_grad()
    def _update_running(self, m_b, v_b, n: int) -> None:
        bn = self.bn
        mean = m_b.detach() + (0 if self.layer.bias is None else self.layer.bias.detach())
        var = v_b.detach() * (n / max(n - 1, 1))  # unbiased, as BatchNorm keeps it
        fresh = int(bn.num_batches_tracked) == 0
        bn.num_batches_tracked.add_(1)
        if fresh:  # a fresh BatchNorm: the first batch's statistics, and the weight range from them
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            self.wq.init_from(self._folded()[0], sharded=True)
            return
        mom = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - mom).add_(mean, alpha=mom)
        bn.running_var.mul_(1 - mom).add_(var, alpha=mom)

    _macs_known = False
    _macs_py: int | None = None

    def mac_count(self) -> int:
        """Dense MACs per input as a Python int (the buffer read once, not every step)."""
        if self._macs_py is None:
            v = int(self.macs)
            if v <= 0:
                return v  # not recorded yet: read again next time
            self._macs_py = v
        return self._macs_py

    def _load_from_state_dict(self, *args, **kwargs):
        self._macs_py = None
        return super()._load_from_state_dict(*args, **kwargs)

    def record_macs(self, y: torch.Tensor) -> None:
        """Dense MACs per input, from the output's shape (first forward pass); a grouped
        conv's weight holds ``in/groups`` inputs per output, so its MACs are the real ones."""
        w = self.layer.weight
        positions = 1 if isinstance(self.layer, nn.Linear) else math.prod(int(d) for d in y.shape[2:])
        self.macs.fill_(int(w.numel()) * positions)
        self._macs_known = True
        self._macs_py = int(w.numel()) * positions
