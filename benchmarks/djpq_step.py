"""DJPQ training-step cost on ResNet-8 (batch 128, 1x28x28, CPU, one thread): operator
calls and host-device reads per step (deterministic counts: on a GPU each operator is a
kernel launch and each read a synchronisation), and the step time next to the float step.

    python benchmarks/djpq_step.py --out benchmarks/results/djpq_step.json [--label NAME]

Run it on two checkouts (PYTHONPATH=OLD/toolchain and the current tree) to compare."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import qsp
from qsp.djpq import DJPQConfig
from qsp.djpq.bops import DJPQObjective
from qsp.djpq.convert import convert
from qsp.train.models import resnet8


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", default="current")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    fm = resnet8(in_channels=1, num_classes=10).train()
    dm = convert(resnet8(in_channels=1, num_classes=10), None, DJPQConfig(bops_target=0.008)).train()
    obj = DJPQObjective(DJPQConfig(bops_target=0.008))

    def step(m, dj):
        m.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), y)
        if dj:
            loss = loss + obj(m)
        loss.backward()

    for _ in range(2):
        step(fm, False), step(dm, True)
    counts = {}
    for name, m, dj in (("float", fm, False), ("djpq", dm, True)):
        n_tolist = [0]
        orig = torch.Tensor.tolist

        def tolist(self, _o=orig):
            n_tolist[0] += 1
            return _o(self)

        torch.Tensor.tolist = tolist
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(m, dj)
        finally:
            torch.Tensor.tolist = orig
        ev = prof.key_averages()
        counts[name] = {"operator_calls": sum(e.count for e in ev),
                        "host_reads": sum(e.count for e in ev if e.key == "aten::_local_scalar_dense") + n_tolist[0]}
    times = {"float": [], "djpq": []}
    for _ in range(a.reps):  # interleaved
        for name, m, dj in (("float", fm, False), ("djpq", dm, True)):
            t = time.perf_counter()
            step(m, dj)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"label": a.label, "counts_per_step": counts, "median_step_s": med,
           "djpq_over_float": med["djpq"] / med["float"],
           "conditions": "CPU, torch.set_num_threads(1), ResNet-8 (1x28x28, 10 classes), batch 128, DJPQ bops_target 0.008, "
                         "forward + objective + backward (no optimizer step), interleaved medians",
           "torch": torch.__version__,
           "commit": subprocess.run(["git", "-C", str(Path(qsp.__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
           "command": f"python benchmarks/djpq_step.py --out {a.out} --label {a.label}"}
    p = Path(a.out)
    old = json.loads(p.read_text()) if p.exists() else {}
    old[a.label] = res
    p.write_text(json.dumps(old, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
