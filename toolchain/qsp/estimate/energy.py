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
