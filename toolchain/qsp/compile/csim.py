"""The standalone C-simulation: hls4ml's g++ testbench (``myproject_test.cpp``) over
``tb_data/``, with no Python in the loop. qsp writes tb_data itself at full precision
(float32 inputs as shortest round-trip text), patches the testbench to print results with
``fout.precision(17)`` (a double round-trips through 17 significant digits) and reads
``tb_data/csim_results.log`` back.

The build compiles ``firmware/<project>.cpp`` ONCE: :func:`write_build_script` replaces
the project's ``build_lib.sh`` (the script hls4ml's ``compile()`` runs) with one that
compiles the three translation units (firmware, hls4ml's ctypes bridge, the testbench) in
parallel and links the firmware object into both hls4ml's shared library
``firmware/<project>-<stamp>.so`` and the standalone testbench ``csim_tb``. hls4ml's own
``_compile()`` then runs it and loads the library as usual. The firmware object is built
with an absolute ``WEIGHTS_DIR`` (as hls4ml's library is), so both programs read the same
weight files."""
from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QspError, ToolError

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


#: g++ optimisation level of the C simulation. The outputs are fixed by ap_fixed's integer
#: semantics, not by the optimiser (checked: -O0/-O1/-O3 give identical bits on every test
#: model); -O1 compiles about twice as fast as hls4ml's -O3 and the csim runs are tiny.
DEFAULT_OPT_LEVEL = 1
OPT_LEVELS = (0, 1, 2, 3)
CXX = "g++"


def _supports(flag: str) -> bool:
    if shutil.which(CXX) is None:
        raise ToolError(f"{CXX} not found on PATH: the C simulation needs a C++ compiler (apt-get install g++)")
    p = subprocess.run([CXX, "-Werror", "-fsyntax-only", flag, "-xc++", "-", "-o", "/dev/null"], input="",
                       capture_output=True, text=True)
    return p.returncode == 0


@functools.lru_cache(maxsize=None)
def cxx_flags(opt_level: int = DEFAULT_OPT_LEVEL) -> str:
    """The flags of hls4ml's build_lib.sh (-fPIC, the newest of c++23/c++11 the compiler
    takes, -fno-gnu-unique when known) at ``-O<opt_level>``; -w because ap_types' deprecation
    warnings cost time and are never acted on (errors still print). Probed once per process."""
    if opt_level not in OPT_LEVELS:
        raise QspError(f"C++ optimisation level {opt_level!r}: choose one of {list(OPT_LEVELS)}")
    flags = [f"-O{opt_level}", "-fPIC", "-w", "-std=c++23" if _supports("-std=c++23") else "-std=c++11"]
    if _supports("-fno-gnu-unique"):
        flags.append("-fno-gnu-unique")
    return " ".join(flags)


@dataclass
class HlsBuildScript:
    """What qsp keeps from the build_lib.sh hls4ml wrote: include/link flags and the stamp."""
    incflags: str
    ldflags: str
    project: str
    stamp: str


def parse_build_script(text: str) -> HlsBuildScript | None:
    """The variables of hls4ml 1.3.0's Vivado/Vitis build_lib.sh; None for another layout."""
    got = {}
    for key in ("INCFLAGS", "LDFLAGS", "PROJECT", "LIB_STAMP"):
        m = re.search(rf'^{key}=("?)([^"\n]*)\1$', text, re.M)
        if m is None:
            return None
        got[key] = m.group(2)
    if "firmware/${PROJECT}.cpp" not in text or "${PROJECT}_bridge.cpp" not in text:
        return None
    return HlsBuildScript(got["INCFLAGS"], got["LDFLAGS"], got["PROJECT"], got["LIB_STAMP"])


BUILD_SCRIPT = r"""#!/bin/bash
# Written by qsp-compile (replacing hls4ml's build_lib.sh): firmware/{project}.cpp is compiled
# ONCE and linked into both hls4ml's ctypes library (with {project}_bridge.cpp) and the
# standalone testbench csim_tb (with {project}_test.cpp); the translation units compile in
# parallel. hls4ml's compile() rewrites the original script. Both programs read the weights
# from this folder's absolute path: after moving the project, run this script again.
set -e
cd "$(dirname "$0")"
CC={cc}
CFLAGS="{cflags}"
LDFLAGS="{ldflags}"
INCFLAGS="{incflags}"
PROJECT={project}
LIB_STAMP={stamp}
WEIGHTS_DIR="\"$(pwd)/firmware/weights\""
OBJ=$(mktemp -d qsp_obj.XXXXXX)
trap 'rm -rf "$OBJ"' EXIT

${{CC}} ${{CFLAGS}} ${{INCFLAGS}} -D WEIGHTS_DIR="${{WEIGHTS_DIR}}" -c firmware/${{PROJECT}}.cpp -o $OBJ/${{PROJECT}}.o &
P1=$!
${{CC}} ${{CFLAGS}} ${{INCFLAGS}} -D WEIGHTS_DIR="${{WEIGHTS_DIR}}" -c ${{PROJECT}}_bridge.cpp -o $OBJ/${{PROJECT}}_bridge.o &
P2=$!
{tb_compile}
FAIL=0
wait $P1 || FAIL=1
wait $P2 || FAIL=1
{tb_wait}
[ $FAIL = 0 ] || exit 1

${{CC}} ${{CFLAGS}} ${{INCFLAGS}} -shared $OBJ/${{PROJECT}}.o $OBJ/${{PROJECT}}_bridge.o ${{LDFLAGS}} -o firmware/${{PROJECT}}-${{LIB_STAMP}}.so &
P1=$!
{tb_link}
wait $P1 || FAIL=1
{tb_link_wait}
exit $FAIL
"""
TB_COMPILE = """${CC} ${CFLAGS} ${INCFLAGS} -Ifirmware -c ${PROJECT}_test.cpp -o $OBJ/${PROJECT}_test.o &
P3=$!"""
TB_LINK = """rm -f csim_tb
${CC} ${CFLAGS} $OBJ/${PROJECT}.o $OBJ/${PROJECT}_test.o ${LDFLAGS} -o csim_tb &
P3=$!"""


def write_build_script(project: Path, project_name: str = "myproject", testbench: bool = True,
                       opt_level: int = DEFAULT_OPT_LEVEL) -> bool:
    """Replace the project's build_lib.sh by the build-once script (see the module doc).
    Returns False, leaving hls4ml's script alone, when that script is not the layout qsp
    knows (another hls4ml version); the caller then builds the testbench separately."""
    path = project / "build_lib.sh"
    hls = parse_build_script(path.read_text())
    if hls is None or hls.project != project_name:
        return False
    if testbench:
        patch_testbench(project, project_name)
    path.write_text(BUILD_SCRIPT.format(
        cc=CXX, cflags=cxx_flags(opt_level), ldflags=hls.ldflags, incflags=hls.incflags, project=shlex.quote(hls.project),
        stamp=shlex.quote(hls.stamp), tb_compile=TB_COMPILE if testbench else "",
        tb_wait="wait $P3 || FAIL=1" if testbench else "", tb_link=TB_LINK if testbench else "",
        tb_link_wait="wait $P3 || FAIL=1" if testbench else ""))
    path.chmod(0o755)
    return True


def build_command(project_name: str = "myproject", opt_level: int = DEFAULT_OPT_LEVEL) -> list[str]:
    """A testbench build of its own (run from the project folder): only the fallback for a
    build_lib.sh that :func:`write_build_script` does not know."""
    return [CXX, *cxx_flags(opt_level).split(), "-Ifirmware/ap_types", "-Ifirmware", '-DWEIGHTS_DIR="firmware/weights"',
            f"{project_name}_test.cpp", f"firmware/{project_name}.cpp", "-o", "csim_tb"]


def start_build(project: Path, project_name: str = "myproject", opt_level: int = DEFAULT_OPT_LEVEL
                ) -> subprocess.Popen:
    """Start the fallback testbench build in the background (beside hls4ml's compile())."""
    patch_testbench(project, project_name)
    return subprocess.Popen(build_command(project_name, opt_level), cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish_build(proc: subprocess.Popen, project: Path, progress=None) -> None:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise ToolError(f"g++ build of the standalone testbench in {project} failed:\n{out[-4000:]}")


def run(project: Path, n_out: int, progress=None) -> np.ndarray:
    """Run ./csim_tb; return its outputs (samples x n_out, float64). The outputs provably come
    from this run of the binary: ``csim_results.log`` is deleted before it starts, must exist
    afterwards as a regular file written during the run, and must hold one line of ``n_out``
    numbers per line of ``tb_input_features.dat`` (the inputs the binary read). qsp's
    expected-output file (``tb_output_predictions.dat``) is never read back."""
    project = Path(project)
    results = project / RESULTS
    results.unlink(missing_ok=True)
    if results.exists():
        raise ToolError(f"{results}: a stale results file could not be removed before the C simulation")
    n_in = sum(1 for line in (project / TB_IN).read_text().splitlines() if line.strip())
    t0 = time.perf_counter()
    started = time.time()
    p = subprocess.run(["./csim_tb"], cwd=project, capture_output=True, text=True)
    if p.returncode != 0:
        raise ToolError(f"the standalone testbench in {project} failed (exit {p.returncode}):\n{p.stdout[-2000:]}"
                        f"{p.stderr[-2000:]}")
    if not results.is_file():
        raise ToolError(f"the standalone testbench in {project} exited 0 but wrote no {RESULTS}")
    if results.stat().st_mtime < started - 2.0:  # coarse file-system clocks: 2 s of slack
        raise ToolError(f"{results} is older than this C simulation run: not the binary's output")
    if progress:
        progress(f"csim testbench ran in {time.perf_counter() - t0:.1f} s")
    out = read_results(results, n_out)
    if len(out) != n_in:
        raise ToolError(f"{results}: {len(out)} result lines for {n_in} input lines in {TB_IN}")
    return out


def read_results(path: Path, n_out: int) -> np.ndarray:
    """``csim_results.log`` as a (samples x n_out) float64 array; ToolError when a line is not
    ``n_out`` numbers."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    try:
        a = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise ToolError(f"{path}: not a table of numbers ({e})") from None
    if a.ndim != 2 or a.shape[1] != n_out:
        raise ToolError(f"{path}: expected {n_out} values per line, got shape {a.shape}")
    return a


def progress_printer(prefix: str = "qsp-compile"):
    def p(msg: str):
        print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)
    return p
