"""Graph surgery on a bundle's graph, shared by the exact transformations of the compiler
(mask folding, dead-unit removal) and of DJPQ (pruned-channel removal).

Links follow node inputs and are taken only along chains in which every value has exactly
one reader, between ungrouped weight layers: a channel that an add, a concat, a depthwise
conv or a second reader also sees is never touched.

A *unit* is a Dense output feature or a Conv output channel. Between a producer (a weight
node) and its consumer (the next weight node) a unit travels through per-unit ops
(``relu``, ``quantize``, ``mask``, ``maxpool2d``, ...: unit ``u`` stays unit ``u`` and 0 stays
0) and at most one ``flatten`` (channel ``c`` of a ``[C, H, W]`` map becomes features
``c*H*W ... c*H*W + H*W - 1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops import RULES
from .io import Bundle
from .schema import Conv2dNode, LinearNode, Node, consumers

#: per-unit ops between a producer and the next layer: unit u stays unit u, 0 stays 0 (the
#: op rules with ``per_unit``: relu, quantize, mask, maxpool2d, maxpool1d)
UNIT_OPS = {op for op, r in RULES.items() if r.per_unit}
WEIGHTED = (LinearNode, Conv2dNode)


@dataclass
class Link:
    """producer -> (unit ops) -> [flatten] -> consumer, along the unit (feature/channel) axis."""

    producer: int | None
    consumer: int | None
    between: list[int]  # indices strictly between (unit ops and maybe one flatten)
    block: int = 1  # consumer input features per unit (H*W when a flatten sits in between)


def _weighted(n: Node | None) -> bool:
    """A Dense / ungrouped Conv node (units map one to one onto its rows)."""
    return isinstance(n, WEIGHTED) and getattr(n, "groups", 1) == 1


def _index(graph: list[Node]):
    idx = {n.name: i for i, n in enumerate(graph)}
    cons = consumers(graph)
    return idx, cons


def _single_reader(graph, idx, cons, i):
    """Index of the only node reading node ``i``'s value, else None."""
    c = cons[graph[i].name]
    return idx[c[0].name] if len(c) == 1 else None


def _forward(graph, idx, cons, i, unit_ops):
    """Walk from node ``i`` through single-reader unit ops and at most one flatten:
    (consumer index or None, indices passed, block)."""
    passed, block = [], 1
    k = _single_reader(graph, idx, cons, i)
    while k is not None and (graph[k].op in unit_ops or (graph[k].op == "flatten" and block == 1)):
        if graph[k].op == "flatten":
            block = int(np.prod(graph[k].in_shape[1:])) if len(graph[k].in_shape) > 1 else 0
        passed.append(k)
        k = _single_reader(graph, idx, cons, k)
    block = max(block, 1)
    consumer = k if k is not None and _weighted(graph[k]) else None
    if consumer is not None and isinstance(graph[consumer], Conv2dNode) and \
            any(graph[t].op == "flatten" for t in passed):
        consumer = None
    return consumer, passed, block


def find_link(graph: list[Node], i: int) -> Link:
    """The producer before and the consumer after node ``i`` (a unit op), along a chain in
    which every node has one reader (a value read elsewhere is never touched)."""
    idx, cons = _index(graph)
    back = []
    j = idx.get(graph[i].inputs[0]) if graph[i].inputs else None
    while j is not None and graph[j].op in UNIT_OPS and len(cons[graph[j].name]) == 1:
        back.append(j)
        j = idx.get(graph[j].inputs[0])
    producer = j if j is not None and _weighted(graph[j]) and len(cons[graph[j].name]) == 1 else None
    if producer is None:
        back = []
    consumer, fwd, block = _forward(graph, idx, cons, i, UNIT_OPS)
    if consumer is None:
        fwd = []
    return Link(producer, consumer, sorted(back + fwd), block)


def link_after(graph: list[Node], pi: int, unit_ops=UNIT_OPS) -> Link:
    """The consumer reached from producer ``pi`` across single-reader ``unit_ops`` and at
    most one flatten."""
    idx, cons = _index(graph)
    if not _weighted(graph[pi]):
        return Link(pi, None, [], 1)
    consumer, passed, block = _forward(graph, idx, cons, pi, unit_ops)
    return Link(pi, consumer, passed, block)


def consumer_cols(link: Link, units) -> np.ndarray:
    units = np.asarray(units, dtype=int)
    if link.block == 1:
        return units
    return (units[:, None] * link.block + np.arange(link.block)[None, :]).ravel()


def refresh_counts(bundle: Bundle, n) -> None:
    w = bundle.weight(n.name)
    n.nonzeros = int(np.count_nonzero(w))
    n.weight_sparsity = float(np.mean(w == 0)) if w.size else 0.0


def remove_units(b: Bundle, g: list[Node], pi: int, link: Link, keep) -> None:
    """Keep only units ``keep`` of producer ``g[pi]``: its rows, bias and per-channel
    fraction bits, the nodes between (shapes, masks) and the consumer's matching inputs.
    ``p.kept_outputs`` records the original indices kept. In place on ``b``."""
    keep = np.asarray(keep, dtype=int)
    p, c = g[pi], g[link.consumer]
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
    if p.weight is not None and p.weight.per_channel:  # per-channel formats follow their rows
        p.weight.frac = [p.weight.frac[int(i)] for i in keep]
    p.out_shape = [k] + list(p.out_shape[1:])
    refresh_counts(b, p)
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
        wc = wc[:, consumer_cols(link, keep)]
        c.in_features = wc.shape[1]
        c.in_shape = [wc.shape[1]]
    else:
        wc = wc[:, keep]
        c.in_channels = k
        c.in_shape = [k] + list(c.in_shape[1:])
    b.weights[f"{c.name}.weight"] = wc
    refresh_counts(b, c)
