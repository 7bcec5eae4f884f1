"""Compile time, like for like: qsp's C++ build next to hls4ml's own build of the SAME
hls4ml project (the graph qsp-compile converts), at the same g++ -O level, on the same CPUs,
with and without the standalone testbench; plus qsp-compile's end-to-end time.

    python benchmarks/compile_time.py [--reps 2] [--opt-levels 1,3] [--cpus 1,2] \
        [--out benchmarks/results/compile_time.json]

For each test model (MLP, CNN of tests/bundles.py) qsp-compile's front half runs once per
repetition (transforms, precision, hls4ml convert: ``convert_s``), writing the hls4ml project.
Copies of that project are then built, interleaved, by two arms:

* ``qsp``: qsp's build_lib.sh (``qsp.compile.csim.write_build_script``): firmware/<p>.cpp
  compiled once and linked into both hls4ml's ctypes library and (with the testbench) csim_tb;
  translation units as parallel jobs;
* ``hls4ml``: hls4ml's own build_lib.sh as hls4ml wrote it, only its ``-O3`` set to the same
  level; with the testbench, the testbench built as its own program beside it (g++ of
  <p>_test.cpp + firmware/<p>.cpp, started at the same time, as qsp's fallback does).

Both arms' g++ processes are pinned to the same ``--cpus`` CPUs (os.sched_setaffinity): with
1 CPU neither arm gains from parallel jobs. ``ratio`` = qsp build / hls4ml build and
``ratio_with_convert`` = (convert + qsp build) / (convert + hls4ml build), medians.
``end_to_end_s``: compile_bundle with verification (default options, testbench on).
Goal (issue 6): MLP end to end <= 60 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PART = "xc7z020clg400-1"


def _pin(cpus):
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def build_qsp(project: Path, opt: int, tb: bool, cpus) -> float:
    from qsp.compile import csim

    assert csim.write_build_script(project, "myproject", tb, opt), "hls4ml's build_lib.sh layout is not qsp's"
    t0 = time.perf_counter()
    subprocess.run(["bash", "build_lib.sh"], cwd=project, check=True, capture_output=True, preexec_fn=_pin(cpus))
    dt = time.perf_counter() - t0
    assert not tb or (project / "csim_tb").exists()
    return dt


def build_hls4ml(project: Path, opt: int, tb: bool, cpus) -> float:
    from qsp.compile import csim

    script = project / "build_lib.sh"
    text = script.read_text()
    assert re.search(r"-O3\b", text), "hls4ml's build_lib.sh has no -O3 to set"
    script.write_text(re.sub(r"-O3\b", f"-O{opt}", text))
    cmd = None
    if tb:
        csim.patch_testbench(project, "myproject")
        cmd = csim.build_command("myproject", opt)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["bash", "build_lib.sh"], cwd=project, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=_pin(cpus))]
    if cmd:
        procs.append(subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      preexec_fn=_pin(cpus)))
    rcs = [p.wait() for p in procs]
    dt = time.perf_counter() - t0
    assert rcs == [0] * len(procs), f"hls4ml arm build failed: {rcs}"
    assert not tb or (project / "csim_tb").exists()
    return dt


def convert_project(bundle, out: Path) -> tuple[Path, float]:
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    res = compile_bundle(bundle, out, CompileOptions(part=PART), verify=False)
    return res.project, res.timings["prepare_s"] + res.timings["convert_s"]


def end_to_end(bundle, out: Path) -> float:
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    t0 = time.perf_counter()
    res = compile_bundle(bundle, out, CompileOptions(part=PART))
    assert res.report.ok and {p.path for p in res.report.paths} == {"onnxruntime", "hls4ml_predict", "csim_testbench"}
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--opt-levels", default="1,3")
    ap.add_argument("--cpus", default="1,2", help="CPU counts to pin both arms to (comma list)")
    ap.add_argument("--kinds", default="mlp,cnn")
    ap.add_argument("--out", default="benchmarks/results/compile_time.json")
    a = ap.parse_args(argv)
    from qsp.bundle import read_bundle
    from tests.bundles import build_bundle

    avail = sorted(os.sched_getaffinity(0))
    opts = [int(o) for o in a.opt_levels.split(",")]
    cpu_counts = [int(c) for c in a.cpus.split(",")]
    if max(cpu_counts) > len(avail):
        sys.exit(f"compile_time.py: --cpus {a.cpus}: only {len(avail)} CPUs available")
    load_start = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind in a.kinds.split(","):
            bundle = read_bundle(build_bundle(kind).write(tmp / f"{kind}_bundle"))
            runs: dict[str, list] = {}
            e2e, conv = [], []
            for r in range(a.reps):
                e2e.append(end_to_end(bundle, tmp / f"{kind}_e2e_{r}"))
                project, c = convert_project(bundle, tmp / f"{kind}_conv_{r}")
                conv.append(c)
                for opt in opts:
                    for tb in (False, True):
                        for n in cpu_counts:
                            key = f"O{opt}_{'tb' if tb else 'notb'}_{n}cpu"
                            arms = (("qsp", build_qsp), ("hls4ml", build_hls4ml))
                            for arm, fn in (arms if r % 2 == 0 else arms[::-1]):
                                d = tmp / f"{kind}_{key}_{arm}_{r}"
                                shutil.copytree(project, d)
                                runs.setdefault(key, {"qsp": [], "hls4ml": []})[arm].append(fn(d, opt, tb, set(avail[:n])))
                                shutil.rmtree(d)
                            q, h = runs[key]["qsp"][-1], runs[key]["hls4ml"][-1]
                            print(f"{kind} rep {r} {key}: qsp {q:.1f} s, hls4ml {h:.1f} s", flush=True)
            cm = statistics.median(conv)
            res = {"end_to_end_s": statistics.median(e2e), "convert_s": cm, "runs_end_to_end_s": e2e,
                   "runs_convert_s": conv, "builds": {}}
            for key, v in runs.items():
                q, h = statistics.median(v["qsp"]), statistics.median(v["hls4ml"])
                res["builds"][key] = {"qsp_build_s": q, "hls4ml_build_s": h, "ratio": q / h,
                                      "ratio_with_convert": (cm + q) / (cm + h), "runs": v}
            results[kind] = res
    cmd = "python " + " ".join(shlex.quote(s) for s in [sys.argv[0]] + list(argv if argv is not None else sys.argv[1:]))
    doc = {"benchmark": "compile_time", "command": cmd, "reps": a.reps, "cpus": os.cpu_count(),
           "machine": platform.machine(), "python": platform.python_version(), "opt_levels": opts,
           "cpu_counts": cpu_counts, "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(),
           "compared": "the same hls4ml project (qsp's converted graph), the same g++ -O level, both arms pinned to "
                       "the same CPUs; qsp's build_lib.sh (firmware compiled once for library + testbench) vs "
                       "hls4ml's own build_lib.sh (+ the testbench built separately beside it)",
           "results": results, "goals": {"mlp_end_to_end_s": 60}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    for kind, r in results.items():
        print(kind, f"end-to-end {r['end_to_end_s']:.1f} s", {k: round(v["ratio"], 3) for k, v in r["builds"].items()})


if __name__ == "__main__":
    main()
