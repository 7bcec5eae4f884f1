#!/usr/bin/env bash
# The csim check: train the embedded default, compile it for pynq-z2 with hls4ml, and
# verify the C-simulation bit-exact against PyTorch's integer emulation and onnxruntime.
# One script, two callers: the Dockerfile's default command and .ci/run.
set -euo pipefail
out="${1:-runs/flow-check}"
rm -rf "$out"
qsp-flow --out "$out"
python - "$out" <<'PY'
import json, sys
v = json.load(open(f"{sys.argv[1]}/hls/verify.json"))
bad = v.get("mismatches", v.get("summary", {}).get("mismatches"))
print("verify.json:", json.dumps(v.get("summary", v))[:400])
if bad:
    sys.exit(f"csim check failed: {bad} mismatching outputs")
PY
