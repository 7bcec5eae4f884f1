"""One ``qsp-train`` run from a config to a written bundle and a report.

``run(cfg)`` is what the command line calls and what scripts (benchmarks) use:

1. data of the task, task defaults filled in, the run directory prepared (``runs/latest``);
2. the method prepares the model, the :class:`~qsp.train.loop.Trainer` trains it (resumable);
3. optionally the float baseline is trained for the same epochs;
4. the trained model is evaluated in eval mode, exported as a bundle (``OUT/bundle``) with
   ``metrics.json``, ``config.yaml`` and ``train_log.csv``, and ``model.onnx`` when the ONNX
   exporter is available;
5. the report (metric, sparsities, footprint, performance density) is returned and printed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..bundle import ModelRef, TaskInfo
from ..bundle.footprint import float_footprint, footprint, performance_density
from ..errors import ConfigError
from ..nn import ActivationPruner, WeightPruner
from . import distributed as dd
from .config import TrainConfig, resolve
from .data import load_task
from .loop import Trainer
from .methods import FloatMethod, get_method
from .models import resolve_model

RUNS = Path("runs")
#: keys that may change when a run is resumed (they do not change the result)
RESUME_FREE = {"device", "threads", "progress", "max_steps", "checkpoint_every", "resume", "out", "float_metric",
               "float_baseline", "max_test"}


@dataclass
class RunReport:
    out: Path
    stopped: bool
    metrics: dict = field(default_factory=dict)
    bundle_path: Path | None = None

    def table(self) -> str:
        return report_table(self.metrics)


# ====================================================================== run directory
def _new_run_dir(task: str) -> Path:
    ts = time.strftime("%Y%m%d-%H%M%S")
    out = RUNS / f"{task}-{ts}"
    i = 1
    while out.exists():
        i += 1
        out = RUNS / f"{task}-{ts}-{i}"
    return out


def _point_latest(out: Path) -> None:
    """``runs/latest`` -> ``out`` (when ``out`` is inside ``runs/``), replaced atomically."""
    try:
        rel = out.resolve().relative_to(RUNS.resolve())
    except ValueError:
        return
    link = RUNS / "latest"
    tmp = RUNS / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(str(rel), tmp)
        os.replace(tmp, link)
    except OSError as e:  # filesystems without symlinks
        warnings.warn(f"could not point {link} at {out}: {e}")


def _resume_config(cfg: TrainConfig, explicit: set[str] | None) -> tuple[TrainConfig, Path]:
    out = Path(cfg.out) if cfg.out else RUNS / "latest"
    saved = out / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume: {saved} not found: {str(out)!r} is not a qsp-train run directory")
    base = TrainConfig.from_yaml(saved)
    keys = set(TrainConfig.keys()) if explicit is None else set(explicit)
    differs = [k for k in sorted(keys - RESUME_FREE)
               if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(base, k)
               and not (explicit is None and getattr(cfg, k) == getattr(TrainConfig(), k))]
    if differs:
        raise ConfigError(f"resume: {', '.join(f'{k} ({getattr(cfg, k)!r} here, {getattr(base, k)!r} in the run)' for k in differs)}"
                          f" differ from the run being resumed in {out}; a resumed run keeps its configuration")
    free = {k: getattr(cfg, k) for k in keys & RESUME_FREE if k not in ("out", "resume")}
    return dataclasses.replace(base, **free, resume=True, out=str(out.resolve())), out.resolve()


# ====================================================================== run
def run(cfg: TrainConfig, explicit: set[str] | None = None, echo=print) -> RunReport:
    """Train, export and report. ``explicit``: the keys the user set (for --resume checks);
    None means every non-default key."""
    cfg.validate()
    if dd.setup(cfg.device).active and not dd.is_main():  # torchrun: rank 0 reports and writes
        echo = _silent
    if cfg.resume:
        cfg, out = _resume_config(cfg, explicit)
    else:
        out = dd.broadcast_object(Path(cfg.out) if cfg.out else _new_run_dir(cfg.task))  # one run dir
        from ..paths import output_dir
        output_dir(out, "out")  # a file or a read-only place fails now, not after training
        if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
            raise ConfigError(f"out: {out} already holds a run; pass --resume to continue it or choose another --out")
    spec, data = load_task(cfg)
    cfg = resolve(cfg, spec.defaults)
    prev_threads = torch.get_num_threads()
    if cfg.threads is not None and cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        order_auto = None
        if cfg.order == "auto":  # trials of both orders; cfg.order becomes the winner (qsp.train.order)
            from .order import auto_order
            cfg, order_auto = auto_order(cfg, spec, data, out, echo)
        elif cfg.resume:
            from .order import recorded_choice
            order_auto = recorded_choice(out)
        return _train_and_export(cfg, spec, data, out, echo, order_auto)
    finally:
        torch.set_num_threads(prev_threads)


def _train_and_export(cfg, spec, data, out: Path, echo, order_auto: dict | None = None) -> RunReport:
    factory, kwargs = resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.out is None and dd.is_main():
        _point_latest(out)
    cfg = dataclasses.replace(cfg, out=str(out))
    if dd.is_main():
        (out / "config.yaml").write_text(cfg.to_yaml())

    method = get_method(cfg.method, cfg)
    init_state, float_metrics = None, None
    if cfg.init == "float":  # train the float model first; the quantized model starts from it
        if not (out / "float_init.pt").is_file():  # check the model for this method before any training
            Trainer(cfg, spec, data, get_method(cfg.method, cfg), factory, kwargs, progress=False).build()
        float_metrics, init_state = _float_model(cfg, spec, data, factory, kwargs, out, echo)
    elif cfg.init is not None:
        init_state = Path(cfg.init)
    trainer = Trainer(cfg, spec, data, method, factory, kwargs, run_dir=out, init_state=init_state)
    resume = cfg.resume and trainer.checkpoint_path.exists()
    if cfg.resume and not resume:
        echo(f"resume: no checkpoint in {out / 'checkpoints'}; starting from step 0")
    echo(f"qsp-train: task {cfg.task}, model {cfg.model} ({factory}), method {cfg.method}, order {cfg.order}, "
         f"{cfg.epochs} epochs x {trainer.steps_per_epoch} steps, device {cfg.device}, out {out}")
    if trainer.model is None:
        trainer.build()
    if trainer.graph_ops:
        echo("graph: " + ", ".join(f"{op} x{k}" for op, k in trainer.graph_ops.items()))
    if cfg.layers and method.layer_table:  # the per-layer overrides, resolved: in config.yaml and the report
        table = layer_table(method.layer_table)
        echo("per-layer plan (first matching 'layers' pattern wins):\n" + table)
        if dd.is_main():
            (out / "config.yaml").write_text(cfg.to_yaml() + "# resolved per layer (first matching 'layers' "
                                             "pattern wins):\n" + "".join(f"#   {ln}\n" for ln in table.splitlines()))
    res = trainer.fit(resume=resume)
    if res.stopped:
        echo(f"stopped after step {res.steps} of {trainer.total_steps} (max_steps); continue with: "
             f"qsp-train --resume --out {out}")
        return RunReport(out, True)

    metrics = _evaluate(trainer, data, spec)
    if cfg.layers and method.layer_table:
        metrics["layer_plan"] = method.layer_table
    metrics["train_seconds"] = round(res.seconds, 2)
    metrics["float"] = float_metrics or _float_baseline(cfg, spec, data, factory, kwargs, out, echo)

    # ---------------------------------------------------------------- bundle
    if not dd.is_main():  # torchrun: rank 0 writes the bundle (the model is identical on every rank)
        dd.barrier()
        return RunReport(out, False, metrics, None)
    model = res.model
    with torch.no_grad():
        model.eval()
        out_shape = list(model(torch.from_numpy(data.x_test[:1]).to(trainer.device)).shape[1:])
    n_keep = len(data.x_test) if cfg.task == "digits" else min(len(data.x_test), cfg.max_test)
    task_info = TaskInfo(cfg.task, spec.kind, spec.metric, data.input_shape, out_shape,
                         data.info.get("num_classes") if spec.kind == "classification" else None,
                         extra={k: v for k, v in data.info.items() if k != "num_classes"})
    if n_keep < len(data.x_test):
        metrics["test_metric_saved_subset"] = trainer.evaluate(
            data.x_test[:n_keep], data.y_test[:n_keep], None if data.test_groups is None else data.test_groups[:n_keep])
    bundle = method.export(model, task=task_info, model_ref=ModelRef(factory, kwargs),
                           test_x=data.x_test[:n_keep], test_y=data.y_test[:n_keep], metrics={},
                           extra={"run": str(out), **({"order_auto": order_auto} if order_auto else {})})
    _check_exported(bundle)
    metrics.update(_footprint_metrics(bundle, metrics))
    bundle.qspec.metrics = metrics
    bpath = bundle.write(out / "bundle")
    _umask = os.umask(0)
    os.umask(_umask)
    os.chmod(bpath, 0o777 & ~_umask)  # mkdtemp made it 0700
    bundle.write_json("metrics.json", metrics)
    shutil.copy2(out / "config.yaml", bpath / "config.yaml")
    shutil.copy2(out / "train_log.csv", bpath / "train_log.csv")
    _write_onnx(bundle, echo)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    rep = RunReport(out, False, metrics, bpath)
    echo(rep.table())
    if order_auto:
        from .order import summary
        echo(summary(order_auto))
    echo(f"bundle: {bpath}")
    dd.barrier()
    return rep


def _check_exported(bundle) -> None:
    """The exported bundle's exact emulation equals the trained model's own outputs on the
    test inputs (both computed here, bit for bit); anything else is a qsp bug."""
    from ..errors import BundleError
    from ..verify.emulate import trained_model_diff

    d = trained_model_diff(bundle)
    if d is not None and d[1]:
        raise BundleError(f"the exported bundle's emulation differs from the trained model on {d[1]} of {d[0]} test "
                          f"outputs (max {d[2]:g}): a qsp bug in the exporter or the emulator; please report it with "
                          "the run's config.yaml")


def _silent(*args, **kwargs) -> None:
    pass


def _write_onnx(bundle, echo) -> None:
    from ..export.onnx import write_onnx  # imports onnx: only at the end of a run

    write_onnx(bundle)


# ====================================================================== metrics
def _evaluate(trainer: Trainer, data, spec) -> dict:
    model = trainer.model
    pw = [m for m in model.modules() if isinstance(m, WeightPruner)]
    pa = [m for m in model.modules() if isinstance(m, ActivationPruner) and m.mask.numel()]
    wz = sum(int((m.mask == 0).sum()) for m in pw)
    wn = sum(m.mask.numel() for m in pw)
    az = sum(int((m.mask == 0).sum()) for m in pa)
    an = sum(m.mask.numel() for m in pa)
    return {"metric": spec.metric, "task": spec.name,
            "test_metric": trainer.evaluate(data.x_test, data.y_test, data.test_groups),
            "val_metric": trainer.evaluate(data.x_val, data.y_val, data.val_groups),
            "steps": trainer.total_steps,
            "weight_sparsity_pruned_layers": wz / wn if wn else 0.0,
            "pruned_weight_layers": len(pw),
            "act_sparsity_masked_points": az / an if an else 0.0,
            "masked_activation_points": len(pa)}


def _float_metrics(tr: Trainer, data, **extra) -> dict:
    """The float model's test and validation metrics (the baseline the report compares with)."""
    return {"test_metric": tr.evaluate(data.x_test, data.y_test, data.test_groups),
            "val_metric": tr.evaluate(data.x_val, data.y_val, data.val_groups), **extra}


def _float_baseline(cfg, spec, data, factory, kwargs, out: Path, echo) -> dict | None:
    if cfg.float_metric is not None:
        return {"test_metric": cfg.float_metric, "source": "given (float_metric)"}
    if not cfg.float_baseline:
        return None
    if cfg.init is not None and cfg.init != "float":  # the given weights are the float model
        tr = Trainer(cfg, spec, data, FloatMethod(cfg), factory, kwargs, run_dir=None, tag="float",
                     init_state=Path(cfg.init))
        tr.build()
        return _float_metrics(tr, data, source=f"the init state_dict {cfg.init} (not trained here)")
    cache = out / "float_baseline.json"
    if dd.broadcast_object(cache.is_file()):  # every rank trains it, or none
        return json.loads(cache.read_text())
    echo(f"float baseline: training the float model for {cfg.epochs} epochs")
    tr = Trainer(cfg, spec, data, FloatMethod(cfg), factory, kwargs, run_dir=None, tag="float")
    res = tr.fit()
    d = _float_metrics(tr, data, train_seconds=round(res.seconds, 2), source="trained (same epochs, seed, optimizer)")
    if dd.is_main():
        cache.write_text(json.dumps(d, indent=1))
    return d


def _float_model(cfg, spec, data, factory, kwargs, out: Path, echo) -> tuple[dict, Path]:
    """``init: float``: train the float model for ``init_epochs`` (default ``epochs``) and
    keep its weights (``out/float_init.pt``, written atomically; reused on --resume) as the
    quantized model's start and its metrics as the float baseline."""
    state, cache = out / "float_init.pt", out / "float_init.json"
    if dd.broadcast_object(state.is_file() and cache.is_file()):
        return json.loads(cache.read_text()), state
    ep = cfg.init_epochs or cfg.epochs
    echo(f"init: training the float model for {ep} epochs; the {cfg.method} model starts from it")
    fcfg = dataclasses.replace(cfg, epochs=ep)
    tr = Trainer(fcfg, spec, data, FloatMethod(fcfg), factory, kwargs, run_dir=None, tag="float")
    res = tr.fit()
    d = _float_metrics(tr, data, train_seconds=round(res.seconds, 2), epochs=ep,
                       source=f"trained ({ep} epochs); the quantized model was initialised from it")
    if dd.is_main():
        tmp = out / f".float_init.{os.getpid()}.pt"
        torch.save({k: v.detach().cpu() for k, v in tr.module.state_dict().items()}, tmp)
        os.replace(tmp, state)
        cache.write_text(json.dumps(d, indent=1))
    dd.barrier()
    return d, state


def _footprint_metrics(bundle, metrics) -> dict:
    fp = footprint(bundle)
    ff = float_footprint(bundle)
    m = metrics["test_metric"]
    d = {"footprint": {"weight_bits": fp.weight_bits, "activation_bits": fp.activation_bits,
                       "total_bits": fp.total_bits, "megabits": fp.megabits, "bias_bits": fp.bias_bits,
                       "weights": fp.weights, "weight_nonzeros": fp.weight_nonzeros,
                       "activations": fp.activations, "activation_nonzeros": fp.activation_nonzeros},
         "weight_sparsity_overall": fp.weight_sparsity, "act_sparsity_overall": fp.activation_sparsity,
         "performance_density": performance_density(m, fp),
         "layers": [{"name": n.name, "op": n.op, "weight_bits": n.weight.bits, "weights": l.elements,
                     "nonzeros": l.nonzeros, "weight_sparsity": n.weight_sparsity}
                    for n, l in zip([n for n in bundle.graph if n.op in ("linear", "conv2d", "conv1d")], fp.layers)],
         "activation_points": [{"name": p.name, "bits": p.bits, "elements": p.elements, "nonzeros": p.nonzeros}
                               for p in fp.points]}
    fl = metrics.get("float")
    if fl:
        fpd = performance_density(fl["test_metric"], ff)
        fl.update(footprint_bits=ff.total_bits, megabits=ff.megabits, performance_density=fpd)
        d["pd_ratio_to_float"] = d["performance_density"] / fpd if fpd else None
        d["metric_delta_to_float"] = m - fl["test_metric"]
    return d


def layer_table(rows: list[dict]) -> str:
    """The resolved per-layer plan (qsp.nn.layer_settings rows) as an aligned table."""
    head = ("layer", "kind", "bits", "sparsity", "rounding", "per_channel", "override")
    body = [(r["layer"], r["kind"], str(r["bits"]), f"{r['sparsity']:g}", r["rounding"],
             "-" if r["per_channel"] is None else str(r["per_channel"]).lower(), r["override"] or "-") for r in rows]
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(x)).rstrip() for x in [head] + body)


def report_table(m: dict) -> str:
    """The end-of-run report as an aligned text table."""
    if not m:
        return ""
    unit = "%" if m["metric"] == "accuracy" else " dB"
    fp = m["footprint"]
    rows = [("", "float", "qsp (quantized + pruned)")]
    fl = m.get("float")
    z = "0" if fl else "-"
    rows.append((f"test {m['metric']}", f"{fl['test_metric']:.2f}{unit}" if fl else "-",
                 f"{m['test_metric']:.2f}{unit}"))
    if m["pruned_weight_layers"]:  # unstructured (qsparse) pruning; DJPQ reports its channels itself
        rows.append(("weight sparsity (pruned layers)", z, f"{m['weight_sparsity_pruned_layers']:.4f}"
                     f" ({m['pruned_weight_layers']} layers)"))
    rows.append(("weight sparsity (all, incl. zeros from rounding)", z, f"{m['weight_sparsity_overall']:.4f}"))
    if m["masked_activation_points"]:
        rows.append(("activation sparsity (masked points)", z, f"{m['act_sparsity_masked_points']:.4f}"
                     f" ({m['masked_activation_points']} points)"))
    rows.append(("activation sparsity (all quantized points, incl. input)", z, f"{m['act_sparsity_overall']:.4f}"))
    rows.append(("footprint weights (bits)", f"{fl['footprint_bits'] - 32 * fp['activations']:,}" if fl and 'footprint_bits' in fl else "-",
                 f"{fp['weight_bits']:,}"))
    rows.append(("footprint activations (bits, one input)", f"{32 * fp['activations']:,}" if fl else "-",
                 f"{fp['activation_bits']:,}"))
    rows.append(("footprint total (Mb)", f"{fl['megabits']:.4f}" if fl and "megabits" in fl else "-",
                 f"{fp['megabits']:.4f}"))
    rows.append(("biases (bits, not in footprint)", "-", f"{fp['bias_bits']:,}"))
    rows.append((f"performance density ({m['metric']}/Mb)",
                 f"{fl['performance_density']:.2f}" if fl and "performance_density" in fl else "-",
                 f"{m['performance_density']:.2f}" + (f"  ({m['pd_ratio_to_float']:.1f}x float)"
                                                      if m.get("pd_ratio_to_float") else "")))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if m.get("layer_plan"):
        lines += ["", "per-layer plan (first matching 'layers' pattern wins):", layer_table(m["layer_plan"])]
    return "\n".join(lines)
