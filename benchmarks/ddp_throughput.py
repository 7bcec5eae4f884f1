"""Training throughput (samples/s) of qsp-train on 1 process against N processes (torchrun,
DistributedDataParallel): CPU with gloo, or one GPU per process with NCCL.

    python benchmarks/ddp_throughput.py --device cuda --nproc 2 [--steps 100] [--per-rank-batch 256]
    python benchmarks/ddp_throughput.py --device cpu --nproc 2 --threads 1     # this 2-core machine

For each process count (1, then N) it launches ``torchrun --standalone --nproc_per_node=n``
on this file in worker mode. A worker builds the real :class:`qsp.train.loop.Trainer`
(method qsparse: pruning + quantization operators, their cross-rank reductions, DDP
without buffer broadcast) on a synthetic Fashion-MNIST-shaped task (random 28x28 uint8
images, 10 classes: the throughput does not depend on the pixels) and times ``steps``
training steps after ``warmup`` steps (CUDA synchronised, the slowest rank counts). The
run's schedule is the ``warmup + steps`` steps, so mask and fraction-bit decisions (with
their all-reduces) fall inside it, as in real training.

Scaling: ``weak`` (default) keeps the per-rank batch (global batch = per-rank x n), the
usual data-parallel setting; ``strong`` keeps the global batch (``--batch``), the setting
in which N processes reproduce one process's training exactly (docs/distributed.md).

Writes JSON (``--out``): per process count the global batch, step time and samples/s, and
``speedup`` (samples/s of N over 1) and ``efficiency`` (speedup / N).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--nproc", type=int, default=2, help="processes to compare with 1 (GPUs with --device cuda)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--scaling", choices=("weak", "strong"), default="weak")
    ap.add_argument("--per-rank-batch", type=int, default=128, help="weak scaling: samples per process per step")
    ap.add_argument("--batch", type=int, default=256, help="strong scaling: the global batch")
    ap.add_argument("--model", default="lenet", help="qsp-train model (lenet, mlp, or pkg.mod:factory)")
    ap.add_argument("--model-kwargs", default="{channels: [16, 32]}", help="YAML mapping for the model factory")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS too)")
    ap.add_argument("--out", default="benchmarks/results/ddp_throughput.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def global_batch(a, n: int) -> int:
    return a.per_rank_batch * n if a.scaling == "weak" else a.batch


# ============================================================================ worker
def worker(a) -> None:
    import torch
    import yaml

    from qsp.train import TrainConfig
    from qsp.train import distributed as dd
    from qsp.train.config import resolve
    from qsp.train.data import load_task
    from qsp.train.loop import Trainer
    from qsp.train.methods import get_method
    from qsp.train.models import resolve_model

    info = dd.setup(a.device)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    gb = global_batch(a, info.world_size)
    total = a.warmup + a.steps
    cfg = TrainConfig(task="custom", data_dir=a.data, model=a.model, model_kwargs=yaml.safe_load(a.model_kwargs) or {},
                      epochs=1, batch_size=gb, train_limit=gb * total, test_limit=gb, device=a.device,
                      float_baseline=False, progress=False, lr=1e-3)
    spec, data = load_task(cfg)
    cfg = resolve(cfg, spec.defaults)
    factory, kwargs = resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info)
    tr = Trainer(cfg, spec, data, get_method(cfg.method, cfg), factory, kwargs)
    assert tr.total_steps == total, (tr.total_steps, total)
    tr.build()
    order = tr.epoch_indices(0)
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    t0 = None
    for b in range(total):
        if b == a.warmup:
            sync()
            dd.barrier()
            t0 = time.perf_counter()
        x, y = tr.batch(order, b)
        tr.train_step(x, y, b)
    sync()
    dt = time.perf_counter() - t0
    if info.active:  # the slowest rank's time
        import torch.distributed as dist

        t = torch.tensor([dt], dtype=torch.float64, device=tr.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        dt = float(t)
    if info.is_main:
        Path(a.result).write_text(json.dumps({
            "nproc": info.world_size, "global_batch": gb, "per_rank_batch": -(-gb // info.world_size),
            "timed_steps": a.steps, "seconds": dt, "step_ms": 1e3 * dt / a.steps,
            "samples_per_s": gb * a.steps / dt,
            "backend": dd.backend_for(a.device) if info.active else None,
            "gpu": torch.cuda.get_device_name(tr.device) if tr.device.type == "cuda" else None}))
    dd.shutdown()


# ============================================================================ launcher
def synthetic_task(path: Path, n: int, seed: int = 0) -> Path:
    """Fashion-MNIST-shaped random data: [n, 28, 28] uint8, 10 balanced classes."""
    rng = np.random.default_rng(seed)
    n_test = 256
    np.savez(path, x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
             y_train=(np.arange(n) % 10).astype(np.int64),
             x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             y_test=(np.arange(n_test) % 10).astype(np.int64))
    return path


def launch(a, n: int, data: Path, tmp: Path) -> dict:
    result = tmp / f"n{n}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(a.threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
           "--worker", "--data", str(data), "--result", str(result), "--device", a.device,
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--scaling", a.scaling,
           "--per-rank-batch", str(a.per_rank_batch), "--batch", str(a.batch), "--model", a.model,
           "--model-kwargs", a.model_kwargs, "--threads", str(a.threads)]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ddp_throughput: {n} process(es) failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(result.read_text())


def main(argv=None) -> int:
    a = parse(argv)
    if a.worker:
        worker(a)
        return 0
    if a.nproc < 2:
        sys.exit("--nproc must be >= 2 (it is compared with 1 process)")
    import torch

    counts = (1, a.nproc)
    # the training set: enough samples for the largest global batch x all steps (+ validation share)
    n = int(max(global_batch(a, c) for c in counts) * (a.warmup + a.steps) / 0.9) + 64
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = synthetic_task(tmp / "synthetic.npz", n)
        runs = [launch(a, c, data, tmp) for c in counts]
    sp = runs[1]["samples_per_s"] / runs[0]["samples_per_s"]
    res = {"benchmark": "ddp_throughput", "device": a.device, "scaling": a.scaling, "model": a.model,
           "model_kwargs": a.model_kwargs, "method": "qsparse", "threads_per_process": a.threads,
           "warmup": a.warmup, "runs": runs, "speedup": sp, "efficiency": sp / a.nproc,
           "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "host": platform.node()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    for r in runs:
        print(f"{r['nproc']} process(es): global batch {r['global_batch']}, {r['step_ms']:.2f} ms/step, "
              f"{r['samples_per_s']:.0f} samples/s")
    print(f"speedup {sp:.2f}x on {a.nproc} ({a.scaling} scaling), efficiency {sp / a.nproc:.2f} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
