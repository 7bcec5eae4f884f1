"""report.html: self-contained, and a real headless browser (Debian's chromium) loads it with
no console errors and shows the tables and plots."""
import re
import shutil
import subprocess
from pathlib import Path


from qsp.estimate import estimate
from qsp.report import find_runs, pareto_front, render_report, write_report
from tests.conftest import needs_system

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _runs(tmp_path, mlp_bundle, cnn_bundle):
    runs = tmp_path / "runs"
    for name, b in (("mlp-run", mlp_bundle), ("cnn-run", cnn_bundle)):
        shutil.copytree(b, runs / name / "bundle")
    return runs


def test_pareto_front():
    pts = [(10, 0.5), (20, 0.7), (15, 0.4), (40, 0.7), (5, 0.1), (50, 0.9)]
    assert pareto_front(pts) == [4, 0, 1, 5]


def test_report_self_contained(tmp_path, mlp_bundle, cnn_bundle):
    runs = _runs(tmp_path, mlp_bundle, cnn_bundle)
    # give the runs a metric so they land on the Pareto plot
    import json
    for i, r in enumerate(sorted(runs.iterdir())):
        q = r / "bundle" / "qspec.json"
        d = json.loads(q.read_text())
        d["metrics"]["test_metric"] = 0.5 + 0.1 * i
        q.write_text(json.dumps(d))
    found = find_runs(runs)
    assert sorted(r.name for r in found) == ["cnn-run", "mlp-run"]
    est = estimate(runs / "mlp-run" / "bundle", ["pynq-z2", "zcu102"])
    html = render_report(est, runs)
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)\s*=\s*"(https?:|//)', html)  # nothing fetched from outside
    assert "<script" not in html
    assert html.count("<svg") == 6  # bits, sparsity, footprint, BOPs, utilization, Pareto
    for name in ("dense1", "pynq-z2", "zcu102", "mlp-run", "cnn-run"):
        assert name in html


def test_report_uses_the_asked_board_and_plots_the_float_model(tmp_path, mlp_bundle):
    """The per-layer resource table is the asked board's (it was alveo-u200's, alphabetically
    first, under --board all); each run with a float baseline adds its float32 point."""
    import json

    from qsp.errors import BoardError
    from qsp.estimate.cli import main
    runs = tmp_path / "runs"
    shutil.copytree(mlp_bundle, runs / "r1" / "bundle")
    q = runs / "r1" / "bundle" / "qspec.json"
    d = json.loads(q.read_text())
    d["metrics"].update(test_metric=0.81, float={"test_metric": 0.93})
    q.write_text(json.dumps(d))
    est = estimate(runs / "r1" / "bundle", ["alveo-u200", "pynq-z2", "zcu102"])
    title = re.compile(r"<h3>Per-layer resources on ([\w-]+)</h3>")
    assert title.findall(render_report(est, runs, board="zcu102")) == ["zcu102"]
    assert title.findall(render_report(est, runs, board="pynq")) == ["pynq-z2"]  # an alias
    assert title.findall(render_report(est, runs)) == ["pynq-z2"]  # the flow's default board
    try:
        render_report(est, runs, board="kv260")
        raise AssertionError("kv260 was not estimated")
    except BoardError as e:
        assert "kv260" in str(e)
    html = render_report(est, runs)
    assert "r1 (float32)" in html and "0.93" in html
    (r,) = find_runs(runs)
    assert r.float_metric == 0.93 and r.float_footprint_bits == est.totals.float_footprint_bits
    # through the CLI, as qsp-flow calls it
    assert main([str(runs / "r1" / "bundle"), "--board", "all", "--report-board", "zcu102",
                 "--out", str(tmp_path / "est")]) == 0
    assert title.findall((tmp_path / "est" / "report.html").read_text()) == ["zcu102"]


def _chromium_dump(page: Path, tmp_path: Path) -> tuple[str, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Failed to load resource" in ln
            or "Uncaught" in ln]


@needs_system(CHROMIUM is not None, "needs Debian's chromium (apt-get install -y chromium chromium-driver)")
def test_console_error_detector_works(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><script>console.error("boom-qsp")</script></body></html>')
    _, err = _chromium_dump(page, tmp_path)
    assert any("boom-qsp" in ln for ln in _console_errors(err))


@needs_system(CHROMIUM is not None, "needs Debian's chromium (apt-get install -y chromium chromium-driver)")
def test_report_in_headless_chromium(tmp_path, mlp_bundle, cnn_bundle):
    runs = _runs(tmp_path, mlp_bundle, cnn_bundle)
    est = estimate(runs / "cnn-run" / "bundle", "all")
    page = write_report(est, tmp_path / "out" / "report.html", runs_dir=runs)
    dom, err = _chromium_dump(page, tmp_path)
    assert _console_errors(err) == []
    assert "<title>qsp estimate" in dom
    for cls in ("totals", "layers", "boards", "layer-resources"):
        assert f'class="{cls}"' in dom
    rows = re.findall(r'<table class="boards">.*?</table>', dom, re.S)[0].count("<tr>")
    assert rows == 1 + len(est.boards)  # header + every board
    assert dom.count("<svg") == 6
    assert "conv1" in dom and "fits" in dom
