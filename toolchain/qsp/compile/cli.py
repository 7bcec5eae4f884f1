"""``qsp-compile BUNDLE --board pynq-z2 --out DIR``: bundle -> hls4ml HLS project, verified
bit-exact (PyTorch integer emulation = onnxruntime = hls4ml csim = standalone testbench).

Writes into DIR: ``hls4ml_prj/`` (the HLS project), ``accelerator_prj/`` (hls4ml's
VivadoAccelerator project, for boards it knows), ``qsp_hls_config.yaml`` (the hls4ml
configuration qsp derived from the bundle; not hls4ml's own ``hls4ml_prj/hls4ml_config.yml``):
edit it (ReuseFactor, Strategy, IOType, a Precision) and rebuild with ``--hls-config``,
verified the same way), ``precision.txt``, ``model.onnx``, ``model.qonnx.onnx`` (the same graph
with QONNX Quant nodes, docs/qonnx.md) and ``verify.json``. BUNDLE may also be a QONNX model
file (``model.onnx`` exported by Brevitas, ...): it is imported first.
Exit status: 0 verified, 1 verification failed (per-layer report in verify.json), 2 bad
input (bundle, board, option), 3 a tool failed (g++ missing, C++ build failed)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import add_version, with_exit_status
from ..errors import ConfigError, QspError, VerificationError, exit_code


def build_parser() -> argparse.ArgumentParser:
    from .hls4ml_project import BACKENDS, IO_TYPES, STRATEGIES

    ap = argparse.ArgumentParser(prog="qsp-compile", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=with_exit_status(None))
    add_version(ap)
    ap.add_argument("bundle", help="bundle directory (from qsp-train) or its run directory")
    ap.add_argument("--board", default=None, help="board name from boards/ (default pynq-z2, or the board in "
                    "--hls-config's file; 'pynq' is an alias)")
    ap.add_argument("--out", default=None, help="output directory (default: <bundle>/../hls)")
    ap.add_argument("--backend", default=None, choices=BACKENDS, help="default Vitis")
    ap.add_argument("--io-type", default=None, choices=IO_TYPES, help="default io_parallel")
    ap.add_argument("--strategy", default=None, choices=STRATEGIES,
                    help="per-layer strategy for Dense/Conv (default auto: see qsp.compile.hls4ml_project)")
    ap.add_argument("--hls-config", metavar="FILE", default=None,
                    help="build the configuration in FILE: a qsp_hls_config.yaml qsp-compile wrote, edited "
                         "(ReuseFactor, Strategy, IOType, a Precision ...); verified like any compile. Its Backend, "
                         "IOType and per-layer strategies replace --backend, --io-type and --strategy")
    ap.add_argument("--max-inputs", type=int, default=None, help="verify on the first N test inputs (default all)")
    ap.add_argument("--no-transforms", action="store_true", help="do not fold masks or remove dead channels")
    ap.add_argument("--no-verify", action="store_true", help="write the projects only")
    ap.add_argument("--dry-run", action="store_true", help="print the per-layer precision table and exit")
    return ap


def _log(msg: str) -> None:
    print(f"[qsp-compile] {msg}", file=sys.stderr, flush=True)


def run(a) -> int:
    from ..errors import ConfigError as _BadOption
    from ..paths import output_dir

    if a.board is not None and not a.board.strip():
        raise _BadOption("--board '': name a board (see boards/) or leave the flag out")
    if a.max_inputs is not None and a.max_inputs < 1:  # [:0] or [:-5] would verify on nothing or drop inputs
        raise _BadOption(f"--max-inputs {a.max_inputs}: must be >= 1 (leave it out to verify on every test input)")
    if not a.dry_run:  # before any work, not after the build
        output_dir(a.out if a.out else Path(a.bundle).resolve().parent / "hls", "--out")
    from ..boards import get_board
    from ..bundle import transforms
    from . import hls_config as hcf
    from .hls4ml_project import CompileOptions, plan_strategies
    from .pipeline import apply_hls_config, compile_bundle, prepare

    doc = hcf.load(a.hls_config) if a.hls_config else None
    if doc is not None:
        for flag, what in (("backend", "its Backend"), ("io_type", "its IOType"),
                           ("strategy", "each layer's Strategy and ReuseFactor")):
            if getattr(a, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} {getattr(a, flag)}: with --hls-config the file sets "
                                  f"{what}; edit {a.hls_config} instead")
    saved = (doc or {}).get("qsp") or {}
    board = get_board(a.board or (saved.get("board") if isinstance(saved, dict) else None) or "pynq-z2")
    steps = () if a.no_transforms else transforms.DEFAULT_STEPS
    from ..estimate import fit_plan  # the command composes the stages: the estimator checks the board

    opts = CompileOptions(backend=a.backend or "Vitis", io_type=a.io_type or "io_parallel",
                          strategy=a.strategy or "auto", part=board.part,
                          clock_period_ns=round(1000.0 / board.clock_mhz, 3), dsp_budget=board.dsp, board=board,
                          fit=fit_plan)
    if a.dry_run:
        b, tx, log, plan = prepare(a.bundle, steps)
        for line in log:
            print(line)
        if doc is not None:
            edited = apply_hls_config(doc, opts, tx, plan, where=f"--hls-config {a.hls_config}")
            opts, splan = edited.opts, edited.strategy_plan
            print(f"--hls-config {a.hls_config}: " + ("; ".join(edited.changes) or "no change from qsp's derived config"))
        print(f"board {board.name}: part {opts.part}, {board.clock_mhz:g} MHz; backend {opts.backend}, {opts.io_type}")
        print(plan.table())
        if doc is None:
            splan = plan_strategies(tx, plan, opts)
        print("\n".join(splan.lines()))
        if splan.warning:
            print(f"WARNING: {splan.warning}")
        return 0
    out = Path(a.out) if a.out else Path(a.bundle).resolve().parent / "hls"
    t0 = time.perf_counter()
    try:
        res = compile_bundle(a.bundle, out, opts, steps, accelerator_board=getattr(board, "hls4ml_board", None),
                             verify=not a.no_verify, max_inputs=a.max_inputs, progress=_log,
                             hls_config=a.hls_config)
    except VerificationError as e:
        print(f"qsp-compile: verification FAILED: {e}", file=sys.stderr)
        print(f"qsp-compile: per-layer report in {out / 'verify.json'}", file=sys.stderr)
        return 1
    print((out / "precision.txt").read_text(), end="")
    if res.report is not None:
        s = res.report.to_dict()["summary"]
        paths = ", ".join(f"{k} {v['mismatches']}/{v['compared']}" for k, v in s["paths"].items())
        print(f"verified bit-exact on {s['inputs']} test inputs (differing/compared: {paths})")
        if s["metric"]:
            print(f"{s['metric']['name']} from csim: {s['metric']['value']:.4f}")
    io_type = (doc or {}).get("IOType") or opts.io_type  # the file's IOType rules with --hls-config
    _estimate_summary(a.bundle, board, res, io_type)
    print(f"project: {res.project}" + (f"; accelerator project: {res.accelerator_project}"
                                       if res.accelerator_project else ""))
    print(f"done in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def _estimate_summary(bundle, board, res, io_type: str = "io_parallel") -> None:
    """The estimator's summary for the board, when qsp.estimate provides one."""
    try:
        from ..estimate import summary_for_board  # the command composes the stages (hls4ml_project's docstring)
    except ImportError:
        return
    try:
        print(summary_for_board(bundle, board, strategies=res.strategies or None, hardware=res.graph,
                                io_type=io_type))
    except QspError as e:
        _log(f"estimate unavailable: {e}")


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return run(a)
    except QspError as e:
        print(f"qsp-compile: error: {e}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
