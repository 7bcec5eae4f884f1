"""Small inline-SVG charts (no plotting library): grouped bars, horizontal utilization bars
and a scatter plot with its Pareto front. Every function returns an ``<svg>`` string."""
from __future__ import annotations

import math
from html import escape

PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def bar_chart(title: str, labels: list[str], series: dict[str, list[float]], unit: str = "",
              width: int = 720, height: int = 260, log: bool = False) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    left, right, top, bottom = 60, 10, 28, 70
    pw, ph = width - left - right, height - top - bottom
    names = list(series)
    vals = [v for s in series.values() for v in s]
    tr = (lambda v: math.log10(max(v, 1))) if log else (lambda v: v)
    vmax = _nice_max(max((tr(v) for v in vals), default=1)) if not log else max(1.0, math.ceil(max((tr(v) for v in vals), default=1)))
    n = max(len(labels), 1)
    gw = pw / n
    bw = gw * 0.8 / max(len(names), 1)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}">', f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>']
    for k in range(5):
        v = vmax * k / 4
        y = top + ph - ph * k / 4
        lab = _fmt(10 ** v) if log else _fmt(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{lab}</text>')
    for i, lab in enumerate(labels):
        x0 = left + i * gw + gw * 0.1
        for j, nm in enumerate(names):
            v = series[nm][i]
            h = ph * (tr(v) / vmax if vmax else 0)
            out.append(f'<rect x="{x0 + j * bw:.1f}" y="{top + ph - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                       f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(lab)} {escape(nm)}: {_fmt(v)}{escape(unit)}</title></rect>')
        out.append(f'<text x="{left + i * gw + gw / 2:.1f}" y="{top + ph + 12}" text-anchor="end" class="tick" '
                   f'transform="rotate(-35 {left + i * gw + gw / 2:.1f} {top + ph + 12})">{escape(lab)}</text>')
    for j, nm in enumerate(names):
        out.append(f'<rect x="{left + j * 130}" y="{height - 14}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                   f'<text x="{left + j * 130 + 14}" y="{height - 5}" class="tick">{escape(nm)}</text>')
    out.append("</svg>")
    return "".join(out)


def utilization_chart(title: str, rows: list[tuple[str, dict[str, float]]], width: int = 720) -> str:
    """One row per board, one bar per resource, 100 % marked; bars past 100 % clipped at 150 %."""
    keys = list(rows[0][1]) if rows else []
    left, top, rh = 100, 28, 14 * max(len(keys), 1) + 8
    height = top + rh * len(rows) + 30
    pw = width - left - 20
    scale = pw / 1.5
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}">', f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>']
    for r, (name, util) in enumerate(rows):
        y0 = top + r * rh
        out.append(f'<text x="{left - 6}" y="{y0 + rh / 2 + 4:.1f}" text-anchor="end" class="tick">{escape(name)}</text>')
        for j, k in enumerate(keys):
            u = util[k]
            w = min(u, 1.5) * scale
            col = "#cc3311" if u > 1 else PALETTE[j % len(PALETTE)]
            out.append(f'<rect x="{left}" y="{y0 + j * 14 + 2}" width="{max(w, 0.5):.1f}" height="12" fill="{col}">'
                       f'<title>{escape(name)} {k}: {100 * u:.1f} %</title></rect>')
    x100 = left + scale
    out.append(f'<line x1="{x100:.1f}" y1="{top}" x2="{x100:.1f}" y2="{top + rh * len(rows)}" class="limit"/>'
               f'<text x="{x100:.1f}" y="{top + rh * len(rows) + 12}" text-anchor="middle" class="tick">100 %</text>')
    for j, k in enumerate(keys):
        out.append(f'<rect x="{left + j * 90}" y="{height - 12}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                   f'<text x="{left + j * 90 + 14}" y="{height - 3}" class="tick">{escape(k)}</text>')
    out.append("</svg>")
    return "".join(out)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (smaller x and larger-or-equal y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def scatter_pareto(title: str, points: list[tuple[float, float, str]], xlabel: str, ylabel: str,
                   width: int = 720, height: int = 320, highlight: str | None = None) -> str:
    """x (log10 scale) vs y, each point labelled, the Pareto front joined by a line."""
    left, right, top, bottom = 60, 20, 28, 44
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}">', f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="tick">no runs found</text></svg>')
        return "".join(out)
    xs = [math.log10(max(p[0], 1)) for p in points]
    ys = [p[1] for p in points]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs)) if math.ceil(max(xs)) > math.floor(min(xs)) else math.floor(min(xs)) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1, y1 + 1
    pad = (y1 - y0) * 0.1
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + pw * (x - x0) / (x1 - x0)  # noqa: E731
    py = lambda y: top + ph - ph * (y - y0) / (y1 - y0)  # noqa: E731
    for e in range(x0, x1 + 1):
        out.append(f'<line x1="{px(e):.1f}" y1="{top}" x2="{px(e):.1f}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{px(e):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{_fmt(10 ** e)}</text>')
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{py(y) + 4:.1f}" text-anchor="end" class="tick">{y:.3g}</text>')
    front = pareto_front([(p[0], p[1]) for p in points])
    path = " ".join(f"{px(xs[i]):.1f},{py(ys[i]):.1f}" for i in front)
    out.append(f'<polyline points="{path}" class="front"/>')
    for i, (x, y, lab) in enumerate(points):
        cls = "pt front-pt" if i in front else "pt"
        col = "#cc3311" if lab == highlight else (PALETTE[0] if i in front else "#999999")
        out.append(f'<circle cx="{px(xs[i]):.1f}" cy="{py(ys[i]):.1f}" r="4" fill="{col}" class="{cls}">'
                   f'<title>{escape(lab)}: {_fmt(x)} bits, {y:.4g}</title></circle>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="tick">{escape(xlabel)}</text>'
               f'<text x="12" y="{top + ph / 2}" text-anchor="middle" class="tick" transform="rotate(-90 12 {top + ph / 2})">'
               f'{escape(ylabel)}</text></svg>')
    return "".join(out)
