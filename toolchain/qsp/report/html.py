"""report.html: one file, inline CSS and SVG, viewable offline."""
from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from ..estimate.energy import ASIC_LABEL
from .svg import bar_chart, scatter_pareto, utilization_chart

CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.fits{color:#227722}.nofit{color:#cc3311;font-weight:bold}.alt{color:#aa7700}
svg.chart{display:block;margin:10px 0}svg .title{font-size:13px;font-weight:bold}
svg .tick{font-size:10px;fill:#333}svg .grid{stroke:#e6e6e6}svg .limit{stroke:#cc3311;stroke-dasharray:4 3}
svg .front{fill:none;stroke:#4477aa;stroke-width:1.5}.note{color:#555;font-size:.85em}
"""


@dataclass
class RunPoint:
    name: str
    metric: float
    footprint_bits: int
    path: str
    #: the float model trained beside it (qspec metrics 'float'): its metric and float32 footprint
    float_metric: float | None = None
    float_footprint_bits: int | None = None


def find_runs(folder, max_depth: int = 3) -> list[RunPoint]:
    """Every bundle (``qspec.json``, a regular file at most ``max_depth`` folders down, found
    by :func:`qsp.paths.find_files`) under ``folder`` with a test metric: its metric and its
    footprint (:func:`qsp.bundle.footprint.footprint`, from the spec alone)."""
    from ..bundle.footprint import float_footprint, footprint
    from ..bundle.schema import QSpec

    out: list[RunPoint] = []
    if folder is None or not Path(folder).is_dir():
        return out
    from ..paths import find_files

    for q in find_files(folder, "qspec.json", max_depth):  # bounded, follows no symlinks, regular files only
        try:
            if q.stat().st_size > 16 << 20:  # no spec is this large
                continue
            spec = QSpec.from_dict(json.loads(q.read_text()))
        except Exception:  # a foreign or broken file is simply not a run
            continue
        m = spec.metrics.get("test_metric", spec.metrics.get(spec.task.metric))
        if not isinstance(m, (int, float)):
            continue
        run = q.parent.parent if q.parent.name == "bundle" else q.parent
        fm = (spec.metrics.get("float") or {}).get("test_metric") if isinstance(spec.metrics.get("float"), dict) else None
        ok = isinstance(fm, (int, float)) and not isinstance(fm, bool)
        out.append(RunPoint(run.name, float(m), footprint(spec).total_bits, str(q.parent),
                            float(fm) if ok else None, float_footprint(spec).total_bits if ok else None))
    return out


def _table(headers: list[str], rows: list[list], cls: str = "", left: int = 1) -> str:
    h = "".join(f'<th class="{"l" if i < left else ""}">{escape(str(x))}</th>' for i, x in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{x if isinstance(x, _Raw) else escape(_cell(x))}</td>'
                                     for i, x in enumerate(r)) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


class _Raw(str):
    pass


def _cell(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e4 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return "" if x is None else str(x)


def _verdict_cell(v: str) -> _Raw:
    cls = {"fits": "fits", "does not fit": "nofit"}.get(v, "alt")
    return _Raw(f'<span class="{cls}">{escape(v)}</span>')


def report_board(est, board: str | None):
    """The board estimate whose per-layer resources the report shows: ``board`` (a name or
    alias), else the only one, else pynq-z2 (qsp-compile's default) when estimated, else the first."""
    from ..boards import get_board
    from ..errors import BoardError

    if not est.boards:
        return None
    names = {be.board.name: be for be in est.boards}
    if board is not None:
        name = get_board(board).name if board not in names else board
        if name not in names:
            raise BoardError(f"report board {board!r} is not among the estimated boards {sorted(names)}")
        return names[name]
    return est.boards[0] if len(est.boards) == 1 else names.get("pynq-z2", est.boards[0])


def render_report(est, runs_dir=None, title: str | None = None, board: str | None = None) -> str:
    """The HTML report; ``board`` picks the per-layer resource table (see :func:`report_board`)."""
    t = est.totals
    name = title or (Path(est.bundle_path).parent.name if est.bundle_path else "bundle")
    layers = est.layers
    wl = [le for le in layers if le.weights]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>qsp estimate: {escape(name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>qsp estimate: {escape(name)}</h1>",
             f'<p class="note">bundle {escape(str(est.bundle_path))}; task {escape(str(est.task.get("name", "")))} '
             f'({escape(str(est.task.get("metric", "")))}). Estimates come from the analytic models of docs/estimate.md, '
             "not from synthesis; see the calibration there for their error.</p>"]
    # ---- totals
    parts.append("<h2>Totals</h2>")
    parts.append(_table(["quantity", "qsp", "float32 dense", "ratio"], [
        ["footprint (bits, weights + activations)", t.footprint_bits, t.float_footprint_bits,
         f"{t.float_footprint_bits / max(t.footprint_bits, 1):.1f}x"],
        ["weight storage, dense (bits)", t.weight_bits_dense, t.weights * 32, ""],
        ["weight storage, sparse-encoded (bits)", t.weight_bits_sparse, "", ""],
        ["activation storage dense / sparse (bits)", f"{t.activation_bits_dense:,} / {t.activation_bits_sparse:,}", "", ""],
        ["parameters / nonzero weights", f"{t.params:,} / {t.nonzeros:,}", "", ""],
        ["MACs (counted / dense)", f"{t.macs:,} / {t.macs_dense:,}", t.macs_dense, ""],
        ["BOPs", t.bops, t.bops_float, f"{t.bops_float / max(t.bops, 1):.1f}x"],
    ], "totals"))
    # ---- per layer
    parts.append("<h2>Per layer</h2>")
    rows = []
    for le in layers:
        ws = le.weight_storage
        rows.append([le.name, le.op, "x".join(map(str, le.out_shape)), le.out_bits, le.out_elements, le.out_nonzero,
                     le.weights or "", le.nonzeros if le.weights else "", le.weight_bits or "", le.in_bits or "",
                     le.acc_bits or "", le.macs_dense or "", le.macs if le.weights else "", le.bops if le.weights else "",
                     f"{ws.sparse_bits:,} ({ws.encoding})" if ws else "",
                     f"{le.activation_storage.sparse_bits:,}" if le.activation_storage else ""])
    parts.append(_table(["layer", "op", "out shape", "out bits", "out elements", "nonzero out", "weights", "nonzero w",
                         "b_w", "b_a", "acc bits", "MACs dense", "MACs", "BOPs", "weight storage (bits)",
                         "act. storage (bits)"], rows, "layers", left=2))
    labels = [le.name for le in wl]
    parts.append(bar_chart("Bits per layer", labels, {"weight bits": [le.weight_bits for le in wl],
                                                      "input act. bits": [le.in_bits for le in wl]}))
    parts.append(bar_chart("Sparsity per layer (%)", labels, {
        "weights pruned": [100 * le.weight_sparsity for le in wl],
        "inputs statically zero": [100 * (1 - le.in_nonzero / max(le.in_elements, 1)) for le in wl]}))
    pts = [le for le in layers if le.activation_storage]
    parts.append(bar_chart("Footprint breakdown (bits)", [le.name for le in wl] + [le.name for le in pts], {
        "paper footprint": [le.nonzeros * le.weight_bits for le in wl] + [le.out_nonzero * le.out_bits for le in pts],
        "dense storage": [le.weight_storage.dense_bits for le in wl] + [le.activation_storage.dense_bits for le in pts],
        "sparse-encoded": [le.weight_storage.sparse_bits for le in wl] + [le.activation_storage.sparse_bits for le in pts]}))
    parts.append(bar_chart("BOPs per layer (log scale)", labels, {"qsp": [le.bops for le in wl],
                                                                  "float32 dense": [le.bops_float for le in wl]}, log=True))
    # ---- boards
    if est.boards:
        parts.append("<h2>Boards</h2>")
        parts.append(f'<p class="note">Modelled as hls4ml\'s {escape(getattr(est, "io_type", "io_parallel"))} design '
                     "(docs/estimate.md).</p>")
        if est.hardware is not None:
            parts.append(f'<p class="note">{escape(est.hardware.describe())}: resources, latency and verdicts '
                         "below are those of this graph; totals and the per-layer table above are the bundle "
                         "as trained.</p>")
        brow = []
        for be in est.boards:
            u = be.shown.utilization(be.board)
            r = be.shown.total
            brow.append([be.board.name, be.board.part, _verdict_cell(be.verdict), be.binding,
                         be.alternative.label if be.alternative else be.plan.label,
                         f"{r.lut:,} ({100 * u['LUT']:.1f}%)", f"{r.ff:,} ({100 * u['FF']:.1f}%)",
                         f"{r.dsp:,} ({100 * u['DSP']:.1f}%)", f"{r.bram18:,} ({100 * u['BRAM18']:.1f}%)",
                         r.latency_cycles, f"{be.latency_us:.3g}", r.ii_cycles,
                         f"{be.energy.total / 1e3:.4g}", f"{be.energy_float.total / 1e3:.4g}",
                         _fpga_cell(be.fpga_energy)])
        parts.append(_table(["board", "part", "verdict", "binding", "strategy plan", "LUT", "FF", "DSP", "BRAM18",
                             "latency (cycles)", "latency (us)", "II (cycles)", "ASIC 45 nm op energy (nJ)",
                             "ASIC float32 energy (nJ)", "FPGA model energy (nJ, P x latency)"],
                            brow, "boards", left=5))
        parts.append('<p class="note">Two different energy figures: the ASIC columns are '
                     f"{escape(ASIC_LABEL)}; the FPGA model column is the board's static + dynamic power "
                     "(boards/power/families.yaml, per device family) times the latency, or says which family has "
                     "no citable power data.</p>")
        parts.append(utilization_chart("Resource use against each board's budget",
                                       [(be.board.name, be.shown.utilization(be.board)) for be in est.boards]))
        be0 = report_board(est, board)
        lrows = []
        for le in layers:
            r = be0.shown.layers.get(le.name)
            st = be0.shown.strategies.get(le.name)
            if r is None or (not r.lut and not r.dsp and not r.ff):
                continue
            lrows.append([le.name, f"{st.strategy} R={st.reuse_factor}" if st else "", r.mult_kind, r.multipliers,
                          r.dsp, r.lut, r.ff, r.bram18, r.latency_cycles, r.ii_cycles])
        parts.append(f"<h3>Per-layer resources on {escape(be0.board.name)}</h3>")
        parts.append(_table(["layer", "strategy", "mult.", "multipliers", "DSP", "LUT", "FF", "BRAM18", "latency",
                             "II"], lrows, "layer-resources", left=3))
    # ---- runs
    runs = find_runs(runs_dir) if runs_dir is not None else []
    parts.append("<h2>Accuracy vs footprint</h2>")
    here = Path(est.bundle_path).resolve() if est.bundle_path else None
    hl = next((r.name for r in runs if here is not None and Path(r.path).resolve() == here), None)
    pts = [(r.footprint_bits, r.metric, r.name) for r in runs]
    pts += [(r.float_footprint_bits, r.float_metric, f"{r.name} (float32)") for r in runs if r.float_metric is not None]
    parts.append(scatter_pareto("Runs: test metric vs footprint, trained and float32 models (Pareto front joined)",
                                pts, "footprint (bits, log scale)", str(est.task.get("metric", "metric")), highlight=hl))
    if runs:
        parts.append(_table(["run", "metric", "footprint (bits)", "float32 metric", "float32 footprint (bits)",
                             "bundle"],
                            [[r.name, r.metric, r.footprint_bits, "" if r.float_metric is None else r.float_metric,
                              r.float_footprint_bits or "", r.path] for r in runs], "runs"))
    parts.append(f'<p class="note">energy model: {escape(est.to_dict()["models"]["energy"])}</p></body></html>')
    return "".join(parts)


def _fpga_cell(f) -> str:
    if f.missing:
        return f.missing
    return f"{f.energy_latency_pj / 1e3:.4g} ({f.power_w:.3g} W)"


def write_report(est, path, runs_dir=None, board: str | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_report(est, runs_dir, board=board))
    return p
