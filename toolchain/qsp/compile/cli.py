"""``qsp-compile BUNDLE --board pynq-z2 --out DIR``: bundle -> hls4ml HLS project, verified
bit-exact (PyTorch integer emulation = onnxruntime = hls4ml csim = standalone testbench).

Writes into DIR: ``hls4ml_prj/`` (the HLS project), ``accelerator_prj/`` (hls4ml's
VivadoAccelerator project, for boards it knows), ``hls4ml_config.yaml`` (the qspec-derived
config, reusable with hls4ml), ``precision.txt``, ``model.onnx`` and ``verify.json``.
Exit status: 0 verified, 1 verification failed (per-layer report in verify.json), 2 bad
input (bundle, board, option), 3 a tool failed (g++ missing, C++ build failed)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import add_version, with_exit_status
from ..errors import QspError, VerificationError, exit_code


def build_parser() -> argparse.ArgumentParser:
    from .hls4ml_project import BACKENDS, IO_TYPES, STRATEGIES

    ap = argparse.ArgumentParser(prog="qsp-compile", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=with_exit_status(None))
    add_version(ap)
    ap.add_argument("bundle", help="bundle directory (from qsp-train) or its run directory")
    ap.add_argument("--board", default="pynq-z2", help="board name from boards/ (default pynq-z2; 'pynq' is an alias)")
    ap.add_argument("--out", default=None, help="output directory (default: <bundle>/../hls)")
    ap.add_argument("--backend", default="Vitis", choices=BACKENDS)
    ap.add_argument("--io-type", default="io_parallel", choices=IO_TYPES)
    ap.add_argument("--strategy", default="auto", choices=STRATEGIES,
                    help="per-layer strategy for Dense/Conv; auto: see qsp.compile.hls4ml_project")
    ap.add_argument("--max-inputs", type=int, default=None, help="verify on the first N test inputs (default all)")
    ap.add_argument("--no-transforms", action="store_true", help="do not fold masks or remove dead channels")
    ap.add_argument("--no-verify", action="store_true", help="write the projects only")
    ap.add_argument("--dry-run", action="store_true", help="print the per-layer precision table and exit")
    return ap


def _log(msg: str) -> None:
    print(f"[qsp-compile] {msg}", file=sys.stderr, flush=True)


def run(a) -> int:
    from ..boards import get_board
    from ..bundle import transforms
    from .hls4ml_project import CompileOptions, plan_strategies
    from .pipeline import compile_bundle, prepare

    board = get_board(a.board)
    steps = () if a.no_transforms else transforms.DEFAULT_STEPS
    opts = CompileOptions(backend=a.backend, io_type=a.io_type, strategy=a.strategy, part=board.part,
                          clock_period_ns=round(1000.0 / board.clock_mhz, 3), dsp_budget=board.dsp, board=board)
    if a.dry_run:
        b, tx, log, plan = prepare(a.bundle, steps)
        for line in log:
            print(line)
        print(f"board {board.name}: part {board.part}, {board.clock_mhz:g} MHz; backend {opts.backend}, {opts.io_type}")
        print(plan.table())
        splan = plan_strategies(tx, plan, opts)
        print("\n".join(splan.lines()))
        if splan.warning:
            print(f"WARNING: {splan.warning}")
        return 0
    out = Path(a.out) if a.out else Path(a.bundle).resolve().parent / "hls"
    t0 = time.perf_counter()
    try:
        res = compile_bundle(a.bundle, out, opts, steps, accelerator_board=getattr(board, "hls4ml_board", None),
                             verify=not a.no_verify, max_inputs=a.max_inputs, progress=_log)
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
    _estimate_summary(a.bundle, board, res)
    print(f"project: {res.project}" + (f"; accelerator project: {res.accelerator_project}"
                                       if res.accelerator_project else ""))
    print(f"done in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def _estimate_summary(bundle, board, res) -> None:
    """The estimator's summary for the board, when qsp.estimate provides one."""
    try:
        from ..estimate import summary_for_board  # the CLI's report; see hls4ml_project's docstring
    except ImportError:
        return
    try:
        print(summary_for_board(bundle, board, strategies=res.strategies or None, hardware=res.graph))
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
