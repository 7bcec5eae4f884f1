"""The standalone C-simulation: hls4ml's g++ testbench (``myproject_test.cpp``) over
``tb_data/``, with no Python in the loop. qsp writes tb_data itself at full precision
(float32 inputs as shortest round-trip text), patches the testbench to print results with
``fout.precision(17)`` (a double round-trips through 17 significant digits) and reads
``tb_data/csim_results.log`` back."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import QspError

TB_IN = "tb_data/tb_input_features.dat"
TB_OUT = "tb_data/tb_output_predictions.dat"
RESULTS = "tb_data/csim_results.log"
PRECISION_LINE = "    fout.precision(17);  // qsp: full double precision in csim_results.log\n"


def write_dat(path: Path, a: np.ndarray, dtype=np.float64) -> Path:
    """One line per sample, values separated by spaces, shortest exact text."""
    a = np.asarray(a, dtype).reshape(len(a), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in a:
            f.write(" ".join(repr(float(v)) for v in row) + " \n")
    return path


def patch_testbench(project: Path, project_name: str = "myproject") -> Path:
    tb = project / f"{project_name}_test.cpp"
    text = tb.read_text()
    if "fout.precision(17)" not in text:
        anchor = "std::ofstream fout(RESULTS_LOG);\n"
        if anchor not in text:
            raise QspError(f"{tb}: cannot find where to set the output precision (hls4ml testbench changed?)")
        text = text.replace(anchor, anchor + PRECISION_LINE, 1)
        tb.write_text(text)
    return tb


def build_command(project_name: str = "myproject") -> list[str]:
    """The standalone testbench build (run from the project folder)."""
    return ["g++", "-O2", "-std=c++17", "-Ifirmware/ap_types", "-Ifirmware", '-DWEIGHTS_DIR="firmware/weights"',
            f"{project_name}_test.cpp", f"firmware/{project_name}.cpp", "-o", "csim_tb"]


def start_build(project: Path, project_name: str = "myproject") -> subprocess.Popen:
    """Start the g++ build in the background (it runs beside hls4ml's own compile())."""
    patch_testbench(project, project_name)
    return subprocess.Popen(build_command(project_name), cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish_build(proc: subprocess.Popen, project: Path, progress=None) -> None:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise QspError(f"g++ build of the standalone testbench in {project} failed:\n{out[-4000:]}")


def run(project: Path, n_out: int, progress=None) -> np.ndarray:
    """Run ./csim_tb; return its outputs (samples x n_out, float64)."""
    t0 = time.perf_counter()
    (project / RESULTS).unlink(missing_ok=True)
    p = subprocess.run(["./csim_tb"], cwd=project, capture_output=True, text=True)
    if p.returncode != 0:
        raise QspError(f"the standalone testbench in {project} failed (exit {p.returncode}):\n{p.stdout[-2000:]}"
                       f"{p.stderr[-2000:]}")
    if progress:
        progress(f"csim testbench ran in {time.perf_counter() - t0:.1f} s")
    return read_results(project / RESULTS, n_out)


def read_results(path: Path, n_out: int) -> np.ndarray:
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    a = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != n_out:
        raise QspError(f"{path}: expected {n_out} values per line, got shape {a.shape}")
    return a


def progress_printer(prefix: str = "qsp-compile"):
    def p(msg: str):
        print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)
    return p
