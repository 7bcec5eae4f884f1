"""io_parallel vs io_stream estimates of the real networks on every shipped board.

For each bundle: per board, the estimator's verdict, binding resource, its utilisation
and latency/II for hls4ml's io_parallel design and for its io_stream design
(:mod:`qsp.estimate.stream`, docs/estimate.md "io_stream"); the plan shown is the one the
estimator proposes (the default rule's plan when it fits, else the alternative that fits,
else the least bad). An analytic model, not synthesis: see docs/estimate.md for what it
does not model (AXI/DMA wrapper, FIFO depth optimisation, Vivado's own mapping choices).

The bundles are NOT in git (they are outputs of benchmarks/real_networks.py runs, on disk
under benchmarks/results/real_networks/): the DJPQ fine-tuned ResNet-8 (H3), MobileNetV2-tiny
(M1) and DS-CNN (D1), and the runs/*_qsparse bundles when present. A missing bundle is
skipped and listed by name in the JSON's ``skipped``.

    python benchmarks/estimate_stream.py [--out benchmarks/results/estimate_stream.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DJPQ = RESULTS / "real_networks" / "djpq_finetune" / "runs"
BUNDLES = {
    "resnet8_djpq_H3": DJPQ / "resnet8_djpq_H3" / "bundle",
    "mobilenet_v2_tiny_djpq_M1": DJPQ / "mobilenet_v2_tiny_djpq_M1" / "bundle",
    "ds_cnn_djpq_D1": DJPQ / "ds_cnn_djpq_D1" / "bundle",
}
QSPARSE = RESULTS / "real_networks" / "runs"
IO_TYPES = ("io_parallel", "io_stream")


def _bundles() -> tuple[dict[str, Path], list[dict]]:
    found, skipped = {}, []
    for name, p in BUNDLES.items():
        (found.__setitem__(name, p) if (p / "qspec.json").is_file()
         else skipped.append({"name": name, "path": str(p.relative_to(ROOT)), "why": "bundle not on disk"}))
    for run in sorted(QSPARSE.glob("*_qsparse")) if QSPARSE.is_dir() else []:
        p = run / "bundle"
        if (p / "qspec.json").is_file():
            found[run.name] = p
        else:
            skipped.append({"name": run.name, "path": str(p.relative_to(ROOT)), "why": "no bundle in the run"})
    return found, skipped


def _row(be) -> dict:
    shown = be.shown
    u = shown.utilization(be.board)
    t = shown.total
    return {"verdict": be.verdict, "binding": be.binding, "utilization_binding": u[be.binding],
            "utilization": u, "usage": t.usage(), "plan": shown.label,
            "latency_cycles": t.latency_cycles, "ii_cycles": t.ii_cycles,
            "latency_us": be.latency_us, "ii_us": be.ii_us}


def run(out: Path) -> dict:
    from qsp.estimate import estimate

    found, skipped = _bundles()
    nets = {}
    for name, path in found.items():
        t0 = time.perf_counter()
        per_io = {io: estimate(path, "all", io_type=io) for io in IO_TYPES}
        boards = {}
        for be_p, be_s in zip(per_io["io_parallel"].boards, per_io["io_stream"].boards):
            boards[be_p.board.name] = {"io_parallel": _row(be_p), "io_stream": _row(be_s)}
        nets[name] = {"bundle": str(path.relative_to(ROOT)), "seconds": round(time.perf_counter() - t0, 2),
                      "hardware_graph": per_io["io_stream"].hardware.describe(), "boards": boards}
        fit = [b for b, r in boards.items() if r["io_stream"]["verdict"] != "does not fit"]
        print(f"{name}: io_stream fits {', '.join(fit) or 'no board'}", flush=True)
    doc = {"what": "qsp-estimate io_parallel vs io_stream per board (analytic model, docs/estimate.md)",
           "bundles_in_git": False,
           "note": "bundles are outputs of benchmarks/real_networks.py runs, on disk only; a missing one is skipped "
                   "by name",
           "python": platform.python_version(), "networks": nets, "skipped": skipped}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}" + (f"; skipped {', '.join(s['name'] for s in skipped)}" if skipped else ""))
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "estimate_stream.json"))
    run(Path(ap.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
