"""Exact per-node counts of a bundle for one input: formats, nonzero elements, MACs, BOPs,
storage. Everything here is a count, not an estimate.

Two things are propagated along the graph (execution order, one input, NCHW):

* the value format of every tensor (:mod:`qsp.fixedpoint`): a ``quantize`` node sets it;
  ``linear``/``conv2d`` produce their exact accumulator format
  (:func:`~qsp.fixedpoint.accumulator_format`); avg-pooling adds ``ceil(log2 N)`` fraction
  and integer bits; the other ops keep it;
* a static "alive" map per element: ``False`` where the element is zero for *every*
  input. Masks clear elements, pooling keeps an output alive when any element of its window
  is, flatten/pixel-shuffle move them, and a ``linear``/``conv2d`` output is alive unless all
  of its weights that meet an alive input are zero and its bias is zero. ReLU zeros depend on
  the data and are not counted as static zeros.

MACs of a weight layer: ``macs_dense`` is the usual count (zeros and padding included);
``macs`` counts only the products whose weight is nonzero and whose input element is
alive (padding counts as a static zero). BOPs = MACs x b_w x b_a with b_a the bits of the
layer's input format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..bundle.schema import (AvgPool2dNode, Conv2dNode, FlattenNode, LinearNode, MaskNode, MaxPool2dNode,
                             PixelShuffleNode, QuantNode, ReluNode)
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
    in_nonzero: int
    quant_point: bool  # a quantize node: counted in the paper's activation footprint
    masked: bool = False  # its elements are zeroed by an adjacent mask (quantize points)
    weight: WeightInfo | None = None
    pool: int = 0  # window size of a pooling node


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
    fmt: FixedFormat
    alive: np.ndarray  # bool, the tensor's shape


def _weights_of(bundle, n) -> tuple[np.ndarray, np.ndarray | None]:
    w = bundle.weights.get(f"{n.name}.weight") if bundle is not None else None
    b = bundle.weights.get(f"{n.name}.bias") if bundle is not None else None
    if w is None:
        raise UnsupportedLayerError(f"node {n.name!r} ({n.op}): weights.npz has no '{n.name}.weight'")
    return np.asarray(w, np.float64), (None if b is None else np.asarray(b, np.float64))


def _weight_codes(w: np.ndarray, n) -> np.ndarray:
    fmts = n.weight.formats()
    if len(fmts) == 1:
        return np.round(w * 2.0 ** fmts[0].frac).astype(np.int64)
    fr = np.array([f.frac for f in fmts], np.float64).reshape([-1] + [1] * (w.ndim - 1))
    return np.round(w * np.exp2(fr)).astype(np.int64)


def _common(n, w, b, st: _State, macs_dense, macs, fan_in, n_out, positions) -> WeightInfo:
    nz_rows = (w.reshape(w.shape[0], -1) != 0).sum(axis=1)
    wfmt = widen_to_cover(n.weight.formats())
    acc = accumulator_format(st.fmt, wfmt, fan_in, n.bias if b is not None else None,
                             nonzero_fan_in=int(nz_rows.max()) if nz_rows.size else 0)
    nnz = int(np.count_nonzero(w))
    codes = _weight_codes(w, n)
    return WeightInfo(
        weights=int(w.size), biases=0 if b is None else int(b.size), nonzeros=nnz, weight_bits=n.weight.bits,
        bias_bits=0 if (b is None or n.bias is None) else n.bias.bits, weight_format=wfmt, in_format=st.fmt,
        acc_format=acc, fan_in=fan_in, n_out=n_out, positions=positions,
        max_row_nonzeros=int(nz_rows.max()) if nz_rows.size else 0, macs_dense=int(macs_dense), macs=int(macs),
        csd_digits=int(csd_digits(codes[codes != 0]).sum()), sparse_index_bits=ceil_log2(fan_in))


@counts_for(LinearNode)
def _linear(n: LinearNode, st: _State, bundle):
    w, b = _weights_of(bundle, n)
    alive_in = st.alive.reshape(-1).astype(np.int64)
    nzw = (w != 0).astype(np.int64)
    per_out = nzw @ alive_in
    macs = int(per_out.sum())
    info = _common(n, w, b, st, n.in_features * n.out_features, macs, n.in_features, n.out_features, 1)
    alive = (per_out > 0) | (b != 0 if b is not None else False)
    return _State(info.acc_format, np.asarray(alive).reshape(n.out_shape)), info


@counts_for(Conv2dNode)
def _conv(n: Conv2dNode, st: _State, bundle):
    w, b = _weights_of(bundle, n)
    (kh, kw), (sh, sw), (ph, pw) = n.kernel_size, n.stride, n.padding
    co, ho, wo = n.out_shape
    a = np.pad(st.alive.astype(np.int64), ((0, 0), (ph, ph), (pw, pw)))
    nzw = (w != 0).astype(np.int64)  # (co, ci, kh, kw)
    # cnt[ci, i, j] = alive input elements met by kernel tap (i, j) over all output positions
    cnt = np.empty((n.in_channels, kh, kw), np.int64)
    hit = np.zeros((co, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            win = a[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]  # (ci, ho, wo)
            cnt[:, i, j] = win.sum(axis=(1, 2))
            hit += np.einsum("oc,chw->ohw", nzw[:, :, i, j], win)
    macs = int((nzw * cnt[None]).sum())
    fan_in = n.in_channels * kh * kw
    info = _common(n, w, b, st, co * ho * wo * fan_in, macs, fan_in, co, ho * wo)
    alive = hit > 0
    if b is not None:
        alive |= (b != 0)[:, None, None]
    return _State(info.acc_format, alive), info


@counts_for(QuantNode)
def _quant(n: QuantNode, st: _State, bundle):
    return _State(n.format, st.alive.reshape(n.out_shape)), None


@counts_for(ReluNode, FlattenNode)
def _passthrough(n, st: _State, bundle):
    return _State(st.fmt, st.alive.reshape(n.out_shape)), None


@counts_for(MaskNode)
def _mask(n: MaskNode, st: _State, bundle):
    m = bundle.masks.get(f"{n.name}.mask") if bundle is not None else None
    if m is None:
        raise UnsupportedLayerError(f"node {n.name!r} (mask): masks.npz has no '{n.name}.mask'")
    return _State(st.fmt, st.alive & (np.asarray(m) != 0).reshape(st.alive.shape)), None


def _pool_alive(n, alive: np.ndarray) -> np.ndarray:
    (kh, kw), (sh, sw) = n.kernel_size, n.stride
    c, ho, wo = n.out_shape
    out = np.zeros((c, ho, wo), bool)
    for i in range(kh):
        for j in range(kw):
            out |= alive[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return out


@counts_for(MaxPool2dNode)
def _maxpool(n, st: _State, bundle):
    return _State(st.fmt, _pool_alive(n, st.alive)), None


@counts_for(AvgPool2dNode)
def _avgpool(n, st: _State, bundle):
    extra = ceil_log2(math.prod(n.kernel_size))
    f = st.fmt
    return _State(FixedFormat(f.bits + 2 * extra, f.frac + extra, f.signed, f.rounding), _pool_alive(n, st.alive)), None


@counts_for(PixelShuffleNode)
def _shuffle(n: PixelShuffleNode, st: _State, bundle):
    r = n.factor
    c, h, w = st.alive.shape
    a = st.alive.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(n.out_shape)
    return _State(st.fmt, a), None


def _adjacent_mask(graph, i) -> bool:
    for j in (i - 1, i + 1):
        if 0 <= j < len(graph) and isinstance(graph[j], MaskNode) and list(graph[j].in_shape) == list(graph[i].out_shape):
            return True
    return False


def count_graph(bundle) -> GraphCounts:
    """Counts for every node of ``bundle`` (a :class:`~qsp.bundle.Bundle`)."""
    graph = bundle.qspec.graph
    if not graph:
        return GraphCounts()
    first = graph[0]
    fmt = first.format if isinstance(first, QuantNode) else FixedFormat(FLOAT_BITS, 16)
    st = _State(fmt, np.ones(first.in_shape, bool))
    out = GraphCounts()
    for i, n in enumerate(graph):
        h = next((_HANDLERS[t] for t in type(n).__mro__ if t in _HANDLERS), None)
        if h is None:
            raise UnsupportedLayerError(f"node {n.name!r}: op {n.op!r} has no estimator handler "
                                        f"(supported: {sorted(t.op for t in _HANDLERS)})")
        in_nz = int(st.alive.sum())
        st, info = h(n, st, bundle)
        pool = math.prod(n.kernel_size) if isinstance(n, (MaxPool2dNode, AvgPool2dNode)) else 0
        out.nodes.append(NodeCounts(n.name, n.op, list(n.in_shape), list(n.out_shape), st.fmt,
                                    int(st.alive.size), int(st.alive.sum()), in_nz, isinstance(n, QuantNode),
                                    isinstance(n, QuantNode) and _adjacent_mask(graph, i), info, pool))
    return out
