"""Energy per inference from per-operation energies (Horowitz, ISSCC 2014, 45 nm).

These are ASIC figures at 45 nm; an FPGA spends several times more per operation. Read the
absolute numbers as an order of magnitude and the ratio to the float32 dense baseline
(computed with the same table and the same memory hierarchy) as the meaningful figure.

* multiply of ``b_w x b_a`` bits: ``E_MULT_8 * b_w * b_a / 64`` (int8 multiply 0.2 pJ; this
  gives 3.2 pJ at 32 x 32, Horowitz's int32 multiply is 3.1 pJ);
* add of ``b`` bits: ``E_ADD_32 * b / 32`` (int32 add 0.1 pJ; 0.025 pJ at 8 bits vs 0.03);
* float32: multiply 3.7 pJ, add 0.9 pJ;
* on-chip SRAM read or write of 64 bits: 10 pJ (8 KB), 20 pJ (32 KB), 100 pJ (1 MB),
  interpolated log-log in the size of the memory that holds the data (clamped at the ends);
* DRAM: 1.3 nJ per 64 bits (the low end of Horowitz's 1.3-2.6 nJ), used for the weights
  when their (encoded) storage does not fit the board's block RAM + UltraRAM.

Per inference: every counted MAC (nonzero weight x statically nonzero input; a
``scale_shift`` element is one MAC) costs one multiply and one accumulator-width add; every
add of an ``add`` node (elements x (inputs - 1)) one add of the output's bits (float32: one
float add); every weight is read once, in the storage
encoding of :mod:`qsp.estimate.core` (sparse when smaller); every activation element at a
quantize point that is not statically zero is written once and read once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

E_MULT_8 = 0.2  # pJ, int8 multiply
E_ADD_32 = 0.1  # pJ, int32 add
E_FMUL_32 = 3.7
E_FADD_32 = 0.9
SRAM_64 = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))  # (bytes, pJ per 64-bit access)
E_DRAM_64 = 1300.0  # pJ per 64 bits
SOURCE = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm"


def e_mult(b_w: int, b_a: int) -> float:
    return E_MULT_8 * b_w * b_a / 64.0


def e_add(bits: int) -> float:
    return E_ADD_32 * bits / 32.0


def e_sram_64(size_bytes: float) -> float:
    """pJ per 64-bit access of an SRAM of ``size_bytes`` (log-log interpolation)."""
    pts = SRAM_64
    if size_bytes <= pts[0][0]:
        return pts[0][1]
    if size_bytes >= pts[-1][0]:
        return pts[-1][1]
    for (s0, e0), (s1, e1) in zip(pts, pts[1:]):
        if s0 <= size_bytes <= s1:
            t = (math.log(size_bytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
    return pts[-1][1]


@dataclass
class Energy:
    """pJ per inference, by kind."""

    compute: float
    weights: float
    activations: float
    weights_in_dram: bool

    @property
    def total(self) -> float:
        return self.compute + self.weights + self.activations

    def to_dict(self) -> dict:
        return dict(asdict(self), total=self.total)


def memory_energy(bits: float, size_bytes: float, dram: bool) -> float:
    per64 = E_DRAM_64 if dram else e_sram_64(size_bytes)
    return bits / 64.0 * per64


# ----------------------------------------------------------------------------- FPGA power model
#: how the two energy figures are labelled wherever they are shown
ASIC_LABEL = "ASIC 45 nm op energy (Horowitz, ISSCC 2014): per-operation energies, not an FPGA figure"


@dataclass
class FpgaEnergy:
    """The board's FPGA energy per inference from its family's power figures
    (``boards/power/families.yaml``), or why there is none (``missing``).

    ``P = static + sum_r coeff_r * used_r * clock_mhz / 100``; energy per inference is
    ``P x latency`` for one inference alone and ``P x II`` when inferences stream."""

    family: str
    missing: str = ""  # "" when the figures below are set
    static_w: float | None = None
    dynamic_w: float | None = None
    latency_s: float = 0.0
    ii_s: float = 0.0
    toggle_rate: float | None = None
    source: str = ""
    searched: str = ""  # what was looked for, when the family has no figures

    @property
    def power_w(self) -> float | None:
        return None if self.missing else self.static_w + self.dynamic_w

    @property
    def energy_latency_pj(self) -> float | None:
        return None if self.missing else self.power_w * self.latency_s * 1e12

    @property
    def energy_ii_pj(self) -> float | None:
        return None if self.missing else self.power_w * self.ii_s * 1e12

    @property
    def label(self) -> str:
        if self.missing:
            return f"FPGA model: {self.missing}"
        return (f"FPGA model: static + dynamic (toggle rate {100 * self.toggle_rate:g} %) from {self.source}; "
                "XPE-style early estimate, typically +-30 %")

    def to_dict(self) -> dict:
        return {"label": self.label, "family": self.family, "available": not self.missing, "missing": self.missing,
                "static_w": self.static_w, "dynamic_w": self.dynamic_w, "power_w": self.power_w,
                "toggle_rate": self.toggle_rate, "source": self.source, "searched": self.searched,
                "latency_s": self.latency_s, "ii_s": self.ii_s,
                "energy_latency_pj": self.energy_latency_pj, "energy_ii_pj": self.energy_ii_pj}


def fpga_dynamic_w(coeffs: dict[str, float], usage: dict[str, int], clock_mhz: float) -> float:
    """sum_r coeff_r (W per unit at 100 MHz) x used_r x clock / 100 MHz."""
    return sum(coeffs[r] * n for r, n in usage.items() if n) * clock_mhz / 100.0


def fpga_energy(board, usage: dict[str, int], latency_cycles: int, ii_cycles: int, family=None) -> FpgaEnergy:
    """``board``'s FPGA power and energy per inference for ``usage`` (resource -> units
    used), from ``family`` (a :class:`qsp.boards.PowerFamily`; looked up for the board
    when None). Any figure the calculation needs and the file lacks gives ``missing``
    naming it: the part's static power, a coefficient for a resource the design uses."""
    from ..boards import power_family

    fam_name = board.family or "(no family in the board file)"
    fam = power_family(board) if family is None else family
    period = 1e-6 / board.clock_mhz
    base = dict(family=fam_name, latency_s=latency_cycles * period, ii_s=ii_cycles * period)
    if fam is None or (not fam.static_w and not fam.dynamic_w_per_100mhz):
        return FpgaEnergy(missing=f"no power data for {fam_name}", searched=fam.searched if fam else "", **base)
    static = fam.static_for(board.part)
    if static is None:
        return FpgaEnergy(missing=f"no power data for {fam_name}: no static power for part {board.part}", **base)
    lacking = [r for r, n in usage.items() if n and r not in fam.dynamic_w_per_100mhz]
    if lacking:
        return FpgaEnergy(missing=f"no power data for {fam_name}: no dynamic coefficient for "
                                  f"{', '.join(lacking)}", **base)
    src = "; ".join(f"{k}: {v}" for k, v in fam.sources.items() if k in ("static", "dynamic"))
    return FpgaEnergy(static_w=static, dynamic_w=fpga_dynamic_w(fam.dynamic_w_per_100mhz, usage, board.clock_mhz),
                      toggle_rate=fam.toggle_rate, source=src, **base)
