"""Memory footprint and performance density of a bundle, as the qsparse paper defines them.

* weight footprint = sum over weight layers of ``bits x nonzero weights`` (biases are
  excluded from the footprint and reported separately as ``bias_bits x biases``). A conv
  with ``groups`` g has ``out x in/g x kh x kw`` weights. A ``scale_shift`` node (a
  BatchNorm with no weight layer before it) follows the same policy as a BatchNorm folded
  into a conv: its per-channel scale is a weight tensor (``channels`` weights at the
  scale's bits, counted), its shift is a bias (excluded, in ``bias_bits``);
* activation footprint = sum over every ``quantize`` node (the input quantizer included)
  of ``bits x nonzero elements for one input``, where an element is zero when an
  activation mask removes it (:func:`point_mask`: the quantize node reads a mask of its
  shape, ``relu -> mask -> quantize``, or its only consumer is one, ``relu -> quantize ->
  mask``). Each quantized tensor is counted once, however many nodes read it (fan-out);
* performance density = task metric / (weight + activation footprint in Mb, 10^6 bits).

Which nodes are weight layers and how many weights / biases / nonzero weights each has are
the op's facts (:attr:`qsp.ops.OpRule.weighted`, :meth:`~qsp.ops.OpRule.weight_count`,
:meth:`~qsp.ops.OpRule.bias_count`, :meth:`~qsp.ops.OpRule.weight_nonzeros`), defined next
to the op.

The float reference counts 32 bits for every weight and every element at the same
activation points. Works on a :class:`~qsp.bundle.Bundle` (exact mask counts from
masks.npz) or on a bare :class:`~qsp.bundle.QSpec` (counts from each mask's sparsity).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..ops import RULES
from .schema import MaskNode, QSpec, QuantNode, consumers, producers

FLOAT_BITS = 32


def _weight_rule(n):
    """The op rule of ``n`` when its ``weight`` tensor counts in the weight footprint."""
    r = RULES.get(n.op)
    return r if r is not None and r.weighted else None


@dataclass
class LayerFootprint:
    name: str
    op: str
    bits: int
    elements: int  # weights (layers) or activation elements (quantize points)
    nonzeros: int

    @property
    def footprint_bits(self) -> int:
        return self.bits * self.nonzeros


@dataclass
class Footprint:
    weight_bits: int
    activation_bits: int
    bias_bits: int
    weights: int
    weight_nonzeros: int
    activations: int
    activation_nonzeros: int
    layers: list[LayerFootprint] = field(default_factory=list)
    points: list[LayerFootprint] = field(default_factory=list)

    @property
    def total_bits(self) -> int:
        """Weights + activations (biases excluded, as in the paper)."""
        return self.weight_bits + self.activation_bits

    @property
    def megabits(self) -> float:
        return self.total_bits / 1e6

    @property
    def weight_sparsity(self) -> float:
        return 1.0 - self.weight_nonzeros / self.weights if self.weights else 0.0

    @property
    def activation_sparsity(self) -> float:
        return 1.0 - self.activation_nonzeros / self.activations if self.activations else 0.0

    def density(self, metric: float) -> float:
        """Performance density: metric per Mb."""
        return performance_density(metric, self)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("layers", "points")}
        d.update(total_bits=self.total_bits, megabits=self.megabits, weight_sparsity=self.weight_sparsity,
                 activation_sparsity=self.activation_sparsity,
                 layers=[dict(asdict(x), footprint_bits=x.footprint_bits) for x in self.layers],
                 points=[dict(asdict(x), footprint_bits=x.footprint_bits) for x in self.points])
        return d


def performance_density(metric: float, fp: Footprint) -> float:
    return float(metric) / fp.megabits if fp.total_bits else float("nan")


def _spec_and_masks(obj):
    if isinstance(obj, QSpec):
        return obj, None, None
    return obj.qspec, obj.masks, obj.weights  # a Bundle


def _mask_nonzeros(n: MaskNode, masks) -> int:
    key = f"{n.name}.mask"
    if masks is not None and key in masks:
        return int(np.count_nonzero(masks[key]))
    return int(round((1.0 - n.sparsity) * math.prod(n.in_shape)))


def point_mask(graph, i, prod=None, cons=None):
    """The mask node that zeroes elements of quantize node ``graph[i]``'s tensor, if any, of
    the same shape: the mask it reads (its producer), or the mask that is its *only*
    consumer (with fan-out, the other readers need the masked elements: they are stored).
    ``prod``/``cons``: :func:`~qsp.bundle.schema.producers` / ``consumers`` of the graph."""
    q = graph[i]
    prod = producers(graph) if prod is None else prod
    cons = consumers(graph) if cons is None else cons
    shape = list(q.out_shape)
    src = [prod.get(x) for x in q.inputs] if q.inputs else [graph[i - 1] if i else None]
    if len(src) == 1 and isinstance(src[0], MaskNode) and list(src[0].out_shape) == shape:
        return src[0]
    readers = cons.get(q.name, [])
    if len(readers) == 1 and isinstance(readers[0], MaskNode) and list(readers[0].in_shape) == shape:
        return readers[0]
    return None


def footprint(obj) -> Footprint:
    """The footprint of a bundle (or QSpec) as trained: quantized bits, pruned weights and
    masked activations not counted."""
    spec, masks, weights = _spec_and_masks(obj)
    layers, points = [], []
    bias_bits = 0
    g = spec.graph
    prod, cons = producers(g), consumers(g)
    for i, n in enumerate(g):
        r = _weight_rule(n)
        if r is not None:
            layers.append(LayerFootprint(n.name, n.op, n.weight.bits, r.weight_count(n), r.weight_nonzeros(n, weights)))
            if n.bias is not None:
                bias_bits += n.bias.bits * r.bias_count(n)
        elif isinstance(n, QuantNode):
            elems = math.prod(n.out_shape)
            m = point_mask(g, i, prod, cons)
            nz = _mask_nonzeros(m, masks) if m is not None else elems
            points.append(LayerFootprint(n.name, n.op, n.format.bits, elems, nz))
    return Footprint(
        weight_bits=sum(x.footprint_bits for x in layers), activation_bits=sum(x.footprint_bits for x in points),
        bias_bits=bias_bits, weights=sum(x.elements for x in layers), weight_nonzeros=sum(x.nonzeros for x in layers),
        activations=sum(x.elements for x in points), activation_nonzeros=sum(x.nonzeros for x in points),
        layers=layers, points=points)


def float_footprint(obj, bits: int = FLOAT_BITS) -> Footprint:
    """The same network in float: ``bits`` for every weight and every element at the same
    activation points (input included), nothing pruned; biases at ``bits`` too."""
    spec, _, _ = _spec_and_masks(obj)
    layers, points = [], []
    bias_bits = 0
    for n in spec.graph:
        r = _weight_rule(n)
        if r is not None:
            w = r.weight_count(n)
            layers.append(LayerFootprint(n.name, n.op, bits, w, w))
            if n.bias is not None:
                bias_bits += bits * r.bias_count(n)
        elif isinstance(n, QuantNode):
            e = math.prod(n.out_shape)
            points.append(LayerFootprint(n.name, n.op, bits, e, e))
    return Footprint(
        weight_bits=sum(x.footprint_bits for x in layers), activation_bits=sum(x.footprint_bits for x in points),
        bias_bits=bias_bits, weights=sum(x.elements for x in layers), weight_nonzeros=sum(x.nonzeros for x in layers),
        activations=sum(x.elements for x in points), activation_nonzeros=sum(x.nonzeros for x in points),
        layers=layers, points=points)
