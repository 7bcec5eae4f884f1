"""FPGA boards: one YAML data file per board, read into a typed :class:`Board`.

Where board files are looked for, first match of a name wins:

1. directories passed as ``extra_dirs`` to :func:`get_board` / :func:`known_boards` /
   :func:`all_boards`;
2. the directories in the ``QSP_BOARDS_DIR`` environment variable (``os.pathsep``-separated);
3. the built-in boards: ``qsp/_data/boards`` of an installed wheel, else ``boards/`` at the
   repository root (source tree / editable install); :func:`qsp.resources.data_dir`.

A user adds a board by dropping ``<name>.yaml`` into one of these directories. A file
whose stem differs from its ``name`` field, a missing or ill-typed field, a number that is
not finite (NaN, inf) or not positive where it must be, inconsistent block-RAM figures, or
a path that is not a regular file raise :class:`~qsp.errors.BoardError` naming the file and
the field. A name or alias claimed by two files is an error naming both. A malformed file
fails only the lookups that need it: :func:`all_boards` (``--board all``) skips it with a
warning on stderr naming the file and the problem.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable

from .errors import BoardError
from .resources import data_dir

ENV_VAR = "QSP_BOARDS_DIR"
#: kbit of one 36 Kb block RAM; the data sheets' "Mb" are 1024 kbit
BRAM36_KBIT = 36
BRAM18_BITS = 18 * 1024


@dataclass(frozen=True)
class OffchipMemory:
    type: str
    size_mb: float  # MiB
    bandwidth_gb_s: float  # peak, 10^9 bytes/s
    bus_bits: int | None = None
    mt_s: float | None = None


@dataclass(frozen=True)
class Board:
    """One board's device totals (the estimator's budget) and where they came from."""

    name: str
    part: str
    lut: int
    ff: int
    dsp: int
    bram18k: int
    bram36k: int
    bram_mb: float
    uram: int
    clock_mhz: float
    offchip: OffchipMemory
    hls4ml_board: str | None
    sources: dict[str, str]
    description: str = ""
    aliases: tuple[str, ...] = ()
    family: str = ""
    dsp_kind: str = "DSP48E2"
    notes: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def clock_period_ns(self) -> float:
        return 1e3 / self.clock_mhz

    @property
    def bram_bits(self) -> int:
        """On-chip block RAM in bits (18 Kb blocks x 18,432)."""
        return self.bram18k * BRAM18_BITS

    @property
    def uram_bits(self) -> int:
        return self.uram * 288 * 1024

    @property
    def onchip_bits(self) -> int:
        return self.bram_bits + self.uram_bits

    @property
    def dsp_mult_width(self) -> tuple[int, int]:
        """Widest signed multiply one DSP slice does: 25x18 (DSP48E1), 27x18 (DSP48E2)."""
        return (25, 18) if self.dsp_kind.upper() == "DSP48E1" else (27, 18)

    def budget(self) -> dict[str, int]:
        """Resources the estimator checks, by name."""
        return {"LUT": self.lut, "FF": self.ff, "DSP": self.dsp, "BRAM18": self.bram18k, "URAM": self.uram}

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        d["offchip"] = {k: v for k, v in vars(self.offchip).items() if v is not None}
        d["aliases"] = list(self.aliases)
        d["sources"] = dict(self.sources)
        return d


# ----------------------------------------------------------------------------- validation
_INT = (int,)
_NUM = (int, float)
#: field -> (types, required)
_FIELDS: dict[str, tuple[tuple, bool]] = {
    "name": ((str,), True), "part": ((str,), True),
    "lut": (_INT, True), "ff": (_INT, True), "dsp": (_INT, True),
    "bram18k": (_INT, True), "bram36k": (_INT, True), "bram_mb": (_NUM, True), "uram": (_INT, True),
    "clock_mhz": (_NUM, True), "offchip": ((dict,), True), "hls4ml_board": ((str, type(None)), True),
    "sources": ((dict,), True),
    "description": ((str,), False), "aliases": ((list,), False), "family": ((str,), False),
    "dsp_kind": ((str,), False), "notes": ((str, type(None)), False),
}
_OFFCHIP: dict[str, tuple[tuple, bool]] = {
    "type": ((str,), True), "size_mb": (_NUM, True), "bandwidth_gb_s": (_NUM, True),
    "bus_bits": ((int, type(None)), False), "mt_s": ((int, float, type(None)), False),
}
#: every figure needs a source: its own key, or the group key in brackets
_SOURCE_OF = {"part": ("part",), "lut": ("lut", "resources"), "ff": ("ff", "resources"),
              "dsp": ("dsp", "resources"), "bram": ("bram", "resources"), "uram": ("uram", "resources"),
              "clock_mhz": ("clock_mhz",), "offchip": ("offchip",)}


def _check_fields(d: dict, spec: dict, where: str) -> None:
    for k, (types, required) in spec.items():
        if k not in d:
            if required:
                raise BoardError(f"{where}: missing field {k!r}")
            continue
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise BoardError(f"{where}: field {k!r} must be {want}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise BoardError(f"{where}: field {k!r} must be a finite number, got {v!r}")
        if isinstance(v, (int, float)) and v < 0:
            raise BoardError(f"{where}: field {k!r} must not be negative, got {v!r}")
    unknown = set(d) - set(spec)
    if unknown:
        raise BoardError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(spec)}")


def board_from_dict(d, where: str = "board") -> Board:
    """Validate a parsed board file and build a :class:`Board`."""
    if not isinstance(d, dict):
        raise BoardError(f"{where}: top level must be a mapping of fields")
    _check_fields(d, _FIELDS, where)
    _check_fields(d["offchip"], _OFFCHIP, f"{where}: offchip")
    for k in ("lut", "ff", "dsp", "clock_mhz"):
        if d[k] <= 0:
            raise BoardError(f"{where}: field {k!r} must be positive, got {d[k]!r}")
    for k in ("size_mb", "bandwidth_gb_s"):
        if d["offchip"][k] <= 0:
            raise BoardError(f"{where}: offchip: field {k!r} must be positive, got {d['offchip'][k]!r}")
    if d["bram18k"] != 2 * d["bram36k"]:
        raise BoardError(f"{where}: field 'bram18k' ({d['bram18k']}) must be twice 'bram36k' ({d['bram36k']})")
    mb = d["bram36k"] * BRAM36_KBIT / 1024
    if abs(d["bram_mb"] - mb) > 0.05 * max(mb, 0.1):
        raise BoardError(f"{where}: field 'bram_mb' ({d['bram_mb']}) disagrees with 'bram36k' "
                         f"({d['bram36k']} x 36 Kb = {mb:.2f} Mb)")
    src = d["sources"]
    for fig, keys in _SOURCE_OF.items():
        if not any(isinstance(src.get(k), str) and src.get(k).strip() for k in keys):
            raise BoardError(f"{where}: field 'sources' has no entry for {fig!r} (give one of {list(keys)})")
    aliases = d.get("aliases", [])
    if not all(isinstance(a, str) for a in aliases):
        raise BoardError(f"{where}: field 'aliases' must be a list of strings")
    o = d["offchip"]
    return Board(
        name=d["name"], part=d["part"], lut=d["lut"], ff=d["ff"], dsp=d["dsp"], bram18k=d["bram18k"],
        bram36k=d["bram36k"], bram_mb=float(d["bram_mb"]), uram=d["uram"], clock_mhz=float(d["clock_mhz"]),
        offchip=OffchipMemory(o["type"], float(o["size_mb"]), float(o["bandwidth_gb_s"]), o.get("bus_bits"),
                              o.get("mt_s")),
        hls4ml_board=d["hls4ml_board"], sources={str(k): str(v) for k, v in src.items()},
        description=d.get("description", ""), aliases=tuple(a.lower() for a in aliases),
        family=d.get("family", ""), dsp_kind=d.get("dsp_kind", "DSP48E2"), notes=d.get("notes") or "")


#: (path, mtime_ns, size) -> Board: lookups load every board file (name and alias clashes)
_LOADED: dict[tuple, Board | BoardError] = {}


def _cached(path, what: str, cache: dict, read):
    """``read(p)`` for the regular file ``path``, remembered (its result or its BoardError)
    by (path, mtime, size): every lookup loads every file, for the clash checks."""
    from .paths import input_file

    p = input_file(path, what, BoardError)  # a FIFO or device would block; a directory is no file
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in cache:
        try:
            cache[key] = read(p)
        except BoardError as e:
            cache[key] = e
    got = cache[key]
    if isinstance(got, BoardError):
        raise BoardError(str(got))
    return got


def load_board(path) -> Board:
    """Read and validate one board file."""
    return _cached(path, "board file", _LOADED, _read_board)


def _read_board(p: Path) -> Board:
    from .paths import read_yaml

    d = read_yaml(p, "board file", BoardError)
    b = board_from_dict(d, f"board file {p}")
    if b.name.lower() != p.stem.lower():
        raise BoardError(f"board file {p}: field 'name' ({b.name!r}) must equal the file name ({p.stem!r})")
    return Board(**{**{f.name: getattr(b, f.name) for f in fields(b)}, "path": p})


# ----------------------------------------------------------------------------- lookup
def builtin_dirs() -> list[Path]:
    """Directories of the boards that ship with qsp (those that exist)."""
    d = data_dir("boards", required=False)
    return [d] if d is not None else []


def board_dirs(extra_dirs: Iterable | None = None) -> list[Path]:
    dirs = [Path(d) for d in (extra_dirs or [])]
    env = os.environ.get(ENV_VAR, "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d]
    for d in dirs:
        if not d.is_dir():
            raise BoardError(f"board directory {str(d)!r} does not exist "
                             f"(from {'$' + ENV_VAR if str(d) in env else 'the command line'})")
    return dirs + builtin_dirs()


def _board_files(extra_dirs=None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for d in board_dirs(extra_dirs):
        for f in sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))):
            out.setdefault(f.stem.lower(), f)
    return out


def known_boards(extra_dirs=None) -> list[str]:
    """Names of every board found (sorted)."""
    return sorted(_board_files(extra_dirs))


def _warn(msg: str) -> None:
    print(f"qsp: warning: {msg}", file=sys.stderr, flush=True)


def scan_boards(extra_dirs=None) -> tuple[list[Board], dict[str, str], dict[str, str]]:
    """(every board that loads, in name order; {file: problem} for the files that do not;
    {name or alias: problem} for each name or alias that two or more files claim)."""
    boards, bad = [], {}
    for _, f in sorted(_board_files(extra_dirs).items()):
        try:
            boards.append(load_board(f))
        except BoardError as e:
            bad[str(f)] = str(e)
    owners: dict[str, list[Board]] = {}
    for b in boards:
        for key in dict.fromkeys((b.name.lower(), *b.aliases)):
            owners.setdefault(key, []).append(b)
    clashes = {k: f"board name or alias {k!r} is claimed by more than one board file: "
                  + ", ".join(str(b.path) for b in bs) + "; names and aliases must be unique"
               for k, bs in owners.items() if len(bs) > 1}
    return boards, bad, clashes


def all_boards(extra_dirs=None) -> list[Board]:
    """Every valid board found, in name order. A malformed board file is skipped with a
    warning naming it (it breaks only a lookup of that board); a name or alias two files
    claim is warned about (it breaks only a lookup of that name)."""
    boards, bad, clashes = scan_boards(extra_dirs)
    for msg in [*bad.values(), *clashes.values()]:
        _warn(f"skipped: {msg}" if msg in bad.values() else msg)
    if not boards:
        raise BoardError("no valid board file found" + (": " + "; ".join(bad.values()) if bad else ""))
    return boards


def get_board(name: str, extra_dirs=None) -> Board:
    """The board called ``name`` (case-insensitive) or one of its aliases; a path to a
    board file works too."""
    if isinstance(name, Board):
        return name
    key = str(name).strip()
    if key.endswith((".yaml", ".yml")) and Path(key).exists():
        return load_board(key)
    key = key.lower()
    files = _board_files(extra_dirs)
    boards, bad, clashes = scan_boards(extra_dirs)
    if key in clashes:
        raise BoardError(clashes[key])
    for f, msg in bad.items():  # a malformed file fails the lookup of its name
        if Path(f).stem.lower() == key:
            raise BoardError(msg)
    claims = [b for b in boards if key == b.name.lower() or key in b.aliases]
    if claims:
        return claims[0]
    raise BoardError(f"unknown board {name!r}; known boards: {', '.join(sorted(files))}")


# ----------------------------------------------------------------------------- power model data
#: where a board directory keeps its FPGA power figures (one file per directory, all families)
POWER_FILE = ("power", "families.yaml")
#: resources a dynamic-power coefficient may be given for (the estimator's usage keys)
POWER_RESOURCES = ("LUT", "FF", "DSP", "BRAM18", "URAM")
_POWER_FAMILY_KEYS = {"static_w", "dynamic_w_per_100mhz", "sources", "searched", "notes"}


@dataclass(frozen=True)
class PowerFamily:
    """The FPGA power figures of one device family, as cited in a ``power/families.yaml``.

    ``static_w``: device static power (W) by part (a key matches a board's part exactly, or
    as its longest prefix, e.g. ``xc7z020``); ``dynamic_w_per_100mhz``: W per used resource
    at 100 MHz and the file's ``toggle_rate``. Either may be empty: a family without a
    citable figure has no number here, only ``searched`` (what was looked for)."""

    family: str
    static_w: dict[str, float]
    dynamic_w_per_100mhz: dict[str, float]
    toggle_rate: float
    sources: dict[str, str]
    searched: str = ""
    notes: str = ""
    path: Path | None = field(default=None, compare=False)

    def static_for(self, part: str) -> float | None:
        p = part.lower()
        keys = [k for k in self.static_w if p == k or p.startswith(k)]
        return self.static_w[max(keys, key=len)] if keys else None


def _positive_map(v, where: str, keys: Iterable[str] | None = None) -> dict[str, float]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BoardError(f"{where} must be a mapping, got {v!r}")
    out = {}
    for k, x in v.items():
        if not isinstance(k, str) or (keys is not None and k not in keys):
            raise BoardError(f"{where}: unknown key {k!r}" + (f"; known: {list(keys)}" if keys else ""))
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
            raise BoardError(f"{where}: {k!r} must be a finite positive number, got {x!r}")
        out[k.lower() if keys is None else k] = float(x)
    return out


def power_families_from_dict(d, where: str = "power file") -> dict[str, PowerFamily]:
    """Validate a parsed ``power/families.yaml``: every number finite and positive, every
    figure with its source."""
    if not isinstance(d, dict) or set(d) - {"toggle_rate", "toggle_rate_source", "families", "model"}:
        raise BoardError(f"{where}: top level must be a mapping with 'toggle_rate', 'toggle_rate_source', "
                         f"'families' (and optionally 'model')")
    tr = d.get("toggle_rate")
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not math.isfinite(tr) or not 0 < tr <= 1:
        raise BoardError(f"{where}: 'toggle_rate' must be a number in (0, 1], got {tr!r}")
    if not isinstance(d.get("toggle_rate_source"), str) or not d["toggle_rate_source"].strip():
        raise BoardError(f"{where}: 'toggle_rate_source' must name where the toggle rate comes from")
    fams = d.get("families")
    if not isinstance(fams, dict):
        raise BoardError(f"{where}: 'families' must be a mapping of family name -> figures")
    out = {}
    for name, f in fams.items():
        w = f"{where}: family {name!r}"
        if not isinstance(name, str) or not isinstance(f, dict):
            raise BoardError(f"{w} must be a mapping")
        if set(f) - _POWER_FAMILY_KEYS:
            raise BoardError(f"{w}: unknown field(s) {sorted(set(f) - _POWER_FAMILY_KEYS)}; "
                             f"known: {sorted(_POWER_FAMILY_KEYS)}")
        static = _positive_map(f.get("static_w"), f"{w}: static_w")
        dyn = _positive_map(f.get("dynamic_w_per_100mhz"), f"{w}: dynamic_w_per_100mhz", POWER_RESOURCES)
        src = f.get("sources") or {}
        if not isinstance(src, dict) or not all(isinstance(v, str) for v in src.values()):
            raise BoardError(f"{w}: 'sources' must map 'static' / 'dynamic' to text")
        for fig, key in ((static, "static"), (dyn, "dynamic")):
            if fig and not str(src.get(key, "")).strip():
                raise BoardError(f"{w}: figures in {'static_w' if key == 'static' else 'dynamic_w_per_100mhz'} "
                                 f"need a source: 'sources: {{{key}: ...}}'")
        if not static and not dyn and not str(f.get("searched", "")).strip():
            raise BoardError(f"{w}: no figures; say in 'searched' what was looked for")
        out[name.lower()] = PowerFamily(name.lower(), static, dyn, float(tr), {str(k): v for k, v in src.items()},
                                        str(f.get("searched") or ""), str(f.get("notes") or ""))
    return out


#: (path, mtime_ns, size) -> families, like _LOADED
_POWER_LOADED: dict[tuple, dict[str, PowerFamily] | BoardError] = {}


def load_power_file(path) -> dict[str, PowerFamily]:
    return _cached(path, "power file", _POWER_LOADED, _read_power)


def _read_power(p: Path) -> dict[str, PowerFamily]:
    from .paths import read_yaml

    fams = power_families_from_dict(read_yaml(p, "power file", BoardError), f"power file {p}")
    return {k: PowerFamily(**{**{f.name: getattr(v, f.name) for f in fields(v)}, "path": p}) for k, v in fams.items()}


def power_family(board: Board, extra_dirs=None) -> PowerFamily | None:
    """The power figures for ``board``'s family: from ``power/families.yaml`` beside the
    board's own file first, then in the board directories (:func:`board_dirs`); the first
    file that names the family wins. ``None`` when no file names it."""
    dirs = ([board.path.parent] if board.path is not None else []) + board_dirs(extra_dirs)
    fam = board.family.lower()
    for d in dict.fromkeys(dirs):
        f = d.joinpath(*POWER_FILE)
        if f.exists():
            got = load_power_file(f)
            if fam in got:
                return got[fam]
    return None
