"""Bundle graph transformations for structured pruning.

:class:`RemovePrunedChannels` physically removes the output channels that a weight node
marks as pruned (``kept_outputs``) together with the matching input channels / features of
the next weight node, so the compiler sees a smaller dense network and needs no notion of
structured pruning. The pairs are exactly the links of :func:`qsp.bundle.graph.link_after`:
between the two weight nodes the channel travels, every value read by one node only, through
``relu``, ``mask``, ``quantize``, ``maxpool2d``, ``avgpool2d``, ``clip`` with ``lo <= 0 <= hi``
(all per channel: shapes shrink, masks are sliced) and at most one ``flatten`` (channel ``c``
of a ``[C, H, W]`` map becomes features ``c*H*W ... c*H*W + H*W - 1``). A value read twice,
an ``add`` or ``concat``, and a depthwise/grouped conv (producer or consumer) end a link:
such channels stay.

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

from ..bundle import Bundle, LinearNode
from ..bundle.graph import UNIT_OPS, WEIGHTED, link_after, remove_units
from ..errors import BundleError

#: per-channel ops a pruned (all-zero) channel crosses: 0 stays 0 (average pooling too; a
#: clip only when its range holds 0, checked per link)
PER_CHANNEL_OPS = UNIT_OPS | {"avgpool2d", "avgpool1d", "clip"}
WEIGHT_NODES = WEIGHTED


class Transformation(Protocol):
    def apply(self, bundle: Bundle) -> Bundle: ...


def _n_out(n) -> int:
    return n.out_features if isinstance(n, LinearNode) else n.out_channels


class RemovePrunedChannels:
    """Remove pruned output channels (``kept_outputs``) and the next layer's matching inputs.

    ``apply`` returns a new, validated bundle (the input bundle is not modified) and records
    what it removed in ``qspec.extra["removed_channels"]`` (node -> original channel count
    and kept indices); ``kept_outputs`` is cleared on the nodes it shrank.
    """

    def apply(self, bundle: Bundle) -> Bundle:
        spec = copy.deepcopy(bundle.qspec)
        out = Bundle(spec, dict(bundle.weights), dict(bundle.masks), dict(bundle.state_dict),
                     bundle.test_x, bundle.test_y, None, bundle.model_out)
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
            link = link_after(graph, i, PER_CHANNEL_OPS)
            if link.consumer is None or not _zero_stays_zero(graph, link):
                continue  # output layer, a join, fan-out or a channel-mixing op follows: leave in place
            self._check_zero(out, n, kept, C)
            n.kept_outputs = None
            remove_units(out, graph, i, link, kept)
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


def _zero_stays_zero(graph, link) -> bool:
    """Every clip between producer and consumer maps 0 to 0."""
    return all(float(graph[t].lo) <= 0.0 <= float(graph[t].hi) for t in link.between if graph[t].op == "clip")
