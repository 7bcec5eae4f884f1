"""Self-contained HTML report of an estimate (no external files, no scripts): per-layer
tables and inline-SVG plots, resource use against every board, and an accuracy vs footprint
Pareto plot over the runs in a folder."""
from .html import find_runs, render_report, write_report
from .svg import bar_chart, pareto_front, scatter_pareto, utilization_chart

__all__ = ["write_report", "render_report", "find_runs", "bar_chart", "utilization_chart", "scatter_pareto",
           "pareto_front"]
