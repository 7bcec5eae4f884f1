"""Assemble a deploy package for a board from a bundle and the VivadoAccelerator project
qsp-compile made from it: the board-side driver (numpy only) with a copy of
:mod:`qsp.fixedpoint`, ``qsp_deploy.json`` (formats, shapes, layout, board, bundle digest,
project path), ``tb_data/`` (the test inputs and the C-simulation-verified outputs the
driver's self-check compares against, bit for bit) and the build/run README
(deploy/README.md).

Formats come from the compiled project (``firmware/defines.h``: ``input_t`` and
``result_t``; ``myproject_axi.h``: float or fixed AXI words). The project's
``qsp_project.json`` must name this bundle's content digest.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from .boards import get_board
from .errors import BoardError, ConfigError
from .fixedpoint import ROUNDING_MODES, FixedFormat
from .resources import data_file  # the driver and README: installed wheel, else <repo>/deploy

TB_INPUTS, TB_OUTPUTS = "tb_input_features.dat", "tb_output_predictions.dat"
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


def project_record(project) -> dict:
    """The ``qsp_project.json`` qsp-compile wrote into ``project`` (see
    :func:`qsp.compile.pipeline.record_project`)."""
    from .compile.pipeline import ACCEL_DIR, PROVENANCE

    p = Path(project)
    if not p.is_dir():
        raise ConfigError(f"--project {str(project)!r} is not a directory")
    f = p / PROVENANCE
    if not f.exists():
        raise ConfigError(f"--project {str(project)!r} has no {PROVENANCE}: it was not written by qsp-compile (or by "
                          f"an older one); compile the bundle with qsp-compile and pass its {ACCEL_DIR}/")
    try:
        rec = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f}: not valid JSON ({e})") from None
    if rec.get("kind") != "accelerator":
        raise ConfigError(f"--project {str(project)!r} is qsp-compile's {rec.get('kind')!r} project, not the "
                          f"VivadoAccelerator one: pass the {ACCEL_DIR}/ beside it")
    return rec


def check_pair(bundle, project, rec: dict) -> None:
    """Refuse a bundle and a project that do not belong together, naming both."""
    digest = bundle.digest()
    if rec.get("bundle_sha256") != digest:
        raise ConfigError(f"bundle {str(bundle.path)!r} (sha256 {digest[:16]}...) is not the bundle project "
                          f"{str(project)!r} was built from ({rec.get('bundle')!r}, sha256 "
                          f"{str(rec.get('bundle_sha256'))[:16]}...): pass the matching pair, or recompile")


def assemble(bundle, board: str | None, out_dir, project, interface: str | None = None) -> Path:
    """Write the deploy package of ``bundle`` and its compiled VivadoAccelerator ``project``
    (qsp-compile's ``accelerator_prj``, for a board hls4ml knows: pynq-z2, zcu102,
    alveo-*) into ``out_dir``; returns the folder. ``board`` defaults to the project's.

    Refused: a project not made by qsp-compile, one built from another bundle (content
    digest), another board, or one without C-simulation-verified test vectors."""
    from .bundle import Bundle

    if not isinstance(bundle, Bundle):
        bundle = Bundle.read(bundle)
    if project is None:
        raise ConfigError("a deploy package needs the compiled project (--project DIR: the accelerator_prj/ "
                          "qsp-compile writes): its formats, and its csim-verified outputs for the board's self-check")
    rec = project_record(project)
    check_pair(bundle, project, rec)
    b = get_board(board or rec.get("board") or "")
    if b.hls4ml_board is None:
        raise BoardError(f"board {b.name!r} has no hls4ml VivadoAccelerator target; deploy packages exist for "
                         f"boards with one (pynq-z2, zcu102, alveo-u50/u200/u250/u280)")
    if rec.get("board") not in (None, b.name):
        raise ConfigError(f"--board {b.name!r}, but project {str(project)!r} was compiled for {rec['board']!r}")
    tb_src = Path(project) / "tb_data"
    tb_info = rec.get("tb_data") or {}
    files = [tb_src / TB_INPUTS, tb_src / TB_OUTPUTS]
    if not tb_info.get("verified") or not all(f.exists() and f.stat().st_size for f in files):
        raise ConfigError(f"project {str(project)!r} has no C-simulation-verified test vectors in tb_data/ (was it "
                          "compiled with --no-verify, or did verification fail?): run qsp-compile with verification")
    f = formats_from_project(project)
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
    (out / "tb_data").mkdir(exist_ok=True)
    for src in files:
        shutil.copy2(src, out / "tb_data" / src.name)
    meta = {
        "board": b.name, "part": b.part, "hls4ml_board": b.hls4ml_board, "clock_mhz": b.clock_mhz,
        "interface": f["interface"], "input_format": f["input_format"].to_dict(),
        "output_format": f["output_format"].to_dict(), "input_ap_type": f["input_format"].ap_type(),
        "output_ap_type": f["output_format"].ap_type_plain(),
        "input_shape": in_shape, "output_shape": list(spec.graph[-1].out_shape),
        "channels_last": len(in_shape) >= 2,  # [C, H, W] or a 1-D model's [C, L]
        "bundle": str(bundle.path) if bundle.path else None, "bundle_sha256": rec["bundle_sha256"],
        "project": f["project_dir"], "tb_data": tb_info,
        "task": asdict(spec.task), "metrics": spec.metrics,
    }
    (out / "qsp_deploy.json").write_text(json.dumps(meta, indent=1, default=str))
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
    ap.add_argument("--board", default=None, help="board name (default: the one the project was compiled for)")
    ap.add_argument("--project", default=None,
                    help="required: qsp-compile's accelerator_prj/ for this bundle (formats, csim-verified tb_data)")
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
    meta = json.loads((out / "qsp_deploy.json").read_text())
    print(f"deploy package for {meta['board']} in {out} (tb_data: {meta['tb_data'].get('inputs')} test inputs "
          f"and their C-simulation outputs, from {meta['tb_data'].get('outputs_from')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
