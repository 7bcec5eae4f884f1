"""Where qsp's data files are: the board files (``boards/``), our HLS C++ headers (``hls/``)
and the board-side driver (``deploy/``).

One rule, used by :mod:`qsp.boards`, :mod:`qsp.compile.extension` and :mod:`qsp.deploy`:

1. an installed package (a built wheel, ``pip install .``): ``<site-packages>/qsp/_data/<kind>``,
   put there by setup.py's ``build_py``;
2. a source checkout (an editable install, or ``toolchain/`` on ``sys.path``): the
   repository's top-level ``<kind>/`` folder.

(This is qsp's package data, not the estimator's FPGA resources in ``qsp.estimate.resources``.)
"""
from __future__ import annotations

from pathlib import Path

from .errors import QspError

#: the data folders, by the name of the repository folder they come from
KINDS = ("boards", "hls", "deploy")
_PKG = Path(__file__).resolve().parent


class ResourceError(QspError, FileNotFoundError):
    """A data folder of qsp's own is missing: a broken installation."""


def candidates(kind: str) -> list[Path]:
    """Where ``kind`` is looked for, in order: installed package, then source checkout."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; one of {', '.join(KINDS)}")
    return [_PKG / "_data" / kind,
            _PKG.parent.parent / kind]  # <repo>/toolchain/qsp -> <repo>/<kind>


def data_dir(kind: str, required: bool = True) -> Path | None:
    """The folder holding ``kind`` ("boards", "hls" or "deploy"): the first of
    :func:`candidates` that exists. When none does: :class:`ResourceError` naming the
    places looked in, or ``None`` with ``required=False``."""
    cands = candidates(kind)
    for c in cands:
        if c.is_dir():
            return c
    if not required:
        return None
    raise ResourceError(f"qsp's {kind!r} data not found (looked in {', '.join(map(str, cands))}); "
                        f"reinstall qsp from its wheel or run from a source checkout")


def data_file(kind: str, *parts: str) -> Path:
    """A file inside :func:`data_dir` ``(kind)``; :class:`ResourceError` when it is missing."""
    p = data_dir(kind).joinpath(*parts)
    if not p.is_file():
        raise ResourceError(f"qsp data file {str(p)!r} is missing; reinstall qsp")
    return p
