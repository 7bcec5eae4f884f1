"""README's first figure: the embedded default flow (``qsp flow``: digits MLP, 8-bit weights
and activations, 50 % of the hidden weights and activations pruned, pynq-z2), its test
accuracy against the float model, footprint and the three-way verification.

    python benchmarks/default_flow.py --out benchmarks/results/default_flow.json
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "flow"
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "qsp", "flow", "--out", str(run), "--skip-estimate"],
                           capture_output=True, text=True)
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-3000:])
            return r.returncode
        m = json.loads((run / "metrics.json").read_text())
        v = json.loads((run / "hls" / "verify.json").read_text())
    fp = m["footprint"]
    res = {"benchmark": "default_flow", "test_accuracy": m["test_metric"], "float_accuracy": m["float"]["test_metric"],
           "footprint_megabits": fp["megabits"], "float_megabits": m["float"]["megabits"],
           "pd_ratio_to_float": m["pd_ratio_to_float"], "verify": v["summary"], "wall_s": round(time.time() - t0, 1),
           "hardware": {"python": platform.python_version(), "machine": platform.machine()},
           "command": "python benchmarks/default_flow.py --out " + a.out + "  (runs: python -m qsp flow)"}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
