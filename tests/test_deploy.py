"""Deploy package (issue 14, item 3): qsp-compile records the bundle's digest and the
C-simulation-verified test vectors in its accelerator project; qsp.deploy puts them in the
package and refuses a bundle/project pair that does not belong together; the board-side
driver's pack -> DMA -> decode -> compare path runs on the host against a stand-in ``pynq``
whose DMA streams the packed words through the compiled C simulation (not the emulator).
Every command of deploy/README.md is run here, except the two Vivado ones."""
import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsp.bundle import Bundle
from qsp.deploy import assemble, parse_ap_type
from qsp.errors import BoardError, ConfigError
from qsp.fixedpoint import FixedFormat
from qsp.verify import emulate
from tests.bundles import build_bundle
from tests.conftest import needs_system

REPO = Path(__file__).resolve().parent.parent
README = REPO / "deploy" / "README.md"
HAS_GXX = shutil.which("g++") is not None
pytestmark = needs_system(HAS_GXX, "g++ not installed (the C-simulation needs it)")

#: the stand-in for pynq on the host: its AXI DMA decodes the input words (its own code, not
#: the driver's), runs the compiled C-simulation testbench on them and encodes its outputs
#: as the words the design's AXI stream carries. QSP_FAKE_CSIM names the hls4ml project.
FAKE_PYNQ = r'''
import json, os, subprocess, tempfile
from pathlib import Path
import numpy as np



def _fmt():
    m = json.loads(Path("qsp_deploy.json").read_text())
    return m, m["input_format"], m["output_format"]


def hardware(words):
    meta, fi, fo = _fmt()
    w = np.asarray(words)
    x = w.astype(np.float64) if meta["interface"] == "float" else w.astype(np.int64) * 2.0 ** -fi["frac"]
    prj = Path(os.environ["QSP_FAKE_CSIM"])
    with tempfile.TemporaryDirectory() as d:
        tb = Path(d, "tb_data")
        tb.mkdir()
        (tb / "tb_input_features.dat").write_text("".join(" ".join(repr(float(v)) for v in r) + "\n" for r in x))
        (tb / "tb_output_predictions.dat").write_text("0\n" * len(x))
        subprocess.run([str(prj / "csim_tb")], cwd=d, check=True, capture_output=True)
        y = np.array([[float(v) for v in ln.split()] for ln in (tb / "csim_results.log").read_text().splitlines()
                      if ln.strip()])
    flip = os.environ.get("QSP_FAKE_FLIP")  # "sample,index": add one LSB to that output (a fault)
    if flip:
        i, j = map(int, flip.split(","))
        y[i, j] += 2.0 ** -fo["frac"]
    if meta["interface"] == "float":
        assert np.array_equal(y.astype(np.float32), y)
        return y.astype(np.float32)
    return np.round(y * 2.0 ** fo["frac"]).astype(np.int64)


class _Channel:
    def __init__(self, dma, send):
        self.dma, self.send = dma, send

    def transfer(self, buf):
        setattr(self.dma, "ibuf" if self.send else "obuf", buf)

    def wait(self):
        if not self.send:
            self.dma.obuf[:] = hardware(self.dma.ibuf).astype(self.dma.obuf.dtype)


class _DMA:
    def __init__(self):
        self.sendchannel, self.recvchannel = _Channel(self, True), _Channel(self, False)


class Overlay:
    def __init__(self, bitfile):
        assert Path(bitfile).exists(), bitfile
        self.hier_0 = type("hier", (), {})()
        self.hier_0.axi_dma_0 = _DMA()


def allocate(shape, dtype):
    return np.zeros(shape, dtype)
'''


def _readme_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def _run_cli(line: str, subs: dict) -> int:
    """One command of the README, in-process, placeholders replaced."""
    argv = [subs.get(w, w.replace("HLS/", subs["HLS"] + "/")) for w in shlex.split(line.split("#")[0])]
    if argv[0] == "qsp-compile":
        from qsp.compile.cli import main
        return main(argv[1:])
    if argv[:3] == ["python", "-m", "qsp.deploy"]:
        from qsp.deploy import main
        return main(argv[3:])
    raise AssertionError(f"deploy/README.md shows a command this test does not know how to run: {line!r}")


@pytest.fixture(scope="module")
def made(mlp_bundle, tmp_path_factory):
    """deploy/README.md's step 0, run as written: (bundle, hls dir, package dir)."""
    root = tmp_path_factory.mktemp("readme")
    subs = {"BUNDLE": str(mlp_bundle), "HLS": str(root / "hls"), "DIR": str(root / "pkg")}
    (block,) = _readme_blocks("bash")[:1]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in lines] == ["qsp-compile", "python"]
    for ln in lines:
        assert _run_cli(ln, subs) == 0, ln
    return Bundle.read(mlp_bundle), root / "hls", root / "pkg"


@pytest.fixture()
def board(made, tmp_path, monkeypatch):
    """A copy of the package with a stand-in bitfile, and pynq replaced by FAKE_PYNQ."""
    _b, hls, pkg = made
    d = tmp_path / "board"
    shutil.copytree(pkg, d)
    (d / "design_1.bit").write_bytes(b"")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pynq.py").write_text(FAKE_PYNQ)
    env = {**os.environ, "QSP_FAKE_CSIM": str(hls / "hls4ml_prj"),
           "PYTHONPATH": os.pathsep.join([str(fake), str(d)])}
    monkeypatch.setenv("QSP_FAKE_CSIM", str(hls / "hls4ml_prj"))
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.syspath_prepend(str(d))
    for mod in ("pynq", "qsp_driver"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.chdir(d)
    return d, env


def _load_driver(folder: Path):
    spec = importlib.util.spec_from_file_location("qsp_driver_under_test", folder / "qsp_driver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_driver_is_numpy_only():
    src = (REPO / "deploy" / "pynq" / "qsp_driver.py").read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert "torch" not in mods and mods <= {"__future__", "json", "os", "sys", "time", "pathlib", "numpy", "qsp",
                                            "fixedpoint", "pynq", "argparse"}


def test_package_holds_csim_verified_vectors(made):
    b, hls, out = made
    for f in ("qsp_driver.py", "fixedpoint.py", "qsp_deploy.json", "README.md"):
        assert (out / f).exists()
    meta = json.loads((out / "qsp_deploy.json").read_text())
    assert meta["board"] == "pynq-z2" and meta["hls4ml_board"] == "pynq-z2" and meta["part"] == "xc7z020clg400-1"
    assert meta["bundle_sha256"] == b.digest() and meta["interface"] == "float"
    assert meta["input_shape"] == [1, 8, 8] and meta["output_shape"] == [10]
    assert (out / "fixedpoint.py").read_text() == (REPO / "toolchain" / "qsp" / "fixedpoint.py").read_text()
    drv = _load_driver(out)
    x = drv.read_tb(out / "tb_data" / "tb_input_features.dat")
    y = drv.read_tb(out / "tb_data" / "tb_output_predictions.dat")
    assert x.shape == (len(b.test_x), 64) and y.shape == (len(b.test_x), 10)
    assert np.array_equal(x, b.test_x.reshape(len(x), -1).astype(np.float64))  # the bundle's inputs
    # the outputs are the C simulation's own (its results log), which verify.json found equal to the emulator
    csim = drv.read_tb(hls / "hls4ml_prj" / "tb_data" / "csim_results.log")
    assert np.array_equal(y, csim)
    v = json.loads((hls / "verify.json").read_text())
    assert v["summary"]["paths"]["csim_testbench"] == {"compared": y.size, "mismatches": 0, "max_abs_diff": 0.0}
    assert meta["tb_data"]["outputs_from"] == "csim_testbench" and meta["tb_data"]["verified"] is True


def test_readme_board_commands_against_csim(made, board):
    """deploy/README.md's board-side commands, with the C simulation as the board."""
    d, env = board
    (cmd,) = [ln for blk in _readme_blocks("bash")[1:] for ln in blk.splitlines() if ln.strip()]
    assert cmd == "python3 qsp_driver.py design_1.bit"
    r = subprocess.run([sys.executable, *shlex.split(cmd)[1:], "--batches", "2", "--batch-size", "8"], cwd=d,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    n = made[0].test_x.shape[0] * 10
    assert f"self-check: 0 of {n} outputs differ from the C simulation" in r.stdout, r.stdout
    res = json.loads((d / "board_check.json").read_text())
    assert res["self_check"]["ok"] and res["measure"]["throughput_inferences_per_s"] > 0
    assert res["measure"]["latency_ms"]["median"] > 0
    # one LSB added to one output by the "board": the self-check names it, exit status 1
    r = subprocess.run([sys.executable, "qsp_driver.py", "design_1.bit", "--batches", "0"], cwd=d,
                       env={**env, "QSP_FAKE_FLIP": "3,7"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"self-check: 1 of {n} outputs differ" in r.stdout and "'sample': 3, 'index': 7" in r.stdout
    # the python block, as written
    (block,) = _readme_blocks("python")
    ns: dict = {}
    exec(compile(block, "deploy/README.md", "exec"), ns)
    assert ns["ov"].self_check()["ok"]
    assert np.array_equal(ns["y"].reshape(len(ns["y"]), -1), emulate(made[0], ns["x"].reshape(-1, 1, 8, 8)))


def test_self_check_catches_one_lsb(made, board):
    """The compare path against the csim outputs: a one-LSB change in one expected output,
    and one in one board output word, are each caught as exactly one difference."""
    d, _env = board
    drv = _load_driver(d)
    ov = drv.QspOverlay("design_1.bit")
    assert ov.self_check() == {"inputs": 64, "outputs": 640, "differ": 0, "ok": True}
    exp = drv.read_tb("tb_data/tb_output_predictions.dat")
    lsb = 2.0 ** -ov.design.output_format.frac
    exp[5, 2] += lsb
    (d / "bad.dat").write_text("".join(" ".join(repr(float(v)) for v in r) + "\n" for r in exp))
    r = ov.self_check(expected="bad.dat")
    assert r["differ"] == 1 and r["first"]["sample"] == 5 and r["first"]["index"] == 2 and not r["ok"]
    os.environ["QSP_FAKE_FLIP"] = "0,0"
    try:
        r = ov.self_check()
    finally:
        del os.environ["QSP_FAKE_FLIP"]
    assert r["differ"] == 1 and r["first"]["board"] == r["first"]["csim"] + lsb


def test_fixed_interface_against_csim(made, board):
    """The fixed-word codec through the same C simulation (its own decode in the stand-in)."""
    b, hls, _pkg = made
    d, _env = board
    assemble(b, None, d, hls / "accelerator_prj", interface="fixed")
    drv = _load_driver(d)
    ov = drv.QspOverlay("design_1.bit")
    assert ov.design.interface == "fixed" and ov.design.inp.dtype == np.dtype("<u1")
    assert ov.self_check()["ok"]


def test_mismatched_pair_is_refused(made, tmp_path, capsys):
    b, hls, _pkg = made
    prj = hls / "accelerator_prj"
    other = build_bundle("mlp", seed=3).write(tmp_path / "other_bundle")
    with pytest.raises(ConfigError) as e:
        assemble(other, None, tmp_path / "x", prj)
    msg = str(e.value)
    assert str(other) in msg and str(prj) in msg and str(b.path.resolve()) in msg
    from qsp.deploy import main
    assert main([str(other), "--project", str(prj), "--out", str(tmp_path / "y")]) == 2
    assert "is not the bundle project" in capsys.readouterr().err and not (tmp_path / "y" / "qsp_deploy.json").exists()
    # the same content elsewhere is the same bundle
    assemble(shutil.copytree(b.path, tmp_path / "copy"), None, tmp_path / "z", prj)
    # no project, the plain hls4ml project, another board, and a project without its record
    with pytest.raises(ConfigError, match="needs the compiled project"):
        assemble(b, None, tmp_path / "w", None)
    with pytest.raises(ConfigError, match="not the VivadoAccelerator one"):
        assemble(b, None, tmp_path / "w", hls / "hls4ml_prj")
    with pytest.raises(ConfigError, match="compiled for 'pynq-z2'"):
        assemble(b, "zcu102", tmp_path / "w", prj)
    with pytest.raises(BoardError, match="VivadoAccelerator"):
        assemble(b, "kv260", tmp_path / "w", prj)
    bare = shutil.copytree(prj, tmp_path / "bare")
    (bare / "qsp_project.json").unlink()
    with pytest.raises(ConfigError, match="not written by qsp-compile"):
        assemble(b, None, tmp_path / "w", bare)


def test_unverified_project_is_refused(mlp_bundle, tmp_path):
    from qsp.compile.cli import main
    assert main([str(mlp_bundle), "--board", "zcu102", "--out", str(tmp_path / "hls"), "--no-verify"]) == 0
    rec = json.loads((tmp_path / "hls" / "accelerator_prj" / "qsp_project.json").read_text())
    assert rec["board"] == "zcu102" and rec["tb_data"] is None and rec["bundle_sha256"] == Bundle.read(mlp_bundle).digest()
    with pytest.raises(ConfigError, match="no C-simulation-verified test vectors"):
        assemble(mlp_bundle, None, tmp_path / "w", tmp_path / "hls" / "accelerator_prj")


def test_digest_follows_content(mlp_bundle, tmp_path):
    b = Bundle.read(mlp_bundle)
    assert Bundle.read(b.write(tmp_path / "again")).digest() == b.digest()
    b.test_x = b.test_x.copy()
    b.test_x[0, 0, 0, 0] += 2.0 ** -8
    assert b.digest() != Bundle.read(mlp_bundle).digest()


def test_readme_vivado_commands_name_project_files(made):
    """The two Vivado commands cannot run here; the files they name exist in the project."""
    _b, hls, _pkg = made
    (block,) = [blk for blk in re.findall(r"```\n(.*?)```", README.read_text(), re.S) if "vivado" in blk]
    for tcl in re.findall(r"(\S+\.tcl)", block):
        assert (hls / "accelerator_prj" / tcl).exists(), tcl


def test_codecs_signed_and_float():
    drv = _load_driver(REPO / "deploy" / "pynq")
    f = FixedFormat(12, 6, True, "nearest")
    c = drv.FixedCodec(f)
    v = np.array([-32.0, -1.015625, 0.0, 0.5, 31.984375, 100.0, -100.0, 0.0078125])
    w = c.pack(v)
    assert w.dtype == np.dtype("<i2")
    assert list(w) == [-2048, -65, 0, 32, 2047, 2047, -2048, 1]  # 0.0078125*64 = 0.5 -> 1 (half up), saturation
    assert np.array_equal(c.unpack(w), f.quantize_np(v))
    assert np.array_equal(c.unpack(w.view(np.uint16)), f.quantize_np(v))  # raw bits sign-extend
    fc = drv.FloatCodec(FixedFormat(8, 8, False))
    assert np.array_equal(fc.pack([0.3, 2.0]), np.array([77 / 256, 255 / 256], np.float32))


def test_parse_ap_types():
    assert parse_ap_type("ap_ufixed<8,0,AP_RND_CONV,AP_SAT,0>") == FixedFormat(8, 8, False, "convergent")
    assert parse_ap_type("ap_fixed<20,2>") == FixedFormat(20, 18, True, "floor")
