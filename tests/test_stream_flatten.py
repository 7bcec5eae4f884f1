"""io_stream: qsp's elementwise layers right after a Flatten (docs/hls4ml-ops.md, "Elementwise
layer right after a Flatten, io_stream").

hls4ml's InplaceStreamFlatten leaves the stream as it was (one value a word after the
channels-last transpose) while the next layer's output stream is packed by its flat shape,
so QspMask / QspRequant read words of one size and write words of another. Each graph here
puts one of them right after the Flatten, compiles in io_stream and checks csim, hls4ml's
predict and onnxruntime bit for bit against qsp's emulation; the fault test flips one mask
bit in the HLS only and must fail verification.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qsp.bundle import FlattenNode, MaskNode
from qsp.compile.hls4ml_project import CompileOptions
from qsp.compile.pipeline import compile_bundle
from qsp.errors import VerificationError
from qsp.verify.emulate import emulate
from tests.graphs import conv, linear, make, quant, random_codes

C, H, O = 4, 4, 5  # conv output C x H x H, flattened to N, then Dense to O
N = C * H * H


def flatten_bundle(order: str, seed: int = 0):
    """conv -> quantize (folds into the conv) -> flatten -> then

    * ``"mask"``:    mask -> quantize (a coarser format: folds into the QspMask cast) -> linear
    * ``"requant"``: quantize (standalone: a QspRequant) -> mask -> linear

    so the layer right after the Flatten is QspMask resp. QspRequant. The second quantize
    has fewer fraction and integer bits than the first: the cast rounds and saturates."""
    rng = np.random.default_rng(seed)
    nodes = [quant("input_quant", [2, 6, 6], 8, 4),
             conv("conv1", [2, 6, 6], C, 3, 6, 4, bbits=10, bfrac=6),
             quant("quant1", [C, H, H], 8, 3),
             FlattenNode(name="flatten1", in_shape=[C, H, H], out_shape=[N])]
    mask_node = MaskNode(name="mask1", in_shape=[N], out_shape=[N])
    requant = quant("quant2", [N], 6, 2)
    nodes += [mask_node, requant] if order == "mask" else [requant, mask_node]
    nodes.append(linear("dense1", N, O, 6, 5, bbits=10, bfrac=6))
    mask = (rng.random(N) > 0.3).astype(np.float64)
    mask_node.sparsity = float(np.mean(mask == 0))
    w = {"conv1.weight": random_codes(rng, (C, 2, 3, 3), 6) / 2.0 ** 4,
         "conv1.bias": random_codes(rng, (C,), 10) / 2.0 ** 6,
         "dense1.weight": random_codes(rng, (O, N), 6) / 2.0 ** 5,
         "dense1.bias": random_codes(rng, (O,), 10) / 2.0 ** 6}
    b = make(nodes, w, {"mask1.mask": mask})
    b.test_x = (random_codes(rng, (32, 2, 6, 6), 8) / 2.0 ** 4).astype(np.float32)
    b.test_y = None
    return b


def _compile(b, out):
    # no transforms: fold_masks would fold this 1-D mask into dense1 and drop the QspMask layer
    return compile_bundle(b, out, CompileOptions(io_type="io_stream"), steps=())


def _word_sizes(project, kernel: str) -> tuple[int, int]:
    """(input, output) stream word sizes of the one ``nnet::<kernel><in_t, out_t, ...>`` call
    in the generated firmware (from the ``nnet::array<..., n*1>`` typedefs)."""
    fw = Path(project) / "firmware"
    calls = re.findall(rf"nnet::{kernel}<(\w+), (\w+),", (fw / "myproject.cpp").read_text())
    assert len(calls) == 1, calls
    defs = (fw / "defines.h").read_text()

    def size(t):
        m = re.search(rf"typedef nnet::array<.*, (\d+)\*1> {t};", defs)
        assert m, t
        return int(m.group(1))

    return size(calls[0][0]), size(calls[0][1])


@pytest.mark.parametrize("order", ["mask", "requant"])
def test_elementwise_right_after_flatten_io_stream_exact(order, tmp_path):
    b = flatten_bundle(order)
    res = _compile(b, tmp_path)
    rep = res.report
    assert rep.mismatches == 0 and len(rep.paths) == 3 and all(p.ran for p in rep.paths)
    layers = [(lp.name, lp.op) for lp in res.plan.layers]
    first = ("mask1", "mask") if order == "mask" else ("quant2", "requant")
    assert layers[layers.index(("flatten1", "flatten")) + 1] == first
    # the layer after the Flatten really reads one word size and writes another
    din, dout = _word_sizes(res.project, "qsp_mask" if order == "mask" else "qsp_requant")
    assert din < dout == N, (din, dout)
    # the graph really exercises the cast: some values round, some saturate, the mask zeros some
    t = emulate(b, b.test_x, trace=True)
    q1 = t["quant1"].reshape(len(b.test_x), -1)
    assert np.any(q1 * 4 != np.round(q1 * 4)) and np.any(np.abs(q1) > 8)
    assert np.any((b.mask("mask1") == 0) & np.any(q1 != 0, axis=0))


def test_one_mask_bit_flipped_in_hls_is_caught(tmp_path, monkeypatch):
    """The HLS mask differs from the bundle's in one element (a 1 that zeros a value that is
    nonzero for some inputs): verification against the emulation of the original fails."""
    import qsp.compile.deploy as deploy

    b = flatten_bundle("mask")
    t = emulate(b, b.test_x, trace=True)
    live = np.count_nonzero(t["mask1"].reshape(len(b.test_x), -1), axis=0)
    k = int(np.argmax(live))
    assert live[k] > 0 and b.mask("mask1")[k] == 1
    orig = deploy.build_deploy_model

    def faulty(tx, plan):
        key = "mask1.mask"
        good = tx.masks[key]
        bad = np.array(good, copy=True)
        bad[k] = 0
        tx.masks[key] = bad
        try:
            return orig(tx, plan)
        finally:
            tx.masks[key] = good

    monkeypatch.setattr(deploy, "build_deploy_model", faulty)
    with pytest.raises(VerificationError):
        _compile(b, tmp_path)
    rep = json.loads((tmp_path / "verify.json").read_text())
    paths = rep["summary"]["paths"]
    assert paths["onnxruntime"]["mismatches"] == 0  # the reference side is the original bundle
    assert paths["csim_testbench"]["mismatches"] > 0 and paths["hls4ml_predict"]["mismatches"] > 0
    assert rep["first_diverging_layer"] == "mask1"
