#!/usr/bin/env bash
# One GPU, under 8 minutes: the tests marked `gpu`, then short generation-throughput and MFU benchmarks; prints a
# summary. Run from anywhere, with the Python that has torch (CUDA), transformers, accelerate, peft and pytest:
#   bash benchmarks/gpu_check.sh                 # results to benchmarks/results/
#   RESULTS=/tmp/out PYTHON=python3 bash benchmarks/gpu_check.sh
# rewardsft is taken from src/ (no install needed); its lazily imported extras (datasets, lm-eval) are not used.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"

timeout 300 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -o addopts="" 2>&1 | tee "$RESULTS/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

# SmolLM2-135M's shape in bf16; batches up to 128 (a GPU decodes many sequences for the price of one).
timeout 200 "$PY" -m benchmarks.generation_speed --device cuda --batches 1,32,128 --variant-batches 1,32 \
    --new-tokens 128 --copy-mb 2048 --out "$RESULTS/generation_speed_gpu.json" > "$RESULTS/generation_speed_gpu.log" 2>&1
gen_rc=$?
# TinyLlama-1.1B's shape in bf16, 16 examples of 256 + 256 tokens per step, against a bf16 8192^3 matmul.
timeout 150 "$PY" -m benchmarks.mfu --device cuda --size llama1b --batch-size 16 --prompt-len 256 \
    --response-len 256 --steps 3 --matmul-n 8192 --out "$RESULTS/mfu_gpu.json" > "$RESULTS/mfu_gpu.log" 2>&1
mfu_rc=$?

echo "== summary ($(( $(date +%s) - start )) s) =="
echo "gpu tests: $(tail -1 "$RESULTS/gpu_tests.log") (exit $tests_rc)"
echo "generation_speed: exit $gen_rc"; tail -15 "$RESULTS/generation_speed_gpu.log"
echo "mfu: exit $mfu_rc"; tail -15 "$RESULTS/mfu_gpu.log"
[ "$tests_rc" -eq 0 ] && [ "$gen_rc" -eq 0 ] && [ "$mfu_rc" -eq 0 ]
