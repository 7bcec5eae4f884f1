"""Exact graph transformations applied to a bundle before it goes to hls4ml.

Each is a :class:`Transformation` with ``apply(bundle) -> Bundle`` (a new bundle; the
input is left untouched) and a log of what it changed; :func:`run` composes named steps.
Every one keeps the graph's final outputs bit-identical (verification checks that too):

``fold_masks``
    an activation mask that zeros whole Dense input features or whole conv channels is
    folded into the weights on both sides: the producer's rows and biases of those units are
    zeroed (its output there becomes 0, which relu / quantize / masks / max-pooling keep 0)
    and the consumer's weights reading them are zeroed. The mask keeps only its other zeros
    (and goes away when none are left).
``remove_dead``
    a unit (feature / channel) between a producer and a consumer that is never read (all the
    consumer's weights on it are zero) or is always 0 (the producer's row and bias are all
    zero) is removed from both layers and from the masks in between.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..bundle.io import Bundle
from ..bundle.schema import Conv2dNode, LinearNode, Node

#: per-unit ops between a producer and the next layer: unit u stays unit u, 0 stays 0
UNIT_OPS = {"relu", "quantize", "mask", "maxpool2d"}
WEIGHTED = (LinearNode, Conv2dNode)


@dataclass
class Link:
    """producer -> (unit ops) -> [flatten] -> consumer, along the unit (feature/channel) axis."""

    producer: int | None
    consumer: int | None
    between: list[int]  # indices strictly between (unit ops and maybe one flatten)
    block: int = 1  # consumer input features per unit (H*W when a flatten sits in between)


def find_link(graph: list[Node], i: int) -> Link:
    """The producer before and the consumer after node ``i`` (a unit op)."""
    j = i - 1
    while j >= 0 and graph[j].op in UNIT_OPS:
        j -= 1
    producer = j if j >= 0 and isinstance(graph[j], WEIGHTED) else None
    k, block = i + 1, 1
    while k < len(graph) and (graph[k].op in UNIT_OPS or (graph[k].op == "flatten" and block == 1)):
        if graph[k].op == "flatten":
            block = int(np.prod(graph[k].in_shape[1:])) if len(graph[k].in_shape) > 1 else 1
        k += 1
    consumer = k if k < len(graph) and isinstance(graph[k], WEIGHTED) else None
    if consumer is not None and block > 1 and not isinstance(graph[consumer], LinearNode):
        consumer = None
    lo = producer if producer is not None else i
    hi = consumer if consumer is not None else i
    between = [t for t in range(lo + 1, hi) if t != i] + ([i] if lo < i < hi else [])
    return Link(producer, consumer, sorted(set(between)), block)


def link_after(graph: list[Node], pi: int) -> Link:
    """The consumer reached from producer ``pi`` across unit ops and at most one flatten."""
    k, block = pi + 1, 1
    while k < len(graph) and (graph[k].op in UNIT_OPS or (graph[k].op == "flatten" and block == 1)):
        if graph[k].op == "flatten":
            block = int(np.prod(graph[k].in_shape[1:])) if len(graph[k].in_shape) > 1 else 1
            if block == 1:
                block = 0  # a flatten of a 1-D value: count it as seen
        k += 1
    block = max(block, 1)
    consumer = k if k < len(graph) and isinstance(graph[k], WEIGHTED) else None
    if consumer is not None and isinstance(graph[consumer], Conv2dNode) and any(
            graph[t].op == "flatten" for t in range(pi + 1, k)):
        consumer = None
    return Link(pi, consumer, list(range(pi + 1, k)), block)


def _consumer_cols(link: Link, units) -> np.ndarray:
    units = np.asarray(units, dtype=int)
    if link.block == 1:
        return units
    return (units[:, None] * link.block + np.arange(link.block)[None, :]).ravel()


def _refresh(bundle: Bundle, n) -> None:
    w = bundle.weight(n.name)
    n.nonzeros = int(np.count_nonzero(w))
    n.weight_sparsity = float(np.mean(w == 0)) if w.size else 0.0


def _copy(bundle: Bundle) -> Bundle:
    return Bundle(copy.deepcopy(bundle.qspec), {k: v.copy() for k, v in bundle.weights.items()},
                  {k: v.copy() for k, v in bundle.masks.items()}, bundle.state_dict, bundle.test_x,
                  bundle.test_y, bundle.path)


@dataclass
class Transformation:
    name: str = ""
    log: list[str] = field(default_factory=list)

    def apply(self, bundle: Bundle) -> Bundle:
        raise NotImplementedError


class FoldMasks(Transformation):
    def __init__(self):
        super().__init__("fold_masks")

    @staticmethod
    def whole_units(m: np.ndarray) -> np.ndarray:
        """Units (features of a 1-D mask, channels of a C x H x W mask) that are all zero."""
        if m.ndim == 1:
            return np.nonzero(m == 0)[0]
        return np.nonzero(~m.reshape(m.shape[0], -1).any(axis=1))[0]

    def apply(self, bundle: Bundle) -> Bundle:
        b = _copy(bundle)
        g = b.qspec.graph
        drop = []
        for i, n in enumerate(g):
            if n.op != "mask":
                continue
            m = b.mask(n.name)
            units = self.whole_units(m)
            if units.size == 0:
                continue
            link = find_link(g, i)
            if link.producer is None and link.consumer is None:
                continue
            if link.consumer is not None:
                c = g[link.consumer]
                w = b.weights[f"{c.name}.weight"]
                w[:, _consumer_cols(link, units)] = 0
                _refresh(b, c)
            if link.producer is not None:
                p = g[link.producer]
                b.weights[f"{p.name}.weight"][units] = 0
                if f"{p.name}.bias" in b.weights:
                    b.weights[f"{p.name}.bias"][units] = 0
                _refresh(b, p)
            m = m.copy()
            m[units] = 1
            self.log.append(f"{n.name}: {units.size} whole {'features' if m.ndim == 1 else 'channels'} folded into "
                            + " and ".join(g[k].name for k in (link.producer, link.consumer) if k is not None))
            if m.all():
                drop.append(i)
                del b.masks[f"{n.name}.mask"]
                self.log.append(f"{n.name}: removed (no partial zeros left)")
            else:
                b.masks[f"{n.name}.mask"] = m
                n.sparsity = float(np.mean(m == 0))
        b.qspec.graph = [n for i, n in enumerate(g) if i not in drop]
        return b.validate()


class RemoveDead(Transformation):
    def __init__(self):
        super().__init__("remove_dead")

    def apply(self, bundle: Bundle) -> Bundle:
        b = _copy(bundle)
        g = b.qspec.graph
        for pi, p in enumerate(g):
            if not isinstance(p, WEIGHTED) or pi + 1 >= len(g):
                continue
            link = link_after(g, pi)
            if link.consumer is None:
                continue
            c = g[link.consumer]
            wp, wc = b.weight(p.name), b.weight(c.name)
            bp = b.bias(p.name)
            units = wp.shape[0]
            if isinstance(c, LinearNode):
                unread = ~wc.reshape(wc.shape[0], units, -1).any(axis=(0, 2))
            else:
                unread = ~wc.any(axis=(0, 2, 3))
            zero_out = ~wp.reshape(units, -1).any(axis=1) & (bp == 0 if bp is not None else True)
            dead = np.nonzero(unread | zero_out)[0]
            if dead.size == 0:
                continue
            if dead.size == units:
                dead = dead[1:]  # keep one unit
            keep = np.setdiff1d(np.arange(units), dead)
            self._remove(b, g, p, c, link, keep)
            self.log.append(f"{p.name} -> {c.name}: removed {dead.size} of {units} dead "
                            f"{'features' if isinstance(p, LinearNode) else 'channels'}")
        return b.validate()

    @staticmethod
    def _remove(b: Bundle, g, p, c, link: Link, keep: np.ndarray) -> None:
        k = len(keep)
        b.weights[f"{p.name}.weight"] = b.weight(p.name)[keep]
        if b.bias(p.name) is not None:
            b.weights[f"{p.name}.bias"] = b.bias(p.name)[keep]
        orig = p.kept_outputs if p.kept_outputs is not None else list(range(p.out_shape[0]))
        p.kept_outputs = [int(orig[i]) for i in keep]
        if isinstance(p, LinearNode):
            p.out_features = k
        else:
            p.out_channels = k
        p.out_shape = [k] + list(p.out_shape[1:])
        _refresh(b, p)
        for t in link.between:
            n = g[t]
            n.in_shape = [k] + list(n.in_shape[1:])
            if n.op == "flatten":
                n.out_shape = [k * link.block]
            else:
                n.out_shape = [k] + list(n.out_shape[1:])
            if n.op == "mask":
                m = b.mask(n.name)[keep]
                b.masks[f"{n.name}.mask"] = m
                n.sparsity = float(np.mean(m == 0))
        wc = b.weight(c.name)
        if isinstance(c, LinearNode):
            wc = wc[:, _consumer_cols(link, keep)]
            c.in_features = wc.shape[1]
            c.in_shape = [wc.shape[1]]
        else:
            wc = wc[:, keep]
            c.in_channels = k
            c.in_shape = [k] + list(c.in_shape[1:])
        b.weights[f"{c.name}.weight"] = wc
        _refresh(b, c)


STEPS = {"fold_masks": FoldMasks, "remove_dead": RemoveDead}
DEFAULT_STEPS = ("fold_masks", "remove_dead")


def run(bundle: Bundle, steps=DEFAULT_STEPS) -> tuple[Bundle, list[str]]:
    """Apply the named steps in order; return the new bundle and the log."""
    log: list[str] = []
    for s in steps:
        t = STEPS[s]()
        bundle = t.apply(bundle)
        log += [f"{s}: {m}" for m in t.log]
    return bundle, log
