"""On CUDA, qsp's per-tensor fake quantization (the fused ``fake_quantize_per_tensor_affine``
path of :func:`qsp.fixedpoint.quantize_ste`) against the reference :func:`quantize_np`
(float64, numpy) and the gradient mask against its definition (rounded code inside the range),
for every bit width 1..24, signed and unsigned, fraction bits -8..24, on random values and on
exact ties (k + 1/2) * 2**-d; exits 1 on any difference.

    PYTHONPATH=toolchain python benchmarks/cuda_fakequant_check.py --out cuda_fakequant_check.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from qsp import fixedpoint as fp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("cuda_fakequant_check.py: no CUDA device")
    rng = np.random.default_rng(0)
    cases = bad_values = bad_grads = 0
    first = None
    for bits in range(1, 25):
        for signed in (True, False):
            lo, hi = fp.int_range(bits, signed)
            for frac in range(-8, 25):
                step = 2.0 ** -frac
                ties = (rng.integers(lo - 3, hi + 3, 2000) + 0.5) * step
                rand = rng.uniform((lo - 4) * step, (hi + 4) * step, 4000)
                x64 = np.concatenate([ties, rand, [lo * step, hi * step, 0.0]]).astype(np.float32)
                x = torch.tensor(x64, device="cuda", requires_grad=True)
                q = fp.quantize_ste(x, bits, frac, signed, "convergent")
                q.backward(torch.ones_like(q))
                ref = fp.quantize_np(x64.astype(np.float64), bits, frac, signed, "convergent")
                k = np.round(x64.astype(np.float64) * 2.0 ** frac)
                ref_g = ((k >= lo) & (k <= hi)).astype(np.float32)
                nv = int((q.detach().cpu().double().numpy() != ref).sum())
                ng = int((x.grad.cpu().numpy() != ref_g).sum())
                cases += 1
                bad_values += nv
                bad_grads += ng
                if (nv or ng) and first is None:
                    first = {"bits": bits, "signed": signed, "frac": frac, "values_differ": nv, "grads_differ": ng}
    res = {"check": "cuda fused fake-quant vs quantize_np",
           "command": "python " + " ".join([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])), "device": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "cases": cases, "values_differ": bad_values, "grads_differ": bad_grads,
           "first_failure": first, "ok": bad_values == 0 and bad_grads == 0}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
