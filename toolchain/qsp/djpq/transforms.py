"""Bundle graph transformations for structured pruning.

:class:`RemovePrunedChannels` physically removes the output channels that a weight node
marks as pruned (``kept_outputs``) together with the matching input channels / features of
the next weight node, so the compiler sees a smaller dense network and needs no notion of
structured pruning. Between the two weight nodes the channel travels through ``relu``,
``mask``, ``quantize``, ``maxpool2d``, ``avgpool2d`` (all per channel: shapes shrink, masks
are sliced) and ``flatten`` (channel ``c`` of a ``[C, H, W]`` map becomes features
``c*H*W ... c*H*W + H*W - 1``).

The function computed is unchanged: a removed channel must have an all-zero weight row and
a zero bias (what a DJPQ export gives), so its output is 0 before and after every
pass-through node (``Q(0) = 0``, ``relu(0) = 0``, pooling of zeros is 0) and it contributes
nothing to the next layer. A marked channel that is not zero raises :class:`BundleError`.
Channels of the last weight node, or of a node followed by an operation that mixes channels
in another way (``pixel_shuffle``), are left in place.
"""
from __future__ import annotations

import copy
from typing import Protocol

import numpy as np

from ..bundle import (AvgPool2dNode, Bundle, Conv2dNode, FlattenNode, LinearNode, MaskNode,
                      MaxPool2dNode, QuantNode, ReluNode)
from ..errors import BundleError

PASS_THROUGH = (ReluNode, MaskNode, QuantNode, MaxPool2dNode, AvgPool2dNode, FlattenNode)
WEIGHT_NODES = (LinearNode, Conv2dNode)


class Transformation(Protocol):
    def apply(self, bundle: Bundle) -> Bundle: ...


def _n_out(n) -> int:
    return n.out_features if isinstance(n, LinearNode) else n.out_channels


def _set_counts(bundle: Bundle, n) -> None:
    w = bundle.weights[f"{n.name}.weight"]
    n.nonzeros = int(np.count_nonzero(w))
    n.weight_sparsity = float(np.mean(w == 0)) if w.size else 0.0


def _slice_frac(n, kept) -> None:
    """Per-channel weight formats follow their rows."""
    if n.weight is not None and n.weight.per_channel:
        n.weight.frac = [n.weight.frac[i] for i in kept]


class RemovePrunedChannels:
    """Remove pruned output channels (``kept_outputs``) and the next layer's matching inputs.

    ``apply`` returns a new, validated bundle (the input bundle is not modified) and records
    what it removed in ``qspec.extra["removed_channels"]`` (node -> original channel count
    and kept indices); ``kept_outputs`` is cleared on the nodes it shrank.
    """

    def apply(self, bundle: Bundle) -> Bundle:
        spec = copy.deepcopy(bundle.qspec)
        out = Bundle(spec, dict(bundle.weights), dict(bundle.masks), dict(bundle.state_dict),
                     bundle.test_x, bundle.test_y, None)
        graph = spec.graph
        removed = dict(spec.extra.get("removed_channels", {}))
        for i, n in enumerate(graph):
            if not isinstance(n, WEIGHT_NODES) or n.kept_outputs is None:
                continue
            C = _n_out(n)
            kept = sorted({int(k) for k in n.kept_outputs})
            if not kept or kept[0] < 0 or kept[-1] >= C:
                raise BundleError(f"qspec.json: node {n.name!r} kept_outputs {n.kept_outputs} must be "
                                  f"non-empty indices in [0, {C})")
            if len(kept) == C:
                n.kept_outputs = None
                continue
            j = i + 1
            while j < len(graph) and isinstance(graph[j], PASS_THROUGH):
                j += 1
            if j >= len(graph) or not isinstance(graph[j], WEIGHT_NODES):
                continue  # output layer or a channel-mixing op follows: leave in place
            self._check_zero(out, n, kept, C)
            self._remove(out, graph, i, j, kept)
            removed[n.name] = {"original": C, "kept": kept}
            n.kept_outputs = None
        spec.extra["removed_channels"] = removed
        return out.validate()

    @staticmethod
    def _check_zero(b: Bundle, n, kept, C) -> None:
        drop = [c for c in range(C) if c not in set(kept)]
        w = b.weights[f"{n.name}.weight"]
        bias = b.weights.get(f"{n.name}.bias")
        bad = [c for c in drop if np.any(w[c] != 0) or (bias is not None and bias[c] != 0)]
        if bad:
            raise BundleError(f"node {n.name!r}: channels {bad[:8]} are marked pruned but have nonzero "
                              "weights or bias; removing them would change the network")

    @staticmethod
    def _remove(b: Bundle, graph, i, j, kept) -> None:
        n = graph[i]
        k = len(kept)
        idx = np.asarray(kept)
        b.weights[f"{n.name}.weight"] = b.weights[f"{n.name}.weight"][idx]
        if f"{n.name}.bias" in b.weights:
            b.weights[f"{n.name}.bias"] = b.weights[f"{n.name}.bias"][idx]
        _slice_frac(n, kept)
        if isinstance(n, LinearNode):
            n.out_features = k
        else:
            n.out_channels = k
        n.out_shape = [k] + list(n.out_shape[1:])
        _set_counts(b, n)
        # through the pass-through nodes; `idx` indexes the leading axis of the tensor
        for m in graph[i + 1:j]:
            m.in_shape = list(graph[graph.index(m) - 1].out_shape)
            if isinstance(m, FlattenNode):
                hw = int(np.prod(m.in_shape[1:])) if len(m.in_shape) > 1 else 1
                idx = (idx[:, None] * hw + np.arange(hw)[None, :]).reshape(-1)
                m.out_shape = [len(idx)]
                continue
            if isinstance(m, MaskNode):
                key = f"{m.name}.mask"
                b.masks[key] = b.masks[key][idx]
                m.sparsity = float(np.mean(b.masks[key] == 0))
            m.out_shape = [len(idx)] + list(m.out_shape[1:])
        nxt = graph[j]
        nxt.in_shape = list(graph[j - 1].out_shape)
        key = f"{nxt.name}.weight"
        b.weights[key] = b.weights[key][:, idx]
        if isinstance(nxt, LinearNode):
            nxt.in_features = len(idx)
        else:
            nxt.in_channels = len(idx)
        _set_counts(b, nxt)
