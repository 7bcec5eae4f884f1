"""The io_stream model: resources and latency of the dataflow design hls4ml 1.3.0 writes
with ``IOType: io_stream`` (docs/estimate.md, "io_stream").

What hls4ml generates (seen in a qsp-compile ``--io-type io_stream`` project, firmware/
myproject.cpp and parameters.h, and read in hls4ml's templates/vivado/nnet_utils):

* ``#pragma HLS DATAFLOW``: every layer is a process, all run concurrently;
* one ``hls::stream<nnet::array<T, C>>`` per tensor (one word = one pixel's C channels;
  a vector that a Dense layer reads is one word of its features; a flatten's output
  ``C x H`` words of ``W`` values), ``#pragma HLS STREAM depth=<words>``;
* the input is transposed to channels-last (``transpose_input_for_x``); a ``transpose``
  before every flatten;
* a ZeroPadding2D/1D layer (``zeropad2d_cl``) before a conv with padding, its own stream
  of the padded map;
* a ``clone_stream`` where a value has two or more readers, one stream per reader;
* a quantize folds into its producer's cast (the producer's stream carries the quantized
  type) when the producer casts and the quantize is its only reader.

This module is the driver: it walks the graph, works out each layer's streams
(:class:`~qsp.ops.base.StreamShape`), asks the op's rule for the layer
(:meth:`~qsp.ops.OpRule.stream_resources`, :meth:`~qsp.ops.OpRule.stream_weight_resources`),
and adds what no single op owns: the input transpose, zero padding, clones and the FIFOs.

FIFOs (:func:`fifo_resources`): ``depth x width`` bits; Vitis HLS binds a FIFO to SRL only
up to ``auto_srl_max_bits`` = 1024 bits (UG1399, ``config_storage fifo``, default), else to
memory: here BRAM18 from :data:`FIFO_BRAM_BITS` bits (the cheapest 18 Kb aspect ratio), a
LUTRAM below it.

Latency: the design's II is the slowest layer's (``ii_cycles``: pixels x its per-pixel
II); its latency the longest path of first-output delays (the pipeline fill) plus that II.
"""
from __future__ import annotations

import math

from ..bundle.schema import GRAPH_INPUT
from ..ops import RULES, Resources
from ..ops.base import StreamShape, tensor_words as _words
from .resources import buildable, layer_resources

#: FIFOs of at most this many bits are SRLs / LUTRAM (UG1399 config_storage fifo:
#: ``-auto_srl_max_bits`` default 1024); larger ones BRAM18
FIFO_SRL_MAX_BITS = 1024
#: the same figure as the boundary from which a FIFO goes to block RAM
FIFO_BRAM_BITS = FIFO_SRL_MAX_BITS
#: ``-auto_srl_max_depth`` default (UG1399): deeper FIFOs under the bits limit are LUTRAM
FIFO_SRL_MAX_DEPTH = 2
#: 18 Kb block RAM aspect ratios (depth, width) of a simple dual-port FIFO
BRAM18_ASPECTS = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))


def bram18_blocks(depth: int, width: int) -> int:
    """BRAM18 blocks of a ``depth x width`` memory: the cheapest aspect ratio."""
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_ASPECTS)


def fifo_resources(depth: int, width: int) -> Resources:
    """A FIFO of ``depth`` words of ``width`` bits: BRAM18 above :data:`FIFO_BRAM_BITS`
    bits, else an SRL (depth <= 2: one LUT per bit) or LUTRAM (one LUT per bit per 64 words,
    as the weight LUT-ROM); plus its read/write pointers (2 x ceil(log2 depth) FFs)."""
    depth, width = max(int(depth), 1), max(int(width), 1)
    ptr = 2 * max(math.ceil(math.log2(depth)), 1)
    if depth * width > FIFO_BRAM_BITS:
        return Resources(0, 0, ptr, bram18_blocks(depth, width), 0, 1)
    if depth <= FIFO_SRL_MAX_DEPTH:
        return Resources(0, width, ptr, 0, 0, 1)
    return Resources(0, width * math.ceil(depth / 64), ptr, 0, 0, 1)


def stream_plan(counts, strat: dict, dsp_width) -> tuple[dict[str, Resources], Resources, dict]:
    """(per-layer resources, total, strategies used) of the io_stream design of ``counts``
    (a :class:`~qsp.estimate.counts.GraphCounts`) with ``strat`` (name -> LayerStrategy)."""
    nodes = counts.nodes
    by = {n.name: n for n in nodes}
    readers: dict[str, list[str]] = {}
    for i, n in enumerate(nodes):
        for x in (n.inputs or ([nodes[i - 1].name] if i else [GRAPH_INPUT])):
            readers.setdefault(x, []).append(n.name)

    def folded(n) -> bool:
        """A quantize that hls4ml folds into its producer's cast (or into the input type)."""
        if not n.quant_point:
            return False
        src = (n.inputs or [GRAPH_INPUT])[0]
        if src == GRAPH_INPUT:
            return True
        p = by.get(src)
        return p is not None and RULES[p.op].casting and readers.get(src) == [n.name]

    def stream_bits(n) -> int:
        """Bits of the values ``n`` writes: a quantize that reads it (directly, or through a
        chain of single-reader ops that commute with quantization: relu, clip, max-pool,
        mask) is folded into ``n``'s cast by qsp-compile (a quantize hoisted across a
        commuting op lands in the producer's cast), so the stream carries its format."""
        cur = n
        while RULES[n.op].casting:
            rd = readers.get(cur.name, [])
            if len(rd) != 1:
                break
            x = by[rd[0]]
            if x.quant_point:
                return x.out_format.bits
            if not RULES[x.op].commuting or RULES[x.op].host_reshape:
                break
            cur = x
        return n.out_format.bits

    layers: dict[str, Resources] = {}
    used = dict(strat)
    # stream of each tensor: (words, values per word, bits); a folded quantize's producer
    # writes the quantize's stream
    words: dict[str, tuple[int, int, int]] = {}
    delay: dict[str, int] = {}
    first = nodes[0] if nodes else None
    in_shape = list(first.in_shape) if first is not None else []
    if len(in_shape) >= 2:  # hls4ml's transpose of the input to channels-last
        w, c = _words(in_shape)
        raw = math.prod(in_shape[:-1])  # words of the top-level input (PyTorch order)
        n_el = math.prod(in_shape)
        layers["transpose:input"] = Resources(0, 0, n_el * counts.input_bits, 0, raw + 1, max(raw, w))
        words[GRAPH_INPUT] = (w, c, counts.input_bits)
        delay[GRAPH_INPUT] = raw + 1
    else:
        w, c = _words(in_shape)
        words[GRAPH_INPUT] = (w, c, counts.input_bits)
        delay[GRAPH_INPUT] = 0
    cloned = {t for t, rd in readers.items() if len(rd) > 1}  # hls4ml clone_stream

    def stream_in(x: str) -> tuple[int, int, int]:
        return words.get(x, words[GRAPH_INPUT])

    for i, n in enumerate(nodes):
        ins = n.inputs or ([nodes[i - 1].name] if i else [GRAPH_INPUT])
        src = ins[0]
        in_w, in_c, in_b = stream_in(src)
        start = max((delay.get(x, 0) for x in ins), default=0) + (1 if any(x in cloned for x in ins) else 0)
        if folded(n):
            # the producer (or the input type) casts to this format: its stream is this node's
            w0, c0, _ = stream_in(src)
            words[n.name] = (w0, c0, n.out_format.bits)
            delay[n.name] = start
            if src != GRAPH_INPUT:
                lanes = min(c0, math.ceil(n.out_nonzero / max(w0, 1)))
                r = RULES[n.op].stream_resources(n, StreamShape(w0, lanes, w0, w0, 1, c0, in_b))
                r.latency_cycles = 0  # in the producer's pipeline stage
                layers[n.name] = r
            continue
        rule = RULES[n.op]
        ow, oc = rule.stream_words(n.in_shape, n.out_shape)
        lanes = min(oc, math.ceil(n.out_nonzero / max(ow, 1)))
        node = n.node
        pad = tuple(getattr(node, "padding", None) or ()) if node is not None else ()
        pad = tuple(int(p) for p in pad) if pad else ()
        in_width = int(n.in_shape[2]) if len(n.in_shape) >= 3 else (int(n.in_shape[1]) if len(n.in_shape) == 2 else 1)
        in_pixels = in_w
        if pad and any(pad):
            # hls4ml's ZeroPadding layer before the conv: its logic (a 2:1 mux per bit per
            # channel) and the padded map's stream
            if len(n.in_shape) >= 3:
                ph, pw = (pad + pad)[:2] if len(pad) == 1 else pad[:2]
                hp, wp = int(n.in_shape[1]) + 2 * ph, int(n.in_shape[2]) + 2 * pw
            else:
                pw = pad[-1]
                hp, wp = 1, int(n.in_shape[1]) + 2 * pw
            in_pixels, in_width = hp * wp, wp
            layers[f"zeropad:{n.name}"] = Resources(0, in_c * in_b, in_c * in_b, 0, 1, in_pixels)
            layers[f"fifo:zeropad:{n.name}"] = fifo_resources(in_pixels, in_c * in_b)
            start += 1
        shape = StreamShape(ow, lanes, in_pixels, in_w, in_width, in_c, in_b)
        if n.weight is not None:
            st = buildable(n, used.get(n.name))
            if n.op in _strategy_ops():
                used[n.name] = st
            else:
                used.pop(n.name, None)
            kernel = layer_resources(n, st, dsp_width)
            r = rule.stream_weight_resources(n, st, kernel, shape, dsp_width)
        else:
            r = rule.stream_resources(n, shape)
        layers[n.name] = r
        words[n.name] = (ow, oc, stream_bits(n))
        delay[n.name] = start + r.latency_cycles
    # FIFOs: one per stream written by a layer (a folded quantize's stream is its producer's),
    # one more per reader after a clone; the graph output is the top-level port (not a FIFO)
    if len(in_shape) >= 2 and not all(folded(by[x]) for x in readers.get(GRAPH_INPUT, [])):
        # the transposed input's stream (a quantize folded into the input type writes it:
        # then it is counted as that quantize's stream below)
        wi, ci, bi = words[GRAPH_INPUT]
        layers["fifo:input"] = fifo_resources(wi, ci * bi)
    for n in nodes:
        if folded(n) and (n.inputs or [GRAPH_INPUT])[0] != GRAPH_INPUT:
            continue  # its stream is counted at its producer
        rd = readers.get(n.name, [])
        if len(rd) == 1 and folded(by[rd[0]]):
            rd = readers.get(rd[0], [])
        if not rd:
            continue
        wn, cn, bn = words[n.name]
        layers[f"fifo:{n.name}"] = fifo_resources(wn, cn * bn)
        if len(rd) > 1:
            layers[f"clone:{n.name}"] = Resources(0, 0, 0, 0, 1, wn)
            for k in range(len(rd)):
                layers[f"fifo:{n.name}_cpy{k + 1}"] = fifo_resources(wn, cn * bn)
    total = Resources(latency_cycles=0, ii_cycles=1)
    for r in layers.values():
        total = total + r
    total.ii_cycles = max((r.ii_cycles for r in layers.values()), default=1)
    fill = max(delay.values(), default=0)
    total.latency_cycles = fill + total.ii_cycles
    return layers, total, used


def _strategy_ops():
    from ..hardware import STRATEGY_OPS
    return STRATEGY_OPS
