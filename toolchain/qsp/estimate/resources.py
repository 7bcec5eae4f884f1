"""Analytic FPGA resource and latency model of an hls4ml io_parallel design, per layer and
strategy. A documented model, not a synthesis result: see docs/estimate.md for the rules
and benchmarks/estimate_calibration.py for how far off it is against published figures.

Multipliers (``linear``/``conv2d``/``conv1d``, a Conv1D modelled as the Conv2D of height 1):

* a product of ``b_w x b_a`` bits maps to DSP48 slices when ``b_w * b_a >= DSP_MIN_PRODUCT``
  (10 x 10: narrower multiplies are built from LUTs by Vivado/Vitis HLS), using
  ``ceil(wide/A) * ceil(narrow/B)`` slices for an ``A x B`` slice (25x18 DSP48E1, 27x18
  DSP48E2); otherwise it costs LUTs:

  - a multiply by a *constant* weight (Latency, fully unrolled; distributed arithmetic) is a
    shift-add over the weight's canonical-signed-digit form: ``(csd - 1)`` adders of
    ``b_a + ceil(b_w / 2)`` bits (the average shifted operand), 1 LUT per bit; a power-of-two
    weight is free;
  - a multiply whose weight is read from memory (Resource, resource_unrolled) is a generic
    array multiplier: ``ceil(b_w * b_a / 2) + b_w + b_a`` LUTs;

* number of multipliers per strategy (hls4ml 1.3.0):

  - ``Latency``: one per *nonzero* weight of one kernel instance (zero constants are removed
    by HLS; for Dense also those whose input is statically zero, e.g. masked), reuse factor 1;
  - ``Resource`` (reuse factor R): ``ceil(n_in * n_out / R)``; zeros are kept (the weights
    sit in ROM), weights in block RAM when the ROM is deep enough;
  - ``resource_unrolled`` (R): ``ceil(nonzeros / R)`` (only nonzero weights are emitted);
  - ``distributed_arithmetic``: no multipliers; shift-add adders of every nonzero weight's
    CSD digits (an upper bound: da4ml's common-subexpression elimination shares adders).

* accumulation: an adder tree per output (Latency/DA: one adder per nonzero product after
  the first, plus the bias) of ``min(acc, b_w + b_a + 1)`` bits, since most adders of a tree
  sit at its leaves; with reuse R > 1 one accumulator
  register + adder per multiplier.
* Conv2D in io_parallel computes one output pixel's kernel at a time: the multipliers
  above are for one kernel instance and the layer's initiation interval is
  ``pixels x R``.
* FFs: every multiplier output and every output value is registered, plus the
  accumulators for R > 1.
* BRAM: only Resource/resource_unrolled weights: an array reshaped to ``R`` words of
  ``ceil(W/R) * b_w`` bits; a ROM with at least ``BRAM_MIN_DEPTH`` words and
  ``BRAM_MIN_BITS`` bits becomes ``ceil(width/36) * ceil(R/512)`` 18 Kb blocks, a smaller
  one becomes LUT-ROM (one LUT per 64 bits per output bit).

* Depthwise / grouped conv (``groups`` > 1): only ``Latency`` with reuse factor 1 is
  modelled or proposed (:func:`buildable`): qsp builds a depthwise conv as hls4ml's
  DepthwiseConv2D and a grouped one as its QspGroupedConv2d (a block-diagonal Conv2D),
  both fully parallel. The Latency model above applies with the layer's own kernel: one
  constant multiplier per nonzero weight of one kernel instance (a depthwise conv: one per
  weight per output channel, ``kh x kw`` each, zeros removed), an adder tree of
  ``(in/g) x kh x kw`` products per output channel, II = output pixels.
* ``scale_shift`` (``x * scale[c] + shift[c]``, Latency only): qsp's kernel is unrolled
  over every element in io_parallel, so one constant multiplier per alive element whose
  channel scale is nonzero (DSP or CSD shift-add by the rule above, the scale being the
  weight) and one adder of the output's accumulator width per alive element; 1 adder
  stage (+1 for a DSP multiply) of latency, II 1.

Other layers (all elements in parallel): ReLU ``ceil(b/2)`` LUTs per element, a mask
nothing (masked elements are constant zeros), max-pooling ``(k-1)`` comparators of ``b``
bits and a mux per output, average pooling ``(k-1)`` adders (global pooling: kernel = the
map), a rounding/saturating quantize ``b`` LUTs per element (a floor quantize with no
saturation is wiring), flatten and pixel shuffle nothing; ``add`` of k inputs ``k - 1``
adders of the output's ``b`` bits per element (1 LUT per bit, no DSP) and ``b`` FFs per
element, ``ceil(log2 k / ADDS_PER_STAGE)`` cycles; ``concat`` nothing (wiring: inputs are
placed side by side, a shift to the common fraction bits is wiring too); ``clip`` two
comparators against constants and two muxes, ``b`` LUTs per bound per element (``2b``) and
``b`` FFs, 0 cycles like ReLU.

Latency: a Dense/Conv kernel costs ``(R - 1) + mult_stages + ceil(log2(fan_in + 1) / ADDS_PER_STAGE)``
cycles (DSP multiply 1 stage, LUT multiply and DA 0), pooling 1 cycle, ReLU / quantize /
mask / flatten / concat / clip 0 (folded into the producer's pipeline stage by HLS). The
graph is a DAG and an io_parallel design computes independent branches side by side: the
total latency is the *critical path* (:func:`critical_path`: the longest path, each node
starting when its latest producer is done; for a chain it is the sum), the initiation
interval the largest layer II.
"""
from __future__ import annotations

import math

from ..fixedpoint import ceil_log2
from ..hardware import STRATEGIES, STRATEGY_OPS, LayerStrategy, smallest_valid_reuse, valid_reuse_factors
from ..ops import RULES, Resources
from ..ops.base import ADDS_PER_STAGE, DSP_MIN_PRODUCT, dsps_per_multiply, lut_multiplier, multipliers, uses_dsp
from ..registry import Registry
from .counts import NodeCounts

BRAM_MIN_DEPTH = 64
BRAM_MIN_BITS = 1024

__all__ = ["Resources", "DSP_MIN_PRODUCT", "ADDS_PER_STAGE", "BRAM_MIN_DEPTH", "BRAM_MIN_BITS", "dsps_per_multiply",
           "uses_dsp", "lut_multiplier", "buildable", "critical_path", "layer_resources", "STRATEGIES",
           "STRATEGY_OPS", "LayerStrategy", "smallest_valid_reuse", "valid_reuse_factors"]


# ----------------------------------------------------------------------------- weight layers
_WEIGHT_MODELS = Registry("weight-layer resource model")
weight_model = _WEIGHT_MODELS.register


def _kernel_nonzeros(n: NodeCounts) -> int:
    """Constant multiplies of one kernel instance (:meth:`qsp.ops.OpRule.kernel_constants`)."""
    return RULES[n.op].kernel_constants(n.weight)


def _latency(n: NodeCounts, reuse: int, kind: str) -> tuple[int, int]:
    w = n.weight
    mult = {"DSP": 1}.get(kind, 0)
    depth = (reuse - 1) + mult + math.ceil(ceil_log2(max(w.max_row_nonzeros, 1) + 1) / ADDS_PER_STAGE)
    ii = reuse * w.positions
    return depth + (w.positions - 1) * reuse, ii


def _weight_rom(n: NodeCounts, reuse: int, count_weights: int) -> tuple[int, int]:
    """(BRAM18, LUT) of a weight ROM of ``reuse`` words holding ``count_weights`` weights."""
    bw = n.weight.weight_bits
    width = math.ceil(count_weights / reuse) * bw
    if reuse >= BRAM_MIN_DEPTH and width * reuse >= BRAM_MIN_BITS:
        return math.ceil(width / 36) * math.ceil(reuse / 512), 0
    return 0, width * math.ceil(reuse / 64)


@weight_model("Latency")
def _latency_model(n: NodeCounts, st: LayerStrategy, dsp_width) -> Resources:
    w = n.weight
    count = _kernel_nonzeros(n)
    dsp, lut, kind = multipliers(n, count, True, dsp_width)
    acc = w.acc_format.bits
    adders = max(count - w.n_out, 0) + (w.n_out if w.biases else 0)
    lut += adders * min(acc, w.weight_bits + w.in_format.bits + 1)
    ff = count * (w.weight_bits + w.in_format.bits) + w.n_out * acc
    lat, ii = _latency(n, 1, kind)
    return Resources(dsp, lut, ff, 0, lat, ii, count, kind)


def _reused(n: NodeCounts, st: LayerStrategy, dsp_width, count_weights: int) -> Resources:
    w = n.weight
    r = max(int(st.reuse_factor), 1)
    count = math.ceil(count_weights / r)
    dsp, lut, kind = multipliers(n, count, False, dsp_width)
    acc = w.acc_format.bits
    lut += count * acc + w.n_out * acc  # accumulators + final sum per output
    bram, rom_lut = _weight_rom(n, r, count_weights)
    lut += rom_lut
    ff = count * (w.weight_bits + w.in_format.bits + acc) + w.n_out * acc
    lat, ii = _latency(n, r, kind)
    return Resources(dsp, lut, ff, bram, lat, ii, count, kind)


@weight_model("Resource")
def _resource_model(n, st, dsp_width) -> Resources:
    return _reused(n, st, dsp_width, n.weight.weights)


@weight_model("resource_unrolled")
def _unrolled_model(n, st, dsp_width) -> Resources:
    return _reused(n, st, dsp_width, n.weight.nonzeros)


@weight_model("distributed_arithmetic")
def _da_model(n: NodeCounts, st, dsp_width) -> Resources:
    w = n.weight
    digits = w.csd_digits * _kernel_nonzeros(n) / max(w.nonzeros, 1)
    adders = max(round(digits) - w.n_out, 0) + (w.n_out if w.biases else 0)
    width = w.in_format.bits + w.weight_bits
    lut = adders * width
    depth = math.ceil(ceil_log2(max(round(digits) // max(w.n_out, 1), 1) + 1) / ADDS_PER_STAGE) + 1
    ff = w.n_out * w.acc_format.bits + math.ceil(adders * width / 2)
    return Resources(0, lut, ff, 0, depth + w.positions - 1, w.positions, 0, "shift-add")


# ----------------------------------------------------------------------------- other layers
# Each op's own model (non-weight layers, and weight layers built one way only, such as
# scale_shift) is defined next to the op: :meth:`qsp.ops.OpRule.resources` /
# :meth:`qsp.ops.OpRule.weight_resources`.


def buildable(n: NodeCounts, st: LayerStrategy | None) -> LayerStrategy:
    """The strategy that qsp-compile can build for ``n`` given ``st``: ``st`` itself, or
    ``Latency`` with reuse factor 1 for the layers built only that way (depthwise / grouped
    conv, scale_shift: :attr:`~qsp.estimate.counts.WeightInfo.latency_only`)."""
    st = st or LayerStrategy()
    w = n.weight
    if w is not None and w.latency_only and (st.strategy != "Latency" or int(st.reuse_factor) != 1):
        return LayerStrategy("Latency", 1, w.latency_only + (f" (not {st.strategy} R={st.reuse_factor})"))
    if w is not None and w.latency_only and not st.why:
        return LayerStrategy("Latency", 1, w.latency_only)
    return st


def critical_path(nodes, latency: dict[str, int]) -> int:
    """Latency of a DAG of ``nodes`` (each with ``name`` and ``inputs``) whose node ``x``
    takes ``latency[x]`` cycles: the longest path from the graph input, each node starting
    when its latest producer is done (io_parallel: independent branches run side by side)."""
    done: dict[str, int] = {}
    prev = None
    for n in nodes:
        ins = n.inputs or ([prev] if prev is not None else [])
        done[n.name] = max((done.get(x, 0) for x in ins), default=0) + int(latency.get(n.name, 0))
        prev = n.name
    return max(done.values(), default=0)


def layer_resources(n: NodeCounts, st: LayerStrategy | None, dsp_width: tuple[int, int]) -> Resources:
    rule = RULES.get(n.op)
    if n.weight is not None:
        st = buildable(n, st)
        own = rule.weight_resources(n, st, dsp_width) if rule is not None else None
        if own is not None:
            return own
        model = _WEIGHT_MODELS.get(st.strategy)
        if model is None:
            from ..errors import ConfigError
            raise ConfigError(f"layer {n.name!r}: strategy {st.strategy!r} unknown; known: {list(_WEIGHT_MODELS)}")
        return model(n, st, dsp_width)
    return rule.resources(n) if rule is not None else Resources()
