"""README's generated results table agrees with the committed JSON under benchmarks/results/
(benchmarks/readme_table.py), and the check notices one changed figure."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mod():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_readme_table_matches_results():
    m = _mod()
    assert m.check((ROOT / "README.md").read_text()) == []


def test_every_source_records_its_command():
    m = _mod()
    for rel in ["compile_time.json"] + [p.relative_to(m.RESULTS).as_posix() for p in (m.RESULTS / "overhead").glob("*.json")]:
        d = json.loads((m.RESULTS / rel).read_text())
        if d.get("benchmark") in ("overhead", "compile_time"):  # the files the table reads
            assert d.get("command"), f"{rel}: no command recorded"


def test_a_changed_figure_is_caught(tmp_path):
    m = _mod()
    text = (ROOT / "README.md").read_text()
    blk = m.block(text)
    row = next(line for line in blk.splitlines() if line.startswith("| DDP"))
    i = next(i for i, c in enumerate(row) if c.isdigit() and i > row.index("|", 2))  # first figure in the result cell
    bad_row = row[:i] + str((int(row[i]) + 1) % 10) + row[i + 1:]
    bad = text.replace(row, bad_row)
    diff = m.check(bad)
    assert len(diff) == 1 and bad_row in diff[0]
    (tmp_path / "README.md").write_text(bad)
    assert m.main(["--check", "--readme", str(tmp_path / "README.md")]) == 1


def test_a_changed_json_value_is_caught(monkeypatch):
    m = _mod()
    text = (ROOT / "README.md").read_text()
    real = m.load

    def shifted(rel):
        d = real(rel)
        if rel == "compile_time.json":
            k = next(iter(d["results"]))
            b = next(iter(d["results"][k]["builds"].values()))
            b["ratio"] += 0.01
        return d

    monkeypatch.setattr(m, "load", shifted)
    assert len(m.check(text)) == 1


def test_missing_block_is_a_clear_error():
    m = _mod()
    with pytest.raises(SystemExit, match="readme_table: begin"):
        m.check("# no block here\n")
