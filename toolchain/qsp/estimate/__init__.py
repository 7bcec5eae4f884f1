"""Estimates in seconds, without a vendor tool: footprint, MACs/BOPs, FPGA resources per
strategy, latency, energy and a fit verdict per board (see docs/estimate.md)."""
from ..hardware import LayerStrategy, smallest_valid_reuse, valid_reuse_factors
from .core import (BoardEstimate, Estimate, HardwareGraph, LayerEstimate, Plan, Storage, Totals, default_strategies, estimate,
                   fit_plan, hardware_graph, strategies_from_project, summary_for_board)
from .counts import count_graph, csd_digits
from .resources import Resources

__all__ = ["estimate", "summary_for_board", "Estimate", "BoardEstimate", "HardwareGraph", "hardware_graph", "LayerEstimate", "Plan", "Storage",
           "Totals", "default_strategies", "fit_plan", "strategies_from_project", "count_graph", "csd_digits",
           "LayerStrategy", "Resources", "valid_reuse_factors", "smallest_valid_reuse"]
