"""Training-step overhead of qsp's operators, with every mask and quantizer verifiably on.

For each network (qsparse's MNIST example network, ResNet-8) the float model and its
``qsp.convert`` twin (every weight and activation pruned 50 % and quantized to 8 bits, the
input quantized; ``dense=()``: no layer spared) train side by side in one process:
forward + cross-entropy + backward + SGD step, batch 128, interleaved blocks, medians.
Before timing, the schedule is run to its end (masks computed at step 1, fraction bits
chosen at step 1) and :func:`check_active` asserts that every weight and activation mask
prunes something and every quantizer is on; it asserts the same again after timing.

Modes: ``eager`` and ``compiled`` (``torch.compile`` of both models, default backend).
Memory: peak bytes allocated during one steady-state step above the bytes live at its start
(``delta``), from the torch profiler's memory events on CPU and from
``torch.cuda.max_memory_allocated`` on CUDA (where the absolute peak is reported too).
``--profile`` adds the top operators by self time (torch.profiler, one eager step each).

    python benchmarks/overhead.py --device cpu --threads 2 --out benchmarks/results/overhead/cpu.json
    PYTHONPATH=toolchain python benchmarks/overhead.py --device cuda --out $OUT/cuda.json

Goals (issue 15): step time <= 1.10x float on CPU and <= 1.15x on CUDA; peak memory <= 1.2x.
For steadier CPU numbers on a shared machine, run with MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import qsp
from qsp.nn.layers import QLayer
from qsp.nn.ops import ActivationPruner, Quantizer, WeightPruner
from qsp.train.models import resnet8

GOALS = {"cpu": 1.10, "cuda": 1.15, "memory": 1.2}


def qsparse_mnist():
    """qsparse v1.2.11's examples/mnist.py network (1.2 M weights)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(9216, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10))


NETWORKS = {"qsparse_mnist": (qsparse_mnist, (1, 28, 28)),
            "resnet8": (lambda: resnet8(in_channels=3, num_classes=10), (3, 32, 32))}


def wrap(net):
    """Every weight and activation pruned (50 %) and quantized (8 bit), masks computed at
    step 1, fraction bits chosen at step 1 from step 0's statistics."""
    return qsp.convert(net, total_steps=1000, dense=(), weight_sparsity=0.5, act_sparsity=0.5,
                       prune_start=0, prune_interval=1, prune_repetition=1, quant_delay=1, window=1)


def check_active(model) -> dict:
    """Assert every weight layer is wrapped with a pruner and a quantizer, every mask prunes
    something and every quantizer is on; returns the counts and the mask densities."""
    counts = {"weight_layers": 0, "weight_masks": 0, "act_masks": 0, "quantizers": 0}
    dens = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            counts["weight_layers"] += 1
        if isinstance(m, QLayer):
            assert m.pruner is not None and m.quantizer is not None, f"{name}: not pruned and quantized"
        if isinstance(m, (WeightPruner, ActivationPruner)):
            assert m.mask.numel() > 0 and m._active, f"{name}: mask not applied"
            d = float(m.mask.float().mean())
            assert d < 1.0, f"{name}: mask density {d} (nothing pruned)"
            dens.append(d)
            counts["weight_masks" if isinstance(m, WeightPruner) else "act_masks"] += 1
        if isinstance(m, Quantizer):
            assert m.is_on, f"{name}: quantizer not on"
            counts["quantizers"] += 1
    assert counts["weight_masks"] == counts["weight_layers"] > 0 and counts["act_masks"] > 0, counts
    counts["mask_density_min_max"] = [round(min(dens), 4), round(max(dens), 4)]
    return counts


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cpu_peak_delta(step) -> int:
    """Peak bytes allocated during ``step()`` above those live at its start, from the torch
    profiler's CPU memory events."""
    from torch.profiler import ProfilerActivity, profile

    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocs = []

    def walk(nodes):
        for n in nodes:
            if n.tag == _EventType.Allocation:
                allocs.append((n.start_time_ns, n.extra_fields.alloc_size))
            walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    cur = peak = 0
    for _, size in sorted(allocs):
        cur += size
        peak = max(peak, cur)
    assert allocs, "the profiler recorded no allocation"
    return int(peak)


def top_ops(step, dev, n=15) -> list:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(dev)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda r: getattr(r, key), reverse=True)[:n]
    return [{"op": r.key, "calls": r.count, "self_us": round(getattr(r, key), 1)} for r in rows]


def bench_network(name, dev, mode, steps, block, warmup, profile_ops):
    factory, shape = NETWORKS[name]
    torch.manual_seed(0)
    plain = factory().to(dev)
    torch.manual_seed(0)
    wrapped = wrap(factory()).to(dev)
    models = {"float": plain, "qsp": wrapped}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    g = torch.Generator().manual_seed(1)
    x = torch.rand((128,) + shape, generator=g).to(dev)
    y = torch.randint(0, 10, (128,), generator=g).to(dev)
    for m in models.values():
        m.train()
    for _ in range(3):  # the schedule runs to its end in eager mode (masks, fraction bits)
        nn.functional.cross_entropy(wrapped(x), y).backward()
    wrapped.zero_grad(set_to_none=True)
    active = check_active(wrapped)
    fwd = {k: (torch.compile(m) if mode == "compiled" else m) for k, m in models.items()}

    def step(k):
        loss = nn.functional.cross_entropy(fwd[k](x), y)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        for k in models:
            step(k)
    _sync(dev)
    warm_s = time.perf_counter() - t0
    times = {k: [] for k in models}
    for i in range(steps):
        for k in (("float", "qsp") if i % 2 == 0 else ("qsp", "float")):
            _sync(dev)
            t = time.perf_counter()
            for _ in range(block):
                step(k)
            _sync(dev)
            times[k].append((time.perf_counter() - t) / block)
    assert check_active(wrapped) == active, "masks or quantizers changed while timing"
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {}
    for k in models:
        if dev.type == "cuda":
            _sync(dev)
            start = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            step(k)
            _sync(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            mem[k] = {"peak_bytes": peak, "delta_bytes": peak - start}
        else:
            mem[k] = {"delta_bytes": cpu_peak_delta(lambda: step(k))}
    res = {
        "ratio_median_step_time": round(med["qsp"] / med["float"], 4),
        "median_step_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
        "memory": mem,
        "memory_ratio_delta": round(mem["qsp"]["delta_bytes"] / mem["float"]["delta_bytes"], 4),
        "active": active, "warmup_s": round(warm_s, 2),
    }
    if dev.type == "cuda":
        res["memory_ratio_peak"] = round(mem["qsp"]["peak_bytes"] / mem["float"]["peak_bytes"], 4)
    if profile_ops and mode == "eager":
        res["top_ops"] = {k: top_ops(lambda: step(k), dev) for k in models}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--steps", type=int, default=0, help="timed blocks per model (0: 30 on CPU, 60 on CUDA)")
    ap.add_argument("--block", type=int, default=0, help="steps per timed block (0: 1 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="add the top operators by self time (eager)")
    ap.add_argument("--out", default="benchmarks/results/overhead/cpu.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("overhead.py: --device cuda but torch sees no CUDA device")
    steps = a.steps or (30 if dev.type == "cpu" else 60)
    block = a.block or (1 if dev.type == "cpu" else 10)
    results = {}
    for net in a.networks.split(","):
        if net not in NETWORKS:
            sys.exit(f"overhead.py: unknown network {net!r}; known: {sorted(NETWORKS)}")
    for mode in a.modes.split(","):
        if mode not in ("eager", "compiled"):
            sys.exit(f"overhead.py: unknown mode {mode!r}; known: eager, compiled")
    for mode in a.modes.split(","):  # eager first for every network: the quick figures land first
        for net in a.networks.split(","):
            r = bench_network(net, dev, mode, steps, block, a.warmup, a.profile)
            results.setdefault(net, {})[mode] = r
            print(f"{a.device} {net} {mode}: float {r['median_step_ms']['float']:.2f} ms, "
                  f"qsp {r['median_step_ms']['qsp']:.2f} ms, ratio {r['ratio_median_step_time']:.3f}, "
                  f"memory ratio {r['memory_ratio_delta']:.3f}", flush=True)
            write(a, argv, dev, steps, block, results)  # after each result: a time limit keeps what ran
    print(f"-> {a.out}")
    return results


def write(a, argv, dev, steps, block, results):
    doc = {
        "benchmark": "overhead", "device": a.device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "command": "python " + " ".join(shlex.quote(s) for s in [sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])),
        "goal_ratio": GOALS[dev.type], "goal_memory_ratio": GOALS["memory"],
        "batch": 128, "steps": steps, "block": block, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "memory_metric": ("peak bytes allocated during one step above those live at its start (delta) and "
                          "torch.cuda.max_memory_allocated (peak)" if dev.type == "cuda" else
                          "peak bytes allocated during one step above those live at its start, torch profiler "
                          "memory events (delta)"),
        "note": ("once its quantizer is on, a Linear/Conv with a folded BatchNorm trains as the hardware computes "
                 "(folded, quantized weights, running statistics), so the qsp step runs no BatchNorm kernels "
                 "where the float step does"),
        "results": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
