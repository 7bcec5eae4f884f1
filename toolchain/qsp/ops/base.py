"""The op rule: every fact about one bundle op, defined once, next to the op.

An :class:`OpRule` subclass per op (or small op family) holds each *facet* that a stage
needs of that op; the stages (:mod:`qsp.verify.emulate`, :mod:`qsp.compile.precision`,
:mod:`qsp.estimate.counts`, :mod:`qsp.estimate.resources`, :mod:`qsp.bundle.footprint`,
:mod:`qsp.hardware`) are drivers that walk the graph and dispatch to the rule by op
(:func:`qsp.ops.rule`). See docs/ir.md for the list of facets and how to add an op.

Shared base: numpy, :mod:`qsp.fixedpoint`, :mod:`qsp.bundle.schema` and :mod:`qsp.errors`
only (torch is imported lazily inside :meth:`OpRule.torch_forward`, never at import time).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..bundle.schema import Node, as_2d_lists
from ..errors import BundleError, QspError
from ..fixedpoint import FixedFormat, accumulator_format, ceil_log2, to_int_np, widen_to_cover

#: codes of every tensor stay below this (int64 with a bit of margin for the bias shift)
INT64_LIMIT = 2 ** 62
#: integers below this are exact in float64
FLOAT64_EXACT = 2 ** 53
#: elements of one im2col chunk (bounds the emulator's memory)
CHUNK_ELEMENTS = 2 ** 24
#: bits of a float32 value (the float reference of the counts)
FLOAT_BITS = 32


# ============================================================================ the IR's annotations
@dataclass(frozen=True)
class TensorInfo:
    """Static range of a tensor: values are ``k * 2**-frac`` with ``|k| <= bound``."""

    frac: int
    bound: int
    signed: bool = True

    @property
    def bits(self) -> int:
        """Bits of a two's-complement (or unsigned) integer that holds every code."""
        return max(1, int(self.bound).bit_length() + (1 if self.signed else 0))


@dataclass
class Step:
    """One node with its input/output ranges and the integer constants it needs (the
    range-analysis pass's annotation of the node)."""

    node: Node
    in_info: TensorInfo | None  # first input; None: the raw (float) graph input
    out_info: TensorInfo
    params: dict = field(default_factory=dict)
    in_infos: list = field(default_factory=list)  # every input (multi-input ops)


@dataclass
class Fixed:
    """A batch of exact fixed-point values: ``codes * 2**-frac``."""

    codes: np.ndarray  # int64
    frac: int

    def to_float(self, where: str = "") -> np.ndarray:
        if self.codes.size and int(np.max(np.abs(self.codes))) >= FLOAT64_EXACT:
            raise QspError(f"{where}: codes of {int(np.max(np.abs(self.codes))).bit_length()} bits cannot be "
                           "converted to float64 exactly")
        return np.ldexp(self.codes.astype(np.float64), -self.frac)


@dataclass
class InferCtx:
    """What a range rule may read besides its inputs: the bundle (weights, masks), the graph
    in order and the node's index in it, and the graph's consumers map."""

    bundle: object
    graph: list
    index: int
    consumers: dict


@dataclass
class LayerTypes:
    """The hls4ml types of one deploy layer before a folded quantizer is applied (the
    compiler's :class:`~qsp.compile.precision.LayerPrecision` is built from it)."""

    result: FixedFormat  # the exact type of the value (no quantizer folded)
    weight: FixedFormat | None = None
    bias: FixedFormat | None = None
    accum: FixedFormat | None = None
    param: FixedFormat | None = None
    weight_key: str = "weight"
    hls_class: str = ""
    accum_is_result: bool = False  # the accumulator type is the (possibly folded) result type


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
    #: every strategy can: :meth:`OpRule.latency_only`
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
class Alive:
    """A tensor as the counting pass sees it: its format and its static alive map (bool,
    the tensor's shape: False where the element is zero for every input)."""

    fmt: FixedFormat
    alive: np.ndarray


@dataclass
class CountOut:
    """What an op's count rule returns: the output's alive map, and its weight-layer info /
    elementwise adds."""

    alive: np.ndarray
    weight: WeightInfo | None = None
    adds: int = 0


@dataclass
class Resources:
    """FPGA resources and latency of one layer (the estimator's model, docs/estimate.md)."""

    dsp: int = 0
    lut: int = 0
    ff: int = 0
    bram18: int = 0
    latency_cycles: int = 0
    ii_cycles: int = 1
    multipliers: int = 0
    mult_kind: str = ""  # "DSP" | "LUT" | "shift-add" | ""

    def __add__(self, o: "Resources") -> "Resources":
        return Resources(self.dsp + o.dsp, self.lut + o.lut, self.ff + o.ff, self.bram18 + o.bram18,
                         self.latency_cycles + o.latency_cycles, max(self.ii_cycles, o.ii_cycles),
                         self.multipliers + o.multipliers, "")

    def usage(self) -> dict[str, int]:
        return {"LUT": self.lut, "FF": self.ff, "DSP": self.dsp, "BRAM18": self.bram18}

    def to_dict(self) -> dict:
        return asdict(self)


# ============================================================================ the rule
class OpRule:
    """Every facet of one op. Subclasses override what applies; the class attributes are the
    op's plain-data facts (the HLS mapping among them), read by the stage drivers."""

    op: str = ""
    #: reads two or more inputs (its rules get lists)
    multi_input: bool = False

    # ---- HLS mapping (plain data; the hls4ml glue in qsp.compile is keyed by it)
    #: hls4ml's layer class (or qsp's extension layer) of the op's deploy layer
    hls_class: str = ""
    #: the deploy layer casts its output to ``result`` (a following quantize folds into it)
    casting: bool = False
    #: quantization commutes with the op (monotone, 0 -> 0): a quantize is hoisted across it
    commuting: bool = False
    #: a hoisted quantize lands in this op's deploy layer
    producer: bool = False
    #: truncation toward zero commutes with the op (the avgpool look-ahead passes it)
    transparent: bool = False
    #: a Dense/Conv kernel whose hls4ml Strategy / ReuseFactor qsp chooses
    strategy: bool = False
    #: hls4ml builds its ``resource_unrolled`` strategy (Dense only in hls4ml 1.3.0)
    unrolled: bool = False
    #: in io_parallel with Resource (or resource_unrolled, which hls4ml turns into Resource
    #: there) only reuse factors R <= n_in are correct (hls4ml's conv_2d_resource_cl)
    reuse_at_most_n_in: bool = False
    #: has a ``weight`` tensor counted in the weight footprint (a weight layer)
    weighted: bool = False
    #: right after the input quantizer it is a reshape done on the host (flatten)
    host_reshape: bool = False
    #: per unit (feature / channel): unit u of its output depends on unit u of its input
    #: only and 0 stays 0, so the graph transformations remove dead units across it
    per_unit: bool = False
    #: elementwise (value by value): it moves across a flatten (transform flatten_last)
    elementwise: bool = False

    # ---- range analysis (one pass annotates every node: Step)
    def infer(self, ctx: InferCtx, node, ins):
        """(output TensorInfo, integer params) from the input infos (a list for
        :attr:`multi_input` ops, else the one input's info)."""
        raise NotImplementedError(f"op {self.op!r}: no range rule")

    # ---- integer emulation
    def run(self, step: Step, x):
        """The exact integer kernel: Fixed (or a list) -> Fixed."""
        raise NotImplementedError(f"op {self.op!r}: no integer kernel")

    # ---- float32 training-time forward (torch imported by the caller, passed in)
    def torch_forward(self, node, x, bundle, torch, F):
        raise NotImplementedError(f"op {self.op!r}: no float32 forward")

    # ---- hls4ml types
    def types(self, bundle, node, ins: list[FixedFormat], post: FixedFormat | None) -> LayerTypes:
        """The deploy layer's types from its inputs' formats; ``post``: the quantizer folded
        into its result (only an op whose types depend on it reads it)."""
        return LayerTypes(ins[0])

    #: the op's types depend on the folded quantizer (re-derived when one folds in later)
    post_sensitive: bool = False

    def hls_class_of(self, node) -> str:
        """The deploy layer's hls4ml class for this node ("" = :attr:`hls_class`)."""
        return ""

    def latency_only(self, node) -> str:
        """Why only Latency with reuse factor 1 can be built for ``node`` ("" when any can)."""
        return ""

    # ---- counts (alive maps, MACs, fan-in, adds)
    def counts(self, node, ins: list[Alive], bundle) -> CountOut:
        """0 MACs, 0 adds, zeros stay zeros (the default for value-preserving ops)."""
        return CountOut(ins[0].alive.reshape(node.out_shape))

    def pool_window(self, node) -> int:
        """Window size of a pooling op (0 otherwise)."""
        return 0

    # ---- footprint (weight layers)
    def weight_count(self, node) -> int:
        return 0

    def bias_count(self, node) -> int:
        return 0

    def weight_nonzeros(self, node, weights) -> int:
        return int(node.nonzeros)

    # ---- resources
    def kernel_io(self, node, w: np.ndarray) -> tuple[int, int]:
        """(n_in, n_out) of a Dense/Conv kernel (a :attr:`strategy` op) for hls4ml's reuse rules."""
        raise NotImplementedError(f"op {self.op!r}: not a Dense/Conv kernel")

    def kernel_constants(self, w: WeightInfo) -> int:
        """Constant multiplies of one kernel instance of a weight layer: a conv kernel is
        shared by all pixels, so all its nonzero weights (a Dense layer: see Linear)."""
        return w.nonzeros

    def resources(self, n) -> Resources:
        """A non-weight layer's resources from its :class:`~qsp.estimate.counts.NodeCounts`."""
        return Resources()

    #: a weight layer with its own resource model (else the per-strategy models apply)
    def weight_resources(self, n, st, dsp_width) -> Resources | None:
        return None

    # ---- resources in io_stream (hls4ml's dataflow design, docs/estimate.md "io_stream")
    def stream_words(self, in_shape, out_shape) -> tuple[int, int]:
        """(words, values per word) of the stream this op writes in hls4ml's io_stream
        design: [C, H, W] -> H x W words of C; [C, L] -> L words of C; a vector -> one word."""
        return tensor_words(out_shape)

    def stream_resources(self, n, s: "StreamShape") -> Resources:
        """A non-weight layer in io_stream: its logic for ONE pixel (``s.lanes`` values side
        by side); ``latency_cycles`` is its first-output delay, ``ii_cycles`` the cycles it
        takes for one inference (``s.pixels`` x its per-pixel II). Default: a value-preserving
        op with no logic (wiring), one pipeline stage, one pixel per cycle."""
        return Resources(0, 0, 0, 0, 1, s.pixels)

    def stream_weight_resources(self, n, st, kernel: Resources, s: "StreamShape", dsp_width=(27, 18)) -> Resources:
        """A weight layer in io_stream from ``kernel``, its io_parallel model for one kernel
        instance at strategy ``st`` (:func:`qsp.estimate.resources.layer_resources`). Default
        (Dense, hls4ml's nnet_dense_stream.h ``dense``): the whole input vector is read
        (``s.in_words`` stream words, one a cycle), then the io_parallel kernel runs:
        resources unchanged, first output after ``in_words`` + the kernel's depth, II
        ``max(in_words, R)``."""
        r = max(int(st.reuse_factor), 1) if st is not None else 1
        depth = kernel.latency_cycles - (n.weight.positions - 1) * r
        return replace_timing(kernel, s.in_words + depth, max(s.in_words, r, 1))


def tensor_words(shape) -> tuple[int, int]:
    """(words, values per word) of a tensor's hls4ml stream (one word = one pixel's channels)."""
    if len(shape) >= 3:
        return int(shape[1]) * int(shape[2]), int(shape[0])
    if len(shape) == 2:
        return int(shape[1]), int(shape[0])
    return 1, int(math.prod(shape)) if shape else 1


@dataclass(frozen=True)
class StreamShape:
    """What the io_stream model knows of one layer's streams (hls4ml: one
    ``hls::stream<nnet::array<T, C>>`` per tensor, one word = one pixel's C channels)."""

    pixels: int  # words of the output stream (H x W; 1 for a vector read as one word)
    lanes: int  # values per output word that carry logic (alive channels)
    in_pixels: int  # words of the (first) input stream as the layer reads it (padded for a conv)
    in_words: int  # words the layer reads before it can write (Dense: the whole vector)
    in_width: int = 1  # W of the input as the layer reads it (a conv's padded width)
    in_channels: int = 1  # C of the (first) input
    in_bits: int = 0  # bits of one input value


def replace_timing(r: Resources, latency: int, ii: int) -> Resources:
    """``r`` with another first-output delay and II (io_stream timing)."""
    return Resources(r.dsp, r.lut, r.ff, r.bram18, int(latency), int(ii), r.multipliers, r.mult_kind)


def srl_luts(bits_wide: int, depth: int) -> int:
    """LUTs of a shift register ``bits_wide`` bits wide and ``depth`` deep in SRLs: one
    SRLC32E (one LUT) per bit per 32 of depth (UG1399: an ``ap_shift_reg`` is synthesized
    into SRL resources)."""
    return int(bits_wide) * math.ceil(max(int(depth), 0) / 32) if depth > 0 else 0


def stream_elementwise(n, s: StreamShape, lut_per_bit: int, latency: int = 0) -> Resources:
    """An elementwise op in io_stream: ``lut_per_bit x b`` LUTs and ``b`` FFs per lane
    (one pixel's values), a pipelined loop of II 1 per pixel (hls4ml's nnet_activation_stream.h
    / qsp's nnet_qsp_elementwise.h: ``#pragma HLS PIPELINE`` over pixels, ``UNROLL`` over
    the word)."""
    b = n.out_format.bits
    return Resources(0, s.lanes * lut_per_bit * b, s.lanes * b, 0, 1 + latency, s.pixels)


# ============================================================================ helpers of the rules
def check_bound(node: Node, bound: int, what: str = "output") -> int:
    if bound >= INT64_LIMIT:
        raise QspError(f"node {node.name!r} ({node.op}): its {what} can reach {int(bound).bit_length()} bits, "
                       "beyond the emulator's exact int64 range; narrow the formats")
    return int(bound)


def need_info(node, info):
    if info is None:
        raise BundleError(f"node {node.name!r} ({node.op}) gets the raw float input: the graph must start "
                          "with a quantize node")
    return info


def pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def spatial(node) -> dict:
    """kernel / stride / padding as 2-D pairs: a 1-D node (conv1d, maxpool1d, avgpool1d) is
    its 2-D op with height 1 (schema.as_2d_lists)."""
    d = as_2d_lists(node)
    return {k: tuple(d[key]) for k, key in (("kernel", "kernel_size"), ("stride", "stride"),
                                              ("padding", "padding")) if key in d}


def hw(shape) -> tuple[int, int]:
    """(H, W) of a [C, H, W] or (1, L) of a [C, L] shape."""
    return (1, int(shape[1])) if len(shape) == 2 else (int(shape[1]), int(shape[2]))


def weight_format(node) -> FixedFormat:
    """One type covering every channel's weight format (hls4ml has one type per layer)."""
    return widen_to_cover(_formats(node))


def _formats(node) -> list[FixedFormat]:
    """The weight formats of a node: per channel (a WeightFormat) or the one (scale_shift)."""
    return node.weight.formats() if hasattr(node.weight, "formats") else [node.weight]


def weight_codes(bundle, node) -> tuple[np.ndarray, int]:
    """Integer weight codes on one grid (per-channel formats widened) and their frac."""
    fmt = weight_format(node)
    try:
        return to_int_np(bundle.weight(node.name), fmt.frac), fmt.frac
    except (KeyError, ValueError) as e:
        raise BundleError(f"node {node.name!r}: weights not usable ({e})") from None


def bias_codes(bundle, node) -> tuple[np.ndarray | None, int | None]:
    b = bundle.bias(node.name)
    if b is None:
        return None, None
    if node.bias is None:
        raise BundleError(f"node {node.name!r}: has a bias array but no bias format in qspec.json")
    try:
        return to_int_np(b, node.bias.frac), node.bias.frac
    except ValueError as e:
        raise BundleError(f"node {node.name!r}: bias not on its grid ({e})") from None


def nonzero_fan_in(w: np.ndarray) -> int:
    """The largest number of nonzero weights feeding one output."""
    return int(np.max(np.count_nonzero(w.reshape(w.shape[0], -1), axis=1))) if w.size else 0


def acc_format(in_fmt: FixedFormat, node, w: np.ndarray, bias_fmt: FixedFormat | None) -> FixedFormat:
    """The accumulator type of a weight layer: :func:`~qsp.fixedpoint.accumulator_format`
    over the input type, the one weight type, the kernel's fan-in, its largest count of
    nonzero weights per output and the bias. The type qsp-compile builds, :mod:`qsp.deploy`
    packs and the estimator's adders have."""
    fan_in = int(np.prod(w.shape[1:]))
    return accumulator_format(in_fmt, weight_format(node), fan_in, bias_fmt, nonzero_fan_in=nonzero_fan_in(w))


def int_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """Exact ``a @ b`` of int64 arrays whose partial sums are at most ``bound`` in
    magnitude: float64 BLAS when ``bound < 2**53`` (exact in any order), int64 otherwise."""
    if bound < FLOAT64_EXACT:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def windows(codes: np.ndarray, kernel, stride) -> np.ndarray:
    """(B, C, OH, OW, kh, kw) view of the pooling/conv windows (no padding)."""
    v = np.lib.stride_tricks.sliding_window_view(codes, kernel, axis=(2, 3))
    return v[:, :, ::stride[0], ::stride[1]]


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


def _weight_codes_of(w: np.ndarray, fmts: list[FixedFormat]) -> np.ndarray:
    if len(fmts) == 1:
        return np.round(w * 2.0 ** fmts[0].frac).astype(np.int64)
    fr = np.array([f.frac for f in fmts], np.float64).reshape([-1] + [1] * (w.ndim - 1))
    return np.round(w * np.exp2(fr)).astype(np.int64)


def weights_of(bundle, n) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight layer's weight and bias arrays (float64) for counting."""
    from ..errors import UnsupportedLayerError

    w = bundle.weights.get(f"{n.name}.weight") if bundle is not None else None
    b = bundle.weights.get(f"{n.name}.bias") if bundle is not None else None
    if w is None:
        raise UnsupportedLayerError(f"node {n.name!r} ({n.op}): weights.npz has no '{n.name}.weight'")
    return np.asarray(w, np.float64), (None if b is None else np.asarray(b, np.float64))


def weight_info(n, w, b, st: Alive, macs_dense, macs, fan_in, n_out, positions, latency_only="") -> WeightInfo:
    """The counts of a weight layer (``w`` reshaped to [outputs, fan-in...])."""
    nz_rows = (w.reshape(w.shape[0], -1) != 0).sum(axis=1)
    fmts = _formats(n)
    wfmt = widen_to_cover(fmts)
    acc = acc_format(st.fmt, n, w, n.bias if b is not None else None)
    nnz = int(np.count_nonzero(w))
    codes = _weight_codes_of(w, fmts)
    return WeightInfo(
        weights=int(w.size), biases=0 if b is None else int(b.size), nonzeros=nnz, weight_bits=n.weight.bits,
        bias_bits=0 if (b is None or n.bias is None) else n.bias.bits, weight_format=wfmt, in_format=st.fmt,
        acc_format=acc, fan_in=fan_in, n_out=n_out, positions=positions,
        max_row_nonzeros=int(nz_rows.max()) if nz_rows.size else 0, macs_dense=int(macs_dense), macs=int(macs),
        csd_digits=int(csd_digits(codes[codes != 0]).sum()), sparse_index_bits=ceil_log2(fan_in),
        latency_only=latency_only)


# ---- the resource model's primitives (shared by the per-strategy models and the op rules)
DSP_MIN_PRODUCT = 100  # b_w * b_a from which a multiply goes to a DSP (10 x 10)
ADDS_PER_STAGE = 4  # adder-tree levels per pipeline stage at ~100-200 MHz


def dsps_per_multiply(b_w: int, b_a: int, dsp_width: tuple[int, int]) -> int:
    a, b = dsp_width
    wide, narrow = max(b_w, b_a), min(b_w, b_a)
    return math.ceil(wide / a) * math.ceil(narrow / b)


def uses_dsp(b_w: int, b_a: int) -> bool:
    return b_w * b_a >= DSP_MIN_PRODUCT


def lut_multiplier(b_w: int, b_a: int) -> int:
    return math.ceil(b_w * b_a / 2) + b_w + b_a


def multipliers(n, count: int, const: bool, dsp_width) -> tuple[int, int, str]:
    """(DSPs, LUTs, kind) of ``count`` multipliers of weight layer ``n`` (NodeCounts)."""
    w = n.weight
    bw, ba = w.weight_bits, w.in_format.bits
    if uses_dsp(bw, ba):
        return count * dsps_per_multiply(bw, ba, dsp_width), 0, "DSP"
    if const:
        # shift-add per constant; average CSD digits over the layer's nonzero weights
        avg_csd = w.csd_digits / max(w.nonzeros, 1)
        return 0, math.ceil(count * max(avg_csd - 1, 0) * (ba + math.ceil(bw / 2))), "LUT"
    return 0, count * lut_multiplier(bw, ba), "LUT"


def elementwise(n, lut_per_bit: int, latency: int = 0) -> Resources:
    """``lut_per_bit x b`` LUTs and ``b`` FFs per alive output element of ``b`` bits."""
    b = n.out_format.bits
    return Resources(0, n.out_nonzero * lut_per_bit * b, n.out_nonzero * b, 0, latency, 1)

