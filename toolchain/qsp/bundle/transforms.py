"""Exact graph transformations of a bundle: bundle -> bundle, numpy and the bundle only.

qsp-compile applies them before the bundle goes to hls4ml, and qsp-estimate applies the
same ones to describe the graph qsp-compile builds (its "hardware graph"); they live in
the bundle package so that neither stage imports the other for them.

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
``flatten_last``
    an elementwise node that commutes with flatten (``relu``, ``quantize``, ``clip``) right
    after a ``flatten`` that it alone reads moves before it (repeatedly). The values are the
    same; hls4ml's io_stream flatten leaves its stream one value per word, and elementwise
    kernels after it (hls4ml's own ReLU among them) assume equal word sizes and compute
    wrong numbers there (seen: 1,100 of 2,048 ReLU values); before the flatten they are
    exact, and a quantize can then fold into the layer before.
``split_joins``
    an ``add`` / ``concat`` of more than two inputs becomes a chain of two-input ones (hls4ml
    joins two tensors at a time); exact sums and concatenations in another grouping.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..ops import RULES
from .graph import WEIGHTED, consumer_cols, find_link, link_after, refresh_counts, remove_units
from .io import Bundle
from .schema import LinearNode, drop_nodes

def _copy(bundle: Bundle) -> Bundle:
    return Bundle(copy.deepcopy(bundle.qspec), {k: v.copy() for k, v in bundle.weights.items()},
                  {k: v.copy() for k, v in bundle.masks.items()}, bundle.state_dict, bundle.test_x,
                  bundle.test_y, bundle.path, bundle.model_out)


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
                w[:, consumer_cols(link, units)] = 0
                refresh_counts(b, c)
            if link.producer is not None:
                p = g[link.producer]
                b.weights[f"{p.name}.weight"][units] = 0
                if f"{p.name}.bias" in b.weights:
                    b.weights[f"{p.name}.bias"][units] = 0
                refresh_counts(b, p)
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
        b.qspec.graph = drop_nodes(g, [g[i].name for i in drop])
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
                unread = ~wc.any(axis=(0,) + tuple(range(2, wc.ndim)))  # conv2d [O, I, kh, kw], conv1d [O, I, k]
            zero_out = ~wp.reshape(units, -1).any(axis=1) & (bp == 0 if bp is not None else True)
            dead = np.nonzero(unread | zero_out)[0]
            if dead.size == 0:
                continue
            if dead.size == units:
                dead = dead[1:]  # keep one unit
            keep = np.setdiff1d(np.arange(units), dead)
            remove_units(b, g, pi, link, keep)
            self.log.append(f"{p.name} -> {c.name}: removed {dead.size} of {units} dead "
                            f"{'features' if isinstance(p, LinearNode) else 'channels'}")
        return b.validate()

class FlattenLast(Transformation):
    #: elementwise ops a flatten moves across (the op rules with ``elementwise``: relu,
    #: quantize, clip)
    MOVABLE = tuple(op for op, r in RULES.items() if r.elementwise)

    def __init__(self):
        super().__init__("flatten_last")

    def apply(self, bundle: Bundle) -> Bundle:
        from .schema import consumers

        b = _copy(bundle)
        g = b.qspec.graph
        moved = True
        while moved:
            moved = False
            cons = consumers(g)
            for i, f in enumerate(g):
                if f.op != "flatten" or len(cons[f.name]) != 1 or f is g[-1]:
                    continue
                r = cons[f.name][0]
                if r.op not in self.MOVABLE or len(r.inputs) != 1:
                    continue
                j = g.index(r)
                # r reads f's input and takes f's place; f reads r; r's readers read f
                for n in cons[r.name]:
                    n.inputs = [f.name if x == r.name else x for x in n.inputs]
                r.inputs, f.inputs = list(f.inputs), [r.name]
                r.in_shape, r.out_shape = list(f.in_shape), list(f.in_shape)
                g[i], g[j] = r, f
                g.insert(i + 1, g.pop(j))  # keep the order topological: r, f, then the rest
                self.log.append(f"{r.name} ({r.op}) moved before {f.name} (flatten)")
                moved = True
                break
        return b.validate()


class SplitJoins(Transformation):
    """An ``add`` or ``concat`` of more than two inputs becomes a chain of two-input ones
    (``NAME_j1``, ``NAME_j2``, ..., the last keeps ``NAME``): hls4ml's Merge and Concatenate
    join two tensors. Adding exact fixed-point values in another grouping gives the same
    sum (each partial sum gets its own exact, widened format), and a concatenation is the
    concatenation of its prefix with the next input."""

    def __init__(self):
        super().__init__("split_joins")

    def apply(self, bundle: Bundle) -> Bundle:
        b = _copy(bundle)
        g = b.qspec.graph
        shapes = {"input": list(b.qspec.task.input_shape)}
        shapes.update({n.name: list(n.out_shape) for n in g})
        taken = {n.name for n in g}
        out = []
        for n in g:
            if n.op not in ("add", "concat") or len(n.inputs) <= 2:
                out.append(n)
                continue
            prev = n.inputs[0]
            chain = []
            for k, nxt in enumerate(n.inputs[1:-1], start=1):
                part = copy.deepcopy(n)
                part.name, i = f"{n.name}_j{k}", 1
                while part.name in taken:
                    i += 1
                    part.name = f"{n.name}_j{k}_{i}"
                taken.add(part.name)
                part.inputs = [prev, nxt]
                part.in_shape = list(shapes[prev])
                if n.op == "concat":
                    part.out_shape = [shapes[prev][0] + shapes[nxt][0]] + list(shapes[prev][1:])
                shapes[part.name] = list(part.out_shape)
                chain.append(part)
                prev = part.name
            n.inputs = [prev, n.inputs[-1]]
            n.in_shape = list(shapes[prev])
            out += chain + [n]
            self.log.append(f"{n.name} ({n.op} of {len(chain) + 2} inputs) split into "
                            f"{', '.join(c.name for c in chain)}, {n.name}")
        b.qspec.graph = out
        return b.validate()


STEPS = {"fold_masks": FoldMasks, "remove_dead": RemoveDead, "flatten_last": FlattenLast, "split_joins": SplitJoins}
DEFAULT_STEPS = ("split_joins", "flatten_last", "fold_masks", "remove_dead")


def run(bundle: Bundle, steps=DEFAULT_STEPS) -> tuple[Bundle, list[str]]:
    """Apply the named steps in order; return the new bundle and the log."""
    log: list[str] = []
    for s in steps:
        t = STEPS[s]()
        bundle = t.apply(bundle)
        log += [f"{s}: {m}" for m in t.log]
    return bundle, log
