"""Board files: the shipped ones load and agree with the data sheets; lookup, aliases,
user directories; malformed files are rejected naming the field."""
from pathlib import Path

import pytest
import yaml

from qsp.boards import Board, all_boards, builtin_dirs, get_board, known_boards, load_board
from qsp.errors import BoardError

REQUIRED = ["pynq-z1", "pynq-z2", "ultra96-v2", "zcu102", "zcu104", "kv260", "arty-a7-35", "arty-a7-100",
            "alveo-u250"]


def test_shipped_boards_load():
    names = known_boards()
    for n in REQUIRED:
        assert n in names
    boards = all_boards()
    assert all(isinstance(b, Board) for b in boards)
    assert {b.name for b in boards} == set(names)


@pytest.mark.parametrize("name,part,lut,ff,dsp,bram36,uram", [
    ("pynq-z2", "xc7z020clg400-1", 53200, 106400, 220, 140, 0),
    ("pynq-z1", "xc7z020clg400-1", 53200, 106400, 220, 140, 0),
    ("ultra96-v2", "xczu3eg-sbva484-1-i", 70560, 141120, 360, 216, 0),
    ("zcu102", "xczu9eg-ffvb1156-2-e", 274080, 548160, 2520, 912, 0),
    ("zcu104", "xczu7ev-ffvc1156-2-e", 230400, 460800, 1728, 312, 96),
    ("kv260", "xck26-sfvc784-2LV-c", 117120, 234240, 1248, 144, 64),
    ("arty-a7-35", "xc7a35ticsg324-1L", 20800, 41600, 90, 50, 0),
    ("arty-a7-100", "xc7a100tcsg324-1", 63400, 126800, 240, 135, 0),
    ("alveo-u250", "xcu250-figd2104-2L-e", 1728000, 3456000, 12288, 2688, 1280),
])
def test_datasheet_figures(name, part, lut, ff, dsp, bram36, uram):
    b = get_board(name)
    assert (b.part, b.lut, b.ff, b.dsp, b.bram36k, b.bram18k, b.uram) == (part, lut, ff, dsp, bram36, 2 * bram36, uram)
    assert b.clock_mhz > 0 and b.offchip.bandwidth_gb_s > 0
    assert b.sources["part"] and b.sources["offchip"]


def test_aliases_and_hls4ml_names():
    assert get_board("pynq").name == "pynq-z2"
    assert get_board("PYNQ-Z2").name == "pynq-z2"
    assert get_board("pynq-z2").hls4ml_board == "pynq-z2"
    assert get_board("zcu102").hls4ml_board == "zcu102"
    assert get_board("alveo-u250").hls4ml_board == "alveo-u250"
    assert get_board("kv260").hls4ml_board is None
    b = get_board("pynq-z2")
    assert b.bram_bits == 280 * 18432 and b.clock_period_ns == 10.0


def test_unknown_board_lists_known():
    with pytest.raises(BoardError) as e:
        get_board("de10-nano")
    msg = str(e.value)
    assert "de10-nano" in msg and "pynq-z2" in msg and "zcu102" in msg


def _write(d: Path, name: str, data: dict) -> Path:
    f = d / f"{name}.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def _pynq_dict():
    return yaml.safe_load((builtin_dirs()[0] / "pynq-z2.yaml").read_text())


@pytest.mark.parametrize("field", ["lut", "part", "clock_mhz", "offchip", "sources", "hls4ml_board", "bram18k"])
def test_missing_field_named(tmp_path, field):
    d = _pynq_dict()
    d["name"] = "myboard"
    del d[field]
    f = _write(tmp_path, "myboard", d)
    with pytest.raises(BoardError) as e:
        load_board(f)
    assert repr(field) in str(e.value) and str(f) in str(e.value)


def test_bad_values_named(tmp_path):
    d = _pynq_dict()
    d["name"] = "myboard"
    d["dsp"] = "lots"
    with pytest.raises(BoardError, match="'dsp'"):
        load_board(_write(tmp_path, "myboard", d))
    d = _pynq_dict(); d["name"] = "myboard"; d["bram36k"] = 141
    with pytest.raises(BoardError, match="bram18k"):
        load_board(_write(tmp_path, "myboard", d))
    d = _pynq_dict(); d["name"] = "myboard"; del d["offchip"]["bandwidth_gb_s"]
    with pytest.raises(BoardError, match="offchip: missing field 'bandwidth_gb_s'"):
        load_board(_write(tmp_path, "myboard", d))
    d = _pynq_dict(); d["name"] = "myboard"; d["sources"] = {"part": "x"}
    with pytest.raises(BoardError, match="sources"):
        load_board(_write(tmp_path, "myboard", d))
    d = _pynq_dict(); d["name"] = "other"
    with pytest.raises(BoardError, match="file name"):
        load_board(_write(tmp_path, "myboard", d))
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(BoardError, match="broken.yaml"):
        load_board(tmp_path / "broken.yaml")


def test_user_board_dir_and_env(tmp_path, monkeypatch):
    d = _pynq_dict()
    d.update(name="my-z7", aliases=["mine"], dsp=100)
    _write(tmp_path, "my-z7", d)
    assert "my-z7" in known_boards([tmp_path])
    assert get_board("mine", [tmp_path]).dsp == 100
    assert "my-z7" not in known_boards()
    monkeypatch.setenv("QSP_BOARDS_DIR", str(tmp_path))
    assert get_board("my-z7").dsp == 100
    assert get_board(str(tmp_path / "my-z7.yaml")).name == "my-z7"
    monkeypatch.setenv("QSP_BOARDS_DIR", str(tmp_path / "nope"))
    with pytest.raises(BoardError, match="nope"):
        known_boards()
