"""Training-step overhead of qsp's operators.

A small CNN with every weight and activation wrapped (8-bit, 50 % weight and activation
pruning, quantization on) against the same CNN in plain float, measured back to back
(interleaved) in one process; median step times and their ratio go to JSON.

    python benchmarks/overhead.py [--steps 200] [--batch 64] [--out benchmarks/results/overhead.json]

Goal (issue 4): ratio <= 1.25 on CPU. For steadier numbers on a shared machine, run with
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import qsp


def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--out", default="benchmarks/results/overhead.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    plain = cnn()
    torch.manual_seed(0)
    # everything pruned and quantized from step 0 (delays 0) so the timed steps pay the
    # full cost: masks applied, quantizers on, activation statistics collected.
    wrapped = qsp.convert(cnn(), total_steps=10_000, dense=(), prune_start=0, prune_interval=5000,
                          prune_repetition=2, quant_delay=0, window=1)
    models = {"float": plain, "qsp": wrapped}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.rand(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))
    times = {k: [] for k in models}

    def step(k):
        m, o = models[k], opts[k]
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(m(x), y)
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()
        return time.perf_counter() - t0

    for m in models.values():
        m.train()
    for _ in range(10):  # warm-up
        for k in models:
            step(k)
    for i in range(a.steps):
        order = ("float", "qsp") if i % 2 == 0 else ("qsp", "float")
        for k in order:
            times[k].append(step(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["qsp"] / med["float"]
    res = {
        "benchmark": "overhead",
        "ratio_median_step_time": round(ratio, 4),
        "goal": 1.25,
        "median_step_s": {k: round(v, 6) for k, v in med.items()},
        "steps": a.steps, "batch": a.batch, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "model": "CNN conv16-conv32-fc64-fc10 on 1x28x28, every weight and activation wrapped",
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"median step: float {med['float'] * 1e3:.2f} ms, qsp {med['qsp'] * 1e3:.2f} ms, ratio {ratio:.3f} "
          f"(goal <= 1.25) -> {out}")
    return res


if __name__ == "__main__":
    main()
