#!/usr/bin/env bash
# The csim check: train the embedded default, compile it for pynq-z2 with hls4ml, and
# verify the C-simulation bit-exact against PyTorch's integer emulation and onnxruntime.
# One script, three callers: the Dockerfile's default command, .ci/run, and the wheel test
# (tests/test_packaging.py). Arguments after the run directory go to `qsp flow`.
set -euo pipefail
out="${1:-runs/flow-check}"
if [ $# -gt 0 ]; then shift; fi
rm -rf "$out"
qsp flow --out "$out" "$@"
python - "$out" <<'PY'
import json, sys
v = json.load(open(f"{sys.argv[1]}/hls/verify.json"))
bad = v.get("mismatches", v.get("summary", {}).get("mismatches"))
print("verify.json:", json.dumps(v.get("summary", v))[:400])
if bad:
    sys.exit(f"csim check failed: {bad} mismatching outputs")
import os
tb = f"{sys.argv[1]}/deploy/tb_data/tb_output_predictions.dat"
if os.path.isdir(f"{sys.argv[1]}/deploy"):  # boards with a VivadoAccelerator target get a deploy package
    rows = [ln for ln in open(tb) if ln.strip()] if os.path.exists(tb) else []
    if not rows:
        sys.exit(f"deploy package without test vectors: {tb}")
    print(f"deploy: {len(rows)} csim-verified test vectors in {tb}")
PY
