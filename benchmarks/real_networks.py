"""Real networks on Fashion-MNIST: ResNet-8, MobileNetV2-tiny and DS-CNN, each trained
float, with the qsparse method (8-bit weights and activations, 50 % of weights and
activations pruned, prune-then-quantize) and with DJPQ (learned bits and channel gates
against BOPs), same epochs, optimizer and seed. One run per process:

    python benchmarks/real_networks.py train --model resnet8 --method qsparse --device cuda \
        --epochs 15 --data-dir DIR --out benchmarks/results/real_networks/runs

writes the run directory (bundle included) and ``<model>_<method>.json`` with accuracy,
float accuracy, performance density (PD) and BOPs against float. Then, on a CPU with g++:

    python benchmarks/real_networks.py compile --runs DIR --board pynq-z2 --max-inputs 2000

compiles each bundle for the board, C-simulates it and verifies it three ways (csim ==
emulation == onnxruntime) on 2,000 test inputs, runs qsp-estimate for the board, and
writes ``<model>_<method>_hw.json``. ``summary`` gathers everything into ``summary.json``
and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("resnet8", "mobilenet_v2_tiny", "ds_cnn")
METHODS = ("qsparse", "djpq")


def _hardware(device: str) -> dict:
    import torch

    hw = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
          "cpu_count": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
    return hw


def train(a) -> int:
    from qsp.train import TrainConfig
    from qsp.train.pipeline import run

    out = Path(a.out) / f"{a.model}_{a.method}{a.tag}"
    kw = dict(task="fashion-mnist", model=a.model, method=a.method, epochs=a.epochs, device=a.device,
              seed=a.seed, out=str(out), data_dir=a.data_dir, max_test=a.max_test, progress=False,
              float_baseline=True)
    if a.method == "qsparse":
        kw.update(weight_bits=8, act_bits=8, weight_sparsity=0.5, act_sparsity=0.5, order="prune-then-quantize")
    else:
        kw.update(djpq={"bops_target": a.bops_target, **({"finetune": a.finetune} if a.finetune else {})})
    if a.distill:
        kw.update(distill=a.distill, distill_temperature=a.distill_temperature)
    if a.init:
        kw.update(init=a.init, init_epochs=a.init_epochs)
    if a.lr:
        kw["lr"] = a.lr
    if a.batch_size:
        kw["batch_size"] = a.batch_size
    if a.train_limit:
        kw["train_limit"] = a.train_limit
    cfg = TrainConfig(**{k: v for k, v in kw.items() if v is not None})
    t0 = time.time()
    rep = run(cfg)
    m = rep.metrics
    res = {"model": a.model, "method": a.method, "epochs": a.epochs, "seed": a.seed,
           "init": a.init, "distill": a.distill, "finetune": a.finetune, "float_epochs": m["float"].get("epochs", a.init_float_epochs if a.init else a.epochs),
           "accuracy": m["test_metric"], "float_accuracy": m["float"]["test_metric"],
           "delta_points": m["test_metric"] - m["float"]["test_metric"],
           "performance_density": m["performance_density"],
           "pd_ratio_vs_float": m["performance_density"] / m["float"]["performance_density"],
           "footprint_bits": m["footprint"]["total_bits"], "float_footprint_bits": m["float"]["footprint_bits"],
           "wall_s": round(time.time() - t0, 1), "hardware": _hardware(a.device),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    b = json.loads((out / "bundle" / "qspec.json").read_text())
    dj = b.get("extra", {}).get("djpq")
    if dj:
        res.update(bops=dj["bops"], bops_fp32=dj["bops_fp32"], bops_reduction=dj["bops_fp32"] / max(dj["bops"], 1))
    Path(a.out, f"{a.model}_{a.method}{a.tag}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


def compile_(a) -> int:
    runs = Path(a.runs)
    for d in sorted(p for p in runs.iterdir() if (p / "bundle").is_dir()):
        if a.only and d.name not in a.only:
            continue
        res_dir = runs if (runs / f"{d.name}.json").exists() else runs.parent  # beside the train JSON
        default = a.board == "pynq-z2" and a.io_type == "io_parallel"  # others: their own JSON and directories
        tag = "" if default else f"_{a.board}" + ("" if a.io_type == "io_parallel" else f"_{a.io_type}")
        hw = res_dir / f"{d.name}_hw{tag}.json"
        if hw.exists() and not a.force:
            continue
        t0 = time.time()
        out = d / f"hls{tag}"
        r = subprocess.run(["qsp-compile", str(d / "bundle"), "--board", a.board, "--io-type", a.io_type,
                            "--out", str(out), "--max-inputs", str(a.max_inputs)], capture_output=True, text=True)
        v = json.loads((out / "verify.json").read_text()) if (out / "verify.json").exists() else {}
        est_dir = d / f"estimate{tag}"
        subprocess.run(["qsp-estimate", str(d / "bundle"), "--board", a.board, "--io-type", a.io_type,
                        "--out", str(est_dir)], capture_output=True, text=True)
        e = json.loads((est_dir / "estimate.json").read_text()) if (est_dir / "estimate.json").exists() else {}
        res = {"run": d.name, "board": a.board, "compile_rc": r.returncode, "compile_wall_s": round(time.time() - t0, 1),
               "verify": v.get("summary"), "stderr_tail": r.stderr[-2000:] if r.returncode else "",
               "io_type": a.io_type, "estimate": _board_estimate(e, a.board),
               "command": f"qsp-compile {d / 'bundle'} --board {a.board} --io-type {a.io_type} --max-inputs "
               f"{a.max_inputs}; qsp-estimate {d / 'bundle'} --board {a.board} --io-type {a.io_type}"}
        hw.write_text(json.dumps(res, indent=1))
        print(d.name, json.dumps(res["verify"]), res["estimate"].get("verdict"))
    return 0


def _board_estimate(e: dict, board: str) -> dict:
    for b in e.get("boards", []):
        if b.get("board") == board or b.get("name") == board:
            keep = ("verdict", "binding", "utilization", "latency_us", "energy_nj", "resources")
            return {k: b[k] for k in keep if k in b}
    return {"raw_keys": sorted(e)}


def boards(a) -> int:
    """qsp-estimate --board all per bundle: which shipped boards the design fits."""
    runs = Path(a.runs)
    for d in sorted(p for p in runs.iterdir() if (p / "bundle").is_dir()):
        res_dir = runs if (runs / f"{d.name}.json").exists() else runs.parent
        est = d / "estimate_all"
        subprocess.run(["qsp-estimate", str(d / "bundle"), "--board", "all", "--out", str(est)],
                       capture_output=True, text=True, check=True)
        e = json.loads((est / "estimate.json").read_text())
        rows = {b["board"]: {"verdict": b["verdict"], "binding": b["binding"],
                             "utilization_pct": round(100 * b["utilization"][b["binding"]], 1)} for b in e["boards"]}
        out = {"run": d.name, "boards": rows, "fits": sorted(k for k, v in rows.items() if v["verdict"] == "fits"),
               "command": f"qsp-estimate {d / 'bundle'} --board all"}
        (res_dir / f"{d.name}_boards.json").write_text(json.dumps(out, indent=1))
        print(d.name, out["fits"])
    return 0


def _other(h: dict) -> str:
    p = ((h.get("verify") or {}).get("paths") or {}).get("csim_testbench") or {}
    return (f"{h['board']} {h.get('io_type', 'io_parallel')}: {p.get('mismatches', '-')} / {p.get('compared', '-')}, "
            f"{(h.get('estimate') or {}).get('verdict', '-')}")


def summary(a) -> int:
    runs = Path(a.runs)
    if not any(runs.glob("*_*.json")) and any(runs.parent.glob("*_*.json")):
        runs = runs.parent
    rows = []
    names = [f.stem for f in runs.glob("*_*.json")
             if not f.stem.endswith(("_hw", "_boards")) and "_hw_" not in f.stem and f.stem != "summary"]
    key = {f"{m}_{meth}": (i, j) for i, m in enumerate(MODELS) for j, meth in enumerate(METHODS)}
    for name in sorted(names, key=lambda n: (min((v for k, v in key.items() if n.startswith(k)), default=(9, 9)), n)):
        r = json.loads((runs / f"{name}.json").read_text())
        r["run"] = name
        hwf = runs / f"{name}_hw.json"
        if hwf.exists():
            r["hw"] = json.loads(hwf.read_text())
        r["other_hw"] = [json.loads(f.read_text()) for f in sorted(runs.glob(f"{name}_hw_*.json"))]
        bf = runs / f"{name}_boards.json"
        if bf.exists():
            r["fits"] = json.loads(bf.read_text())["fits"]
        rows.append(r)
    (runs / "summary.json").write_text(json.dumps(rows, indent=1))
    lines = ["| run | model | method | start | epochs | float acc % | acc % | delta | PD vs float | BOPs vs FP32 | "
             "csim mismatches / outputs (2,000 inputs) | pynq-z2 | fits (qsp-estimate) | other compiles: csim "
             "mismatches / outputs, qsp-estimate there |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = (r.get("hw") or {}).get("verify") or {}
        p = v.get("paths", {}).get("csim_testbench", {})
        start = "scratch" if not r.get("init") else f"float ({r.get('float_epochs', '?')} ep)"
        start += f", finetune {r['finetune']}" if r.get("finetune") else ""
        start += f", distill {r['distill']}" if r.get("distill") else ""
        start += f", seed {r['seed']}" if r.get("seed") else ""
        w = r.get("command", "").split()
        start += f", bops_target {w[w.index('--bops-target') + 1]}" if "--bops-target" in w else ""
        lines.append(f"| {r['run']} | {r['model']} | {r['method']} | {start} | {r['epochs']} | {r['float_accuracy']:.2f} | "
                     f"{r['accuracy']:.2f} | "
                     f"{r['delta_points']:+.2f} | {r['pd_ratio_vs_float']:.1f}x | "
                     f"{(str(round(r['bops_reduction'], 1)) + 'x') if 'bops_reduction' in r else '-'} | "
                     f"{p.get('mismatches', '-')} / {p.get('compared', '-')} | "
                     f"{((r.get('hw') or {}).get('estimate') or {}).get('verdict', '-')} | "
                     f"{(', '.join(r['fits']) or 'none') if 'fits' in r else '-'} | "
                     f"{'; '.join(_other(h) for h in r['other_hw']) or '-'} |")
    (runs / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", choices=MODELS, required=True)
    t.add_argument("--method", choices=METHODS, required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--data-dir", default=None)
    t.add_argument("--max-test", type=int, default=2000)
    t.add_argument("--train-limit", type=int, default=None, help="first N training samples (smoke runs)")
    t.add_argument("--bops-target", type=float, default=0.008)
    t.add_argument("--init", default=None, help="'float': start from the trained float model (config key init)")
    t.add_argument("--init-epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--init-float-epochs", type=int, default=None,
                   help="with --init PATH: the epochs that float model was trained (recorded in the JSON)")
    t.add_argument("--distill", type=float, default=0.0, help="config key distill (teacher: the init model)")
    t.add_argument("--distill-temperature", type=float, default=4.0)
    t.add_argument("--finetune", type=float, default=0.0, help="djpq.finetune: last fraction with bits/gates frozen")
    t.add_argument("--tag", default="", help="suffix of the run's directory and JSON name")
    t.add_argument("--out", default="benchmarks/results/real_networks")
    c = sub.add_parser("compile")
    c.add_argument("--runs", default="benchmarks/results/real_networks")
    c.add_argument("--board", default="pynq-z2")
    c.add_argument("--io-type", default="io_parallel", choices=["io_parallel", "io_stream"])
    c.add_argument("--max-inputs", type=int, default=2000)
    c.add_argument("--force", action="store_true")
    c.add_argument("--only", nargs="*", default=None, help="run directories to compile (default all)")
    bo = sub.add_parser("boards")
    bo.add_argument("--runs", default="benchmarks/results/real_networks")
    s = sub.add_parser("summary")
    s.add_argument("--runs", default="benchmarks/results/real_networks")
    a = ap.parse_args(argv)
    return {"train": train, "compile": compile_, "boards": boards, "summary": summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
