"""Calibration of qsp's analytic resource model against published hls4ml synthesis results.

Model: the hls4ml jet-tagging MLP 16-64-32-32-5 (ReLU), dense (no pruning), every weight and
activation ap_fixed<16,6>, Latency strategy, reuse factor 1, io_parallel.

Published figure used (THE ONLY ONE, and read the caveat):
  Coelho et al., "Automatic heterogeneous quantization of deep neural networks for low-latency
  inference on the edge for particle detectors", Nature Machine Intelligence 3, 675 (2021),
  arXiv:2006.10159, model "BF" (baseline, full precision ap_fixed<16,6>, RF 1) on a Xilinx
  xcvu9p at 200 MHz, Vivado HLS synthesis estimates.
  The numbers below were entered from memory of that table in a session without network
  access to the paper; they are marked verified=False and must be checked against the paper
  before the ratios are quoted anywhere. The weights of the published model are not public
  in this sandbox; ours are random 16-bit values (DSP/LUT of a dense Latency layer depend on
  the weights only through zero/power-of-two constants, rare at 16 bits).

Run:  python benchmarks/estimate_calibration.py [--out benchmarks/results/estimate_calibration.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qsp.boards import board_from_dict
from qsp.bundle import Bundle, LinearNode, ModelRef, QSpec, QuantNode, ReluNode, TaskInfo, WeightFormat
from qsp.estimate import estimate
from qsp.fixedpoint import FixedFormat

PUBLISHED = [
    {"name": "hls4ml jet-tagging MLP BF, ap_fixed<16,6>, RF 1, xcvu9p @ 200 MHz",
     "source": "Coelho et al. 2021, Nat. Mach. Intell. 3, 675 (arXiv:2006.10159), Table (model BF)",
     "verified": False, "dsp": 1826, "lut": 171555, "ff": None, "bram18": 0, "latency_cycles": 9},
]

VU9P = {  # xcvu9p-flgb2104-2-e, AMD/Xilinx UltraScale+ product table (DS890/XMP102)
    "name": "vu9p", "part": "xcvu9p-flgb2104-2-e", "lut": 1182240, "ff": 2364480, "dsp": 6840,
    "bram18k": 4320, "bram36k": 2160, "bram_mb": 75.9, "uram": 960, "clock_mhz": 200,
    "offchip": {"type": "none", "size_mb": 0, "bandwidth_gb_s": 0}, "hls4ml_board": None,
    "sources": {"part": "paper", "resources": "AMD/Xilinx Virtex UltraScale+ product table (DS890)",
                "clock_mhz": "paper: 200 MHz", "offchip": "not used"}, "dsp_kind": "DSP48E2"}


def jet_mlp(bits=16, integer=6, seed=0) -> Bundle:
    rng = np.random.default_rng(seed)
    frac = bits - integer
    sizes = [16, 64, 32, 32, 5]
    act = FixedFormat(bits, frac, True, "floor")
    nodes, weights = [QuantNode("input_quant", [16], [16], format=act)], {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
        w = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(b, a)).astype(np.float64) / 2 ** frac
        bias = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=b).astype(np.float64) / 2 ** frac
        name = f"fc{i}"
        nodes.append(LinearNode(name, [a], [b], in_features=a, out_features=b, weight=WeightFormat(bits, frac, True, "floor"),
                                bias=FixedFormat(bits, frac), nonzeros=int(np.count_nonzero(w))))
        weights[f"{name}.weight"], weights[f"{name}.bias"] = w, bias
        if i < len(sizes) - 1:
            nodes += [ReluNode(f"relu{i}", [b], [b]), QuantNode(f"q{i}", [b], [b], format=act)]
    spec = QSpec(TaskInfo("jets", "classification", "accuracy", [16], [5], 5), ModelRef("none:none"), nodes)
    return Bundle(spec, weights).validate()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/estimate_calibration.json")
    a = ap.parse_args(argv)
    board = board_from_dict(VU9P, "calibration board")
    est = estimate(jet_mlp(), [board], strategies={f"fc{i}": ("Latency", 1) for i in range(1, 5)})
    r = est.boards[0].plan.total
    ours = {"dsp": r.dsp, "lut": r.lut, "ff": r.ff, "bram18": r.bram18, "latency_cycles": r.latency_cycles}
    rows = []
    for p in PUBLISHED:
        ratios = {k: (ours[k] / p[k] if p.get(k) else None) for k in ours}
        rows.append({"published": p, "ours": ours, "ratio_ours_over_published": ratios})
        print(p["name"], "(verified)" if p["verified"] else "(NOT verified against the paper)")
        for k in ours:
            pub = p.get(k)
            print(f"  {k:<15} ours {ours[k]:>9,}  published {'-' if pub is None else f'{pub:,}':>9}  "
                  f"ratio {'-' if ratios[k] is None else f'{ratios[k]:.2f}'}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "jet-tagging MLP 16-64-32-32-5, ap_fixed<16,6>, Latency RF 1",
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
