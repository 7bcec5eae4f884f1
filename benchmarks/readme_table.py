"""README's generated results table, from the committed JSON under benchmarks/results/.

    python benchmarks/readme_table.py           # rewrite the block in README.md
    python benchmarks/readme_table.py --check   # exit 1 when README.md and the JSON disagree

The block lies between ``<!-- readme_table: begin -->`` and ``<!-- readme_table: end -->``;
every figure in it is read from a JSON file named in its row (which records the command that
made it). tests/test_readme_numbers.py runs the check.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- readme_table: begin -->", "<!-- readme_table: end -->"
NETS = {"qsparse_mnist": "qsparse's MNIST net", "resnet8": "ResNet-8"}


def load(rel: str) -> dict:
    p = RESULTS / rel
    if not p.is_file():
        raise SystemExit(f"readme_table.py: {p} is missing (the README figure rests on it)")
    return json.loads(p.read_text())


def x(v: float, nd: int = 2) -> str:
    return f"{v:.{nd}f}x"


def overhead_cell(doc: dict) -> str:
    parts, worst = [], {}
    for net, modes in doc["results"].items():
        r = [f"{m} {x(v['ratio_median_step_time'])}" for m, v in modes.items()]
        if len(modes) > 1:  # the fastest qsp step against the fastest float step
            best = {k: min(v["median_step_ms"][k] for v in modes.values()) for k in ("float", "qsp")}
            r[-1] += f" (fastest qsp / fastest float {x(best['qsp'] / best['float'])})"
        parts.append(f"{NETS.get(net, net)} {', '.join(r)}")
        for m, v in modes.items():
            worst[m] = max(worst.get(m, 0.0), v["ratio_median_step_time"])
    mem = max(v.get("memory_ratio_peak", v["memory_ratio_delta"]) for m in doc["results"].values() for v in m.values())
    goal = doc["goal_ratio"]
    met = ", ".join(f"{m} {'met' if w <= goal else '**not met**'}" for m, w in worst.items())
    return (f"{doc['device'].upper()}: " + "; ".join(parts) + f"; peak memory <= {x(mem)} (goal {x(doc['goal_memory_ratio'])}: "
            f"{'met' if mem <= doc['goal_memory_ratio'] else '**not met**'}); goal {x(goal)}: {met}")


def overhead_row() -> str:
    files = sorted(p.relative_to(RESULTS).as_posix() for p in (RESULTS / "overhead").glob("*.json"))
    docs = [(f, d) for f in files if (d := load(f)).get("benchmark") == "overhead"]
    if not docs:
        raise SystemExit("readme_table.py: no overhead JSON under benchmarks/results/overhead/")
    cells = " <br> ".join(f"{overhead_cell(d)} ({d['device_name']}, {d['threads']} threads)"
                          if d["device"] == "cpu" else f"{overhead_cell(d)} ({d['device_name']})" for f, d in docs)
    where = ", ".join(f"`benchmarks/results/{f}`" for f, _ in docs)
    return ("| training-step overhead, qsp / float step time (batch 128; every weight and activation pruned 50 % "
            "and 8-bit, masks and quantizers asserted on; eager and torch.compile) | " + cells + f" | {where} |")


def compile_row() -> str:
    doc = load("compile_time.json")
    cpus = "/".join(str(c) for c in doc["cpu_counts"])
    parts = []
    for kind, r in doc["results"].items():
        b = r["builds"]
        cells = []
        for tb, label in (("tb", "with testbench"), ("notb", "without")):
            per_o = [f"-O{o} " + "/".join(x(b[f"O{o}_{tb}_{c}cpu"]["ratio"]) for c in doc["cpu_counts"])
                     for o in doc["opt_levels"]]
            cells.append(f"{label} {', '.join(per_o)}")
        parts.append(f"{kind.upper()} " + "; ".join(cells) + f"; qsp-compile end to end {r['end_to_end_s']:.1f} s")
    return ("| qsp's C++ build / hls4ml's own build_lib.sh: the same hls4ml project (qsp's converted graph), the same "
            f"-O level, both pinned to the same {cpus} CPUs (hls4ml's testbench built beside its library) | "
            + " <br> ".join(parts) + f" | {doc['cpus']}-core CPU, `benchmarks/results/compile_time.json` |")


def ddp_row() -> str:
    d = load("gpu/ddp_weak.json")
    runs = {r["nproc"]: r for r in d["runs"]}
    n, gpu = max(runs), runs[max(runs)]["gpu"].split(" ")[1]
    return (f"| DDP, {n} x {gpu} vs 1 ({d['model']}, {d['scaling']} scaling) | {x(d['speedup'])} samples/s "
            f"(efficiency {d['efficiency'] * 100:.0f} %) | `benchmarks/results/gpu/ddp_weak.json` |")


def djpq_row() -> str:
    d = load("gpu/djpq/djpq_bops.json")
    rows = {r["variant"]: r for r in d["rows"]}
    pow2, plain = rows["DJPQ target 0.012 pow2"], rows["DJPQ target 0.012"]
    q8 = next(r for v, r in rows.items() if v.startswith("qsparse"))

    def pts(r):  # accuracy change in points (acc_loss_points is the loss)
        return f"{-r['acc_loss_points']:+.2f} points"

    return (f"| DJPQ, Fashion-MNIST LeNet | {pow2['reduction']:.1f}x fewer BOPs than FP32 at {pts(pow2)} "
            f"(power-of-two bits), {plain['reduction']:.1f}x at {pts(plain)}; qsparse 8 bit / 50 %: "
            f"{q8['reduction']:.1f}x | {d['hardware']['name'].split(' ')[1]}, `benchmarks/results/gpu/djpq/djpq_bops.json` |")


NET_NAMES = {"resnet8": "ResNet-8", "mobilenet_v2_tiny": "MobileNetV2-tiny", "ds_cnn": "DS-CNN"}
RN = "real_networks"


def _pts(r: dict) -> str:
    return f"{r['delta_points']:+.2f}"


def real_qsparse_row() -> str:
    """qsparse 8 bit / 50 %: the longest run of each network (``long/`` holds 25-epoch runs)."""
    cells, where = [], []
    for net, name in NET_NAMES.items():
        rel = f"{RN}/long/{net}_qsparse.json" if (RESULTS / RN / "long" / f"{net}_qsparse.json").is_file() \
            else f"{RN}/{net}_qsparse.json"
        r = load(rel)
        ok = abs(r["delta_points"]) <= 1.0
        cells.append(f"{name} {r['accuracy']:.2f} % vs {r['float_accuracy']:.2f} % ({_pts(r)} points, PD "
                     f"{r['pd_ratio_vs_float']:.1f}x, {r['epochs']} epochs{'' if ok else ': the 1-point goal is **not** met'})")
        where.append(f"`benchmarks/results/{rel}`")
    return ("| real networks on Fashion-MNIST, qsparse 8 bit / 50 % weights + activations, from scratch (float "
            "baseline: same epochs) | " + "; ".join(cells) + " | H200, " + ", ".join(where) + " |")


def _flag(r: dict, flag: str) -> str:
    """The value given to ``flag`` in the run's recorded command."""
    words = r["command"].split()
    return words[words.index(flag) + 1]


def _runs(sub: str, pattern: str) -> list[dict]:
    return [dict(load(p.relative_to(RESULTS).as_posix()), run=p.stem) for p in sorted((RESULTS / RN / sub).glob(pattern))
            if not p.stem.endswith(("_hw", "_boards")) and "_hw_" not in p.stem]


def real_djpq_row() -> str:
    """DJPQ from scratch (5 epochs) on the three networks; ResNet-8 started from its trained
    float model (``init``; ``djpq_init/``), and with DJPQ's fine-tuning phase
    (``djpq_finetune/``, every seed); the goal is judged on the fine-tuned runs."""
    scratch = "; ".join(f"{NET_NAMES[n]} {r['bops_reduction']:.1f}x at {_pts(r)}"
                        for n in NET_NAMES for r in [load(f"{RN}/{n}_djpq.json")])
    init = sorted(_runs("djpq_init", "resnet8_djpq_init*.json"), key=lambda r: r["bops_reduction"])
    init_txt = ", ".join(f"{r['bops_reduction']:.1f}x at {_pts(r)}" for r in init)
    ft = [r for r in _runs("djpq_finetune", "resnet8_djpq_*.json") if r.get("finetune") and not r.get("distill")]
    ft.sort(key=lambda r: (r["seed"], r["run"]))
    ft_txt = ", ".join(f"seed {r['seed']} (target {_flag(r, '--bops-target')}): {r['bops_reduction']:.1f}x at {_pts(r)}"
                       for r in ft)
    ok = [r for r in ft if r["bops_reduction"] >= 100 and r["delta_points"] >= -0.5]
    seeds = sorted({r["seed"] for r in ft})
    met = bool(ft) and len(ok) == len(ft)
    others = "; ".join(f"{NET_NAMES[r['model']]} {r['bops_reduction']:.1f}x at {_pts(r)}"
                       for r in _runs("djpq_finetune", "*_djpq_*.json") if r["model"] != "resnet8")
    return (f"| DJPQ on the same networks (BOPs vs FP32 dense, accuracy points vs float) | from scratch, 5 epochs: {scratch} "
            f"<br> ResNet-8 from its trained float model (8 float epochs, then 8-9 DJPQ epochs, {len(init)} runs): "
            f"{init_txt} <br> the same with DJPQ's fine-tuning phase (`finetune: 0.25`, 8 epochs, seeds "
            f"{', '.join(map(str, seeds))}): {ft_txt}: {len(ok)} of {len(ft)} runs reach 100x within 0.5 points, the goal "
            f"is {'met' if met else '**not** met'} <br> fine-tuning phase on the other two (float init, 5-6 epochs): "
            f"{others} | H200, `benchmarks/results/{RN}/*_djpq.json`, `djpq_init/`, `djpq_finetune/` |")


def real_csim_row() -> str:
    """Every compiled real-network design (``*_hw.json``: pynq-z2 part, io_parallel; ``*_hw_<board>_io_stream.json``:
    io_stream for that board) with its three-way verification."""
    dirs = [RESULTS / RN, RESULTS / RN / "long", RESULTS / RN / "djpq_init", RESULTS / RN / "djpq_finetune"]
    hw = [f for d in dirs for f in sorted(d.glob("*_hw*.json"))]
    compared, bad = {}, {}
    names, stream = [], []
    for f in hw:
        d = json.loads(f.read_text())
        v = d.get("verify") or {}
        if not (v.get("paths") or {}).get("csim_testbench"):
            continue
        for path, c in v["paths"].items():
            compared[path] = compared.get(path, 0) + c["compared"]
            bad[path] = bad.get(path, 0) + c["mismatches"]
        names.append(f.stem)
        if d.get("io_type") == "io_stream":
            stream.append(f"{d['run'].split('_djpq_')[1] if '_djpq_' in d['run'] else d['run']} on {d['board']} "
                          f"({(d.get('estimate') or {}).get('verdict', '-')})")
    boards = sorted({json.loads(f.read_text()).get("board") for f in hw if "_io_stream" in f.stem})
    paths = "; ".join(f"{k} {bad[k]} of {compared[k]:,}" for k in sorted(compared))
    fits = {}
    for f in sorted((RESULTS / RN).glob("*_boards.json")):
        fits[f.stem[:-7]] = json.loads(f.read_text()).get("fits", [])
    fit_txt = "; ".join(f"{NET_NAMES.get(k.rsplit('_', 1)[0], k)} ({k.rsplit('_', 1)[1]}): {', '.join(v) or 'none'}"
                        for k, v in fits.items())
    return (f"| real networks compiled and C-simulated (2,000 test inputs each) | "
            f"{len(names)} compiled designs ({len(names) - len(stream)} io_parallel for the pynq-z2 part; {len(stream)} "
            f"io_stream for {', '.join(boards) or '-'}, qsp-estimate's verdict there: {', '.join(stream) or '-'}); "
            f"outputs differing from the emulation: {paths}; boards qsp-estimate finds fitting (io_parallel, the "
            f"first runs): {fit_txt} | 2-core CPU, `benchmarks/results/{RN}/**/*_hw*.json`, `*_boards.json` |")


def stream_fit_row() -> str:
    """The estimator's io_parallel vs io_stream verdicts for the fine-tuned DJPQ designs
    (benchmarks/estimate_stream.py)."""
    d = load("estimate_stream.json")
    cells = []
    for run, n in d["networks"].items():
        if "_djpq_" not in run:
            continue
        fits = {io: [b for b, r in n["boards"].items() if r[io]["verdict"].startswith("fits")]
                for io in ("io_parallel", "io_stream")}
        cells.append(f"{NET_NAMES[run.split('_djpq_')[0]]} ({run.split('_djpq_')[1]}): io_parallel "
                     f"{', '.join(fits['io_parallel']) or 'none'}; io_stream {', '.join(fits['io_stream']) or 'none'}")
    return ("| boards the estimator finds a fitting plan on, DJPQ designs with the fine-tuning phase (analytic model; "
            "io_stream: one FIFO per stream at hls4ml's default depth) | " + " <br> ".join(cells)
            + " | 2-core CPU, `benchmarks/results/estimate_stream.json` |")


def djpq_step_row() -> str:
    d = load("djpq_step.json")
    (b_label, b), (a_label, a) = sorted(d.items(), key=lambda kv: kv[0].startswith("after"))
    cb, ca = b["counts_per_step"]["djpq"], a["counts_per_step"]["djpq"]
    fl = a["counts_per_step"]["float"]
    return (f"| DJPQ training step, ResNet-8 batch 128 (operator calls = kernel launches on a GPU; host reads = "
            f"synchronisations) | operator calls {cb['operator_calls']:,} -> {ca['operator_calls']:,} (float "
            f"{fl['operator_calls']:,}); host reads {cb['host_reads']} -> {ca['host_reads']} (float {fl['host_reads']}); "
            f"CPU step vs float {x(b['djpq_over_float'])} -> {x(a['djpq_over_float'])} ({b['commit']} -> {a['commit']}) "
            f"| 2-core CPU, `benchmarks/results/djpq_step.json` |")


def default_flow_row() -> str:
    d = load("default_flow.json")
    v = d["verify"]
    n = sum(p["compared"] for p in v["paths"].values() if p["compared"])
    bad = sum(p["mismatches"] for p in v["paths"].values())
    return (f"| default flow (`qsp flow`, digits MLP, 8 bit / 50 % weights + activations, pynq-z2) | "
            f"{d['test_accuracy']:.2f} % test accuracy (float {d['float_accuracy']:.2f} %), weights+activations "
            f"{d['footprint_megabits']:.3f} Mb vs {d['float_megabits']:.3f} Mb float (PD {d['pd_ratio_to_float']:.1f}x); "
            f"csim, hls4ml predict and onnxruntime against the emulation on all {v['inputs']} test inputs: {bad} of "
            f"{n:,} outputs differ | 2-core CPU, `benchmarks/results/default_flow.json` |")


def lenet_pd_row() -> str:
    """qsparse on Fashion-MNIST LeNet (benchmarks/pd_fashion_mnist.py), weights and
    activations pruned and quantized (P(w,a)->Q), one JSON per (setting, seed): mean over seeds."""
    groups: dict = {}
    for f in sorted(RESULTS.glob("gpu/pd_*.json")) + sorted(RESULTS.glob("gpu/pd30/pd_*.json")):
        d = json.loads(f.read_text())
        key = (d["epochs"], d["bits"], d["sparsity"], tuple(d["dense"]))
        g = groups.setdefault(key, {"float": [], "q": [], "pd": [], "seeds": [], "gpu": d["hardware"].get("gpu", "")})
        g["float"].append(d["summary"]["float"]["metric_mean"])
        g["q"].append(d["summary"]["P(w,a)->Q"]["metric_mean"])
        g["pd"].append(d["summary"]["P(w,a)->Q"]["pd_ratio_to_float"])
        g["seeds"] += d["seeds"]
    if not groups:
        raise SystemExit("readme_table.py: no benchmarks/results/gpu/pd_*.json")
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    cells, met = [], False
    for (ep, bits, sp, dense), g in sorted(groups.items()):
        delta, pd = mean(g["q"]) - mean(g["float"]), mean(g["pd"])
        met |= pd >= 8 and delta >= -1.0
        cells.append(f"{ep} epochs, {bits} bit / {sp:.0%} every layer{' but the first' if dense else ''}: "
                     f"{mean(g['q']):.2f} % vs {mean(g['float']):.2f} % ({delta:+.2f} points, PD {pd:.1f}x)")
    gpu = next(iter(groups.values()))["gpu"].split(" ")[1]
    return ("| Fashion-MNIST LeNet, qsparse weights + activations (P(w,a)->Q), mean of seeds 0 and 1 | "
            + "; ".join(cells) + f"; the goal (8x PD within 1 point) is {'met' if met else '**not** reached'} | "
            f"{gpu}, `benchmarks/results/gpu/pd_*.json`, `benchmarks/results/gpu/pd30/` |")


def table() -> str:
    rows = [default_flow_row(), real_qsparse_row(), real_djpq_row(), real_csim_row(), stream_fit_row(), lenet_pd_row(), djpq_row(), djpq_step_row(), overhead_row(),
            compile_row(), ddp_row()]
    return "\n".join([BEGIN, "| what | result | where |", "|---|---|---|", *rows, END])


def block(text: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"README.md: expected one '{BEGIN}' ... '{END}' block")
    return text[text.index(BEGIN): text.index(END) + len(END)]


def check(readme_text: str) -> list[str]:
    """Lines of README's block that differ from the table the JSON gives (empty: agree)."""
    have, want = block(readme_text).splitlines(), table().splitlines()
    diff = [f"README: {h}\nJSON:   {w}" for h, w in zip(have, want) if h != w]
    if len(have) != len(want):
        diff.append(f"README's block has {len(have)} lines, the JSON gives {len(want)}")
    return diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    a = ap.parse_args(argv)
    path = Path(a.readme)
    text = path.read_text()
    if a.check:
        bad = check(text)
        print("\n".join(bad) if bad else "README.md agrees with benchmarks/results")
        return 1 if bad else 0
    path.write_text(text.replace(block(text), table()))
    print(f"rewrote the results block of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
