"""Deploy package: the board-side driver packs/unpacks the exact fixed-point words, checked
against testbench-style data (one sample per line) without a board."""
import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from qsp.bundle import Bundle
from qsp.deploy import assemble, parse_ap_type
from qsp.errors import BoardError
from qsp.fixedpoint import FixedFormat
from qsp.verify import emulate


def _load_driver(folder: Path):
    spec = importlib.util.spec_from_file_location("qsp_driver_under_test", folder / "qsp_driver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_tb(path: Path, rows: np.ndarray):
    path.write_text("\n".join(" ".join(repr(float(v)) for v in r) for r in rows.reshape(len(rows), -1)) + "\n")


@pytest.fixture(scope="module")
def package(mlp_bundle, tmp_path_factory):
    b = Bundle.read(mlp_bundle)
    out = assemble(b, "pynq", tmp_path_factory.mktemp("deploy") / "pkg")
    tb = out / "tb_data"
    tb.mkdir()
    x = b.test_x[:16]
    _write_tb(tb / "tb_input_features.dat", x)
    _write_tb(tb / "tb_output_predictions.dat", emulate(b, x))
    return b, out


def test_driver_is_numpy_only():
    src = (Path(__file__).resolve().parent.parent / "deploy" / "pynq" / "qsp_driver.py").read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert "torch" not in mods and mods <= {"__future__", "json", "os", "sys", "pathlib", "numpy", "qsp",
                                            "fixedpoint", "pynq", "argparse"}


def test_package_contents(package):
    b, out = package
    for f in ("qsp_driver.py", "fixedpoint.py", "qsp_deploy.json", "README.md"):
        assert (out / f).exists()
    meta = json.loads((out / "qsp_deploy.json").read_text())
    assert meta["board"] == "pynq-z2" and meta["hls4ml_board"] == "pynq-z2" and meta["part"] == "xc7z020clg400-1"
    assert FixedFormat.from_dict(meta["input_format"]) == b.qspec.input_format
    assert meta["input_shape"] == [1, 8, 8] and meta["output_shape"] == [10]
    assert (out / "fixedpoint.py").read_text() == (Path(__file__).resolve().parent.parent / "toolchain" / "qsp" /
                                                   "fixedpoint.py").read_text()


def test_pack_unpack_against_testbench(package):
    b, out = package
    drv = _load_driver(out)
    d = drv.QspDesign.load(out)
    x = drv.read_tb(out / "tb_data" / "tb_input_features.dat")
    words = d.to_stream(x.reshape((-1,) + d.input_shape))
    f = b.qspec.input_format
    assert words.dtype == np.dtype("<u1")  # 8-bit unsigned input words
    # independent: the codes of the quantized input, in NHWC order (channels-last)
    xq = f.quantize_np(x.reshape(-1, 1, 8, 8)).transpose(0, 2, 3, 1).reshape(len(x), -1)
    assert np.array_equal(words.astype(np.int64), np.round(xq * 2 ** f.frac).astype(np.int64))
    # outputs: pack the testbench predictions into result words and back, bit for bit
    y = drv.read_tb(out / "tb_data" / "tb_output_predictions.dat")
    ow = d.out.pack(y)
    assert np.array_equal(d.from_stream(ow).reshape(len(y), -1), y)
    assert np.all(ow.astype(np.int64) >= d.output_format.int_min) and np.all(ow.astype(np.int64) <= d.output_format.int_max)


def test_simulated_dma_loop(package):
    """The 'hardware' is the integer-exact emulator behind the packed words."""
    b, out = package
    drv = _load_driver(out)
    d = drv.QspDesign.load(out)
    x = b.test_x[:16]

    def hardware(words):
        codes = d.inp.unpack(words).reshape(-1, 8, 8, 1).transpose(0, 3, 1, 2)
        return d.out.pack(emulate(b, codes))

    y = d.from_stream(hardware(d.to_stream(x)))
    assert np.array_equal(y, emulate(b, x))


def test_codecs_signed_and_float():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy" / "pynq"))
    import qsp_driver as drv
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


def test_parse_ap_types_and_board_check(mlp_bundle, tmp_path):
    assert parse_ap_type("ap_ufixed<8,0,AP_RND_CONV,AP_SAT,0>") == FixedFormat(8, 8, False, "convergent")
    assert parse_ap_type("ap_fixed<20,2>") == FixedFormat(20, 18, True, "floor")
    with pytest.raises(BoardError, match="VivadoAccelerator"):
        assemble(mlp_bundle, "kv260", tmp_path / "x")
    out = assemble(mlp_bundle, "zcu102", tmp_path / "z")
    assert json.loads((out / "qsp_deploy.json").read_text())["hls4ml_board"] == "zcu102"
