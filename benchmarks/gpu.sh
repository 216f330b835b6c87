#!/usr/bin/env bash
# The GPU benchmark: 4M synthetic rows, data resident on the GPU, batch 32768.
# Usage (on a CUDA machine, from the repository root): bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 -c "from feature_repo.sample_data import generate; generate(4_000_000, 0, '/tmp/bench4m')"
cats=user_id,adgroup_id,pid,age_level,gender,shopping_level,occupation,city_level,cms_segid,cate_id,campaign_id,customer_id,brand
run() {
  python3 benchmarks/train_throughput.py --data /tmp/bench4m/flat.parquet --label clk \
    --categorical "$cats" --numeric price --embedding-dim 16 --hidden 256,128,64 \
    --threads 16 --device cuda "$@"
}
run --batch-size 32768 --epochs 3 --precision fp32 --bound-steps 200 | tee "$out/gpu_b32768_fp32.json"
run --batch-size 32768 --epochs 3 --precision bf16 --bound-steps 200 | tee "$out/gpu_b32768_bf16.json"
run --batch-size 65536 --epochs 3 --precision fp32 --bound-steps 200 | tee "$out/gpu_b65536_fp32.json"
run --batch-size 4096 --epochs 1 --precision fp32 --baseline | tee "$out/gpu_b4096_fp32.json"
