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

``python3 qsp_driver.py design_1.bit`` runs the self-check (``tb_data/``: the test inputs
and the outputs of qsp-compile's verified C simulation; every board output must equal its
C-simulation output bit for bit; exit status 1 otherwise), then times batches through the
DMA (throughput, latency of one inference) and writes ``board_check.json``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

try:  # the same semantics as training: prefer the installed qsp, else the copy shipped here
    from qsp.fixedpoint import FixedFormat
except ImportError:  # pragma: no cover - on the board
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fixedpoint import FixedFormat  # type: ignore

META = "qsp_deploy.json"
TB_INPUTS = "tb_data/tb_input_features.dat"  # the test inputs, the design's input order
TB_OUTPUTS = "tb_data/tb_output_predictions.dat"  # the C simulation's outputs for them


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
    """Formats, shapes and layout of one deployed design (from ``qsp_deploy.json``).

    Stream order is the one the C simulation verified: inputs in the bundle's layout
    (NCHW images: hls4ml's ``channels_last_conversion='full'`` transposes inside the
    design), outputs channels-last (hls4ml's layout; :meth:`from_stream` turns them back)."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.interface = meta.get("interface", "float")
        self.input_format = FixedFormat.from_dict(meta["input_format"])
        self.output_format = FixedFormat.from_dict(meta["output_format"])
        self.input_shape = tuple(meta["input_shape"])  # one sample, the bundle's layout (NCHW w/o batch)
        self.output_shape = tuple(meta["output_shape"])
        self.channels_last = bool(meta.get("channels_last", False))
        self.n_in = int(np.prod(self.input_shape))
        self.n_out = int(np.prod(self.output_shape))
        self.inp = codec(self.input_format, self.interface)
        self.out = codec(self.output_format, self.interface)

    @classmethod
    def load(cls, folder=".") -> "QspDesign":
        p = Path(folder)
        return cls(json.loads((p / META if p.is_dir() else p).read_text()))

    def to_stream(self, x) -> np.ndarray:
        """(N, *input_shape) or (N, n_in) floats -> (N, n_in) words in the design's order."""
        x = np.asarray(x, np.float64)
        if x.size % self.n_in:
            raise ValueError(f"inputs of {x.size} values are not samples of shape {self.input_shape}")
        return self.inp.pack(x.reshape(-1, self.n_in))

    def decode(self, words) -> np.ndarray:
        """(N, n_out) words -> (N, n_out) values in the design's output order (as the C
        simulation writes them: what the self-check compares)."""
        return self.out.unpack(np.asarray(words).reshape(-1, self.n_out))

    def from_stream(self, words) -> np.ndarray:
        """(N, n_out) words -> (N, *output_shape) values in the bundle's layout."""
        y = self.decode(words)
        if self.channels_last and len(self.output_shape) == 3:
            c, h, w = self.output_shape
            return y.reshape(-1, h, w, c).transpose(0, 3, 1, 2)
        if self.channels_last and len(self.output_shape) == 2:  # [C, L] of a 1-D model: hls4ml gives [L, C]
            c, n = self.output_shape
            return y.reshape(-1, n, c).transpose(0, 2, 1)
        return y.reshape((-1,) + self.output_shape)


class Accelerator:
    """The design behind an AXI DMA: ``dma`` has pynq's ``sendchannel``/``recvchannel``
    (``transfer``, ``wait``) and ``allocate(shape=, dtype=)`` gives DMA-able buffers (pynq's
    ``allocate``). On the board :class:`QspOverlay` supplies both; on a host a stand-in
    with the same calls runs this same code."""

    def __init__(self, design: QspDesign, dma, allocate):
        self.design = design
        self.dma = dma
        self._allocate = allocate
        self._bufs: dict = {}

    def _buffers(self, n: int):
        if n not in self._bufs:  # allocated once per batch size, as FINN's driver does
            self.free()
            self._bufs[n] = (self._allocate(shape=(n, self.design.n_in), dtype=self.design.inp.dtype),
                             self._allocate(shape=(n, self.design.n_out), dtype=self.design.out.dtype))
        return self._bufs[n]

    def free(self) -> None:
        for bufs in self._bufs.values():
            for b in bufs:
                if hasattr(b, "freebuffer"):
                    b.freebuffer()
        self._bufs.clear()

    def transfer(self, words) -> np.ndarray:
        """Stream (N, n_in) input words through the design; returns (N, n_out) output words."""
        words = np.asarray(words)
        ibuf, obuf = self._buffers(len(words))
        ibuf[:] = words
        if hasattr(ibuf, "flush"):
            ibuf.flush()
        self.dma.sendchannel.transfer(ibuf)
        self.dma.recvchannel.transfer(obuf)
        self.dma.sendchannel.wait()
        self.dma.recvchannel.wait()
        if hasattr(obuf, "invalidate"):
            obuf.invalidate()
        return np.array(obuf)

    def predict(self, x) -> np.ndarray:
        """quantize -> pack -> DMA -> unpack: (N, *output_shape) values, the bundle's layout."""
        return self.design.from_stream(self.transfer(self.design.to_stream(x)))

    def self_check(self, inputs=TB_INPUTS, expected=TB_OUTPUTS) -> dict:
        """Run the testbench inputs and compare the board's outputs, bit for bit, with the
        outputs the C simulation produced for them (qsp-compile verified those against the
        integer emulator and onnxruntime)."""
        x = read_tb(inputs)
        got = self.design.decode(self.transfer(self.design.to_stream(x)))
        return compare(got, read_tb(expected))

    def measure(self, x, batch_size: int = 64, batches: int = 20, single: int = 20) -> dict:
        """Timed batches through the DMA (buffers allocated and inputs packed beforehand,
        as hls4ml's overlay and FINN's throughput test time them): throughput of batches of
        ``batch_size`` and the latency of one inference (batches of 1)."""
        words = self.design.to_stream(x)
        reps = -(-batch_size // len(words))
        words = np.concatenate([words] * reps)[:batch_size]
        self.transfer(words)  # warm-up, allocates the buffers
        times = []
        for _ in range(batches):
            t0 = time.perf_counter()
            self.transfer(words)
            times.append(time.perf_counter() - t0)
        one = words[:1]
        self.transfer(one)
        lat = []
        for _ in range(single):
            t0 = time.perf_counter()
            self.transfer(one)
            lat.append(time.perf_counter() - t0)
        self.free()
        total = float(np.sum(times))
        return {"batch_size": batch_size, "batches": batches,
                "throughput_inferences_per_s": batch_size * batches / total if total > 0 else float("inf"),
                "batch_time_ms": {"median": 1e3 * float(np.median(times)), "max": 1e3 * float(np.max(times))},
                "latency_ms": {"median": 1e3 * float(np.median(lat)), "min": 1e3 * float(np.min(lat)),
                               "max": 1e3 * float(np.max(lat))},
                "input_MB_per_s": words.nbytes * batches / total / 1e6 if total > 0 else float("inf"),
                "timed": "DMA transfer of packed words, both directions (packing and unpacking excluded)"}


def compare(got, expected) -> dict:
    """Bit-for-bit comparison of outputs (samples x values, the design's order)."""
    got = np.asarray(got, np.float64)
    exp = np.asarray(expected, np.float64)
    if got.shape != exp.shape:
        return {"outputs": int(exp.size), "differ": int(exp.size), "ok": False,
                "note": f"shape {got.shape} != expected {exp.shape}"}
    bad = np.argwhere(got != exp)
    r = {"inputs": int(len(exp)), "outputs": int(exp.size), "differ": int(len(bad)), "ok": len(bad) == 0}
    if len(bad):
        i, j = (int(v) for v in bad[0])
        r["first"] = {"sample": i, "index": j, "board": float(got[i, j]), "csim": float(exp[i, j])}
    return r


class QspOverlay(Accelerator):
    """The accelerator on a PYNQ board: ``bitfile`` is the .bit next to its .hwh; the DMA is
    ``dma_path`` in the block design (hls4ml's VivadoAccelerator designs: hier_0.axi_dma_0)."""

    def __init__(self, bitfile: str, folder: str | None = None, dma_path: str = "hier_0.axi_dma_0"):
        from pynq import Overlay, allocate

        self.overlay = Overlay(bitfile)
        dma = self.overlay
        for part in dma_path.split("."):
            dma = getattr(dma, part)
        super().__init__(QspDesign.load(folder or os.path.dirname(os.path.abspath(bitfile))), dma, allocate)


def read_tb(path) -> np.ndarray:
    """A csim testbench file: one sample per line, space-separated values."""
    rows = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    return np.array([[float(v) for v in r] for r in rows], np.float64)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="run a qsp design on a PYNQ board: self-check against the C "
                                             "simulation's outputs (tb_data/), then timed batches")
    ap.add_argument("bitfile")
    ap.add_argument("--inputs", default=TB_INPUTS)
    ap.add_argument("--expected", default=TB_OUTPUTS)
    ap.add_argument("--batch-size", type=int, default=64, help="inferences per timed DMA transfer")
    ap.add_argument("--batches", type=int, default=20, help="timed batches (0: no timing)")
    a = ap.parse_args(argv)
    ov = QspOverlay(a.bitfile)
    check = ov.self_check(a.inputs, a.expected)
    print(f"self-check: {check['differ']} of {check['outputs']} outputs differ from the C simulation "
          f"({check.get('inputs', '?')} inputs, bit for bit)" + (f"; first: {check['first']}" if "first" in check else ""))
    result = {"self_check": check}
    if a.batches > 0:
        m = ov.measure(read_tb(a.inputs), a.batch_size, a.batches)
        result["measure"] = m
        print(f"throughput: {m['throughput_inferences_per_s']:.1f} inferences/s (batches of {m['batch_size']}); "
              f"latency of one inference: {m['latency_ms']['median']:.3f} ms median")
    Path("board_check.json").write_text(json.dumps(result, indent=1))
    return 0 if check["ok"] else 1


if __name__ == "__main__":  # pragma: no cover - run as a script on the board (tests call main())
    sys.exit(main())
