"""Board-side driver of a qsp design on PYNQ (numpy only; no torch, no qsp install needed).

The deploy package puts ``fixedpoint.py`` (a copy of ``qsp/fixedpoint.py``, numpy-only at
import) next to this file, so inputs are quantized with exactly the semantics of training,
the emulator and the C++ (rounding mode, AP_SAT), then packed into the words the
accelerator's AXI stream carries:

* ``interface: fixed``: each value is the two's-complement integer code ``round(x * 2^frac)``
  of its ``ap_fixed``/``ap_ufixed`` type, in a little-endian container of 8/16/32/64 bits;
* ``interface: float``: the wrapper casts float32 to ``input_t`` in hardware; the driver
  sends values already on the input grid, so that cast is the identity (exact while the
  type has <= 24 significant bits).

Outputs are unpacked the same way (sign-extended from the type's width, times 2^-frac).
``qsp_deploy.json`` (written by ``qsp.deploy``) holds the formats, shapes and layout.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

try:  # the same semantics as training: prefer the installed qsp, else the copy shipped here
    from qsp.fixedpoint import FixedFormat
except ImportError:  # pragma: no cover - on the board
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fixedpoint import FixedFormat  # type: ignore

META = "qsp_deploy.json"


def container_bits(bits: int) -> int:
    for c in (8, 16, 32, 64):
        if bits <= c:
            return c
    raise ValueError(f"a {bits}-bit word does not fit a 64-bit container")


class FixedCodec:
    """Pack floats into the integer words of one fixed-point format, and back."""

    def __init__(self, fmt: FixedFormat, container: int | None = None):
        self.fmt = fmt
        self.container = container or container_bits(fmt.bits)
        self.dtype = np.dtype(f"{'i' if fmt.signed else 'u'}{self.container // 8}").newbyteorder("<")

    def codes(self, x) -> np.ndarray:
        """Integer codes of ``x`` after quantization (round + saturate, qsp semantics)."""
        q = self.fmt.quantize_np(np.asarray(x, np.float64))
        return np.round(q * 2.0 ** self.fmt.frac).astype(np.int64)

    def pack(self, x) -> np.ndarray:
        return self.codes(x).astype(self.dtype)

    def unpack(self, words) -> np.ndarray:
        w = np.asarray(words).astype(np.int64)
        mask = (1 << self.fmt.bits) - 1
        k = w & mask
        if self.fmt.signed:
            k = np.where(k >= (1 << (self.fmt.bits - 1)), k - (1 << self.fmt.bits), k)
        return k.astype(np.float64) * 2.0 ** -self.fmt.frac


class FloatCodec:
    """The float interface: values on the grid, sent as float32."""

    def __init__(self, fmt: FixedFormat):
        if fmt.bits - 1 > 24:
            raise ValueError(f"{fmt} has more significant bits than float32 holds; use the fixed interface")
        self.fmt = fmt
        self.dtype = np.dtype("<f4")

    def pack(self, x) -> np.ndarray:
        return self.fmt.quantize_np(np.asarray(x, np.float64)).astype(np.float32)

    def unpack(self, words) -> np.ndarray:
        return np.asarray(words, np.float64)


def codec(fmt: FixedFormat, interface: str):
    return FixedCodec(fmt) if interface == "fixed" else FloatCodec(fmt)


class QspDesign:
    """Formats, shapes and layout of one deployed design (from ``qsp_deploy.json``)."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.interface = meta.get("interface", "float")
        self.input_format = FixedFormat.from_dict(meta["input_format"])
        self.output_format = FixedFormat.from_dict(meta["output_format"])
        self.input_shape = tuple(meta["input_shape"])  # one sample, the bundle's layout (NCHW w/o batch)
        self.output_shape = tuple(meta["output_shape"])
        self.channels_last = bool(meta.get("channels_last", False))
        self.inp = codec(self.input_format, self.interface)
        self.out = codec(self.output_format, self.interface)

    @classmethod
    def load(cls, folder=".") -> "QspDesign":
        p = Path(folder)
        return cls(json.loads((p / META if p.is_dir() else p).read_text()))

    def to_stream(self, x) -> np.ndarray:
        """(N, *input_shape) floats -> (N, n_in) words in the order the design reads them."""
        x = np.asarray(x, np.float64).reshape((-1,) + self.input_shape)
        if self.channels_last and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        return self.inp.pack(x.reshape(x.shape[0], -1))

    def from_stream(self, words) -> np.ndarray:
        """(N, n_out) words -> (N, *output_shape) values."""
        y = self.out.unpack(np.asarray(words).reshape(-1, int(np.prod(self.output_shape))))
        if self.channels_last and len(self.output_shape) == 3:
            c, h, w = self.output_shape
            return y.reshape(-1, h, w, c).transpose(0, 3, 1, 2)
        return y.reshape((-1,) + self.output_shape)


class QspOverlay:  # pragma: no cover - needs a board
    """The accelerator on a PYNQ board: ``predict(x)`` quantizes, packs, streams through the
    AXI DMA and unpacks. ``bitfile`` is the .bit next to its .hwh."""

    def __init__(self, bitfile: str, folder: str | None = None, dma_path: str = "hier_0.axi_dma_0"):
        from pynq import Overlay, allocate

        self.design = QspDesign.load(folder or os.path.dirname(os.path.abspath(bitfile)))
        self.overlay = Overlay(bitfile)
        dma = self.overlay
        for part in dma_path.split("."):
            dma = getattr(dma, part)
        self.dma = dma
        self._allocate = allocate

    def predict(self, x) -> np.ndarray:
        words = self.design.to_stream(x)
        n_out = int(np.prod(self.design.output_shape))
        ibuf = self._allocate(shape=words.shape, dtype=words.dtype)
        obuf = self._allocate(shape=(words.shape[0], n_out), dtype=self.design.out.dtype)
        ibuf[:] = words
        self.dma.sendchannel.transfer(ibuf)
        self.dma.recvchannel.transfer(obuf)
        self.dma.sendchannel.wait()
        self.dma.recvchannel.wait()
        y = self.design.from_stream(np.array(obuf))
        ibuf.freebuffer()
        obuf.freebuffer()
        return y


def read_tb(path) -> np.ndarray:
    """A csim testbench file: one sample per line, space-separated values."""
    rows = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    return np.array([[float(v) for v in r] for r in rows], np.float64)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description="run a qsp design on a PYNQ board over testbench inputs")
    ap.add_argument("bitfile")
    ap.add_argument("--inputs", default="tb_data/tb_input_features.dat")
    ap.add_argument("--expected", default="tb_data/tb_output_predictions.dat")
    a = ap.parse_args()
    ov = QspOverlay(a.bitfile)
    x = read_tb(a.inputs)
    y = ov.predict(x).reshape(len(x), -1)
    if os.path.exists(a.expected):
        ref = read_tb(a.expected)
        print(f"{int(np.sum(y != ref))} of {y.size} outputs differ from the testbench")
    np.savetxt("board_outputs.dat", y, fmt="%.17g")
