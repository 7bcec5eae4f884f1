"""FPGA power model (issue #14 item 5): P = static(part) + sum_r coeff_r * used_r * f / 100 MHz,
energy per inference = P x latency (and P x II), from boards/power/families.yaml; reported beside
the ASIC 45 nm op-energy figure, each labelled; a family without citable figures says so."""
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from qsp.boards import BoardError, load_board, power_families_from_dict, power_family
from qsp.estimate import energy as E
from qsp.estimate import estimate, summary_for_board
from tests.test_estimate import hand_model

REPO = Path(__file__).resolve().parent.parent
#: test figures for a user's own power file (NOT claims about any device: qsp ships none it cannot cite)
TEST_POWER = {"toggle_rate": 0.125, "toggle_rate_source": "test",
              "families": {"zynq-7000": {"static_w": {"xc7z020": 0.1, "xc7z020clg400-1": 0.125},
                                         "dynamic_w_per_100mhz": {"LUT": 2e-5, "FF": 5e-6, "DSP": 1e-3,
                                                                  "BRAM18": 2e-3},
                                         "sources": {"static": "test figure", "dynamic": "test figure"}}}}


def _own_board(tmp_path, power=TEST_POWER):
    """The shipped pynq-z2 board file with a power file beside it (a user's own board dir)."""
    shutil.copy(REPO / "boards" / "pynq-z2.yaml", tmp_path / "pynq-z2.yaml")
    (tmp_path / "power").mkdir()
    (tmp_path / "power" / "families.yaml").write_text(yaml.safe_dump(power))
    return load_board(tmp_path / "pynq-z2.yaml")


def test_hand_computed_power_and_energy(tmp_path):
    board = _own_board(tmp_path)
    be = estimate(hand_model(), [board]).boards[0]
    t = be.shown.total
    assert (t.lut, t.ff) > (0, 0)
    f = be.fpga_energy
    assert not f.missing and f.static_w == 0.125  # the exact part beats its device prefix
    dyn = (2e-5 * t.lut + 5e-6 * t.ff + 1e-3 * t.dsp + 2e-3 * t.bram18) * 100 / 100  # pynq-z2 runs at 100 MHz
    assert f.dynamic_w == pytest.approx(dyn, rel=1e-12)
    assert f.energy_latency_pj == pytest.approx((0.125 + dyn) * t.latency_cycles * 10e-9 * 1e12, rel=1e-12)
    assert f.energy_ii_pj == pytest.approx((0.125 + dyn) * t.ii_cycles * 10e-9 * 1e12, rel=1e-12)
    assert "FPGA model: static + dynamic" in f.label and "test figure" in f.label
    # one changed coefficient changes the answer (the hand value above would not match it)
    bumped = json.loads(json.dumps(TEST_POWER))
    bumped["families"]["zynq-7000"]["dynamic_w_per_100mhz"]["FF"] = 5.001e-6
    fam = power_families_from_dict(bumped)["zynq-7000"]
    f2 = E.fpga_energy(board, t.usage(), t.latency_cycles, t.ii_cycles, family=fam)
    assert f2.dynamic_w != pytest.approx(dyn, rel=1e-12)
    # the clock scales dynamic power linearly; static does not move
    assert E.fpga_dynamic_w({"LUT": 2e-5}, {"LUT": 100}, 250) == pytest.approx(2e-5 * 100 * 2.5)


def test_missing_figures_are_named_not_zero(tmp_path):
    board = _own_board(tmp_path)
    fam = power_families_from_dict(TEST_POWER)["zynq-7000"]
    no_dsp = power_families_from_dict({**TEST_POWER, "families": {"zynq-7000": {
        **TEST_POWER["families"]["zynq-7000"], "dynamic_w_per_100mhz": {"LUT": 2e-5, "FF": 5e-6}}}})["zynq-7000"]
    f = E.fpga_energy(board, {"LUT": 10, "FF": 10, "DSP": 1}, 3, 1, family=no_dsp)
    assert f.missing == "no power data for zynq-7000: no dynamic coefficient for DSP" and f.energy_latency_pj is None
    assert not E.fpga_energy(board, {"LUT": 10, "FF": 10, "DSP": 0}, 3, 1, family=no_dsp).missing  # DSP unused
    other = power_families_from_dict({**TEST_POWER, "families": {"zynq-7000": {
        **TEST_POWER["families"]["zynq-7000"], "static_w": {"xc7z010": 0.1}}}})["zynq-7000"]
    assert "no static power for part xc7z020clg400-1" in E.fpga_energy(board, {"LUT": 1}, 1, 1, family=other).missing
    assert not E.fpga_energy(board, {"LUT": 1}, 1, 1, family=fam).missing


def test_every_shipped_board_has_energy_or_says_why():
    est = estimate(hand_model(), "all")
    d = json.loads(json.dumps(est.to_dict()))
    assert len(d["boards"]) == len(list((REPO / "boards").glob("*.yaml")))
    assert "ASIC 45 nm" in d["models"]["energy_asic"] and "FPGA model" in d["models"]["energy_fpga"]
    for be, bd in zip(est.boards, d["boards"]):
        fam = power_family(be.board)
        assert fam is not None, f"{be.board.name}: family {be.board.family!r} not in boards/power/families.yaml"
        f = bd["energy_fpga"]
        assert "ASIC 45 nm" in bd["energy_label"] and f["label"].startswith("FPGA model: ")
        if f["available"]:
            assert math.isfinite(f["energy_latency_pj"]) and f["energy_latency_pj"] > 0 and f["power_w"] > 0
        else:
            assert f["missing"].startswith(f"no power data for {be.board.family}") and f["energy_latency_pj"] is None
            assert f["searched"] or "no static power" in f["missing"] or "no dynamic" in f["missing"]
    text = summary_for_board(est, "pynq-z2")
    assert "ASIC 45 nm op energy" in text and "FPGA energy" in text
    f = est.board("pynq-z2").fpga_energy
    assert (f.missing or "FPGA model: static + dynamic") in text


def test_text_json_and_report_carry_both_labels(tmp_path, mlp_bundle, capsys):
    from qsp.estimate.cli import main
    (tmp_path / "b").mkdir()
    board = _own_board(tmp_path / "b")
    assert main([str(mlp_bundle), "--board", str(board.path), "--out", str(tmp_path / "o")]) == 0
    html = (tmp_path / "o" / "report.html").read_text()
    assert "FPGA model energy" in html and "ASIC 45 nm op energy" in html
    d = json.loads((tmp_path / "o" / "estimate.json").read_text())
    f = d["boards"][0]["energy_fpga"]
    assert f["available"] and f["static_w"] == 0.125 and f["energy_latency_pj"] > 0
    assert "FPGA energy" in capsys.readouterr().out
    assert main([str(mlp_bundle), "--board", "all"]) == 0  # the shipped boards: no figures, said per board
    out = capsys.readouterr().out
    assert "energy per inference, FPGA model" in out
    from qsp.boards import all_boards
    lines = {ln.split()[0]: ln for ln in out.split("energy per inference, FPGA model")[1].splitlines()[1:] if ln.startswith("  ")}
    for b in all_boards():
        assert f"no power data for {b.family}" in lines[b.name] or " nJ at " in lines[b.name], lines.get(b.name)


@pytest.mark.parametrize("edit, words", [
    (lambda f: f["dynamic_w_per_100mhz"].update(DSP=float("nan")), "'DSP' must be a finite positive number"),
    (lambda f: f["dynamic_w_per_100mhz"].update(LUT=0), "'LUT' must be a finite positive number"),
    (lambda f: f["static_w"].update(xc7z020=-0.1), "'xc7z020' must be a finite positive number"),
    (lambda f: f["dynamic_w_per_100mhz"].update(CLB=1e-5), "unknown key 'CLB'"),
    (lambda f: f["sources"].pop("dynamic"), "need a source"),
    (lambda f: f.update(watts=1), "unknown field(s) ['watts']"),
    (lambda f: [f.pop(k) for k in ("static_w", "dynamic_w_per_100mhz")], "say in 'searched'"),
])
def test_bad_power_file_is_refused_naming_the_field(tmp_path, edit, words):
    d = json.loads(json.dumps(TEST_POWER))
    edit(d["families"]["zynq-7000"])
    with pytest.raises(BoardError, match="zynq-7000") as e:
        power_families_from_dict(d, "power file x")
    assert words in str(e.value)
    board = _own_board(tmp_path, d)  # the same file beside a board: the lookup names the file
    with pytest.raises(BoardError, match="families.yaml"):
        power_family(board)
