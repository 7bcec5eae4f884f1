"""Memory footprint and performance density of a bundle, as the qsparse paper defines them.

* weight footprint = sum over weight layers of ``bits x nonzero weights`` (biases are
  excluded from the footprint and reported separately as ``bias_bits x biases``);
* activation footprint = sum over every ``quantize`` node (the input quantizer included)
  of ``bits x nonzero elements for one input``, where an element is zero when an adjacent
  activation mask removes it (``relu -> mask -> quantize`` or ``relu -> quantize -> mask``);
* performance density = task metric / (weight + activation footprint in Mb, 10^6 bits).

The float reference counts 32 bits for every weight and every element at the same
activation points. Works on a :class:`~qsp.bundle.Bundle` (exact mask counts from
masks.npz) or on a bare :class:`~qsp.bundle.QSpec` (counts from each mask's sparsity).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .schema import Conv2dNode, LinearNode, MaskNode, QSpec, QuantNode

FLOAT_BITS = 32


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
        return obj, None
    return obj.qspec, obj.masks  # a Bundle


def _weight_count(n) -> int:
    if isinstance(n, LinearNode):
        return n.in_features * n.out_features
    return n.out_channels * n.in_channels * int(np.prod(n.kernel_size))


def _bias_count(n) -> int:
    return n.out_features if isinstance(n, LinearNode) else n.out_channels


def _mask_nonzeros(n: MaskNode, masks) -> int:
    key = f"{n.name}.mask"
    if masks is not None and key in masks:
        return int(np.count_nonzero(masks[key]))
    return int(round((1.0 - n.sparsity) * math.prod(n.in_shape)))


def _point_mask(graph, i):
    """The mask node that zeroes elements of quantize node ``graph[i]``'s tensor, if any: the
    node right before or right after it, of the same shape."""
    q = graph[i]
    for j in (i - 1, i + 1):
        if 0 <= j < len(graph) and isinstance(graph[j], MaskNode) and list(graph[j].in_shape) == list(q.out_shape):
            return graph[j]
    return None


def footprint(obj) -> Footprint:
    """The footprint of a bundle (or QSpec) as trained: quantized bits, pruned weights and
    masked activations not counted."""
    spec, masks = _spec_and_masks(obj)
    layers, points = [], []
    bias_bits = 0
    for i, n in enumerate(spec.graph):
        if isinstance(n, (LinearNode, Conv2dNode)):
            layers.append(LayerFootprint(n.name, n.op, n.weight.bits, _weight_count(n), int(n.nonzeros)))
            if n.bias is not None:
                bias_bits += n.bias.bits * _bias_count(n)
        elif isinstance(n, QuantNode):
            elems = math.prod(n.out_shape)
            m = _point_mask(spec.graph, i)
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
    spec, _ = _spec_and_masks(obj)
    layers, points = [], []
    bias_bits = 0
    for n in spec.graph:
        if isinstance(n, (LinearNode, Conv2dNode)):
            w = _weight_count(n)
            layers.append(LayerFootprint(n.name, n.op, bits, w, w))
            if n.bias is not None:
                bias_bits += bits * _bias_count(n)
        elif isinstance(n, QuantNode):
            e = math.prod(n.out_shape)
            points.append(LayerFootprint(n.name, n.op, bits, e, e))
    return Footprint(
        weight_bits=sum(x.footprint_bits for x in layers), activation_bits=sum(x.footprint_bits for x in points),
        bias_bits=bias_bits, weights=sum(x.elements for x in layers), weight_nonzeros=sum(x.nonzeros for x in layers),
        activations=sum(x.elements for x in points), activation_nonzeros=sum(x.nonzeros for x in points),
        layers=layers, points=points)
