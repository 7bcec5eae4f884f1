"""The ordering study: does prune-then-quantize or quantize-then-prune give the better model?

The qsparse paper's Table 3/4 layout on qsp's tasks. For each task (Fashion-MNIST with the
LeNet-style CNN: classification, accuracy; ESPCN x3 super resolution on scikit-image photos:
dense prediction, PSNR) and each seed, five ``qsp.train`` runs with the task's defaults
(epochs, batch size, learning rate) unless overridden:

* ``float``      the float model, same epochs/seed/optimizer (the pipeline's float baseline);
* ``P(w)->Q``    50 % weight pruning, then 8-bit quantization of weights and activations;
* ``Q->P(w)``    8-bit quantization, then 50 % weight pruning;
* ``P(w,a)->Q``  50 % weight and 50 % activation pruning, then 8-bit quantization;
* ``Q->P(w,a)``  8-bit quantization, then 50 % weight and activation pruning;

(first and last weight layers dense, as qsp's default plan; P(w) = ``act_sparsity 0``) and,
with ``--auto``, ``order auto`` on the P(w,a) setting, to see which order it picks from its
validation trials. Every run is evaluated on the task's test split; footprint = weight bits
x nonzero weights + activation bits x unmasked elements for one input (``qsp.bundle.footprint``;
float: 32 bits for every weight and element); PD = metric / footprint (Mb).

Per task and variant: mean, sample standard deviation (ddof 1) and range over seeds. Per
task and setting (P(w), P(w,a)): the order with the higher mean PD, the paired per-seed
differences, and whether the difference of the means exceeds the seed spread (the larger of
the two variants' standard deviations). A difference inside the seed spread is reported as
"not a finding".

    python benchmarks/order_study.py --device cuda --seeds 0,1,2 --out benchmarks/results/order_study
    python benchmarks/order_study.py --epochs 1 --seeds 0,1 --train-limit 1024 --test-limit 512 \
        --out /tmp/order_smoke                                                       # CPU smoke

Writes ``OUT/order_study.json``, ``OUT/order_study.md`` and ``OUT/order_<task>.svg``; the
runs (bundles, logs) stay under ``OUT/runs/<task>/<variant>/seed<k>`` unless ``--no-keep``.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import torch

import qsp
from qsp.train import TrainConfig
from qsp.train.data import TASKS
from qsp.train.pipeline import run

PQ, QP = "prune-then-quantize", "quantize-then-prune"
#: the paper's finding per task kind (qsparse, arXiv 2110.08271, Tables 3/4 and Sec. 5)
PAPER = {"classification": PQ, "super-resolution": QP}


@dataclass(frozen=True)
class Variant:
    name: str
    order: str  # prune-then-quantize, quantize-then-prune or auto
    act_sparsity: float = 0.5
    setting: str = ""  # "P(w)" / "P(w,a)": the pair this variant belongs to
    with_float: bool = False  # this run also trains the float baseline (row "float")


FLOAT = "float"
VARIANTS = (
    Variant("P(w)->Q", PQ, 0.0, "P(w)", with_float=True),
    Variant("Q->P(w)", QP, 0.0, "P(w)"),
    Variant("P(w,a)->Q", PQ, 0.5, "P(w,a)"),
    Variant("Q->P(w,a)", QP, 0.5, "P(w,a)"),
)
AUTO = Variant("auto (w,a)", "auto", 0.5, "P(w,a)")
SETTINGS = ("P(w)", "P(w,a)")
DEFAULT_TASKS = ("fashion-mnist", "super-resolution")


# ====================================================================== running
def base_config(args, task: str, seed: int) -> dict:
    d = dict(task=task, seed=seed, device=args.device, weight_bits=args.bits, act_bits=args.bits,
             weight_sparsity=args.sparsity, progress=False, max_test=args.max_test, float_baseline=False)
    for k in ("epochs", "train_limit", "test_limit", "batch_size", "lr", "threads"):
        v = getattr(args, k)
        if v is not None:
            d[k] = v
    return d


def run_one(args, task: str, v: Variant, seed: int, runs: Path, log) -> list[dict]:
    """One quantized run (P->Q, Q->P or auto): its row, and with ``with_float`` the row of
    the float baseline the pipeline trains beside it (same epochs, seed, optimizer)."""
    out = runs / task / _slug(v.name) / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig.from_dict(dict(base_config(args, task, seed), order=v.order,
                                     act_sparsity=args.sparsity if v.act_sparsity else 0.0,
                                     float_baseline=v.with_float, out=str(out)))
    t0 = time.perf_counter()
    rep = run(cfg, echo=log)
    m = rep.metrics
    rows = []
    if v.with_float:
        fl = m["float"]
        rows.append({"variant": FLOAT, "seed": seed, "seconds": fl["train_seconds"], "metric": fl["test_metric"],
                     "val_metric": fl["val_metric"], "megabits": fl["megabits"], "pd": fl["performance_density"]})
    res = {"variant": v.name, "seed": seed, "seconds": round(time.perf_counter() - t0, 2),
           "metric": m["test_metric"], "val_metric": m["val_metric"], "megabits": m["footprint"]["megabits"],
           "pd": m["performance_density"], "weight_sparsity": m["weight_sparsity_overall"],
           "act_sparsity": m["act_sparsity_overall"]}
    if v.order == "auto":
        rec = json.loads((out / "order_auto.json").read_text())
        res.update(chosen=rec["chosen"], rule=rec["rule"],
                   trials={t["order"]: {"val_metric": t["metric"], "pd": t["performance_density"]}
                           for t in rec["trials"]})
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rows + [res]


def _slug(name: str) -> str:
    return name.replace("(", "").replace(")", "").replace(",", "").replace("->", "-to-").replace(" ", "-")


# ====================================================================== statistics
def stats(vals) -> dict:
    a = np.asarray(vals, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(len(a)), "values": [float(x) for x in a]}


def summarize(rows: list[dict], variants) -> dict:
    out = {}
    for name in [FLOAT] + [v.name for v in variants]:
        rs = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        out[name] = {k: stats([r[k] for r in rs]) for k in ("metric", "val_metric", "megabits", "pd")}
        if "chosen" in rs[0]:
            out[name]["chosen"] = [r["chosen"] for r in rs]
    return out


def compare(summary: dict, rows: list[dict], kind: str) -> list[dict]:
    """Per setting: which order has the higher mean PD/metric, and whether the difference of
    the means exceeds the seed spread (the larger standard deviation of the two)."""
    res = []
    for s in SETTINGS:
        a, b = f"P{s[1:]}->Q", f"Q->P{s[1:]}"
        if a not in summary or b not in summary:
            continue
        d = {"setting": s, "a": a, "b": b}
        seeds = sorted({r["seed"] for r in rows if r["variant"] == a} & {r["seed"] for r in rows if r["variant"] == b})
        for key in ("pd", "metric"):
            sa, sb = summary[a][key], summary[b][key]
            diff = sa["mean"] - sb["mean"]
            spread = max(sa["std"], sb["std"])
            by = {(r["variant"], r["seed"]): r[key] for r in rows}
            paired = [by[(a, k)] - by[(b, k)] for k in seeds]
            d[key] = {"diff_mean": diff, "seed_spread": spread, "paired": paired,
                      "a_wins": sum(p > 0 for p in paired), "seeds": len(paired),
                      "exceeds_spread": bool(len(paired) > 1 and abs(diff) > spread)}
        winner = PQ if d["pd"]["diff_mean"] > 0 else QP if d["pd"]["diff_mean"] < 0 else None
        d["winner_by_pd"] = winner
        d["finding"] = d["pd"]["exceeds_spread"]
        d["paper"] = PAPER.get(kind)
        d["agrees_with_paper"] = (winner == d["paper"]) if d["finding"] and d["paper"] else None
        d["auto"] = auto_check(rows, a, b, s)
        res.append(d)
    return res


def auto_check(rows: list[dict], a: str, b: str, setting: str) -> dict | None:
    """For the ``order auto`` runs of this setting: how often its validation-trial choice is
    the order with the higher test PD of the full runs, and whether its final run equals the
    explicit run of the chosen order (it must: same seed, retrained from scratch)."""
    auto = [r for r in rows if r["variant"] == AUTO.name and AUTO.setting == setting]
    if not auto:
        return None
    by = {(r["variant"], r["seed"]): r for r in rows}
    hits, same = 0, 0
    for r in auto:
        pa, pb = by[(a, r["seed"])]["pd"], by[(b, r["seed"])]["pd"]
        best = PQ if pa > pb else QP if pb > pa else r["chosen"]
        hits += r["chosen"] == best
        ref = by[(a if r["chosen"] == PQ else b, r["seed"])]
        same += ref["metric"] == r["metric"] and ref["pd"] == r["pd"]
    return {"runs": len(auto), "chose_test_best": hits, "equal_to_explicit_run": same}


# ====================================================================== report
def fmt_ms(s: dict, nd: int) -> str:
    return f"{s['mean']:.{nd}f} ± {s['std']:.{nd}f}" if s["n"] > 1 else f"{s['mean']:.{nd}f}"


def verdict(c: dict, metric: str) -> str:
    p = c["pd"]
    short = {PQ: "P->Q", QP: "Q->P", None: "neither"}
    w = short[c["winner_by_pd"]]
    head = (f"{c['setting']}: {w} has the higher mean PD (difference {p['diff_mean']:+.3f} {metric}/Mb, "
            f"P->Q better in {p['a_wins']}/{p['seeds']} seeds; {metric} difference "
            f"{c['metric']['diff_mean']:+.3f}, seed spread {c['metric']['seed_spread']:.3f})")
    if p["seeds"] < 2:
        return head + " - one seed: no spread, not a finding."
    if not c["finding"]:
        return head + f" - inside the seed spread ({p['seed_spread']:.3f}): not a finding."
    agree = {True: "agrees with", False: "disagrees with"}[c["agrees_with_paper"]] if c["paper"] else "(no paper claim)"
    return head + f" - exceeds the seed spread ({p['seed_spread']:.3f}); {agree} the paper ({short[c['paper']]})."


def markdown(result: dict) -> str:
    L = ["# Ordering study: prune-then-quantize vs quantize-then-prune", "",
         f"{result['bits']}-bit weights and activations, {int(result['sparsity'] * 100)} % sparsity; seeds "
         f"{', '.join(map(str, result['seeds']))}; device {result['device']}; "
         f"{'mean ± std over seeds' if len(result['seeds']) > 1 else 'one seed'}; metric on the test split.", ""]
    for task, t in result["tasks"].items():
        unit = "%" if t["metric"] == "accuracy" else "dB"
        L += [f"## {task} ({t['model']}, {t['kind']}, {t['epochs']} epochs, {t['n_train']} training samples, "
              f"{t['n_test']} test samples)", "",
              f"| variant | test {t['metric']} ({unit}) | footprint (Mb) | PD ({t['metric']}/Mb) |",
              "|---|---|---|---|"]
        for name, s in t["summary"].items():
            extra = ""
            if "chosen" in s:
                extra = " (chose " + ", ".join("P->Q" if c == PQ else "Q->P" for c in s["chosen"]) + ")"
            L.append(f"| {name}{extra} | {fmt_ms(s['metric'], 2)} | {fmt_ms(s['megabits'], 4)} | {fmt_ms(s['pd'], 2)} |")
        L.append("")
        for c in t["comparison"]:
            L.append(f"- {verdict(c, t['metric'])}")
            if c.get("auto"):
                au = c["auto"]
                L.append(f"- order auto ({c['setting']}): its validation trials picked the order with the higher "
                         f"test PD in {au['chose_test_best']}/{au['runs']} seeds; its final model equals the "
                         f"explicit run of the chosen order in {au['equal_to_explicit_run']}/{au['runs']} seeds.")
        L += ["", f"![{task}](order_{task}.svg)", ""]
    return "\n".join(L)


def svg_plot(task: str, t: dict, width: int = 760, height: int = 290) -> str:
    """Two panels: the test metric (mean ± std whiskers, one dot per seed) and the PD bars
    (mean ± std) of every variant."""
    names = list(t["summary"])
    colors = {"float": "#bbbbbb", "P(w)->Q": "#4477aa", "Q->P(w)": "#ee6677", "P(w,a)->Q": "#228833",
              "Q->P(w,a)": "#ccbb44"}
    panel_w, top, bottom, left = (width - 40) // 2, 40, 60, 60
    ph = height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(task)}: '
           f'{escape(t["metric"])} and performance density (mean ± std over seeds)</text>']
    for p, key in enumerate(("metric", "pd")):
        x0 = 10 + p * (panel_w + 20) + left
        pw = panel_w - left
        ss = [t["summary"][n][key] for n in names]
        lo_v = min(min(s["values"]) for s in ss + [{"values": [s["mean"] - s["std"]]} for s in ss])
        hi_v = max(max(s["values"]) for s in ss + [{"values": [s["mean"] + s["std"]]} for s in ss])
        if key == "pd":
            lo = 0.0
        else:  # the metric axis starts near the data, so that seed spreads are visible
            pad = 0.1 * (hi_v - lo_v) or abs(hi_v) * 0.01 or 1.0
            lo = lo_v - pad
        hi = hi_v + (0.1 * (hi_v - lo) or 1.0)

        def y(v):
            return top + ph * (1 - (v - lo) / (hi - lo))
        label = f"test {t['metric']}" if key == "metric" else f"PD ({t['metric']}/Mb)"
        out.append(f'<text x="{x0 + pw / 2}" y="{top - 8}" text-anchor="middle">{escape(label)}</text>')
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + ph}" stroke="#333"/>')
        out.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + pw}" y2="{top + ph}" stroke="#333"/>')
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            out.append(f'<text x="{x0 - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>')
            out.append(f'<line x1="{x0}" y1="{y(v):.1f}" x2="{x0 + pw}" y2="{y(v):.1f}" stroke="#eee"/>')
        bw = pw / len(names)
        for i, (n, s) in enumerate(zip(names, ss)):
            cx = x0 + bw * (i + 0.5)
            col = colors.get(n, "#66ccee")
            if key == "pd":
                out.append(f'<rect x="{cx - bw * 0.3:.1f}" y="{y(s["mean"]):.1f}" width="{bw * 0.6:.1f}" '
                           f'height="{y(lo) - y(s["mean"]):.1f}" fill="{col}"/>')
            else:
                out.append(f'<circle cx="{cx:.1f}" cy="{y(s["mean"]):.1f}" r="5" fill="{col}"/>')
            for v in s["values"]:
                out.append(f'<circle cx="{cx + bw * 0.15:.1f}" cy="{y(v):.1f}" r="2" fill="#333"/>')
            if s["n"] > 1:
                y1, y2 = y(s["mean"] - s["std"]), y(s["mean"] + s["std"])
                out.append(f'<line x1="{cx:.1f}" y1="{y1:.1f}" x2="{cx:.1f}" y2="{y2:.1f}" stroke="#000"/>')
                for yy in (y1, y2):
                    out.append(f'<line x1="{cx - 5:.1f}" y1="{yy:.1f}" x2="{cx + 5:.1f}" y2="{yy:.1f}" stroke="#000"/>')
            out.append(f'<text x="{cx:.1f}" y="{top + ph + 14}" text-anchor="end" '
                       f'transform="rotate(-30 {cx:.1f} {top + ph + 14})">{escape(n)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ====================================================================== main
def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the task's)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated qsp-train tasks")
    ap.add_argument("--out", default="benchmarks/results/order_study")
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=256, help="test inputs saved in each bundle")
    ap.add_argument("--auto", action="store_true", help="also run order auto on the P(w,a) setting")
    ap.add_argument("--no-keep", dest="keep", action="store_false", help="delete the run directories")
    ap.add_argument("--verbose", action="store_true", help="show the runs' logs")
    ap.add_argument("--from-json", metavar="FILE", help="no training: rebuild the report (statistics, Markdown, "
                    "SVG) in --out from the rows of an earlier order_study.json")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        return write_report(result, out, VARIANTS + (AUTO,))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            ap.error(f"--tasks: {t!r} is not one of {', '.join(TASKS)}")
    variants = VARIANTS + ((AUTO,) if args.auto else ())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    log = print if args.verbose else (lambda *a, **k: None)
    result = {"bits": args.bits, "sparsity": args.sparsity, "seeds": seeds, "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "qsp": qsp.__version__, "commit": _git_commit(),
              "args": vars(args), "tasks": {}}
    t_start = time.perf_counter()
    for task in tasks:
        spec = TASKS[task]
        rows = []
        for seed in seeds:  # interleave the variants within a seed
            for v in variants:
                for r in run_one(args, task, v, seed, runs, log):
                    rows.append(r)
                    print(f"{task:<17} seed {seed}  {r['variant']:<11} test {spec.metric} {r['metric']:8.3f}  "
                          f"{r['megabits']:.5f} Mb  PD {r['pd']:10.3f}  ({r['seconds']:.0f} s)"
                          + (f"  chose {r['chosen']}" if "chosen" in r else ""), flush=True)
        cfg0 = TrainConfig.from_dict(base_config(args, task, seeds[0]))
        from qsp.train.config import resolve
        from qsp.train.data import load_task
        _, data = load_task(cfg0)
        cfg0 = resolve(cfg0, spec.defaults)
        result["tasks"][task] = {"kind": spec.kind, "metric": spec.metric, "model": cfg0.model, "epochs": cfg0.epochs,
                                 "n_train": len(data.x_train), "n_test": len(data.x_test), "rows": rows}
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    return write_report(result, out, variants)


def write_report(result: dict, out: Path, variants) -> int:
    """Statistics, verdicts, JSON, Markdown and one SVG per task from the rows of ``result``."""
    for task, t in result["tasks"].items():
        t["summary"] = summarize(t["rows"], variants)
        t["comparison"] = compare(t["summary"], t["rows"], t["kind"])
        (out / f"order_{task}.svg").write_text(svg_plot(task, t))
    (out / "order_study.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out / "order_study.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
