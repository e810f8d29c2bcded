#!/usr/bin/env bash
# The GPU check: step time and peak CUDA memory (bf16) for ViT-B/16 and the LLaMA-3.2-1B shape at 2 and
# 16 layers, the selection pass, a short real fine-tune, serving many adapters, and chat generation on
# SmolLM2-135M with 1/8/32 adapters per batch (--only generation for that part alone). Budget: under
# 10 minutes on one H100.
#
#   bench/gpu_check.sh                      # on the GPU machine; JSON to $OUT, else bench/results/
#   bench/gpu_check.sh --device cpu --tiny  # dry run (a test runs this)
#
# Extra arguments go to `python -m bench.gpu_check` (see its docstring), e.g. --only selection_pass.
set -euo pipefail
cd "$(dirname "$0")/.."

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi: not found"
fi

# The repository's locked environment: uv when present (offline), else the carried .venv.
if command -v uv >/dev/null 2>&1 && uv run --frozen --offline python -c "pass" >/dev/null 2>&1; then
    PY=(uv run --frozen --offline python)
elif [ -x .venv/bin/python ]; then
    PY=(.venv/bin/python)
else
    PY=(python3)
fi
echo "python: ${PY[*]}"

exec "${PY[@]}" -m bench.gpu_check "$@"
