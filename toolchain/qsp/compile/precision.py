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

Layer names are the bundle's node names (hls4ml takes them from the deploy model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..bundle.schema import Node, QuantNode
from ..errors import BundleError, UnsupportedLayerError
from ..fixedpoint import FixedFormat, accumulator_format, ceil_log2, widen_to_cover
from ..registry import Registry

#: ops that quantization commutes with (monotone, 0 -> 0, elementwise or a selection)
COMMUTING = {"relu", "mask", "maxpool2d", "flatten", "pixel_shuffle"}
PRODUCERS = {"linear", "conv2d"}
#: ops whose hls4ml/qsp implementation casts its output to ``result`` (so a quantize can fold)
CASTING = {"linear", "conv2d", "relu", "mask", "maxpool2d", "avgpool2d", "pixel_shuffle", "requant"}
#: hls4ml's class of each deploy layer (for the table and the estimator)
HLS_CLASS = {"linear": "Dense", "conv2d": "Conv2D", "relu": "Activation", "mask": "QspMask",
             "maxpool2d": "Pooling2D", "avgpool2d": "Pooling2D", "flatten": "Reshape",
             "pixel_shuffle": "QspDepthToSpace", "requant": "QspRequant", "input": "Input"}


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
    input_format: FixedFormat | None = None  # type of this layer's input

    def result_type(self) -> str:
        return self.result.ap_type() if self.result_rounds else self.result.ap_type_plain()

    def hls_precision(self) -> dict[str, str]:
        p = {"result": self.result_type()}
        if self.weight is not None:
            p["weight"] = self.weight.ap_type_plain()
        if self.bias is not None:
            p["bias"] = self.bias.ap_type_plain()
        if self.accum is not None:
            p["accum"] = self.accum.ap_type_plain()
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

    def by_name(self) -> dict[str, LayerPrecision]:
        return {lp.name: lp for lp in self.layers}

    def table(self) -> str:
        rows = [("layer", "class", "weight", "bias", "accum", "result", "folds")]
        for lp in [self.input] + self.layers:
            p = lp.hls_precision()
            rows.append((lp.name, HLS_CLASS.get(lp.op, lp.op), p.get("weight", ""), p.get("bias", ""),
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


def _hoist_targets(graph: list[Node]) -> dict[int, tuple[FixedFormat, str]]:
    """node index -> (folded quantizer format, quantize node name) for every node that a
    quantize node is hoisted into (producer and the commuting nodes after it); the quantize
    nodes that cannot be hoisted are returned with index of themselves."""
    post: dict[int, tuple[FixedFormat, str]] = {}
    for i, n in enumerate(graph):
        if not isinstance(n, QuantNode) or i == 0:
            continue
        j = i - 1
        while j >= 0 and graph[j].op in COMMUTING and j not in post:
            j -= 1
        if j >= 0 and graph[j].op in PRODUCERS and j not in post:
            for k in range(j, i):
                post[k] = (n.format, n.name)
        else:
            post[i] = (n.format, n.name)  # standalone
    return post


# ---------------------------------------------------------------------------- handlers
Handler = Callable[["_State", Node, "FixedFormat | None"], LayerPrecision]
_HANDLERS: dict[str, Handler] = Registry("precision handler")
handles = _HANDLERS.register


@dataclass
class _State:
    bundle: object
    cur: FixedFormat


def _finish(lp: LayerPrecision, exact: FixedFormat, post) -> LayerPrecision:
    if post is not None:
        lp.result, lp.result_rounds, lp.post = post[0], True, post[0]
        lp.folded.append(post[1])
    else:
        lp.result = exact
    return lp


@handles("linear", "conv2d")
def _weight_layer(st: _State, n, post):
    w = st.bundle.weight(n.name)
    wf = weight_format(n)
    fan_in = int(np.prod(w.shape[1:]))
    acc = accumulator_format(st.cur, wf, fan_in, n.bias, nonzero_fan_in=nonzero_fan_in(n, w))
    lp = LayerPrecision(n.name, n.op, acc, weight=wf, bias=n.bias, accum=acc, node=n.name)
    if n.bias is None:  # hls4ml adds a zero bias; give it a 1-bit type
        lp.bias = FixedFormat(1, 0, True)
    return _finish(lp, acc, post)


@handles("relu")
def _relu(st, n, post):
    return _finish(LayerPrecision(n.name, n.op, st.cur, node=n.name), relu_format(st.cur), post)


@handles("mask", "flatten", "pixel_shuffle")
def _same(st, n, post):
    return _finish(LayerPrecision(n.name, n.op, st.cur, node=n.name), st.cur, post)


@handles("maxpool2d")
def _maxpool(st, n, post):
    lp = _finish(LayerPrecision(n.name, n.op, st.cur, node=n.name), st.cur, post)
    lp.accum = lp.result
    return lp


@handles("avgpool2d")
def _avgpool(st, n, post):
    cnt = int(np.prod(n.kernel_size))
    lg = ceil_log2(cnt)
    c = st.cur
    if post is None:
        if 2 ** lg != cnt:
            raise UnsupportedLayerError(
                f"node {n.name!r} (avgpool2d): a {n.kernel_size} window mean is not a fixed-point value; "
                "quantize its output (add a quantizer after the pooling) to compile it")
        exact = FixedFormat(c.bits + lg, c.frac + lg, c.signed)
        acc = exact
    else:
        # the window sum goes to accum, is divided keeping accum's fraction bits (truncation
        # toward zero), then cast to result: exact when accum keeps enough fraction bits
        frac = (c.frac + lg) if 2 ** lg == cnt else max(c.frac, post[0].frac + 1) + lg
        acc = FixedFormat(c.integer + lg + frac, frac, True)
        exact = acc
    lp = _finish(LayerPrecision(n.name, n.op, exact, accum=acc, node=n.name), exact, post)
    return lp


@handles("requant")
def _requant(st, n, post):
    # a standalone quantize node: always has post
    return _finish(LayerPrecision(n.name, "requant", st.cur, node=n.name), st.cur, post)


def derive(bundle) -> PrecisionPlan:
    """The precision plan of a (validated, possibly transformed) bundle."""
    graph = bundle.graph
    if not graph or not isinstance(graph[0], QuantNode):
        raise BundleError("graph: the first node must be the input quantize node")
    inp_fmt = graph[0].format
    inp = LayerPrecision("input", "input", inp_fmt, result_rounds=True, node=graph[0].name, folded=[graph[0].name])
    posts = _hoist_targets(graph)
    st = _State(bundle, inp_fmt)
    layers: list[LayerPrecision] = []
    plan = PrecisionPlan(inp, layers, list(graph[0].out_shape))
    for i, n in enumerate(graph[1:], start=1):
        if n.op == "flatten" and not layers:
            plan.host_reshape.append(n.name)
            plan.input_shape = list(n.out_shape)
            continue
        if isinstance(n, QuantNode):
            if i not in posts:  # hoisted into a producer
                continue
            prev = layers[-1] if layers else None
            if prev is not None and prev.op in CASTING and prev.post is None:
                # fold into the cast of the previous layer
                prev.result, prev.result_rounds, prev.post = n.format, True, n.format
                prev.folded.append(n.name)
                if prev.op == "avgpool2d":  # its accumulator depends on the rounding
                    layers[-1] = _avgpool(_State(bundle, prev.input_format), graph[i - 1], (n.format, n.name))
                    layers[-1].input_format = prev.input_format
                st.cur = n.format
                continue
            lp = _requant(st, n, (n.format, n.name))
            lp.input_format = st.cur
            lp.node = n.name
            lp.post = None  # the quantize node's own output is the reference
            layers.append(lp)
            st.cur = n.format
            continue
        handler = _HANDLERS.get(n.op)
        if handler is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} is not supported by qsp-compile "
                                        f"(supported: {sorted(_HANDLERS)})")
        lp = handler(st, n, posts.get(i))
        lp.input_format = st.cur
        layers.append(lp)
        st.cur = lp.result
    return plan

