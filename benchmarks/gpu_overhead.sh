#!/usr/bin/env bash
# Issue 15 on the device machine (one H200): the fused CUDA fake-quant path checked against
# qsp's reference quantizer (numpy, float64), then the training-step overhead on CUDA (eager
# and compiled, with a profiler summary) and on the host CPU (2 threads). Run from the source
# tree:   OUT=<dir> bash benchmarks/gpu_overhead.sh
set -uo pipefail
export PYTHONPATH=toolchain
timeout 60 python3 benchmarks/cuda_fakequant_check.py --out "$OUT/cuda_fakequant_check.json"
timeout 220 python3 benchmarks/overhead.py --device cuda --profile --out "$OUT/cuda.json"
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \
  timeout 90 python3 benchmarks/overhead.py --device cpu --threads 2 --modes eager --out "$OUT/cpu_2threads_h200host.json"
