#!/usr/bin/env bash
# The long benchmark runs, on a lent 2-GPU machine (python3 with torch+CUDA, no network),
# from the source tree: PYTHONPATH=toolchain. Fashion-MNIST travels as data/fashion-mnist
# (a copy of Debian's dataset-fashion-mnist files, carried beside the tree).
# Usage: benchmarks/gpu_suite.sh OUT_DIR [EPOCHS]
set -uo pipefail
out="${1:?out dir}"; ep="${2:-15}"
mkdir -p "$out"
export PYTHONPATH=toolchain OMP_NUM_THREADS=2 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ ! -e /usr/share/datasets/fashion-mnist ] && [ -d data/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && ln -s "$PWD/data/fashion-mnist" /usr/share/datasets/fashion-mnist
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpus.txt" 2>&1
python3 -c "import torch,sys; print(sys.version.split()[0], torch.__version__, torch.cuda.device_count())" >> "$out/gpus.txt"
shift 2 || true
for job in "$@"; do
  case "$job" in
    ddp) python3 benchmarks/ddp_throughput.py --device cuda --nproc 2 --out "$out/ddp_throughput.json" > "$out/ddp.log" 2>&1 ;;
    pd*) s="${job#pd}"; CUDA_VISIBLE_DEVICES=$((s % 2)) python3 benchmarks/pd_fashion_mnist.py --device cuda --epochs "$ep" \
           --seeds "$s" --data-dir data/fashion-mnist --out "$out/pd_s$s" > "$out/pd_s$s.log" 2>&1 & ;;
    order*) s="${job#order}"; CUDA_VISIBLE_DEVICES=$(((s + 1) % 2)) python3 benchmarks/order_study.py --device cuda \
           --epochs "$ep" --seeds "$s" --tasks fashion-mnist,super-resolution --out "$out/order_s$s" > "$out/order_s$s.log" 2>&1 & ;;
    djpq) CUDA_VISIBLE_DEVICES=0 python3 benchmarks/djpq_bops.py --device cuda --epochs "$ep" --pow2 \
           --out "$out/djpq" > "$out/djpq.log" 2>&1 & ;;
  esac
done
wait
ls -R "$out" | head -50
