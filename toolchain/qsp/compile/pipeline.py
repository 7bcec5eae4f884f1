"""qsp-compile's pipeline: bundle -> transforms -> precision plan -> deploy model ->
hls4ml project -> one C++ build (hls4ml's library + the standalone testbench) -> three-way
verification."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import transforms
from ..bundle.io import Bundle
from ..errors import BundleError, VerificationError
from . import csim
from . import hls_config as hcf
from .hls4ml_project import CompileOptions, clean_dir, convert, plan_strategies, rule_strategies
from .hls4ml_project import hls_config as hls_config_dict
from .precision import PrecisionPlan, derive
from .verify import (VerifyReport, compare, layer_report, task_metric, to_hls_layout, trained_model_error,
                     trained_model_path)

PROJECT_DIR = "hls4ml_prj"
ACCEL_DIR = "accelerator_prj"
#: written by qsp-compile into each project it makes: the digest of the bundle the project
#: was built from, board, options, and (accelerator project, once verified) what tb_data holds
PROVENANCE = "qsp_project.json"


@dataclass
class CompileResult:
    out: Path
    plan: PrecisionPlan
    report: VerifyReport | None
    timings: dict = field(default_factory=dict)
    transforms: list[str] = field(default_factory=list)
    project: Path | None = None
    accelerator_project: Path | None = None
    hls_model: object = None
    strategies: dict = field(default_factory=dict)
    strategy_plan: object = None  # hls4ml_project.StrategyPlan: the plan compiled and why
    graph: Bundle | None = None  # the transformed graph that was compiled


def _load(bundle) -> Bundle:
    b = bundle if isinstance(bundle, Bundle) else Bundle.read(bundle)
    if b.test_x is None or len(b.test_x) == 0:
        raise BundleError(f"bundle {b.path}: test_data.npz has no inputs 'x' to verify with")
    return b


def prepare(bundle, steps=transforms.DEFAULT_STEPS):
    """Read + transform + derive precisions (what --dry-run prints)."""
    b = _load(bundle)
    tx, log = transforms.run(b, steps)
    return b, tx, log, derive(tx)


def apply_hls_config(doc: dict, opts: CompileOptions, tx, plan: PrecisionPlan, model=None,
                     where: str = "--hls-config") -> "hcf.Edited":
    """The configuration to build from a user's edited ``qsp_hls_config.yaml`` (``doc``,
    from :func:`qsp.compile.hls_config.load`), checked against qsp's derived one for the
    transformed graph ``tx`` and its precision ``plan``."""
    from .deploy import build_deploy_model

    opts = hcf.options(doc, opts, where)
    model = model if model is not None else build_deploy_model(tx, plan)
    derived = hls_config_dict(model, tx, plan, opts, rule_strategies(tx, plan, opts))
    return hcf.apply(doc, derived, tx, plan, opts, where)


def compile_bundle(bundle, out, opts: CompileOptions | None = None, steps=transforms.DEFAULT_STEPS,
                   accelerator_board: str | None = None, verify: bool = True, max_inputs: int | None = None,
                   result_overrides: dict[str, str] | None = None, progress=None,
                   hls_config=None) -> CompileResult:
    """Compile a bundle into ``out`` and verify it; raises VerificationError on a mismatch
    (after writing ``out/verify.json`` with the per-layer report).

    ``hls_config``: a ``qsp_hls_config.yaml`` qsp-compile wrote, edited by a user (its
    path, or the loaded mapping): its Backend/IOType/Part/ClockPeriod replace ``opts``'
    and its per-layer settings qsp's derived ones (:mod:`qsp.compile.hls_config`); the
    strategies are the file's, not the rule's or the estimator's.

    ``result_overrides`` ({layer: ap type}) replaces derived result types: a fault
    injection for tests, never used by the CLI."""
    from ..verify.emulate import emulate

    opts = opts or CompileOptions()
    say = progress or (lambda m: None)
    edited, where = None, "--hls-config" if isinstance(hls_config, dict) else f"--hls-config {hls_config}"
    if hls_config is not None:  # the user's edited qsp_hls_config.yaml: read first, checked below
        hls_config = hls_config if isinstance(hls_config, dict) else Path(hls_config)
        doc = hls_config if isinstance(hls_config, dict) else hcf.load(hls_config)
        opts = hcf.options(doc, opts, where)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    b, tx, log, plan = prepare(bundle, steps)
    for line in log:
        say(line)
    from .deploy import build_deploy_model

    model = build_deploy_model(tx, plan)
    if hls_config is not None:  # checked against qsp's derived config before anything is built
        edited = apply_hls_config(doc, opts, tx, plan, model, where)
    x = np.asarray(b.test_x if max_inputs is None else b.test_x[:max_inputs], np.float32)
    y = None if b.test_y is None else (b.test_y if max_inputs is None else b.test_y[:max_inputs])
    t["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = emulate(b, x)
    t["emulate_s"] = time.perf_counter() - t0
    if not np.array_equal(emulate(tx, x), ref):
        raise VerificationError(f"the graph transformations {list(steps)} changed the outputs (a qsp bug); "
                                "rerun with --no-transforms")
    trained = trained_model_path(b, ref)  # the bundle is still the model training measured
    if trained is not None and trained.mismatches:
        bad = VerifyReport(len(x), paths=[trained], transforms=log)
        (out / "verify.json").write_text(json.dumps(bad.to_dict(), indent=1))
        raise trained_model_error(trained, bad)
    if trained is None:
        say("WARNING: the bundle carries no trained-model outputs (built by hand, or schema < 3): its emulation "
            "cannot be checked against the trained model")

    # ---- the hls4ml project
    t0 = time.perf_counter()
    if edited is not None:
        opts, cfg, splan = edited.opts, edited.cfg, edited.strategy_plan
        say(f"{where}: " + ("; ".join(edited.changes) if edited.changes else "no change from qsp's derived config"))
    else:
        splan = plan_strategies(tx, plan, opts)
        cfg = hls_config_dict(model, tx, plan, opts, splan.layers)
    strategies = splan.layers
    say(splan.lines()[0])
    if splan.warning:
        say(f"WARNING: {splan.warning}")
    for name, typ in (result_overrides or {}).items():
        cfg["LayerName"][name]["Precision"]["result"] = typ
    cfg_file = out / hcf.FILE_NAME
    if not (isinstance(hls_config, Path) and cfg_file.resolve() == hls_config.resolve()):
        hcf.write(cfg_file, cfg, opts, plan.input_shape, b.path)  # never over the user's own file
    (out / "precision.txt").write_text(plan.table() + "\n" + "\n".join(splan.lines()) + "\n"
                                       + (f"WARNING: {splan.warning}\n" if splan.warning else ""))
    tb_dir = out / "tb_src"
    tb_in = csim.write_dat(tb_dir / "tb_input_features.dat", x.reshape((len(x),) + tuple(plan.input_shape)),
                           np.float32)
    tb_out = csim.write_dat(tb_dir / "tb_output_predictions.dat", to_hls_layout(ref))
    project = clean_dir(out / PROJECT_DIR)
    say("converting with hls4ml's PyTorch frontend ...")
    hm = convert(model, tx, cfg, opts, project, tb_input=tb_in, tb_output=tb_out)
    t["convert_s"] = time.perf_counter() - t0
    res = CompileResult(out, plan, None, t, log, project, hls_model=hm, strategies=strategies, strategy_plan=splan,
                        graph=tx)
    digest = b.digest()
    record_project(project, b, digest, opts, "hls")

    accel = accelerator_board
    if accel:
        t0 = time.perf_counter()
        say(f"writing the VivadoAccelerator project for {accel} ...")
        res.accelerator_project = clean_dir(out / ACCEL_DIR)
        convert(model, tx, cfg, opts, res.accelerator_project, backend="VivadoAccelerator", board=accel)
        record_project(res.accelerator_project, b, digest, opts, "accelerator", hls4ml_board=accel)
        t["accelerator_s"] = time.perf_counter() - t0
    if not verify:
        return res

    # ---- build once: firmware object -> hls4ml's library + the standalone testbench
    t0 = time.perf_counter()
    tb = opts.testbench
    say("building: hls4ml's library" + (" and the standalone testbench (one firmware object)" if tb else "") + " ...")
    build(hm, project, opts)
    t["build_s"] = time.perf_counter() - t0
    say(f"built in {t['build_s']:.1f} s")

    t0 = time.perf_counter()
    xin = x.reshape(len(x), -1).astype(np.float64)
    pred = np.asarray(hm.predict(xin), np.float64).reshape(len(x), -1)
    t["predict_s"] = time.perf_counter() - t0
    tb_out_vals = None
    if tb:
        t0 = time.perf_counter()
        n_out = int(np.prod(ref.shape[1:]))
        say(f"running the standalone csim over {len(x)} inputs ...")
        tb_out_vals = csim.run(project, n_out, say)
        t["csim_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    onnx_out, onnx_note = None, ""
    try:
        from ..export.onnx import run_onnx, write_onnx

        onnx_path = write_onnx(b, out / "model.onnx")
        onnx_out = run_onnx(onnx_path, x)
        from ..errors import QspError
        from ..export.qonnx import QONNX_FILE, write_qonnx

        try:  # the same graph with QONNX Quant nodes, for hls4ml's ONNX frontend, FINN, qonnx
            write_qonnx(b, out / QONNX_FILE)
        except QspError as e:  # a rounding QONNX cannot express: model.onnx (QDQ) only
            say(f"no {QONNX_FILE}: {e}")
    except ImportError as e:  # the export module is optional at this stage
        onnx_note = f"not run: {e}"
    t["onnx_s"] = time.perf_counter() - t0

    rep = VerifyReport(len(x), transforms=log)
    rep.paths = [compare("onnxruntime", ref, onnx_out, onnx_note), compare("hls4ml_predict", ref, pred)]
    rep.trained_model = trained
    if tb:
        rep.paths.append(compare("csim_testbench", ref, tb_out_vals))
    rep.metric = task_metric(b.qspec.task, tb_out_vals if tb else pred, ref.shape, y)
    if b.qspec.task.metric == "accuracy" and y is not None:
        rep.metric["reference"] = float(np.mean(ref.reshape(len(ref), -1).argmax(1) == np.asarray(y).reshape(-1)))
    res.report = rep
    if rep.mismatches:
        say("outputs differ: tracing every layer to find the first diverging one ...")
        t0 = time.perf_counter()
        _trace_report(rep, model, tx, plan, cfg, opts, out, x)
        t["trace_s"] = time.perf_counter() - t0
    (out / "verify.json").write_text(json.dumps({**rep.to_dict(), "timings_s": t}, indent=1))
    from .verify import check

    check(rep)
    if res.accelerator_project is not None:  # the board's self-check data: inputs + csim-verified outputs
        path, outs = ("csim_testbench", tb_out_vals) if tb else ("hls4ml_predict", pred)
        write_tb_data(res.accelerator_project, project / "tb_data" / "tb_input_features.dat", outs, path,
                      len(x), b, digest, opts, accel)
    return res


def record_project(project: Path, b: Bundle, digest: str, opts, kind: str, hls4ml_board: str | None = None,
                   tb_data: dict | None = None) -> Path:
    """Write ``project/qsp_project.json``: which bundle (path and content digest) the project
    was built from, for which board and with which options."""
    board = getattr(opts.board, "name", opts.board)
    info = {"made_by": "qsp-compile", "kind": kind, "bundle": str(Path(b.path).resolve()) if b.path else None,
            "bundle_sha256": digest, "board": board, "hls4ml_board": hls4ml_board, "backend": opts.backend,
            "io_type": opts.io_type, "part": opts.part, "tb_data": tb_data}
    f = project / PROVENANCE
    f.write_text(json.dumps(info, indent=1))
    return f


def write_tb_data(accel: Path, inputs: Path, outputs: np.ndarray, source: str, n: int, b: Bundle, digest: str,
                  opts, hls4ml_board: str) -> None:
    """The accelerator project's tb_data: the test inputs the C simulation read (the design's
    input order) and the outputs the C simulation produced (``source``), after they were
    verified equal to the emulator and onnxruntime; hls4ml's own csim and the deploy
    package's board-side self-check compare against them."""
    import shutil

    tb = accel / "tb_data"
    tb.mkdir(exist_ok=True)
    shutil.copy2(inputs, tb / "tb_input_features.dat")
    csim.write_dat(tb / "tb_output_predictions.dat", np.asarray(outputs, np.float64))
    record_project(accel, b, digest, opts, "accelerator", hls4ml_board,
                   tb_data={"inputs": n, "outputs_from": source, "verified": True,
                            "layout": "the design's stream order: inputs as the bundle (NCHW), outputs channels-last"})



def build(hm, project: Path, opts: CompileOptions) -> None:
    """Build hls4ml's ctypes library and (``opts.testbench``) the standalone testbench from
    ONE compile of the firmware: qsp's build_lib.sh (csim.write_build_script), run and
    loaded by hls4ml's own ``_compile()``. For a build_lib.sh layout qsp does not know, the
    testbench is built separately beside hls4ml's script."""
    from ..errors import ToolError

    once = csim.write_build_script(project, opts.project_name, opts.testbench, opts.cxx_opt_level)
    tb_proc = csim.start_build(project, opts.project_name, opts.cxx_opt_level) if opts.testbench and not once else None
    try:
        build_library(hm)
    except Exception as e:  # hls4ml raises a bare Exception (and prints g++'s output)
        if tb_proc is not None:
            tb_proc.kill()
            tb_proc.wait()
        raise ToolError(f"the C++ build in {project} failed ({e}); rerun {project}/build_lib.sh to see g++'s errors") from e
    if tb_proc is not None:
        csim.finish_build(tb_proc, project)
    if opts.testbench and not (project / "csim_tb").exists():
        raise ToolError(f"{project}/build_lib.sh did not produce the standalone testbench csim_tb")


def build_library(hm) -> None:
    """hls4ml's compile() without its second write() of the project (convert() has written
    it, and qsp's build_lib.sh replaces hls4ml's)."""
    if hasattr(hm, "_compile"):
        hm._compile()
    else:  # another hls4ml version
        hm.compile()


def _trace_report(rep: VerifyReport, model, tx, plan, cfg, opts, out: Path, x) -> None:
    from ..verify.emulate import emulate

    import copy

    tcfg = copy.deepcopy(cfg)
    for name in tcfg["LayerName"]:
        tcfg["LayerName"][name]["Trace"] = True
    d = clean_dir(out / (PROJECT_DIR + "_trace"))
    hm = convert(model, tx, tcfg, opts, d)
    # hls4ml's trace() rewrites the project with the trace hooks and compiles it (again, at
    # -O3, with hls4ml's script); qsp writes it with the hooks and builds it once instead.
    hm.config.trace_output = True
    hm.write()
    if csim.write_build_script(d, opts.project_name, testbench=False, opt_level=opts.cxx_opt_level):
        build_library(hm)
        hm.compile = lambda: None  # built with the hooks just now: trace() needs no rebuild
    try:
        _, trace = hm.trace(x.reshape(len(x), -1).astype(np.float64))
    finally:
        hm.__dict__.pop("compile", None)
    emu = emulate(tx, x, trace=True)
    rep.layers, rep.first_diverging_layer = layer_report(plan, trace, emu)
