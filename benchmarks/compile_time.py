"""Compile time: qsp-compile (bundle -> verified csim) next to hls4ml's bare
convert + compile of the same network, in one process, interleaved, medians.

    python benchmarks/compile_time.py [--reps 3] [--opt-level N] [--out benchmarks/results/compile_time.json]

For each of the test MLP and CNN (tests/bundles.py) it measures:
* ``qsp_end_to_end_s``: compile_bundle(...) with verification (transforms, precision,
  convert, the C++ build of hls4ml's library AND the standalone testbench, emulation,
  onnxruntime, predict, csim);
* ``qsp_compile_s``: the same run without the verification's own work: prepare + convert
  (+ the VivadoAccelerator project) + the whole C++ build (``build_s``: hls4ml's library and
  the standalone testbench, both ready);
* ``hls4ml_bare_s``: hls4ml.utils.config_from_pytorch_model (default precision) +
  convert_from_pytorch_model + compile() of the float network with the bundle's weights
  (hls4ml's own build_lib.sh, -O3).
Goals (issue 6): MLP end to end <= 60 s on 2 cores; qsp_compile_s / hls4ml_bare_s <= 1.2.
``--opt-level`` sets qsp's g++ -O level (CompileOptions.cxx_opt_level; default: qsp's).
To compare another checkout of qsp (e.g. before a change), run this script with
``PYTHONPATH=<that checkout>/toolchain``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare_hls4ml(bundle, kind, out_dir):
    import hls4ml

    from tests.bundles import tiny_cnn, tiny_mlp

    net = tiny_mlp() if kind == "mlp" else tiny_cnn()
    sd = {k: torch.tensor(v) for k, v in bundle.state_dict.items()}
    net.load_state_dict(sd)
    net.eval()
    t0 = time.perf_counter()
    cfg = hls4ml.utils.config_from_pytorch_model(net, tuple(bundle.graph[0].in_shape), granularity="name",
                                                 backend="Vitis", channels_last_conversion="full")
    hm = hls4ml.converters.convert_from_pytorch_model(net, hls_config=cfg, output_dir=str(out_dir), backend="Vitis",
                                                      io_type="io_parallel", part="xc7z020clg400-1")
    hm.compile()
    return time.perf_counter() - t0


def qsp_run(bundle, out_dir, opt_level=None):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    kw = {} if opt_level is None else {"cxx_opt_level": opt_level}
    t0 = time.perf_counter()
    res = compile_bundle(bundle, out_dir, CompileOptions(part="xc7z020clg400-1", **kw), accelerator_board="pynq-z2")
    total = time.perf_counter() - t0
    t = res.timings
    compile_only = t["prepare_s"] + t["convert_s"] + t["build_s"] + t.get("accelerator_s", 0.0)
    assert res.report.ok and {p.path for p in res.report.paths} == {"onnxruntime", "hls4ml_predict", "csim_testbench"}
    return total, compile_only


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--opt-level", type=int, default=None, help="qsp's g++ -O level (default: qsp's own)")
    ap.add_argument("--out", default="benchmarks/results/compile_time.json")
    a = ap.parse_args(argv)
    from tests.bundles import build_bundle

    import qsp

    results = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("mlp", "cnn"):
            b = build_bundle(kind).write(Path(tmp) / f"{kind}_bundle")
            from qsp.bundle import read_bundle

            bundle = read_bundle(b)
            e2e, comp, bare = [], [], []
            for r in range(a.reps):  # interleaved
                tot, c = qsp_run(bundle, Path(tmp) / f"{kind}_qsp_{r}", a.opt_level)
                e2e.append(tot)
                comp.append(c)
                bare.append(bare_hls4ml(bundle, kind, Path(tmp) / f"{kind}_bare_{r}"))
                print(f"{kind} rep {r}: qsp end-to-end {tot:.1f} s, qsp compile {c:.1f} s, hls4ml bare {bare[-1]:.1f} s",
                      flush=True)
            m = {k: statistics.median(v) for k, v in (("qsp_end_to_end_s", e2e), ("qsp_compile_s", comp),
                                                       ("hls4ml_bare_s", bare))}
            m["overhead_ratio"] = m["qsp_compile_s"] / m["hls4ml_bare_s"]
            m["runs"] = {"qsp_end_to_end_s": e2e, "qsp_compile_s": comp, "hls4ml_bare_s": bare}
            results[kind] = m
    doc = {"benchmark": "compile_time", "reps": a.reps, "cpus": os.cpu_count(), "machine": platform.machine(),
           "python": platform.python_version(), "qsp_source": str(Path(qsp.__file__).parent), "opt_level": a.opt_level,
           "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(), "results": results,
           "goals": {"mlp_end_to_end_s": 60, "overhead_ratio": 1.2}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: {kk: round(vv, 2) for kk, vv in v.items() if kk != "runs"} for k, v in results.items()}))


if __name__ == "__main__":
    main()
