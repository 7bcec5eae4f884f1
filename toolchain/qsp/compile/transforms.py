"""Re-export of :mod:`qsp.bundle.transforms` (mask folding, dead-unit removal), which
moved to the bundle package so that the estimator can use them without importing the
compiler. Kept so that ``from qsp.compile import transforms`` keeps working."""
from ..bundle.transforms import DEFAULT_STEPS, STEPS, FoldMasks, RemoveDead, Transformation, run

__all__ = ["DEFAULT_STEPS", "STEPS", "FoldMasks", "RemoveDead", "Transformation", "run"]
