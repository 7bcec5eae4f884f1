#!/usr/bin/env bash
# The real-networks table on one GPU (the device tool's H200): ResNet-8, MobileNetV2-tiny and
# DS-CNN on Fashion-MNIST, qsparse (8 bit / 50 %) and DJPQ, all six runs in parallel.
#   EPOCHS=15 METHODS="qsparse djpq" benchmarks/gpu_real_networks.sh DATA_DIR OUT
# Writes OUT/results.tar.gz (JSON per run + logs) and OUT/bundles_<method>.tar.gz.
set -uo pipefail
data=${1:?data dir}; out=${2:?out dir}; epochs=${EPOCHS:-15}; methods=${METHODS:-qsparse djpq}
export PYTHONPATH=toolchain PYTHONUNBUFFERED=1
runs=/tmp/real_networks; rm -rf $runs; mkdir -p $runs
# RUNS="model:method:epochs ..." picks runs; default: every model x $methods at $epochs
runs_list=${RUNS:-$(for m in resnet8 mobilenet_v2_tiny ds_cnn; do for meth in $methods; do echo $m:$meth:$epochs; done; done)}
for r in $runs_list; do
  IFS=: read -r m meth ep <<< "$r"
  timeout ${TRAIN_TIMEOUT:-36000} python3 benchmarks/real_networks.py train --model $m --method $meth --device cuda \
    --epochs $ep --data-dir $data --out $runs > $runs/${m}_${meth}.log 2>&1 &
done
methods=$(for r in $runs_list; do echo ${r#*:}; done | cut -d: -f1 | sort -u | tr '\n' ' ' | sed 's/ $//')
wait
tail -n 3 $runs/*.log
cd $runs && tar czf $out/results_${methods// /_}.tar.gz *.json *.log
for meth in $methods; do
  tar czf $out/bundles_$meth.tar.gz --exclude='*/checkpoints' --exclude='*/float' */*_${meth}/bundle 2>/dev/null || \
  tar czf $out/bundles_$meth.tar.gz $(ls -d *_${meth}/bundle)
done
ls -la $out
