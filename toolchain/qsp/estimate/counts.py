"""Exact per-node counts of a bundle for one input: formats, nonzero elements, MACs, BOPs,
adds, storage. Everything here is a count, not an estimate.

The graph is a DAG (schema 2): every node reads the nodes named in ``inputs`` (or the graph
input). Each node's state (format and "alive" map) is kept by name, so fan-out and joins
(``add``, ``concat``) read their producers' states, never "the node before".

* Formats come from ONE place, the emulator's range analysis
  (:func:`qsp.verify.emulate.analyze`): a ``quantize`` node's tensor has the node's format;
  every other tensor has ``TensorInfo`` (frac, bound, signed) turned into bits (so ReLU
  outputs are unsigned, avg-pooling keeps the emulator's fraction bits, add widens by the
  carries it can produce). The one exception is the output of a weight layer
  (``linear``/``conv2d``/``scale_shift``): it is the layer's accumulator, typed with
  :func:`~qsp.fixedpoint.accumulator_format` (the type qsp-compile builds and
  :mod:`qsp.deploy` packs), which is also the adder width of the resource model.
* A static "alive" map per element: ``False`` where the element is zero for *every*
  input. Masks clear elements, pooling keeps an output alive when any element of its window
  is, flatten/pixel-shuffle move them, ``add`` ORs its inputs, ``concat`` stacks them,
  ``clip`` keeps them when ``lo <= 0 <= hi`` (else every element becomes a nonzero
  constant), ``scale_shift`` keeps an element alive when its channel's scale is nonzero
  and it is, or its channel's shift is nonzero, and a ``linear``/``conv2d`` output is alive
  unless all of its weights that meet an alive input are zero and its bias is zero. ReLU
  zeros depend on the data and are not counted as static zeros.

Per-op rules (each defined once, next to the op: :meth:`qsp.ops.OpRule.counts`, e.g.
:mod:`qsp.ops.weight` for ``linear`` / ``conv2d`` / ``conv1d``, :mod:`qsp.ops.join` for
``add`` / ``concat``, :mod:`qsp.ops.scale_shift`); this module is the driver that walks the
graph and keeps each node's state by name. In short:

* ``linear``: MACs ``in x out``; counted MACs: nonzero weight x alive input.
* ``conv2d`` with ``groups`` g: dense MACs ``out_ch x OH x OW x (in_ch / g) x kh x kw``;
  ``conv1d`` / ``maxpool1d`` / ``avgpool1d``: as the 2-D op on ``[C, 1, L]``.
* ``scale_shift``: a weight layer with ``fan_in`` 1, MACs = elements.
* ``add`` of k inputs: 0 MACs and 0 BOPs, ``adds`` = elements x (k - 1).
* every other op: 0 MACs, 0 adds.

BOPs = MACs x b_w x b_a with b_a the bits of the layer's input format.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..bundle.footprint import point_mask
from ..bundle.schema import GRAPH_INPUT, QuantNode, consumers, producers, sequential_inputs
from ..errors import UnsupportedLayerError
from ..fixedpoint import FixedFormat
from ..ops import RULES, Alive, WeightInfo
from ..ops.base import FLOAT_BITS, csd_digits

__all__ = ["FLOAT_BITS", "csd_digits", "WeightInfo", "NodeCounts", "GraphCounts", "tensor_formats", "count_graph"]


@dataclass
class NodeCounts:
    name: str
    op: str
    in_shape: list[int]
    out_shape: list[int]
    out_format: FixedFormat
    out_elements: int
    out_nonzero: int  # statically alive output elements
    in_nonzero: int  # of the first input
    quant_point: bool  # a quantize node: counted in the paper's activation footprint
    masked: bool = False  # its elements are zeroed by an adjacent mask (quantize points)
    weight: WeightInfo | None = None
    pool: int = 0  # window size of a pooling node
    inputs: list[str] = field(default_factory=list)  # producer names ("input": the graph input)
    adds: int = 0  # elementwise additions outside MACs (``add``: elements x (inputs - 1))
    #: the bundle graph node (kernel, stride, padding: what the io_stream model reads)
    node: object = field(default=None, repr=False, compare=False)


@dataclass
class GraphCounts:
    nodes: list[NodeCounts] = field(default_factory=list)
    #: bits of one graph-input value (the input quantizer's format: hls4ml's ``input_t``)
    input_bits: int = FLOAT_BITS

    def weight_nodes(self) -> list[NodeCounts]:
        return [n for n in self.nodes if n.weight is not None]


# ----------------------------------------------------------------------------- formats
def tensor_formats(bundle) -> dict[str, FixedFormat]:
    """node name -> the format of its output tensor, from the emulator's range analysis
    (:func:`qsp.verify.emulate.analyze`): a quantize node's own format, else
    ``TensorInfo`` (frac, bound, signed) as a format of ``TensorInfo.bits`` bits."""
    from ..verify.emulate import analyze  # numpy only; verify imports nothing of estimate

    out = {}
    for s in analyze(bundle):
        f = s.params.get("format") if isinstance(s.node, QuantNode) else None
        out[s.node.name] = f if f is not None else FixedFormat(s.out_info.bits, s.out_info.frac,
                                                               s.out_info.signed, "floor")
    return out


def count_graph(bundle) -> GraphCounts:
    """Counts for every node of ``bundle`` (a :class:`~qsp.bundle.Bundle`), following each
    node's ``inputs``."""
    graph = sequential_inputs(bundle.qspec.graph)
    if not graph:
        return GraphCounts()
    fmts = tensor_formats(bundle)
    prod, cons = producers(graph), consumers(graph)
    first = graph[0]
    in_fmt = first.format if isinstance(first, QuantNode) else FixedFormat(FLOAT_BITS, 16)
    states: dict[str, Alive] = {GRAPH_INPUT: Alive(in_fmt, np.ones(first.in_shape, bool))}
    out = GraphCounts(input_bits=in_fmt.bits)
    for i, n in enumerate(graph):
        rule = RULES.get(n.op)
        if rule is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no estimator handler "
                                        f"(supported: {sorted(RULES)})")
        ins = [states[x] for x in n.inputs]
        r = rule.counts(n, ins, bundle)
        fmt = r.weight.acc_format if r.weight is not None else fmts[n.name]
        st = states[n.name] = Alive(fmt, r.alive)
        out.nodes.append(NodeCounts(n.name, n.op, list(n.in_shape), list(n.out_shape), st.fmt,
                                    int(st.alive.size), int(st.alive.sum()), int(ins[0].alive.sum()),
                                    isinstance(n, QuantNode),
                                    isinstance(n, QuantNode) and point_mask(graph, i, prod, cons) is not None,
                                    r.weight, rule.pool_window(n), list(n.inputs), int(r.adds), n))
    return out
