#!/usr/bin/env bash
# Issue 15 on the device machine (one H200): the fused CUDA fake-quant path checked against
# qsp's reference quantizer (numpy, float64) and its multi-pass torch path, then the training-step
# overhead on CUDA and on the CPU (2 threads), eager and compiled. Run from the source tree:
#   OUT=<dir> bash benchmarks/gpu_overhead.sh
set -euo pipefail
export PYTHONPATH=toolchain
python3 benchmarks/cuda_fakequant_check.py --out "$OUT/cuda_fakequant_check.json"
python3 benchmarks/overhead.py --device cuda --profile --out "$OUT/cuda.json"
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \
  python3 benchmarks/overhead.py --device cpu --threads 2 --profile --out "$OUT/cpu_2threads_h200host.json"
