"""Per-layer hls4ml precision derived from the qspec, with :mod:`qsp.fixedpoint` only.

Rules (each one keeps the C++ bit-exact with the bundle's graph semantics):

* input type: the input quantize node's format, with its rounding mode and AP_SAT (the
  float -> ``input_t`` conversion then *is* the input quantizer);
* weight / bias: the trained formats (per-channel weight formats widened with
  :func:`~qsp.fixedpoint.widen_to_cover`, since hls4ml has one type per layer); the values
  are already on their grids, so the plain type is exact;
* accumulator: :func:`~qsp.fixedpoint.accumulator_format` over the input type, weight type,
  the largest per-output count of nonzero weights and the bias: no sum can overflow or
  round;
* quantize nodes fold into layers. Quantization commutes with relu, 0/1 masks, max-pooling,
  flatten and pixel shuffle (it is monotone and maps 0 to 0), so a quantize node is hoisted
  back across those to the Dense/Conv layer that produces the value: that layer's ``result``
  (and every layer in between) takes the quantizer's format with its rounding mode and
  AP_SAT. A quantize node that cannot be hoisted (after avg-pooling, after another quantize,
  ...) folds into the ``result`` cast of the layer right before it when that layer casts,
  else becomes a ``QspRequant`` layer of ours;
* where no quantize follows, ``result`` is the exact type of the value (the accumulator's
  for Dense/Conv): nothing rounds.

The graph is a DAG (schema 2): a quantize node is hoisted only along a chain whose every
node has the one consumer (a value read elsewhere keeps its exact format), and each layer
records the deploy layers its inputs come from (``inputs``). Adds and concatenations take
the exact format of their inputs (fraction bits of the finest, integer bits widened so the
sum cannot overflow); they cast, so a quantize node after them folds into them.

Layer names are the bundle's node names (hls4ml takes them from the deploy model).

This module is a driver (the folding of quantize nodes above); each op's types
(:meth:`qsp.ops.OpRule.types`) and its HLS mapping (``hls_class``, ``casting``,
``commuting``, ``producer``) are defined once, in the op's module of :mod:`qsp.ops`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..bundle.schema import GRAPH_INPUT, Node, QuantNode, consumers, sequential_inputs
from ..errors import BundleError, UnsupportedLayerError
from ..fixedpoint import FixedFormat
from ..ops import REQUANT, RULES, LayerTypes, OpRule


def _rule(op: str) -> OpRule | None:
    return REQUANT if op == "requant" else RULES.get(op)


def _flag(op: str, name: str) -> bool:
    r = _rule(op)
    return r is not None and bool(getattr(r, name))


class _HlsClasses(Mapping):
    """op -> hls4ml's class of its deploy layer (a live view of the op rules' ``hls_class``)."""

    def _all(self) -> dict[str, str]:
        return {"input": "Input", REQUANT.op: REQUANT.hls_class, **{op: r.hls_class for op, r in RULES.items()}}

    def __getitem__(self, op):
        return self._all()[op]

    def __iter__(self):
        return iter(self._all())

    def __len__(self):
        return len(self._all())


#: hls4ml's class of each deploy layer (for the table and the estimator)
HLS_CLASS = _HlsClasses()


@dataclass
class LayerPrecision:
    """One layer of the deploy model and its types."""

    name: str  # hls4ml layer name (= bundle node name)
    op: str  # bundle op, or "requant" / "input"
    result: FixedFormat
    result_rounds: bool = False  # True: the cast to result quantizes (rounding + AP_SAT)
    weight: FixedFormat | None = None
    bias: FixedFormat | None = None
    accum: FixedFormat | None = None
    #: the bundle node whose output this layer reproduces, and the quantization folded into
    #: it: expected output = post.quantize_np(emulator_trace[node]) (or the trace itself)
    node: str = ""
    post: FixedFormat | None = None
    folded: list[str] = field(default_factory=list)  # quantize nodes folded here
    input_format: FixedFormat | None = None  # type of this layer's (first) input
    #: deploy layers this layer reads ("input": the HLS input)
    inputs: list[str] = field(default_factory=list)
    weight_key: str = "weight"  # hls4ml's precision key of ``weight`` (scale_shift: "scale")
    hls_class: str = ""  # hls4ml's layer class (default: HLS_CLASS[op])
    param: FixedFormat | None = None  # LeakyReLU's slope type

    def result_type(self) -> str:
        return self.result.ap_type() if self.result_rounds else self.result.ap_type_plain()

    def hls_precision(self) -> dict[str, str]:
        p = {"result": self.result_type()}
        if self.weight is not None:
            p[self.weight_key] = self.weight.ap_type_plain()
        if self.bias is not None:
            p["bias"] = self.bias.ap_type_plain()
        if self.accum is not None:
            p["accum"] = self.accum.ap_type_plain()
        if self.param is not None:
            p["param"] = self.param.ap_type_plain()
        return p

    def expected(self, trace: dict[str, np.ndarray]) -> np.ndarray:
        v = np.asarray(trace[self.node], np.float64)
        return self.post.quantize_np(v) if self.post is not None else v


@dataclass
class PrecisionPlan:
    input: LayerPrecision
    layers: list[LayerPrecision]
    #: shape of the HLS input (no batch). Flatten nodes right after the input quantizer are a
    #: reshape done on the host (hls4ml mis-orders a channels-last input followed at once by
    #: Flatten -> Dense), so the HLS input is then the flat vector.
    input_shape: list[int] = field(default_factory=list)
    host_reshape: list[str] = field(default_factory=list)
    output: str = ""  # the deploy layer whose value is the graph output

    def by_name(self) -> dict[str, LayerPrecision]:
        return {lp.name: lp for lp in self.layers}

    def table(self) -> str:
        rows = [("layer", "class", "weight", "bias", "accum", "result", "folds")]
        for lp in [self.input] + self.layers:
            p = lp.hls_precision()
            rows.append((lp.name, lp.hls_class or HLS_CLASS.get(lp.op, lp.op), p.get(lp.weight_key, ""), p.get("bias", ""),
                         p.get("accum", ""), p["result"], ",".join(lp.folded)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers
def _hoist_targets(graph: list[Node]) -> dict[str, tuple[FixedFormat, str]]:
    """node name -> (folded quantizer format, quantize node name) for every node that a
    quantize node is hoisted into (a producer and the commuting nodes after it, each read
    by nothing else); a quantize node that cannot be hoisted maps to itself."""
    post: dict[str, tuple[FixedFormat, str]] = {}
    cons = consumers(graph)
    by_name = {n.name: n for n in graph}
    for i, n in enumerate(graph):
        if not isinstance(n, QuantNode) or i == 0:
            continue
        chain, j = [], by_name.get(n.inputs[0])
        while j is not None and _flag(j.op, "commuting") and j.name not in post and len(cons[j.name]) == 1:
            chain.append(j)
            j = by_name.get(j.inputs[0])
        if j is not None and _flag(j.op, "producer") and j.name not in post and len(cons[j.name]) == 1:
            for k in [j] + chain:
                post[k.name] = (n.format, n.name)
            post[n.name] = None  # hoisted away
        else:
            post[n.name] = (n.format, n.name)  # standalone
    return post


# ---------------------------------------------------------------------------- one layer
def _finish(lp: LayerPrecision, exact: FixedFormat, post) -> LayerPrecision:
    if post is not None:
        lp.result, lp.result_rounds, lp.post = post[0], True, post[0]
        lp.folded.append(post[1])
    else:
        lp.result = exact
    return lp


def _layer(bundle, n, r: OpRule, ins: list[FixedFormat], post) -> LayerPrecision:
    """The deploy layer of node ``n`` from its rule's types and the folded quantizer ``post``
    ((format, quantize node name) or None)."""
    t: LayerTypes = r.types(bundle, n, ins, post[0] if post is not None else None)
    lp = LayerPrecision(n.name, r.op, t.result, weight=t.weight, bias=t.bias, accum=t.accum, node=n.name,
                        weight_key=t.weight_key, hls_class=t.hls_class, param=t.param)
    lp = _finish(lp, t.result, post)
    if t.accum_is_result:
        lp.accum = lp.result
    return lp


def derive(bundle) -> PrecisionPlan:
    """The precision plan of a (validated, possibly transformed) bundle."""
    graph = sequential_inputs(list(bundle.graph))
    if not graph or not isinstance(graph[0], QuantNode) or graph[0].inputs != [GRAPH_INPUT]:
        raise BundleError("graph: the first node must be the input quantize node")
    cons = consumers(graph)
    inp_fmt = graph[0].format
    inp = LayerPrecision("input", "input", inp_fmt, result_rounds=True, node=graph[0].name, folded=[graph[0].name])
    posts = _hoist_targets(graph)
    layers: list[LayerPrecision] = []
    by_layer: dict[str, LayerPrecision] = {}
    plan = PrecisionPlan(inp, layers, list(graph[0].out_shape))
    if any(n.name == "input_copy" for n in graph):
        raise BundleError("graph: the node name 'input_copy' is reserved by qsp-compile")
    fmt = {graph[0].name: inp_fmt}  # node -> format of its value downstream
    layer_of = {graph[0].name: "input"}  # node -> deploy layer producing its value
    if len(cons[graph[0].name]) > 1:
        # hls4ml's channels-last conversion wires only one reader of the model input: give
        # the branches one layer to read (an exact copy)
        fan = LayerPrecision("input_copy", "requant", inp_fmt, node=graph[0].name, input_format=inp_fmt,
                             inputs=["input"])
        layers.append(fan)
        by_layer[fan.name] = fan
        layer_of[graph[0].name] = fan.name
    for n in graph[1:]:
        src = n.inputs[0]
        if _flag(n.op, "host_reshape") and layer_of[src] == "input" and not layers and len(cons[src]) == 1:
            plan.host_reshape.append(n.name)
            plan.input_shape = list(n.out_shape)
            fmt[n.name], layer_of[n.name] = fmt[src], "input"
            continue
        if isinstance(n, QuantNode):
            post = posts.get(n.name)
            if post is None:  # hoisted into its producer
                fmt[n.name], layer_of[n.name] = n.format, layer_of[src]
                continue
            prev = by_layer.get(layer_of[src])
            if prev is not None and _flag(prev.op, "casting") and prev.post is None and len(cons[src]) == 1 \
                    and prev.name == src:
                # fold into the cast of the layer before
                prev.result, prev.result_rounds, prev.post = n.format, True, n.format
                prev.folded.append(n.name)
                if _flag(prev.op, "post_sensitive"):  # its types depend on the rounding (avgpool's accumulator)
                    new = _layer(bundle, graph[[g.name for g in graph].index(src)], _rule(prev.op),
                                 [prev.input_format], (n.format, n.name))
                    new.input_format, new.inputs = prev.input_format, prev.inputs
                    layers[layers.index(prev)] = by_layer[prev.name] = new
                fmt[n.name], layer_of[n.name] = n.format, prev.name
                continue
            lp = _layer(bundle, n, REQUANT, [fmt[src]], (n.format, n.name))
            lp.input_format, lp.node, lp.post = fmt[src], n.name, None  # its own output is the reference
            lp.inputs = [layer_of[src]]
            layers.append(lp)
            by_layer[lp.name] = lp
            fmt[n.name], layer_of[n.name] = n.format, n.name
            continue
        rule = RULES.get(n.op)
        if rule is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} is not supported by qsp-compile "
                                        f"(supported: {sorted(RULES)})")
        ins = [fmt[x] for x in n.inputs]
        p = posts.get(n.name)
        reader = cons[n.name][0] if len(cons[n.name]) == 1 else None
        while reader is not None and _flag(reader.op, "commuting") and len(cons[reader.name]) == 1:
            reader = cons[reader.name][0]  # a quantize behind flatten/relu/... still folds here
        if p is None and rule.casting and isinstance(reader, QuantNode) and posts.get(reader.name) is not None:
            # the quantize node that alone reads this casting layer folds into its cast
            p = posts[reader.name]
            posts[reader.name] = None
        lp = _layer(bundle, n, rule, ins, p)
        lp.input_format = ins[0]
        lp.inputs = [layer_of[x] for x in n.inputs]
        layers.append(lp)
        by_layer[lp.name] = lp
        fmt[n.name], layer_of[n.name] = lp.result, n.name
    plan.output = layer_of[graph[-1].name]
    return plan
