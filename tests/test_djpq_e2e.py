"""DJPQ end to end: qsp-train's djpq method writes a bundle with learned per-layer bits and
pruned channels removed; qsp-compile turns it into an hls4ml project that verifies exactly
(emulation = onnxruntime = hls4ml csim = standalone testbench)."""
from __future__ import annotations

import pytest
import torch

from qsp.bundle import Bundle
from qsp.train import TrainConfig, run


@pytest.fixture(scope="module")
def djpq_run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("djpq") / "run"
        cfg = TrainConfig(task="digits", method="djpq", epochs=2, train_limit=600, out=str(out), progress=False,
                          float_baseline=False, model_kwargs={"hidden": [32, 16]},
                          djpq={"gate_init_logvar": -2.5, "kl_weight": 0.01, "lambda_bops": 2.0})
        rep = run(cfg, echo=lambda *a: None)
    finally:
        torch.set_num_threads(n)
    return rep


def test_train_djpq_bundle_has_learned_bits_and_kept_channels(djpq_run):
    b = Bundle.read(djpq_run.bundle_path)
    assert b.qspec.method == "djpq"
    rep = b.qspec.extra["djpq"]
    layers = [n for n in b.graph if n.op in ("linear", "conv2d")]
    assert len(rep["layers"]) == len(layers) == 3
    bits = [n.weight.bits for n in layers] + [n.format.bits for n in b.graph if n.op == "quantize"]
    assert len(set(bits)) > 1, bits                       # learned, mixed precision
    assert [r["w_bits"] for r in rep["layers"]] == [n.weight.bits for n in layers]
    kept = [r["kept"] for r in rep["layers"]]
    assert [n.out_features for n in layers] == kept       # pruned units physically removed
    assert sum(kept[:2]) < 32 + 16                        # something was pruned
    assert 0 < rep["bops_ratio"] < 1 / 16                 # below an 8-bit dense model
    assert 0.0 <= rep["metrics"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_djpq_bundle_compiles_and_verifies_exactly(djpq_run, tmp_path):
    from qsp.compile.pipeline import compile_bundle

    res = compile_bundle(djpq_run.bundle_path, tmp_path / "hls", max_inputs=64)
    assert res.report is not None and res.report.ok and res.report.inputs == 64, res.report
