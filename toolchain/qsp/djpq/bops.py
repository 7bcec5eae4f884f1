"""Bit-operations (BOPs), the DJPQ objective and the lambda controller.

Per weight layer (DJPQ, Wang et al. 2020; Baalen et al.'s BOPs)::

    BOPs = MACs * b_w * b_a * r_in * r_out

``MACs`` are the dense layer's multiply-accumulates for one input (grouped convs: their
real ones), ``b_w`` its weight bits, ``b_a`` the bits of the activation quantizer whose
value it reads (found on the traced graph, :mod:`qsp.djpq.graph`; 32 if none), ``r_in`` the
kept ratio of its input channels (only when they are the outputs of a gated layer linked to
it alone; 1 after the model input, a join or a fan-out) and ``r_out`` that of its own output
channels (1 for an ungated layer). The FP32 dense baseline is
``sum MACs * 32 * 32``.

In training (``hard=False``) bits are Uhlich's continuous bitwidths and ratios the mean
keep probabilities of the gates, so BOPs is differentiable in both; ``hard=True`` gives the
deployed model's integer bits and kept-channel counts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..errors import QspError
from .convert import DJPQConfig, gated_channels, layer_chain

FP32_BITS = 32
#: buffer of the converted model that carries the controller's lambda (checkpointed with it)
LAMBDA_BUFFER = "djpq_lambda"


@dataclass
class LayerBops:
    name: str
    macs: int
    w_bits: float
    a_bits: float
    r_in: float
    r_out: float
    bops: float
    kept_out: int
    out_channels: int

    def to_dict(self):
        return asdict(self)


def _f(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _to_host(*vals) -> list[float]:
    """Floats of scalar tensors (one device read for all of them) and numbers."""
    ts = [v.detach().double().reshape(()) for v in vals if isinstance(v, torch.Tensor)]
    host = iter(torch.stack(ts).tolist() if ts else [])
    return [next(host) if isinstance(v, torch.Tensor) else float(v) for v in vals]


def model_bops(model: nn.Module, hard: bool = False, rows: bool = True):
    """(total BOPs, [LayerBops]) of a DJPQ model. The total is a tensor (differentiable)
    when ``hard`` is False, a float otherwise. ``rows=False`` (the training objective, every
    step) skips the per-layer report and with it every read from the device."""
    total = 0.0
    out = []
    for e in layer_chain(model):
        L = e.layer
        macs = L.mac_count()
        if macs <= 0:
            raise QspError(f"layer {e.name!r}: MACs not recorded (build the model with qsp.djpq.convert)")
        if hard:
            bw = float(L.wq.bits())
            ba = float(e.act_quant.bits()) if e.act_quant is not None else float(FP32_BITS)
            r_in = (len(e.prev.kept()) / e.prev.out_channels) if e.prev is not None and e.prev.gate is not None else 1.0
            r_out = len(L.kept()) / L.out_channels
        else:
            bw = L.wq.bits_train()
            ba = e.act_quant.bits_train() if e.act_quant is not None else float(FP32_BITS)
            r_in = e.prev.gate.keep_prob().mean() if e.prev is not None and e.prev.gate is not None else 1.0
            r_out = L.gate.keep_prob().mean() if L.gate is not None else 1.0
        b = macs * bw * ba * r_in * r_out
        total = total + b
        if rows:
            out.append(LayerBops(e.name, macs, _f(bw), _f(ba), _f(r_in), _f(r_out), _f(b),
                                 len(L.kept()), L.out_channels))
    return total, out


def fp32_bops(model: nn.Module) -> int:
    return sum(e.layer.mac_count() for e in layer_chain(model)) * FP32_BITS * FP32_BITS


def kl_term(model: nn.Module) -> torch.Tensor | float:
    """Mean over gated channels of ``log(1 + alpha)`` (0 without gates)."""
    n = gated_channels(model)
    if n == 0:
        return 0.0
    return sum(e.layer.gate.kl() for e in layer_chain(model) if e.layer.gate is not None) / n


@dataclass
class BopsController:
    """Fixed ``lam`` (``target=None``), or a multiplicative controller that drives the BOPs
    ratio to ``target``: ``lam <- lam * (ratio / target) ** gain`` after every step, clamped
    to ``[lam_min, lam_max]`` (an integral controller in log space: lambda keeps rising while
    the model is above the target and falls back when it is below)."""

    lam: float = 1.0
    target: float | None = None
    gain: float = 0.05
    lam_min: float = 1e-4
    lam_max: float = 1e4

    def update(self, ratio: float) -> float:
        if self.target is None or ratio <= 0:
            return self.lam
        self.lam = float(min(max(self.lam * (ratio / self.target) ** self.gain, self.lam_min), self.lam_max))
        return self.lam


class DJPQObjective:
    """The regulariser added to the task loss:
    ``kl_weight * KL + lambda_bops * BOPs(model) / BOPs_fp32``."""

    def __init__(self, cfg: DJPQConfig):
        self.cfg = cfg
        self.controller = BopsController(cfg.lambda_bops, cfg.bops_target, cfg.controller_gain)
        self.last: dict = {}

    def __call__(self, model: nn.Module, update: bool = True) -> torch.Tensor:
        state = getattr(model, LAMBDA_BUFFER, None)  # lambda lives in the model's state_dict
        if state is not None and self._synced is not state:  # read once (a resumed run's lambda), then written
            if float(state) > 0:
                self.controller.lam = float(state)
            self._synced = state
        bops, _ = model_bops(model, hard=False, rows=False)
        ratio = bops / fp32_bops(model)
        kl = kl_term(model)
        loss = self.cfg.kl_weight * kl + self.controller.lam * ratio
        # one read from the device per step: the controller needs the ratio on the host
        r, k = _to_host(ratio, kl)
        self.last = {"bops_ratio": r, "kl": k, "lambda_bops": self.controller.lam}
        if update:
            self.controller.update(r)
            if state is not None:
                state.fill_(self.controller.lam)
        return loss

    _synced = None


def summary(model: nn.Module) -> dict:
    """The deployed model's BOPs report: per layer and totals, ratios to FP32 dense."""
    total, rows = model_bops(model, hard=True)
    base = fp32_bops(model)
    return {"bops": float(total), "bops_fp32": int(base), "bops_ratio": float(total) / base,
            "reduction": base / float(total) if total else math.inf,
            "layers": [r.to_dict() for r in rows]}


#: bundle ops through which a quantized value keeps its format on the way to a weight node
_SAME_FORMAT_OPS = {"flatten", "maxpool2d", "maxpool1d", "mask"}


def bundle_bops(bundle, fp32_macs: int | None = None) -> dict:
    """BOPs of any bundle's graph (qsparse or DJPQ) from its node shapes and formats.

    Per weight node: ``bops = MACs * b_w * b_a`` with ``MACs`` of the node as it is (pruned
    channels already removed; a grouped/depthwise conv's weight holds ``in/groups`` inputs
    per output), ``b_a`` the bits of the ``quantize`` node whose value it reads (followed
    back through its inputs across ``flatten``/``maxpool2d``/``mask``; 32 if none);
    ``bops_nonzero`` counts only the MACs of nonzero weights (unstructured sparsity, e.g.
    qsparse's pruned weights). Ratios are to ``fp32_macs * 32 * 32`` (default: the bundle's
    own MACs, i.e. its dense-at-32-bit version).
    """
    from ..bundle import Conv2dNode, LinearNode, QuantNode

    graph = list(bundle.graph)
    prod = {n.name: n for n in graph}
    before = {n.name: (graph[i - 1] if i else None) for i, n in enumerate(graph)}

    def source(n):  # the node whose value n reads (a graph built without inputs: the one before)
        return prod.get(n.inputs[0]) if n.inputs else before[n.name]

    def a_bits_of(n) -> int:
        src = source(n)
        while src is not None and src.op in _SAME_FORMAT_OPS:
            src = source(src)
        return src.format.bits if isinstance(src, QuantNode) else FP32_BITS

    rows = []
    for n in graph:
        if not isinstance(n, (LinearNode, Conv2dNode)):
            continue
        a_bits = a_bits_of(n)
        w = bundle.weights[f"{n.name}.weight"]
        positions = 1 if isinstance(n, LinearNode) else int(n.out_shape[1] * n.out_shape[2])
        macs = int(w.size) * positions
        nz = int(np.count_nonzero(w)) * positions
        rows.append({"node": n.name, "macs": macs, "w_bits": n.weight.bits, "a_bits": a_bits,
                     "bops": macs * n.weight.bits * a_bits, "bops_nonzero": nz * n.weight.bits * a_bits})
    macs = sum(r["macs"] for r in rows)
    base = (fp32_macs if fp32_macs is not None else macs) * FP32_BITS * FP32_BITS
    bops = sum(r["bops"] for r in rows)
    bnz = sum(r["bops_nonzero"] for r in rows)
    return {"layers": rows, "macs": macs, "bops": bops, "bops_nonzero": bnz, "bops_fp32": base,
            "reduction": base / bops if bops else math.inf,
            "reduction_nonzero": base / bnz if bnz else math.inf}
