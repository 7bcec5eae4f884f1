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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..bundle.schema import GRAPH_INPUT, Node, QuantNode, consumers, sequential_inputs
from ..errors import BundleError, UnsupportedLayerError
from ..fixedpoint import (FixedFormat, accumulator_format, ceil_log2, code_range, format_for_codes,
                          widen_to_cover)
from ..registry import Registry

#: ops that quantization commutes with (monotone, 0 -> 0, elementwise or a selection)
COMMUTING = {"relu", "mask", "maxpool2d", "maxpool1d", "flatten", "pixel_shuffle", "clip"}
PRODUCERS = {"linear", "conv2d", "conv1d", "add", "scale_shift"}
#: ops whose hls4ml/qsp implementation casts its output to ``result`` (so a quantize can fold)
CASTING = {"linear", "conv2d", "conv1d", "relu", "mask", "maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d",
           "pixel_shuffle", "requant", "add",
           "concat", "clip", "scale_shift", "leaky_relu"}
#: hls4ml's class of each deploy layer (for the table and the estimator)
HLS_CLASS = {"linear": "Dense", "conv2d": "Conv2D", "conv1d": "Conv1D", "relu": "Activation", "mask": "QspMask",
             "maxpool2d": "Pooling2D", "avgpool2d": "Pooling2D", "maxpool1d": "Pooling1D", "avgpool1d": "Pooling1D",
             "flatten": "Reshape",
             "pixel_shuffle": "QspDepthToSpace", "requant": "QspRequant", "input": "Input",
             "add": "Merge", "concat": "Concatenate", "leaky_relu": "LeakyReLU", "clip": "QspClip", "scale_shift": "QspScaleShift",
             "dwconv2d": "DepthwiseConv2D", "gconv2d": "QspGroupedConv2d"}


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
def weight_format(node) -> FixedFormat:
    return widen_to_cover(node.weight.formats())


def nonzero_fan_in(node, w: np.ndarray) -> int:
    """The largest number of nonzero weights feeding one output."""
    return int(np.max(np.count_nonzero(w.reshape(w.shape[0], -1), axis=1))) if w.size else 0


def relu_format(f: FixedFormat) -> FixedFormat:
    """Exact type of max(x, 0) for x of format f."""
    if not f.signed or f.bits < 2:
        return f
    return FixedFormat(f.bits - 1, f.frac, False, f.rounding)


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
        while j is not None and j.op in COMMUTING and j.name not in post and len(cons[j.name]) == 1:
            chain.append(j)
            j = by_name.get(j.inputs[0])
        if j is not None and j.op in PRODUCERS and j.name not in post and len(cons[j.name]) == 1:
            for k in [j] + chain:
                post[k.name] = (n.format, n.name)
            post[n.name] = None  # hoisted away
        else:
            post[n.name] = (n.format, n.name)  # standalone
    return post


# ---------------------------------------------------------------------------- handlers
Handler = Callable[["_State", Node, "FixedFormat | None"], LayerPrecision]
_HANDLERS: dict[str, Handler] = Registry("precision handler")
handles = _HANDLERS.register


@dataclass
class _State:
    bundle: object
    cur: FixedFormat  # the first input's format
    ins: list = field(default_factory=list)  # every input's format


def _finish(lp: LayerPrecision, exact: FixedFormat, post) -> LayerPrecision:
    if post is not None:
        lp.result, lp.result_rounds, lp.post = post[0], True, post[0]
        lp.folded.append(post[1])
    else:
        lp.result = exact
    return lp


@handles("linear", "conv2d", "conv1d")
def _weight_layer(st: _State, n, post):
    w = st.bundle.weight(n.name)
    wf = weight_format(n)
    fan_in = int(np.prod(w.shape[1:]))
    acc = accumulator_format(st.cur, wf, fan_in, n.bias, nonzero_fan_in=nonzero_fan_in(n, w))
    lp = LayerPrecision(n.name, n.op, acc, weight=wf, bias=n.bias, accum=acc, node=n.name)
    if n.op == "conv2d" and n.groups > 1:
        lp.hls_class = HLS_CLASS["dwconv2d" if n.depthwise and n.in_channels == n.out_channels else "gconv2d"]
    if n.bias is None:  # hls4ml adds a zero bias; give it a 1-bit type
        lp.bias = FixedFormat(1, 0, True)
    return _finish(lp, acc, post)


@handles("relu")
def _relu(st, n, post):
    return _finish(LayerPrecision(n.name, n.op, st.cur, node=n.name), relu_format(st.cur), post)


@handles("clip")
def _clip(st, n, post):
    c = st.cur
    lo, hi = (int(round(v * 2 ** c.frac)) for v in (n.lo, n.hi))
    exact = format_for_codes(max(lo, c.int_min), min(hi, c.int_max), c.frac)
    return _finish(LayerPrecision(n.name, n.op, exact, node=n.name), exact, post)


@handles("leaky_relu")
def _leaky(st, n, post):
    """hls4ml's LeakyReLU (ParametrizedActivation): x above 0, alpha * x below (product at
    full width), one cast to result; the slope is on the ``param`` grid already."""
    c, pf = st.cur, n.param.frac
    a = int(round(float(n.slope) * 2 ** pf))
    lo, hi = (c.int_min * a, c.int_max << pf) if c.signed else (0, c.int_max << pf)
    exact = format_for_codes(min(lo, 0), hi, c.frac + pf)
    lp = LayerPrecision(n.name, n.op, exact, node=n.name)
    lp.param = n.param
    return _finish(lp, exact, post)


@handles("add")
def _add(st, n, post):
    frac = max(f.frac for f in st.ins)
    lo = sum(code_range(f, frac)[0] for f in st.ins)
    hi = sum(code_range(f, frac)[1] for f in st.ins)
    exact = format_for_codes(lo, hi, frac)
    return _finish(LayerPrecision(n.name, n.op, exact, node=n.name), exact, post)


@handles("concat")
def _concat(st, n, post):
    frac = max(f.frac for f in st.ins)
    lo = min(code_range(f, frac)[0] for f in st.ins)
    hi = max(code_range(f, frac)[1] for f in st.ins)
    exact = format_for_codes(lo, hi, frac)
    return _finish(LayerPrecision(n.name, n.op, exact, node=n.name), exact, post)


@handles("scale_shift")
def _scale_shift(st, n, post):
    c, sf, bf = st.cur, n.weight, n.bias
    sc = np.abs(st.bundle.weight(n.name)) * 2.0 ** sf.frac
    frac = max(c.frac + sf.frac, bf.frac)
    xmax = max(abs(c.int_min), abs(c.int_max))
    bound = int(np.max(sc)) * xmax << (frac - c.frac - sf.frac)
    bound += max(abs(bf.int_min), abs(bf.int_max)) << (frac - bf.frac)
    exact = format_for_codes(-bound, bound, frac)
    lp = LayerPrecision(n.name, n.op, exact, weight=sf, bias=bf, node=n.name, weight_key="scale")
    return _finish(lp, exact, post)


@handles("mask", "flatten", "pixel_shuffle")
def _same(st, n, post):
    return _finish(LayerPrecision(n.name, n.op, st.cur, node=n.name), st.cur, post)


@handles("maxpool2d", "maxpool1d")
def _maxpool(st, n, post):
    lp = _finish(LayerPrecision(n.name, n.op, st.cur, node=n.name), st.cur, post)
    lp.accum = lp.result
    return lp


@handles("avgpool2d", "avgpool1d")
def _avgpool(st, n, post):
    cnt = int(np.prod(n.kernel_size))
    lg = ceil_log2(cnt)
    c = st.cur
    if post is None:
        if 2 ** lg != cnt:
            raise UnsupportedLayerError(
                f"node {n.name!r} ({n.op}): a {n.kernel_size} window mean is not a fixed-point value; "
                "quantize its output (add a quantizer after the pooling) to compile it")
        exact = FixedFormat(c.bits + lg, c.frac + lg, c.signed)
        # the window sum needs lg more integer bits than the mean (hls4ml sums in accum)
        acc = FixedFormat(c.bits + 2 * lg, c.frac + lg, c.signed)
    else:
        # the window sum goes to accum, is divided keeping accum's fraction bits (truncation
        # toward zero), then cast to result: exact when accum keeps enough fraction bits
        frac = (c.frac + lg) if 2 ** lg == cnt else max(c.frac, post[0].frac + 1) + lg
        acc = FixedFormat(c.integer + (0 if c.signed else 1) + lg + frac, frac, True)  # + a sign bit for unsigned input
        exact = acc
    lp = _finish(LayerPrecision(n.name, n.op, exact, accum=acc, node=n.name), exact, post)
    return lp


@handles("requant")
def _requant(st, n, post):
    # a standalone quantize node: always has post
    return _finish(LayerPrecision(n.name, "requant", st.cur, node=n.name), st.cur, post)


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
        if n.op == "flatten" and layer_of[src] == "input" and not layers and len(cons[src]) == 1:
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
            if prev is not None and prev.op in CASTING and prev.post is None and len(cons[src]) == 1 \
                    and prev.name == src:
                # fold into the cast of the layer before
                prev.result, prev.result_rounds, prev.post = n.format, True, n.format
                prev.folded.append(n.name)
                if prev.op in ("avgpool2d", "avgpool1d"):  # its accumulator depends on the rounding
                    new = _avgpool(_State(bundle, prev.input_format), graph[[g.name for g in graph].index(src)],
                                   (n.format, n.name))
                    new.input_format, new.inputs = prev.input_format, prev.inputs
                    layers[layers.index(prev)] = by_layer[prev.name] = new
                fmt[n.name], layer_of[n.name] = n.format, prev.name
                continue
            lp = _requant(_State(bundle, fmt[src]), n, (n.format, n.name))
            lp.input_format, lp.node, lp.post = fmt[src], n.name, None  # its own output is the reference
            lp.inputs = [layer_of[src]]
            layers.append(lp)
            by_layer[lp.name] = lp
            fmt[n.name], layer_of[n.name] = n.format, n.name
            continue
        handler = _HANDLERS.get(n.op)
        if handler is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} is not supported by qsp-compile "
                                        f"(supported: {sorted(_HANDLERS)})")
        ins = [fmt[x] for x in n.inputs]
        p = posts.get(n.name)
        reader = cons[n.name][0] if len(cons[n.name]) == 1 else None
        while reader is not None and reader.op in COMMUTING and len(cons[reader.name]) == 1:
            reader = cons[reader.name][0]  # a quantize behind flatten/relu/... still folds here
        if p is None and n.op in CASTING and isinstance(reader, QuantNode) and posts.get(reader.name) is not None:
            # the quantize node that alone reads this casting layer folds into its cast
            p = posts[reader.name]
            posts[reader.name] = None
        lp = handler(_State(bundle, ins[0], ins), n, p)
        lp.input_format = ins[0]
        lp.inputs = [layer_of[x] for x in n.inputs]
        layers.append(lp)
        by_layer[lp.name] = lp
        fmt[n.name], layer_of[n.name] = lp.result, n.name
    plan.output = layer_of[graph[-1].name]
    return plan
