#!/usr/bin/env bash
# Third GPU batch: Fashion-MNIST PD recipes towards the 8x-PD-at-<=1-point goal (issue 5):
# P(w,a)->Q with every layer pruned, at several bit widths and sparsities, 30 epochs, 2 seeds.
set -uo pipefail
ep="${1:-30}"; r=runs/gpu3
mkdir -p $r
export PYTHONPATH=toolchain OMP_NUM_THREADS=1
T="timeout ${2:-400}"
i=0
for cfg in "8 0.5 --dense=" "7 0.5 --dense=" "6 0.5 --dense=" "6 0.4 --dense=" "8 0.6 --dense=first"; do
  set -- $cfg
  for s in 0 1; do
    n=pd_b$1_s$2_${3#--dense=}_seed$s
    CUDA_VISIBLE_DEVICES=$((i % 2)) $T python3 benchmarks/pd_fashion_mnist.py --device cuda --epochs "$ep" --seeds $s \
      --bits $1 --sparsity $2 $3 --variants 'P(w,a)->Q' --data-dir data/fashion-mnist --out $r/$n > $r/$n.log 2>&1 &
    i=$((i + 1))
  done
done
wait
cd runs && find gpu3 -maxdepth 2 \( -name '*.json' -o -name '*.md' -o -name '*.log' \) | tar czf "$OUT/results.tgz" -T -
