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

Per-op rules (each defined once, in the op's handler below):

* ``linear``: MACs ``in x out``; counted MACs: nonzero weight x alive input.
* ``conv2d`` with ``groups`` g (depthwise when g = in_channels): dense MACs
  ``out_ch x OH x OW x (in_ch / g) x kh x kw``; counted MACs: nonzero weight x alive input
  element that its group reads (padding counts as a static zero). ``fan_in`` (the kernel's
  inputs per output) is ``(in_ch / g) x kh x kw``.
* ``conv1d`` / ``maxpool1d`` / ``avgpool1d``: as the 2-D op on ``[C, 1, L]`` (MACs
  ``out_ch x L_out x in_ch x k``).
* ``scale_shift``: one multiply and one add per element (``x * scale[c] + shift[c]``): it
  counts as a weight layer with ``fan_in`` 1, MACs = elements (counted: alive elements of
  channels whose scale is nonzero), BOPs = MACs x bits(scale) x bits(x); the scale is its
  weight tensor (``channels`` weights), the shift its bias.
* ``add`` of k inputs: 0 MACs and 0 BOPs (BOPs are MACs x b_w x b_a, a multiply metric);
  its ``adds`` = elements x (k - 1), at the output's bits (priced as adds in the energy
  model, as adders in the resource model).
* ``concat``, ``clip``, ``relu``, ``mask``, pooling, ``flatten``, ``pixel_shuffle``,
  ``quantize``: 0 MACs, 0 adds (average pooling's window sums are in the resource model).

BOPs = MACs x b_w x b_a with b_a the bits of the layer's input format.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .. import hardware
from ..bundle.footprint import point_mask
from ..bundle.schema import (GRAPH_INPUT, AddNode, AvgPool2dNode, ClipNode, LeakyReluNode, ConcatNode, Conv2dNode, FlattenNode,
                             LinearNode, MaskNode, MaxPool2dNode, PixelShuffleNode, QuantNode, ReluNode,
                             ScaleShiftNode, as_2d, consumers, producers, sequential_inputs)
from ..bundle.schema import ONE_D
from ..errors import UnsupportedLayerError
from ..fixedpoint import FixedFormat, accumulator_format, ceil_log2, widen_to_cover
from ..registry import Registry

FLOAT_BITS = 32


def csd_digits(codes: np.ndarray) -> np.ndarray:
    """Nonzero digits of each integer in canonical signed-digit (non-adjacent) form: the
    adders a constant multiplication needs is this minus one."""
    n = np.abs(np.asarray(codes, dtype=np.int64)).astype(np.uint64)
    h = n >> np.uint64(1)
    t = n + h
    c = h ^ t
    pos, neg = t & c, h & c
    return _popcount(pos) + _popcount(neg)


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    out = np.zeros(x.shape, dtype=np.int64)
    while np.any(x):
        out += (x & np.uint64(1)).astype(np.int64)
        x = x >> np.uint64(1)
    return out


@dataclass
class WeightInfo:
    """What a weight layer adds to a node's counts."""

    weights: int
    biases: int
    nonzeros: int
    weight_bits: int
    bias_bits: int
    weight_format: FixedFormat  # one type covering all channels
    in_format: FixedFormat
    acc_format: FixedFormat
    fan_in: int  # inputs per output (n_in of hls4ml's dense kernel)
    n_out: int  # outputs per position (filters)
    positions: int  # output pixels (1 for linear)
    max_row_nonzeros: int
    macs_dense: int
    macs: int
    csd_digits: int  # sum over nonzero weights of their CSD digit counts
    sparse_index_bits: int  # bits per index of a CSR-like encoding
    #: why only the Latency strategy (reuse factor 1) can be built for this layer; "" when
    #: every strategy can (depthwise/grouped conv, scale_shift: qsp's own layers / hls4ml's
    #: DepthwiseConv2D, built fully parallel): :func:`qsp.hardware.latency_only`
    latency_only: str = ""

    @property
    def bops(self) -> int:
        return self.macs * self.weight_bits * self.in_format.bits

    @property
    def bops_dense(self) -> int:
        """All MACs (nothing pruned) at the trained bit widths."""
        return self.macs_dense * self.weight_bits * self.in_format.bits

    @property
    def bops_float(self) -> int:
        return self.macs_dense * FLOAT_BITS * FLOAT_BITS

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.weights if self.weights else 0.0


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


@dataclass
class GraphCounts:
    nodes: list[NodeCounts] = field(default_factory=list)

    def weight_nodes(self) -> list[NodeCounts]:
        return [n for n in self.nodes if n.weight is not None]


# ----------------------------------------------------------------------------- handlers
_HANDLERS = Registry("count handler")
counts_for = _HANDLERS.register


@dataclass
class _State:
    """A tensor: its format and its static alive map (bool, the tensor's shape)."""

    fmt: FixedFormat
    alive: np.ndarray


@dataclass
class _Out:
    """What a handler returns: the output's alive map, and its weight-layer info / adds."""

    alive: np.ndarray
    weight: WeightInfo | None = None
    adds: int = 0


def _weights_of(bundle, n) -> tuple[np.ndarray, np.ndarray | None]:
    w = bundle.weights.get(f"{n.name}.weight") if bundle is not None else None
    b = bundle.weights.get(f"{n.name}.bias") if bundle is not None else None
    if w is None:
        raise UnsupportedLayerError(f"node {n.name!r} ({n.op}): weights.npz has no '{n.name}.weight'")
    return np.asarray(w, np.float64), (None if b is None else np.asarray(b, np.float64))


def _weight_codes(w: np.ndarray, fmts: list[FixedFormat]) -> np.ndarray:
    if len(fmts) == 1:
        return np.round(w * 2.0 ** fmts[0].frac).astype(np.int64)
    fr = np.array([f.frac for f in fmts], np.float64).reshape([-1] + [1] * (w.ndim - 1))
    return np.round(w * np.exp2(fr)).astype(np.int64)


def _common(n, w, b, st: _State, macs_dense, macs, fan_in, n_out, positions, latency_only="") -> WeightInfo:
    nz_rows = (w.reshape(w.shape[0], -1) != 0).sum(axis=1)
    fmts = n.weight.formats() if hasattr(n.weight, "formats") else [n.weight]
    wfmt = widen_to_cover(fmts)
    acc = accumulator_format(st.fmt, wfmt, fan_in, n.bias if b is not None else None,
                             nonzero_fan_in=int(nz_rows.max()) if nz_rows.size else 0)
    nnz = int(np.count_nonzero(w))
    codes = _weight_codes(w, fmts)
    return WeightInfo(
        weights=int(w.size), biases=0 if b is None else int(b.size), nonzeros=nnz, weight_bits=n.weight.bits,
        bias_bits=0 if (b is None or n.bias is None) else n.bias.bits, weight_format=wfmt, in_format=st.fmt,
        acc_format=acc, fan_in=fan_in, n_out=n_out, positions=positions,
        max_row_nonzeros=int(nz_rows.max()) if nz_rows.size else 0, macs_dense=int(macs_dense), macs=int(macs),
        csd_digits=int(csd_digits(codes[codes != 0]).sum()), sparse_index_bits=ceil_log2(fan_in),
        latency_only=latency_only)


@counts_for(LinearNode)
def _linear(n: LinearNode, ins: list[_State], bundle) -> _Out:
    st = ins[0]
    w, b = _weights_of(bundle, n)
    alive_in = st.alive.reshape(-1).astype(np.int64)
    nzw = (w != 0).astype(np.int64)
    per_out = nzw @ alive_in
    macs = int(per_out.sum())
    info = _common(n, w, b, st, n.in_features * n.out_features, macs, n.in_features, n.out_features, 1)
    alive = (per_out > 0) | (b != 0 if b is not None else False)
    return _Out(np.asarray(alive).reshape(n.out_shape), info)


@counts_for(Conv2dNode)
def _conv(n: Conv2dNode, ins: list[_State], bundle) -> _Out:
    """Grouped conv: output channel o (group o // (co/g)) reads input channels of its group
    only; MACs ``co x OH x OW x (ci/g) x kh x kw`` dense."""
    st = ins[0]
    w, b = _weights_of(bundle, n)
    (kh, kw), (sh, sw), (ph, pw) = n.kernel_size, n.stride, n.padding
    co, ho, wo = n.out_shape
    g = max(int(n.groups), 1)
    ci = int(st.alive.shape[0])
    cg, og = ci // g, co // g
    a = np.pad(st.alive.astype(np.int64), ((0, 0), (ph, ph), (pw, pw)))
    nzw = (w != 0).astype(np.int64).reshape(g, og, cg, kh, kw)
    # cnt[ci, i, j] = alive input elements met by kernel tap (i, j) over all output positions
    cnt = np.empty((ci, kh, kw), np.int64)
    hit = np.zeros((g, og, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            win = a[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]  # (ci, ho, wo)
            cnt[:, i, j] = win.sum(axis=(1, 2))
            hit += np.einsum("goc,gchw->gohw", nzw[:, :, :, i, j], win.reshape(g, cg, ho, wo))
    macs = int((nzw * cnt.reshape(g, 1, cg, kh, kw)).sum())
    fan_in = cg * kh * kw
    info = _common(n, w, b, st, co * ho * wo * fan_in, macs, fan_in, co, ho * wo, hardware.latency_only(n))
    alive = hit.reshape(co, ho, wo) > 0
    if b is not None:
        alive |= (b != 0)[:, None, None]
    return _Out(alive, info)


@counts_for(ScaleShiftNode)
def _scale_shift(n: ScaleShiftNode, ins: list[_State], bundle) -> _Out:
    """``x * scale[c] + shift[c]``: one multiply + one add per element; MACs = elements."""
    st = ins[0]
    w, b = _weights_of(bundle, n)
    c = int(n.channels or w.size)
    per_ch = st.alive.reshape(c, -1)
    positions = per_ch.shape[1]
    alive_in = per_ch.sum(axis=1)
    macs = int(alive_in[w.reshape(-1) != 0].sum())
    info = _common(n, w.reshape(c, 1), b, st, c * positions, macs, 1, c, positions, hardware.latency_only(n))
    shift_nz = np.zeros(c, bool) if b is None else (b.reshape(-1) != 0)
    alive = (per_ch & (w.reshape(-1) != 0)[:, None]) | shift_nz[:, None]
    return _Out(alive.reshape(st.alive.shape), info)


@counts_for(QuantNode, ReluNode, FlattenNode, LeakyReluNode)
def _passthrough(n, ins: list[_State], bundle) -> _Out:
    """quantize, relu, leaky_relu, flatten: 0 stays 0 (a format that holds 0 rounds 0 to
    0; leaky_relu's constant multiply is priced by the resource model, not as MACs)."""
    return _Out(ins[0].alive.reshape(n.out_shape))


@counts_for(ClipNode)
def _clip(n: ClipNode, ins: list[_State], bundle) -> _Out:
    """0 MACs; 0 stays 0 when lo <= 0 <= hi, else every element is a nonzero constant."""
    a = ins[0].alive.reshape(n.out_shape)
    return _Out(a if float(n.lo) <= 0.0 <= float(n.hi) else np.ones_like(a))


@counts_for(AddNode)
def _add(n: AddNode, ins: list[_State], bundle) -> _Out:
    """0 MACs / BOPs; adds = elements x (inputs - 1)."""
    alive = np.zeros(n.out_shape, bool)
    for s in ins:
        alive |= s.alive.reshape(n.out_shape)
    return _Out(alive, adds=math.prod(n.out_shape) * (len(ins) - 1))


@counts_for(ConcatNode)
def _concat(n: ConcatNode, ins: list[_State], bundle) -> _Out:
    """0 MACs: wiring along the channel axis."""
    return _Out(np.concatenate([s.alive for s in ins], axis=0).reshape(n.out_shape))


@counts_for(MaskNode)
def _mask(n: MaskNode, ins: list[_State], bundle) -> _Out:
    m = bundle.masks.get(f"{n.name}.mask") if bundle is not None else None
    if m is None:
        raise UnsupportedLayerError(f"node {n.name!r} (mask): masks.npz has no '{n.name}.mask'")
    a = ins[0].alive
    return _Out(a & (np.asarray(m) != 0).reshape(a.shape))


def _pool_alive(n, alive: np.ndarray) -> np.ndarray:
    (kh, kw), (sh, sw) = n.kernel_size, n.stride
    c, ho, wo = n.out_shape
    out = np.zeros((c, ho, wo), bool)
    for i in range(kh):
        for j in range(kw):
            out |= alive[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return out


@counts_for(MaxPool2dNode, AvgPool2dNode)
def _pool(n, ins: list[_State], bundle) -> _Out:
    """Max and average pooling (global average pooling: kernel = H, W): 0 MACs."""
    return _Out(_pool_alive(n, ins[0].alive))


@counts_for(PixelShuffleNode)
def _shuffle(n: PixelShuffleNode, ins: list[_State], bundle) -> _Out:
    r = n.factor
    c, h, w = ins[0].alive.shape
    a = ins[0].alive.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(n.out_shape)
    return _Out(a)


# ----------------------------------------------------------------------------- formats
def tensor_formats(bundle) -> dict[str, FixedFormat]:
    """node name -> the format of its output tensor, from the emulator's range analysis
    (:func:`qsp.verify.emulate.analyze`): a quantize node's own format, else
    ``TensorInfo`` (frac, bound, signed) as a format of ``TensorInfo.bits`` bits."""
    from ..verify.emulate import analyze  # numpy only; verify imports nothing of estimate

    out = {}
    for s in analyze(bundle):
        f = s.params.get("format") if s.node.op == "quantize" else None
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
    states: dict[str, _State] = {GRAPH_INPUT: _State(in_fmt, np.ones(first.in_shape, bool))}
    out = GraphCounts()
    for i, n in enumerate(graph):
        h = _HANDLERS.for_type(n)
        if h is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no estimator handler "
                                        f"(supported: {sorted(t.op for t in _HANDLERS)})")
        ins = [states[x] for x in n.inputs]
        if n.op in ONE_D:  # a 1-D op counts as its 2-D op of height 1
            r = h(as_2d(n), [_State(s.fmt, s.alive[:, None, :]) for s in ins], bundle)
            w = r.weight and dataclasses.replace(r.weight, latency_only=hardware.latency_only(n))
            r = _Out(r.alive[:, 0, :], w, r.adds)
        else:
            r = h(n, ins, bundle)
        fmt = r.weight.acc_format if r.weight is not None else fmts[n.name]
        st = states[n.name] = _State(fmt, r.alive)
        pool = math.prod(n.kernel_size) if isinstance(n, (MaxPool2dNode, AvgPool2dNode)) else 0
        out.nodes.append(NodeCounts(n.name, n.op, list(n.in_shape), list(n.out_shape), st.fmt,
                                    int(st.alive.size), int(st.alive.sum()), int(ins[0].alive.sum()),
                                    isinstance(n, QuantNode),
                                    isinstance(n, QuantNode) and point_mask(graph, i, prod, cons) is not None,
                                    r.weight, pool, list(n.inputs), int(r.adds)))
    return out
