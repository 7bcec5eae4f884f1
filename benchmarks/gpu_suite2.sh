#!/usr/bin/env bash
# Second batch of GPU runs (see gpu_suite.sh). Results go to runs/gpu2 (ignored, kept on
# the lent machine between calls) and are packed into $OUT/results.tgz at the end.
set -uo pipefail
ep="${1:-12}"; r=runs/gpu2
mkdir -p $r
export PYTHONPATH=toolchain OMP_NUM_THREADS=2 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ ! -e /usr/share/datasets/fashion-mnist ] && [ -d data/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && ln -s "$PWD/data/fashion-mnist" /usr/share/datasets/fashion-mnist
fi
T="timeout 430"
$T python3 benchmarks/ddp_throughput.py --device cuda --nproc 2 --steps 300 --warmup 30 --out $r/ddp_weak.json > $r/ddp_weak.log 2>&1
$T python3 benchmarks/ddp_throughput.py --device cuda --nproc 2 --steps 300 --warmup 30 --scaling strong --batch 256 --out $r/ddp_strong.json > $r/ddp_strong.log 2>&1
i=0
for cfg in "8 0.5 --dense=" "8 0.75 --dense=first" "6 0.6 --dense="; do
  set -- $cfg
  for s in 0 1; do
    CUDA_VISIBLE_DEVICES=$((i % 2)) $T python3 benchmarks/pd_fashion_mnist.py --device cuda --epochs "$ep" --seeds $s \
      --bits $1 --sparsity $2 $3 --variants 'P(w,a)->Q' --data-dir data/fashion-mnist \
      --out $r/pd_b$1_s$2_${3#--dense=}_seed$s > $r/pd_b$1_s$2_${3#--dense=}_seed$s.log 2>&1 &
    i=$((i + 1))
  done
done
CUDA_VISIBLE_DEVICES=1 $T python3 benchmarks/djpq_bops.py --device cuda --epochs "$ep" --targets 0.012 --pow2 \
  --out $r/djpq > $r/djpq.log 2>&1 &
wait
tar czf "$OUT/results.tgz" -C runs gpu2
