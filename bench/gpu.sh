#!/usr/bin/env bash
# GPU training throughput (bf16-mixed, eager and torch.compile) of base-size BERT, RoBERTa,
# DeBERTa-v3 and ELECTRA with random weights: examples/s, MFU against the chip's dense bf16 peak,
# peak memory. Needs a CUDA GPU (H100/H200 peaks are known; --peak-tflops for others); about
# 3-5 minutes on an H100, most of it torch.compile. Not run by any test.
#
#   bench/gpu.sh                          # from the repository root, with the venv's python
#   PYTHON=python3 bench/gpu.sh --steps 100
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: no CUDA GPU visible to torch")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p runs
exec "$PYTHON" bench/gpu_throughput.py --out runs/bench-gpu.json "$@"
