"""``qsp-estimate BUNDLE --board all|NAME [--out DIR] [--as-trained]``: verdict per board, or the
detail for one board next to the float32 dense baseline; writes DIR/estimate.json and
DIR/report.html. Board resources, latency and verdicts describe the graph qsp-compile builds
(masks folded, dead features/channels removed; ``--as-trained``: the untransformed graph);
footprint, BOPs and the per-layer table describe the bundle as trained."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import add_version, with_exit_status
from ..errors import QspError, exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsp-estimate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=with_exit_status(None))
    add_version(p)
    p.add_argument("bundle", help="bundle directory (or a run directory holding bundle/), or a QONNX model file "
                                   "(.onnx, e.g. from Brevitas; docs/qonnx.md)")
    p.add_argument("--board", default="all", help="'all' (default) or a board name/alias/file (e.g. pynq-z2)")
    p.add_argument("--out", default=None, help="write estimate.json and report.html here")
    p.add_argument("--project", default=None, help="compiled hls4ml project: take its per-layer strategies")
    p.add_argument("--boards-dir", action="append", default=[], help="extra directory of board files")
    p.add_argument("--as-trained", action="store_true",
                   help="estimate the board resources of the graph as trained, not of the graph qsp-compile builds "
                        "(masks folded, dead features/channels removed)")
    p.add_argument("--io-type", default="io_parallel", choices=("io_parallel", "io_stream"),
                   help="the hls4ml IOType to model (default io_parallel; io_stream: hls4ml's dataflow design with "
                        "one FIFO per tensor, line-buffered convs; docs/estimate.md)")
    p.add_argument("--runs", default=None, help="folder of runs for the report's accuracy-vs-footprint plot")
    p.add_argument("--report-board", default=None,
                   help="board whose per-layer resources the report shows (default: the --board asked; with 'all', "
                        "pynq-z2)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..paths import output_dir
        from .core import estimate, strategies_from_project, summary_for_board

        if args.out:  # before the work, not after it
            output_dir(args.out, "--out")

        strategies = strategies_from_project(args.project) if args.project else None
        boards = "all" if args.board == "all" else [args.board]
        est = estimate(args.bundle, boards, strategies, board_dirs=args.boards_dir, as_trained=args.as_trained,
                       io_type=args.io_type)
        t = est.totals
        if args.board == "all":
            print(est.hardware.describe())
            print(f"io_type {est.io_type} (the hls4ml design modelled)")
            print(f"{'board':<12} {'verdict':<27} binding resource")
            for be in est.boards:
                print(be.line())
            print("energy per inference, FPGA model (static + dynamic power x latency; boards/power/families.yaml):")
            for be in est.boards:
                f = be.fpga_energy
                print(f"  {be.board.name:<12} " + (f.missing if f.missing else
                                                   f"{f.energy_latency_pj / 1e3:.4g} nJ at {f.power_w:.3g} W"))
            print(f"footprint {t.footprint_bits:,} bits (float32 dense {t.float_footprint_bits:,}); "
                  f"BOPs {t.bops:,} (float32 dense {t.bops_float:,})")
        else:
            print(summary_for_board(est, est.boards[0].board))
        if args.out:
            from ..report import write_report

            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "estimate.json").write_text(json.dumps(est.to_dict(), indent=1, default=_json_default))
            runs = Path(args.runs) if args.runs else _runs_folder(Path(args.bundle))
            write_report(est, out / "report.html", runs_dir=runs, board=args.report_board)
            print(f"wrote {out / 'estimate.json'} and {out / 'report.html'}")
        return 0
    except QspError as e:
        print(f"qsp-estimate: error: {e}", file=sys.stderr)
        return exit_code(e)


def _runs_folder(bundle: Path) -> Path | None:
    """The folder above the run of this bundle (``runs/<run>/bundle``), if it looks like one."""
    b = bundle.resolve()
    run = b.parent if b.name == "bundle" else b
    runs = run.parent
    if runs == run or runs.parent == runs or runs == Path.home():  # never scan / or a home folder
        return None
    return runs if runs.is_dir() else None


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float):
        return o
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
