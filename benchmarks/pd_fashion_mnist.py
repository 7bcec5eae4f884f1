"""Performance density on Fashion-MNIST (the qsparse paper's Table 3-4 layout).

The LeNet-style CNN (qsp.train.models:lenet) trained on Fashion-MNIST as

* float;
* P(w)->Q: prune weights, then quantize (activations quantized, not pruned);
* Q->P(w): quantize, then prune weights;
* P(w,a)->Q: prune weights and activations, then quantize;
* Q->P(w,a): quantize, then prune weights and activations;

at 8 bits / 50 %, for each seed. Reports the test accuracy, the footprint (bits x nonzero
weights + bits x nonzero activations for one input), the performance density (accuracy % per
Mb) and its ratio to the float model's. Writes ``OUT/pd_fashion_mnist.json`` and
``OUT/pd_fashion_mnist.md``; the hardware that produced the numbers is recorded.

    python benchmarks/pd_fashion_mnist.py --device cuda --epochs 20 --seeds 0 1 2 --out benchmarks/results/pd_fmnist

The float model's footprint counts 32 bits per weight and per activation element at the same
points (input and every activation). Every variant uses the same epochs, optimizer, data
order and seed. Goal (issue 5): >= 8x the float PD at <= 1.0 point accuracy loss.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from qsp.train import TrainConfig
from qsp.train.pipeline import run

#: name -> config overrides (weight_sparsity / act_sparsity / order)
VARIANTS = {
    "P(w)->Q": dict(order="prune-then-quantize", weight_sparsity=0.5, act_sparsity=0.0),
    "Q->P(w)": dict(order="quantize-then-prune", weight_sparsity=0.5, act_sparsity=0.0),
    "P(w,a)->Q": dict(order="prune-then-quantize", weight_sparsity=0.5, act_sparsity=0.5),
    "Q->P(w,a)": dict(order="quantize-then-prune", weight_sparsity=0.5, act_sparsity=0.5),
}


def hardware(device: str) -> dict:
    hw = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
          "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads()}
    if device == "cuda" and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
    return hw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="benchmarks/results/pd_fashion_mnist")
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.5, help="weight and activation sparsity of the pruned variants")
    ap.add_argument("--dense", default="first,last", help="weight layers left unpruned (qsp-train's dense key)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--model-kwargs", default="{}", help="lenet kwargs as YAML, e.g. '{channels: [16, 32]}'")
    ap.add_argument("--train-limit", type=int, default=None, help="quick smoke runs only")
    ap.add_argument("--test-limit", type=int, default=None, help="quick smoke runs only")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = ap.parse_args(argv)
    import yaml

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(task="fashion-mnist", model="lenet", model_kwargs=yaml.safe_load(a.model_kwargs) or {},
                  epochs=a.epochs, device=a.device, batch_size=a.batch_size, lr=a.lr, weight_bits=a.bits,
                  act_bits=a.bits, input_bits=a.bits, train_limit=a.train_limit, test_limit=a.test_limit,
                  data_dir=a.data_dir, progress=sys.stderr.isatty(), checkpoint_every=0,
                  dense=[d for d in a.dense.split(",") if d])
    quiet = lambda *x: None  # noqa: E731
    results: dict[str, list[dict]] = {"float": []}
    t_start = time.time()
    for seed in a.seeds:
        float_metric = None
        for i, name in enumerate(a.variants):
            run_dir = out / "runs" / f"seed{seed}-{name.replace('(', '').replace(')', '').replace(',', '').replace('->', '-to-')}"
            # the first variant of a seed trains the float model too (same epochs, seed, order)
            cfg = TrainConfig(seed=seed, out=str(run_dir), float_baseline=float_metric is None,
                              float_metric=float_metric, **common,
                              **{k: (a.sparsity if k.endswith("sparsity") and v else v) for k, v in VARIANTS[name].items()})
            t0 = time.time()
            rep = run(cfg, echo=quiet)
            m = rep.metrics
            if float_metric is None:
                float_metric = m["float"]["test_metric"]
                f = m["float"]
                results["float"].append({"seed": seed, "metric": f["test_metric"], "footprint_bits": f["footprint_bits"],
                                         "pd": f["performance_density"], "seconds": f.get("train_seconds")})
            fp = m["footprint"]
            row = {"seed": seed, "metric": m["test_metric"], "footprint_bits": fp["total_bits"],
                   "weight_bits": fp["weight_bits"], "activation_bits": fp["activation_bits"],
                   "pd": m["performance_density"], "weight_sparsity": m["weight_sparsity_overall"],
                   "act_sparsity": m["act_sparsity_overall"], "seconds": time.time() - t0,
                   "bundle": str(rep.bundle_path)}
            results.setdefault(name, []).append(row)
            print(f"seed {seed} {name:10s} acc {row['metric']:.2f}  (float {float_metric:.2f})  "
                  f"{row['footprint_bits'] / 1e6:.4f} Mb  PD {row['pd']:.1f}", flush=True)

    summary = {}
    fpd = statistics.mean(r["pd"] for r in results["float"])
    facc = statistics.mean(r["metric"] for r in results["float"])
    for name, rows in results.items():
        acc = [r["metric"] for r in rows]
        pd = statistics.mean(r["pd"] for r in rows)
        summary[name] = {"metric_mean": statistics.mean(acc), "metric_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         "footprint_mb": statistics.mean(r["footprint_bits"] for r in rows) / 1e6, "pd": pd,
                         "pd_ratio_to_float": pd / fpd, "delta_to_float": statistics.mean(acc) - facc}
    doc = {"benchmark": "pd_fashion_mnist", "task": "fashion-mnist", "model": "lenet",
           "model_kwargs": common["model_kwargs"], "bits": a.bits, "sparsity": a.sparsity, "dense": common["dense"], "epochs": a.epochs,
           "seeds": a.seeds, "train_limit": a.train_limit, "test_limit": a.test_limit, "hardware": hardware(a.device),
           "wall_seconds": time.time() - t_start, "summary": summary, "runs": results,
           "goal": ">= 8x float PD at <= 1.0 point accuracy loss"}
    (out / "pd_fashion_mnist.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (out / "pd_fashion_mnist.md").write_text(md)
    print(md)
    return 0


def markdown(doc) -> str:
    hw = doc["hardware"]
    lines = [f"Fashion-MNIST, LeNet-style CNN, {doc['bits']} bits / {100 * doc['sparsity']:g} % "
             f"(dense: {','.join(doc['dense']) or 'none'}), {doc['epochs']} epochs, "
             f"seeds {doc['seeds']}; {hw['device']}" + (f" ({hw['gpu']})" if "gpu" in hw else f" ({hw['cpu_count']} CPUs)")
             + f", torch {hw['torch']}" + (f"; train_limit {doc['train_limit']}" if doc["train_limit"] else "")
             + (f", test_limit {doc['test_limit']}" if doc["test_limit"] else ""), "",
             "| variant | test acc % (mean ± std) | Δ vs float | footprint Mb | PD (acc %/Mb) | PD / float PD |",
             "|---|---|---|---|---|---|"]
    for name, s in doc["summary"].items():
        lines.append(f"| {name} | {s['metric_mean']:.2f} ± {s['metric_std']:.2f} | {s['delta_to_float']:+.2f} | "
                     f"{s['footprint_mb']:.4f} | {s['pd']:.1f} | {s['pd_ratio_to_float']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
