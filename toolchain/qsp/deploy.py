"""Assemble a deploy package for a board: the board-side driver (numpy only) with a copy of
:mod:`qsp.fixedpoint`, ``qsp_deploy.json`` (formats, shapes, layout, board, bundle and
project paths), the testbench data and the build/run README (deploy/README.md).

Formats come from the compiled project when one is given (``firmware/defines.h``:
``input_t`` and ``result_t``; ``myproject_axi.h``: float or fixed AXI words), else from the
bundle (the input quantizer, and the exact format of the last node as the estimator
propagates it).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from .boards import get_board
from .errors import BoardError, BundleError, ConfigError
from .fixedpoint import ROUNDING_MODES, FixedFormat
from .resources import data_file  # the driver and README: installed wheel, else <repo>/deploy

_AP = re.compile(r"ap_(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(\w+))?[^>]*>")
_RND = {v: k for k, v in ROUNDING_MODES.items()}


def parse_ap_type(s: str) -> FixedFormat:
    """``ap_fixed<W,I[,Q,...]>`` / ``ap_ufixed<...>`` -> FixedFormat (truncation when no Q)."""
    m = _AP.search(s)
    if m is None:
        raise ConfigError(f"not an ap_fixed type: {s!r}")
    unsigned, w, i, q = m.groups()
    return FixedFormat(int(w), int(w) - int(i), not unsigned, _RND.get(q or "AP_TRN", "floor"))


def _typedef(text: str, name: str) -> str | None:
    m = re.search(rf"typedef\s+(.+?)\s+{name}\s*;", text)
    return m.group(1) if m else None


def formats_from_project(project) -> dict:
    p = Path(project)
    defines = next(iter(sorted(p.rglob("firmware/defines.h"))), None)
    if defines is None:
        raise ConfigError(f"--project {str(project)!r}: no firmware/defines.h")
    text = defines.read_text()
    inp, res = _typedef(text, "input_t"), _typedef(text, "result_t")
    if inp is None or res is None:
        raise ConfigError(f"{defines}: no input_t/result_t typedef")
    out = {"input_format": parse_ap_type(inp), "output_format": parse_ap_type(res), "interface": "fixed",
           "project_dir": str(defines.parent.parent)}
    axi = defines.parent / "myproject_axi.h"
    if axi.exists():
        t_in = _typedef(axi.read_text(), "T_in") or ""
        out["interface"] = "float" if t_in.strip() in ("float", "double") else "fixed"
    return out


def formats_from_bundle(bundle) -> dict:
    from .estimate.counts import count_graph

    fmt_in = bundle.qspec.input_format
    if fmt_in is None:
        raise BundleError("the bundle's graph does not start with a quantize node: no input format to pack")
    nodes = count_graph(bundle).nodes
    return {"input_format": fmt_in, "output_format": nodes[-1].out_format, "interface": "fixed", "project_dir": None}


def assemble(bundle, board: str, out_dir, project=None, interface: str | None = None) -> Path:
    """Write the deploy package for ``board`` (one hls4ml VivadoAccelerator knows: pynq-z2,
    zcu102, alveo-*) into ``out_dir``; returns the folder."""
    from .bundle import Bundle

    b = get_board(board)
    if b.hls4ml_board is None:
        raise BoardError(f"board {b.name!r} has no hls4ml VivadoAccelerator target; deploy packages exist for "
                         f"boards with one (pynq-z2, zcu102, alveo-u50/u200/u250/u280)")
    if not isinstance(bundle, Bundle):
        bundle = Bundle.read(bundle)
    f = formats_from_project(project) if project else formats_from_bundle(bundle)
    if interface is not None:
        if interface not in ("fixed", "float"):
            raise ConfigError(f"--interface {interface!r}: choose 'fixed' or 'float'")
        f["interface"] = interface
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(data_file("deploy", "pynq", "qsp_driver.py"), out / "qsp_driver.py")
    shutil.copy2(Path(__file__).with_name("fixedpoint.py"), out / "fixedpoint.py")
    shutil.copy2(data_file("deploy", "README.md"), out / "README.md")
    spec = bundle.qspec
    in_shape = list(spec.graph[0].in_shape)
    meta = {
        "board": b.name, "part": b.part, "hls4ml_board": b.hls4ml_board, "clock_mhz": b.clock_mhz,
        "interface": f["interface"], "input_format": f["input_format"].to_dict(),
        "output_format": f["output_format"].to_dict(), "input_ap_type": f["input_format"].ap_type(),
        "output_ap_type": f["output_format"].ap_type_plain(),
        "input_shape": in_shape, "output_shape": list(spec.graph[-1].out_shape),
        "channels_last": len(in_shape) == 3,
        "bundle": str(bundle.path) if bundle.path else None, "project": f["project_dir"],
        "task": asdict(spec.task), "metrics": spec.metrics,
    }
    (out / "qsp_deploy.json").write_text(json.dumps(meta, indent=1, default=str))
    if f["project_dir"]:
        tb = Path(f["project_dir"]) / "tb_data"
        if tb.is_dir():
            shutil.copytree(tb, out / "tb_data", dirs_exist_ok=True)
    return out


def main(argv=None) -> int:
    import argparse
    import sys

    from .cli import add_version, with_exit_status
    from .errors import QspError, exit_code

    ap = argparse.ArgumentParser(prog="python -m qsp.deploy", description="assemble a deploy package",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=with_exit_status(None))
    add_version(ap)
    ap.add_argument("bundle")
    ap.add_argument("--board", default="pynq-z2")
    ap.add_argument("--project", default=None, help="compiled VivadoAccelerator project (formats, tb_data)")
    ap.add_argument("--interface", default=None, choices=["fixed", "float"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        from .paths import output_dir

        output_dir(a.out, "--out")  # before reading the bundle and the project
        out = assemble(a.bundle, a.board, a.out, a.project, a.interface)
    except QspError as e:
        print(f"qsp.deploy: error: {e}", file=sys.stderr)
        return exit_code(e)
    print(f"deploy package for {a.board} in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
