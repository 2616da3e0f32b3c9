#!/usr/bin/env bash
# The device script: the GPU half of reprozoo, checked in one call of at most 10 minutes on a GPU
# machine (about 6 on an H100/H200). Each stage prints one JSON line; the last line counts failures.
#
#   1. stack       torch's CUDA build against envs/cuda.lock; cudart, cuBLAS, cuDNN, NCCL load and run
#                  (the CUDA image's smoke checks, in the venv: the image, ~GBs, cannot travel to it)
#   2. bf16        a MiniLM fine-tune (sentences, 1 epoch, --precision bf16-mixed), timed end to end
#   3. determinism the same run again; metrics compared key by key (GPU runs use deterministic="warn")
#   4. fp16        --precision 16-mixed with gradient clipping (grad_clip 1.0): non-fused AdamW, finite losses
#   5. throughput  bench/gpu_throughput.py, base-size zoo families, bf16, eager (--compile: also compiled)
#
# On a machine with neither internet nor the weights package (the device machine), run
#   bench/gpu.sh --prepare            # here: .device/minilm (MiniLM as fp16, 45 MB) and .device/sst5
# and hand .device to the call (device tool: carry [".device"], command `bash bench/gpu.sh`).
# Elsewhere REPROZOO_DATA_DIR and GPU_MODEL (a zoo name or a folder) say where things are.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    data=${REPROZOO_DATA_DIR:-../shared/data/sst5/trees}
    mkdir -p .device/sst5
    cp "$data"/{train,dev,test}.txt .device/sst5/  # a transfer folder, git-ignored: never committed
    "$PYTHON" bench/gpu_checks.py weights .device/minilm
    du -sh .device
    exit 0
fi
# --wiring: the same stages on this CPU at toy size (a check of the script itself, not of a GPU).
COMPILE=(--no-compile) DEVICE=(--require-gpu) FP16=16-mixed SIZE=() BENCH=()
case "${1:-}" in
    --compile) COMPILE=() ;;
    --wiring) DEVICE=(--accelerator cpu) FP16=bf16-mixed SIZE=(--limit-train-samples 64 --limit-eval-samples 64)
              BENCH=(--device cpu --tiny --steps 2 --warmup 1) ;;
esac

DATA=${REPROZOO_DATA_DIR:-$([ -d .device/sst5 ] && echo .device/sst5 || echo ../shared/data/sst5/trees)}
MODEL=${GPU_MODEL:-$([ -d .device/minilm ] && echo .device/minilm || echo all-minilm-l6-v2)}
RUNS=${GPU_RUNS:-runs/bench-gpu}
rm -rf "$RUNS" && mkdir -p "$RUNS"
failed=0
check() {  # one JSON line, also kept in $RUNS/checks.jsonl
    local line rc
    line=$("$PYTHON" bench/gpu_checks.py "$@")
    rc=$?
    echo "$line" | tee -a "$RUNS/checks.jsonl"
    [[ $rc == 0 ]] || failed=$((failed + 1))
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [[ ${#BENCH[@]} -gt 0 ]]; then "$PYTHON" bench/gpu_checks.py stack | tee -a "$RUNS/checks.jsonl"; else check stack; fi  # --wiring: no GPU to find

train() {  # train NAME ARGS...: one run into $RUNS/NAME, its wall time on one line
    local name=$1 start
    shift
    start=$(date +%s%N)
    "$PYTHON" -m reprozoo train --model "$MODEL" --data-dir "$DATA" "${DEVICE[@]}" --tracking off \
        --granularity sentences --seed 7 --out "$RUNS/$name" "${SIZE[@]}" "$@" > "$RUNS/$name.log" 2>&1
    local rc=$?
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"wall_ms\": $((($(date +%s%N) - start) / 1000000))}" | tee -a "$RUNS/checks.jsonl"
    [[ $rc == 0 ]] || { failed=$((failed + 1)); tail -5 "$RUNS/$name.log"; return 1; }
    check run "$RUNS/$name"
}

train bf16-a --precision bf16-mixed --max-epochs 1
train bf16-b --precision bf16-mixed --max-epochs 1 && check same "$RUNS/bf16-a" "$RUNS/bf16-b"
train fp16-clip --precision "$FP16" --set trainer.max_steps=60 --set optim.grad_clip=1.0

timeout 300 "$PYTHON" bench/gpu_throughput.py --data-dir "$DATA" --steps 20 "${COMPILE[@]}" "${BENCH[@]}" \
    --out "$RUNS/throughput.json" || failed=$((failed + 1))
[[ -n "${OUT:-}" ]] && cp "$RUNS"/*.json* "$RUNS"/*.log "$OUT"/ 2>/dev/null
echo "{\"stage\": \"done\", \"failed\": $failed}"
exit $((failed > 0))
