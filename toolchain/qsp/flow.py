"""``qsp-flow``: the whole flow on one command, train -> bundle -> compile (hls4ml) ->
csim-verify -> estimate/report. With no arguments it runs the embedded default: digits,
MLP, 8-bit weights and activations, 50 % weight and activation sparsity, for pynq-z2.

Every stage is the same entry point a user calls by hand (qsp-train, qsp-compile,
qsp-estimate); this only chains them and stops at the first failure, with that stage's exit
status. A run directory inside runs/ (the default) becomes runs/latest once trained.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cli import add_version, with_exit_status
from .errors import QspError, exit_code


def _stage(title, fn, argv):
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = fn(argv)
    except SystemExit as e:  # argparse / CLIs that exit
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    rc = 0 if rc is None else rc
    print(f"=== {title}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return rc


def main(argv=None) -> int:
    try:
        return _flow(argv)
    except QspError as e:
        print(f"qsp-flow: error: {e}", file=sys.stderr)
        return exit_code(e)


def _flow(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qsp-flow", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=with_exit_status(None))
    add_version(ap)
    ap.add_argument("--out", default=None, help="run directory (default runs/<task>-<timestamp>)")
    ap.add_argument("--board", default="pynq-z2", help="board for compile and its estimate (default pynq-z2)")
    ap.add_argument("--config", default=None, help="qsp-train YAML config")
    ap.add_argument("--epochs", type=int, default=None, help="override the training epochs")
    ap.add_argument("--skip-estimate", action="store_true", help="stop after the verified compile")
    a = ap.parse_args(argv)

    from .train import cli as train_cli
    from .train.pipeline import RUNS, _point_latest

    out = Path(a.out) if a.out else RUNS / time.strftime("digits-flow-%Y%m%d-%H%M%S")
    targs = ["--out", str(out)]
    if a.config:
        targs += ["--config", a.config]
    if a.epochs is not None:
        targs += ["--epochs", str(a.epochs)]
    if rc := _stage("train", train_cli.main, targs):
        return rc
    _point_latest(out)  # runs/latest -> out, as qsp-train does for its default run directory
    bundle = out / "bundle"

    from .compile import cli as compile_cli

    if rc := _stage("compile + csim verify", compile_cli.main,
                    [str(bundle), "--board", a.board, "--out", str(out / "hls")]):
        return rc
    accel = out / "hls" / "accelerator_prj"
    if accel.exists():  # boards hls4ml's VivadoAccelerator knows (pynq-z2, zcu102, alveo-*)
        from . import deploy

        if rc := _stage("deploy package", deploy.main, [str(bundle), "--board", a.board, "--project", str(accel),
                                                        "--out", str(out / "deploy")]):
            return rc
    if not a.skip_estimate:
        from .estimate import cli as estimate_cli

        if rc := _stage("estimate", estimate_cli.main,
                        [str(bundle), "--board", "all", "--report-board", a.board, "--out", str(out / "estimate")]):
            return rc
    verify = json.loads((out / "hls" / "verify.json").read_text())
    print("\n=== done")
    print(f"bundle:   {bundle}")
    print(f"hls:      {out / 'hls'}")
    print(f"verify:   {out / 'hls' / 'verify.json'} -> {json.dumps(verify.get('summary', verify))[:300]}")
    if not a.skip_estimate:
        print(f"report:   {out / 'estimate' / 'report.html'}")
    if accel.exists():
        print(f"deploy:   {out / 'deploy'}")
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
